"""The manual bill fallback: a trade bill downloaded by hand from the merchant portal, loaded like the API's.

When the API cannot deliver a day's bill, finance downloads it from the merchant portal (csv, or gz: the
portal's export has the API's columns) and runs ``wxrecon load-bill FILE --mchid … --date …``. The file goes
through the same parser and checks as a downloaded bill (:func:`flows.bills.load_bill`: header, every value,
the summary against the rows), first into a scratch in-memory warehouse, where every row must name the
merchant (商户号) and the day (交易时间, Beijing) it is loaded as: a file of another merchant or another day is
refused (:class:`ManualBillError`, naming lines) and nothing is written — not the warehouse, not the archive.
Then it is archived under the SHA-1 of its decompressed bytes (the same layout as the API's bills, sidecar
``source: manual``), loaded into the warehouse (the day replaced in one transaction), marked ``lineage =
'manual'`` in ``raw.bill_loads`` and recorded as a ``loaded_manual`` event in ``raw.bill_load_events``.

A manual load does not count as fetched: the next nightly run of the day asks the API again. When the API's
bill loads over a manual one (:func:`settle_manual`, called by :mod:`flows.bills.fetcher`), the same SHA-1
is a ``confirmed_by_api`` event, another one a ``replaced_by_api`` event; either way the load is the API's.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from flows.bills.archive import ArchivedBill, BillArchive
from flows.bills.exactpath import bill_chunks, is_gzip
from flows.bills.lineage import PARSER_VERSION, LoadResult
from flows.bills.loader import load_bill
from flows.warehouse import SQL_DIR, connect, migrate, transaction
from flows.warehouse.models import sql_text

TRADE_BILL_TYPES = ("trade_all", "trade_success", "trade_refund")
"""The bills that may be loaded by hand: trade bills (their rows name merchant and day)."""


class ManualBillError(ValueError):
    """A manual bill refused: the message names what was wrong; nothing was written."""


@dataclass(frozen=True)
class ManualLoad:
    """What a manual load did."""

    archived: ArchivedBill
    load: LoadResult
    previous_sha1: str | None  # the load of the day it replaced, if any


def file_sha1(path: Path) -> str:
    """SHA-1 of the decompressed bytes (WeChat Pay's ``hash_value``), gzip or plain."""
    digest = hashlib.sha1()  # noqa: S324 - WeChat Pay's bill hash is SHA-1 (spec §5.3)
    for chunk in bill_chunks(path, is_gzip(path)):
        digest.update(chunk)
    return digest.hexdigest()


def _check_rows(path: Path, mchid: str, bill_type: str, bill_date: date, sha1: str) -> None:
    """Load the file into a scratch warehouse (the same parser and checks) and refuse rows of another merchant
    or day; nothing of the real warehouse is touched."""
    scratch = connect(":memory:")
    try:
        migrate(scratch)
        load_bill(
            scratch,
            path,
            mchid=mchid,
            bill_date=bill_date,
            bill_type=bill_type,
            archive_sha1=sha1,
            source_label="manual check",
            memory_limit=None,
        )
        foreign = scratch.execute(
            sql_text(SQL_DIR / "workbench" / "manual_bill_foreign_rows.sql"),
            {"mchid": mchid, "bill_type": bill_type, "bill_date": bill_date},
        ).fetchall()
    finally:
        scratch.close()
    if foreign:
        merchants = sorted({m for _, m, _ in foreign if m != mchid})
        days = sorted({str(d) for _, _, d in foreign if d != bill_date})
        what = []
        if merchants:
            what.append(f"merchant {', '.join(merchants)} (not {mchid})")
        if days:
            what.append(f"day {', '.join(days)} (not {bill_date})")
        lines = ", ".join(str(n) for n, _, _ in foreign[:5]) + (" …" if len(foreign) > 5 else "")
        raise ManualBillError(
            f"{path.name}: {len(foreign)} row(s) name {' and '.join(what)}, lines {lines}: this is not the"
            f" {bill_type} bill of {mchid} for {bill_date}"
        )


def _archive(archive: BillArchive, path: Path, mchid: str, bill_type: str, bill_date: date, sha1: str) -> ArchivedBill:
    bill = archive.target(mchid, bill_type, bill_date, sha1, gzip=True)
    if not bill.path.exists():
        partial = bill.path.with_name(f".{bill.path.name}.{os.getpid()}.part")
        try:
            with gzip.open(partial, "wb") as out:
                for chunk in bill_chunks(path, is_gzip(path)):
                    out.write(chunk)
            os.replace(partial, bill.path)
        finally:
            partial.unlink(missing_ok=True)
    return bill


def manual_sha1(con: duckdb.DuckDBPyConnection, mchid: str, bill_type: str, bill_date: date) -> str | None:
    """The SHA-1 of the day's load if it was loaded by hand, else ``None``."""
    row = con.execute(
        "select archive_sha1 from raw.bill_loads where mchid = ? and bill_type = ? and bill_date = ?"
        " and lineage = 'manual'",
        [mchid, bill_type, bill_date],
    ).fetchone()
    return row[0] if row else None


def _event(con, mchid, bill_type, bill_date, event, sha1, previous, actor, detail) -> None:
    con.execute(
        "insert into raw.bill_load_events (mchid, bill_type, bill_date, event, archive_sha1, previous_sha1, actor,"
        " event_at, detail) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [mchid, bill_type, bill_date, event, sha1, previous, actor, datetime.now(UTC), detail],
    )


def load_manual_bill(
    con: duckdb.DuckDBPyConnection,
    archive: BillArchive,
    file: str | Path,
    *,
    mchid: str,
    bill_date: date,
    bill_type: str = "trade_all",
    loaded_by: str,
) -> ManualLoad:
    """Check, archive and load a bill downloaded by hand; see the module docstring."""
    path = Path(file)
    if not path.is_file():
        raise ManualBillError(f"no file {path}")
    if not re.fullmatch(r"[0-9]{6,32}", mchid or ""):
        raise ManualBillError(f"{mchid!r} is not a merchant id (6 to 32 digits)")
    if bill_type not in TRADE_BILL_TYPES:
        raise ManualBillError(f"bill type {bill_type!r} cannot be loaded by hand; one of {', '.join(TRADE_BILL_TYPES)}")
    if not (loaded_by or "").strip():
        raise ManualBillError("say who loads it (loaded_by)")
    try:
        sha1 = file_sha1(path)
        _check_rows(path, mchid, bill_type, bill_date, sha1)
    except ManualBillError:
        raise
    except (ValueError, OSError) as exc:  # the parser's BillFormatError, a corrupt gzip...: named, nothing written
        raise ManualBillError(f"{path.name}: {type(exc).__name__}: {exc}") from None
    previous = con.execute(
        "select archive_sha1 from raw.bill_loads where mchid = ? and bill_type = ? and bill_date = ?",
        [mchid, bill_type, bill_date],
    ).fetchone()
    bill = _archive(archive, path, mchid, bill_type, bill_date, sha1)
    result = load_bill(
        con,
        bill.path,
        mchid=mchid,
        bill_date=bill_date,
        bill_type=bill_type,
        archive_sha1=sha1,
        source_label=archive.source_label(bill),
    )
    with transaction(con):
        con.execute(
            "update raw.bill_loads set lineage = 'manual' where mchid = ? and bill_type = ? and bill_date = ?",
            [mchid, bill_type, bill_date],
        )
        detail = f"{path.name}: {result.row_count} rows, loaded by hand from the merchant portal's export"
        _event(con, mchid, bill_type, bill_date, "loaded_manual", sha1, previous[0] if previous else None,
               loaded_by.strip(), detail)  # fmt: skip
    archive.record(
        bill,
        source="manual",
        original_name=path.name,
        loaded_by=loaded_by.strip(),
        parser_version=PARSER_VERSION,
        loaded_rows=result.row_count,
    )
    return ManualLoad(bill, result, previous[0] if previous else None)


def settle_manual(
    con: duckdb.DuckDBPyConnection, manual: str | None, mchid: str, bill_type: str, bill_date: date, api_sha1: str
) -> str | None:
    """After the API's bill of a day loaded over a manual load with SHA-1 ``manual``: record whether it confirmed
    it (the same SHA-1) or replaced it; returns the event (``None`` when the day had no manual load)."""
    if manual is None:
        return None
    same = manual.lower() == api_sha1.lower()
    event = "confirmed_by_api" if same else "replaced_by_api"
    detail = (
        "the API's bill is the file loaded by hand"
        if same
        else f"the API's bill differs from the file loaded by hand ({manual}); the API's is loaded now"
    )
    _event(con, mchid, bill_type, bill_date, event, api_sha1, manual, "wxrecon", detail)
    return event
