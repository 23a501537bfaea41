"""One bill from WeChat Pay into the warehouse: apply, download into the archive, load.

:func:`ingest_bill` is what the nightly flow calls per (merchant, bill type, day). It applies
and downloads inside the URL lifetime (:func:`wxpay.bills.fetch_bill`), keeps the verified
file in the :class:`~flows.bills.archive.BillArchive` under its SHA1 (a file already archived with
that digest is not downloaded again; the load verifies it anyway), loads it with :func:`flows.bills.load_bill` (one
transaction per day: a reload replaces) and records the outcome in ``raw.bill_fetches``.
:func:`ingest_bill` loads while the bill downloads: the download's verified, decompressed
bytes go straight to the loader (:func:`flows.bills.load_bill_stream`), which commits only
after the digest matched and the file is in the archive. A bill fetched first and loaded later
(:func:`fetch_to_archive`, :func:`load_archived`) carries the download's :class:`~wxpay.bills.BillProof`,
so the load does not hash it a second time.
A day without trades (``NO_STATEMENT_EXIST``) is recorded as ``no_statement``; "not ready yet"
and every other failure propagate as the :mod:`wxpay` exceptions they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from flows.bills.archive import ArchivedBill, BillArchive, raise_storage_fault
from flows.bills.lineage import PARSER_VERSION, LoadResult
from flows.bills.loader import load_bill, load_bill_stream
from flows.bills.manual import manual_sha1, settle_manual
from flows.warehouse import LOAD_MEMORY_LIMIT
from wxpay.bills import (
    DEFAULT_URL_LIFETIME,
    BillApplication,
    BillProof,
    BillRequest,
    DownloadedBill,
    download,
    fetch_bill,
)
from wxpay.client import Client
from wxpay.errors import BillDownloadError, BillTruncatedError, NoStatementError, TransportError

NO_STATEMENT = "NO_STATEMENT_EXIST: no trades that day"
"""What ``raw.bill_fetch_log`` says of a day without a statement."""


@dataclass(frozen=True)
class Fetched:
    """A verified bill in the archive, or a legitimate empty day (``archived`` None)."""

    mchid: str
    bill_type: str
    bill_date: date
    archived: ArchivedBill | None
    downloaded: bool = False  # False when the archive already held this exact file
    attempts: int = 0
    proof: BillProof | None = None  # what the download verified (None for a file already archived)

    @property
    def outcome(self) -> str:
        return "loaded" if self.archived else "no_statement"


@dataclass(frozen=True)
class IngestResult:
    mchid: str
    bill_type: str
    bill_date: date
    outcome: str  # loaded | no_statement
    archived: ArchivedBill | None = None
    load: LoadResult | None = None
    downloaded: bool = False
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
    run_id: str | None = None,
    problem: str | None = None,
) -> None:
    """Remember what asking for a bill gave: ``loaded``, ``no_statement`` (an empty day), ``not_ready``, ``failed``
    (appended to ``raw.bill_fetch_log``; ``raw.bill_fetches`` shows the latest per bill). ``run_id`` is the night
    that asked, ``problem`` the kind of a failure (:mod:`flows.outcome`)."""
    record_bill_fetches(
        con, [(mchid, bill_type, bill_date, outcome, detail, archive_sha1, datetime.now(UTC), run_id, problem)]
    )


def record_bill_fetches(con: duckdb.DuckDBPyConnection, records: Sequence[tuple]) -> None:
    """:func:`record_bill_fetch` of many in one statement: each record is (mchid, bill_type, bill_date, outcome,
    detail, archive_sha1, fetched_at, run_id, problem)."""
    for record in records:
        if record[3] not in ("loaded", "no_statement", "not_ready", "failed"):
            raise ValueError(f"unknown bill fetch outcome {record[3]!r}")
    if not records:
        return
    marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(records))
    con.execute(
        "insert into raw.bill_fetch_log (mchid, bill_type, bill_date, outcome, detail, archive_sha1, fetched_at,"  # noqa: S608
        f" run_id, problem) values {marks}",
        [value for record in records for value in record],
    )


def settled_merchants(con: duckdb.DuckDBPyConnection, bill_type: str, bill_date: date) -> set[str]:
    """The merchants whose ``bill_type`` bill of ``bill_date`` an earlier run loaded (or found empty): a
    later run of the day leaves them alone unless told to fetch again."""
    rows = con.execute(
        "select mchid from raw.bill_fetches"
        " where bill_type = ? and bill_date = ? and outcome in ('loaded', 'no_statement')",
        [bill_type, bill_date],
    ).fetchall()
    return {mchid for (mchid,) in rows}


def fetch_to_archive(
    client: Client,
    archive: BillArchive,
    request: BillRequest,
    *,
    url_lifetime: float = DEFAULT_URL_LIFETIME,
    max_attempts: int = 3,
    on_progress: Callable[[int], None] | None = None,
) -> Fetched:
    """Apply and download ``request``'s bill for ``client``'s merchant into the archive (no database work).

    ``NO_STATEMENT_EXIST`` gives a :class:`Fetched` without a file; other failures raise.
    """
    found: dict[str, ArchivedBill] = {}

    def target(application: BillApplication):
        found["bill"] = archive.target(
            client.mchid, request.label, request.bill_date, application.hash_value, gzip=request.gzip
        )
        return found["bill"].path

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
    except NoStatementError:
        return Fetched(client.mchid, request.label, request.bill_date, None)
    except OSError as exc:  # the download's file beside its place in the archive could not be written
        folder = found["bill"].path.parent if "bill" in found else archive.root
        raise_storage_fault(exc, folder, "writing a bill into the archive")
        raise
    bill = found["bill"]
    if not fetched.reused:
        archive.record(
            bill,
            size=fetched.size,
            decompressed_size=fetched.decompressed_size,
            downloaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    return Fetched(
        client.mchid, request.label, request.bill_date, bill, not fetched.reused, fetched.attempts, fetched.proof
    )


def load_archived(
    con: duckdb.DuckDBPyConnection,
    archive: BillArchive,
    fetched: Fetched,
    *,
    memory_limit: str | None = LOAD_MEMORY_LIMIT,
    run_id: str | None = None,
) -> IngestResult:
    """Load a fetched bill (one transaction for its day) and record the outcome in ``raw.bill_fetches``.

    ``memory_limit``: DuckDB's limit while it loads (:data:`flows.warehouse.LOAD_MEMORY_LIMIT`; ``None``
    leaves the connection's alone, for a caller that holds a limit around several loads)."""
    if fetched.archived is None:
        record_bill_fetch(
            con,
            fetched.mchid,
            fetched.bill_type,
            fetched.bill_date,
            "no_statement",
            detail=NO_STATEMENT,
            run_id=run_id,
        )
        return IngestResult(fetched.mchid, fetched.bill_type, fetched.bill_date, "no_statement")
    bill = fetched.archived
    manual = manual_sha1(con, fetched.mchid, fetched.bill_type, fetched.bill_date)
    result = load_bill(
        con,
        bill.path,
        mchid=fetched.mchid,
        bill_date=fetched.bill_date,
        bill_type=fetched.bill_type,
        archive_sha1=bill.sha1,
        source_label=archive.source_label(bill),
        proof=fetched.proof,
        memory_limit=memory_limit,
    )
    archive.record(bill, parser_version=PARSER_VERSION, loaded_rows=result.row_count)
    settle_manual(con, manual, fetched.mchid, fetched.bill_type, fetched.bill_date, bill.sha1)
    record_bill_fetch(
        con, fetched.mchid, fetched.bill_type, fetched.bill_date, "loaded", archive_sha1=bill.sha1, run_id=run_id
    )
    return IngestResult(
        fetched.mchid,
        fetched.bill_type,
        fetched.bill_date,
        "loaded",
        bill,
        result,
        fetched.downloaded,
        fetched.attempts,
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
    staging_dir: str | Path | None = None,
    memory_limit: str | None = LOAD_MEMORY_LIMIT,
    run_id: str | None = None,
) -> IngestResult:
    """Fetch ``request``'s bill into the archive and load it while it downloads; see the module docstring.

    The first attempt streams: the bytes the download inflates and hashes are staged (under
    ``staging_dir``) and loaded as they arrive; the load commits only once the download has
    verified the SHA1 and renamed the file into the archive. If that attempt breaks off (URL
    expired, transfer broken, gzip cut short) the load is rolled back and the remaining
    ``max_attempts - 1`` go the plain way: :func:`fetch_to_archive`, then :func:`load_archived`.
    A file already archived under the announced digest is loaded (and verified) from there.
    ``memory_limit`` and ``run_id`` as for :func:`load_archived` and :func:`record_bill_fetch`.
    """
    mchid, label, day = client.mchid, request.label, request.bill_date
    loading = {"memory_limit": memory_limit, "run_id": run_id}
    try:
        application = client.send(request.operation())
    except NoStatementError:
        return load_archived(con, archive, Fetched(mchid, label, day, None), **loading)
    bill = archive.target(mchid, label, day, application.hash_value, gzip=request.gzip)
    manual = manual_sha1(con, mchid, label, day)
    if bill.path.exists():
        return load_archived(
            con, archive, Fetched(mchid, label, day, bill, False, 1), memory_limit=memory_limit, run_id=run_id
        )
    downloaded: list[DownloadedBill] = []

    def produce(feed: Callable[[bytes], None]) -> str:
        got = download(client.http, application, bill.path, gzip=request.gzip, on_progress=on_progress, tee=feed)
        downloaded.append(got)
        return got.sha1

    try:
        result = load_bill_stream(
            con,
            produce,
            path=bill.path,
            mchid=mchid,
            bill_date=day,
            bill_type=label,
            archive_sha1=bill.sha1,
            source_label=archive.source_label(bill),
            staging_dir=staging_dir,
            memory_limit=memory_limit,
        )
    except (BillDownloadError, BillTruncatedError, TransportError):
        if downloaded or max_attempts <= 1:
            raise
        fetched = fetch_to_archive(
            client, archive, request, url_lifetime=url_lifetime, max_attempts=max_attempts - 1, on_progress=on_progress
        )
        return load_archived(
            con, archive, replace(fetched, attempts=fetched.attempts + 1), memory_limit=memory_limit, run_id=run_id
        )
    except OSError as exc:  # staging and the warehouse name their own faults; an unnamed one is the archive's
        raise_storage_fault(exc, bill.path.parent, "writing a bill into the archive")
        raise
    finally:
        if downloaded:
            archive.record(
                bill,
                size=downloaded[0].size,
                decompressed_size=downloaded[0].decompressed_size,
                downloaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
    archive.record(bill, parser_version=PARSER_VERSION, loaded_rows=result.row_count)
    settle_manual(con, manual, mchid, label, day, bill.sha1)
    record_bill_fetch(con, mchid, label, day, "loaded", archive_sha1=bill.sha1, run_id=run_id)
    return IngestResult(mchid, label, day, "loaded", bill, result, True, 1)
