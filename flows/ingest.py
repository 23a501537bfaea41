"""One bill from WeChat Pay into the warehouse: apply, download into the archive, load.

:func:`ingest_bill` is what the nightly flow calls per (merchant, bill type, day). It applies
and downloads inside the URL lifetime (:func:`wxpay.bills.fetch_bill`), keeps the verified
file in the :class:`~flows.archive.BillArchive` under its SHA1 (a file already archived with
that digest is not downloaded again; the load verifies it anyway), loads it with :func:`flows.warehouse.load_bill` (one
transaction per day: a reload replaces) and records the outcome in ``raw.bill_fetches``.
A day without trades (``NO_STATEMENT_EXIST``) is recorded as ``no_statement``; "not ready yet"
and every other failure propagate as the :mod:`wxpay` exceptions they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import duckdb

from flows.archive import ArchivedBill, BillArchive
from flows.warehouse import PARSER_VERSION, LoadResult, load_bill
from wxpay.bills import DEFAULT_URL_LIFETIME, BillApplication, BillRequest, fetch_bill
from wxpay.client import Client
from wxpay.errors import NoStatementError


@dataclass(frozen=True)
class IngestResult:
    mchid: str
    bill_type: str
    bill_date: date
    outcome: str  # loaded | no_statement
    archived: ArchivedBill | None = None
    load: LoadResult | None = None
    downloaded: bool = False  # False when the archive already held this exact file
    attempts: int = 0


def record_bill_fetch(
    con: duckdb.DuckDBPyConnection,
    mchid: str,
    bill_type: str,
    bill_date: date,
    outcome: str,
    *,
    detail: str | None = None,
    archive_sha1: str | None = None,
) -> None:
    """Remember what asking for a bill gave: ``loaded``, ``no_statement`` (an empty day), ``not_ready``, ``failed``."""
    if outcome not in ("loaded", "no_statement", "not_ready", "failed"):
        raise ValueError(f"unknown bill fetch outcome {outcome!r}")
    con.execute(
        "insert or replace into raw.bill_fetches (mchid, bill_type, bill_date, outcome, detail, archive_sha1,"
        " fetched_at) values (?, ?, ?, ?, ?, ?, ?)",
        [mchid, bill_type, bill_date, outcome, detail, archive_sha1, datetime.now(UTC)],
    )


def ingest_bill(
    con: duckdb.DuckDBPyConnection,
    client: Client,
    archive: BillArchive,
    request: BillRequest,
    *,
    url_lifetime: float = DEFAULT_URL_LIFETIME,
    max_attempts: int = 3,
    on_progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Fetch ``request``'s bill for ``client``'s merchant, archive it, load it; see the module docstring."""
    mchid = client.mchid
    label = request.label
    found: dict[str, ArchivedBill] = {}

    def target(application: BillApplication):
        bill = archive.target(mchid, label, request.bill_date, application.hash_value, gzip=request.gzip)
        found["bill"] = bill
        return bill.path

    try:
        fetched = fetch_bill(
            client,
            request,
            target,
            url_lifetime=url_lifetime,
            max_attempts=max_attempts,
            on_progress=on_progress,
            reuse_existing=True,
        )
    except NoStatementError as exc:
        record_bill_fetch(con, mchid, label, request.bill_date, "no_statement", detail=exc.message)
        return IngestResult(mchid, label, request.bill_date, "no_statement")
    bill = found["bill"]
    if not fetched.reused:
        archive.record(
            bill,
            size=fetched.size,
            decompressed_size=fetched.decompressed_size,
            downloaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    result = load_bill(
        con,
        bill.path,
        mchid=mchid,
        bill_date=request.bill_date,
        bill_type=label,
        archive_sha1=bill.sha1,
        source_label=str(bill.path.relative_to(archive.root)),
    )
    archive.record(bill, parser_version=PARSER_VERSION, loaded_rows=result.row_count)
    record_bill_fetch(con, mchid, label, request.bill_date, "loaded", archive_sha1=bill.sha1)
    return IngestResult(mchid, label, request.bill_date, "loaded", bill, result, not fetched.reused, fetched.attempts)
