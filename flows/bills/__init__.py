"""Bills, from WeChat Pay into the warehouse: apply, download into the archive, load.

The story in modules: ``fetcher`` applies for a bill and downloads it (verified) into the
``archive``, or loads it while it downloads; ``loader`` is the streamed load (the bill cut into
``parts`` that DuckDB reads while the rest arrives); ``exactpath`` is the load that names file,
line and field of anything that is not a clean bill; ``lineage`` is what both loads write alike
(the day replaced in one transaction, the summary checked, ``raw.bill_loads``); ``batch`` loads the small
bills of many merchants in one transaction (a night of thousands of tiny bills); ``manual`` loads a bill
downloaded by hand from the merchant portal (the same checks, lineage ``manual``); ``debris`` removes
what a crashed load left (staging parts, archive temporary files) at the next start.
"""

from __future__ import annotations

from flows.bills.archive import ArchivedBill, BillArchive
from flows.bills.batch import SMALL_BILL_BYTES, BatchRefused, batchable, load_fetched, reload_doubled
from flows.bills.debris import DEBRIS_MIN_AGE, Debris, remove_debris
from flows.bills.fetcher import (
    Fetched,
    IngestResult,
    fetch_to_archive,
    ingest_bill,
    load_archived,
    record_bill_fetch,
    record_bill_fetches,
    settled_merchants,
)
from flows.bills.lineage import PARSER_VERSION, LoadResult
from flows.bills.loader import PART_LINES, load_bill, load_bill_stream
from flows.bills.manual import ManualBillError, ManualLoad, load_manual_bill

__all__ = [
    "DEBRIS_MIN_AGE",
    "PARSER_VERSION",
    "PART_LINES",
    "SMALL_BILL_BYTES",
    "ArchivedBill",
    "BatchRefused",
    "BillArchive",
    "Debris",
    "Fetched",
    "IngestResult",
    "LoadResult",
    "ManualBillError",
    "ManualLoad",
    "batchable",
    "fetch_to_archive",
    "ingest_bill",
    "load_archived",
    "load_bill",
    "load_bill_stream",
    "load_fetched",
    "load_manual_bill",
    "record_bill_fetch",
    "record_bill_fetches",
    "reload_doubled",
    "remove_debris",
    "settled_merchants",
]
