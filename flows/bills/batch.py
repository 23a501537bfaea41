"""Many small bills into the warehouse in one transaction: what a unit of merchants does with their tiny bills.

A night of thousands of merchants is mostly bills of a few dozen rows, and what such a bill costs is
statements and commits, not rows: loaded alone it takes about eleven statements and a commit (≈30 ms of
CPU for 30 rows, ``bench/nightly.py``). :func:`load_fetched` loads the verified bills of several merchants'
same day (fetched into the archive by :func:`flows.bills.fetch_to_archive`) in one transaction:

* each bill is read once (inflated, its SHA-1 checked again, its header and summary block parsed) and its
  detail lines are staged in one plain CSV file per header layout, each line prefixed with the bill's
  number in the batch and the line's number in its bill;
* one ``INSERT … SELECT`` per layout checks and types every value exactly as the streamed load does (the
  same regular expression and casts: :func:`flows.bills.loader.streamed_insert`);
* one query checks every bill's summary against COUNT/SUM of its rows; the summaries, the ``raw.bill_loads``
  rows and the ``raw.bill_fetch_log`` rows are one INSERT each; the previous loads of the day are deleted
  only for the merchants that have one.

The batch commits whole or not at all, so each (merchant, day) in it is whole or absent, as with one
transaction per bill, and a re-run replaces, never doubles. Anything but clean bills (a bad value, a
summary that disagrees, a header it does not know, a bill larger than :data:`SMALL_BILL_BYTES`) raises
:class:`BatchRefused` with nothing written: the caller then loads those bills one by one, where every error
names file, line and field (:func:`flows.bills.load_archived`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

import duckdb

from flows.bills.archive import ArchivedBill, BillArchive
from flows.bills.exactpath import bill_chunks, is_gzip, read_csv_sql
from flows.bills.fetcher import NO_STATEMENT, Fetched, IngestResult, record_bill_fetches
from flows.bills.lineage import PARSER_VERSION, AfterInsert, BillLoad, load_result, read_header
from flows.bills.loader import load_bill, streamed_insert
from flows.bills.manual import settle_manual
from flows.bills.summaries import aggregate
from flows.storage import storage_fault_in
from flows.warehouse import is_conflict, is_lake, transaction
from wxpay.billfile import BillHeader, BillSummary, parse_summary
from wxpay.errors import BillFormatError

_log = logging.getLogger(__name__)

SMALL_BILL_BYTES = 1 << 20
"""A bill of at most this many decompressed bytes (≈3,500 trade rows) joins a batch; a larger one loads alone,
where its own streamed load keeps the memory bounded."""


class BatchRefused(Exception):
    """The batch cannot load as a whole (the reason says why); nothing was written."""


@dataclass
class _Bill:
    number: int
    fetched: Fetched
    load: BillLoad
    header: BillHeader
    summary: BillSummary
    rows: int


def batchable(fetched: Fetched) -> bool:
    """Whether a fetched bill can join a batch: an empty day, or a verified download of a small bill."""
    if fetched.archived is None:
        return True
    return fetched.proof is not None and fetched.proof.size <= SMALL_BILL_BYTES


def load_fetched(
    con: duckdb.DuckDBPyConnection,
    archive: BillArchive,
    fetched: Sequence[Fetched],
    *,
    run_id: str | None = None,
    staging_dir: str | Path | None = None,
    _after_insert: AfterInsert | None = None,
) -> list[IngestResult]:
    """Load ``fetched`` (bills of one bill type and day, each of another merchant) in one transaction, and record
    each one's outcome in ``raw.bill_fetch_log`` in it; see the module docstring. Raises :class:`BatchRefused`
    (nothing written) when they cannot all load; a storage or database error propagates, nothing written.
    ``_after_insert`` is a test hook called inside the transaction once everything is written."""
    if not fetched:
        return []
    if len({(f.bill_type, f.bill_date) for f in fetched}) != 1 or len({f.mchid for f in fetched}) != len(fetched):
        raise ValueError("a batch is one bill type and day, one bill per merchant")
    started = time.perf_counter()
    bill_type, bill_date = fetched[0].bill_type, fetched[0].bill_date
    folder = Path(tempfile.mkdtemp(prefix="wxbill-", dir=staging_dir))
    try:
        try:
            bills, staged = _stage(archive, fetched, folder)
        except OSError as exc:  # the staging directory cannot be written (or a bill read): named as such
            fault = storage_fault_in(exc, folder, "staging bills")
            if fault is None or fault is exc:
                raise
            raise fault from exc
        with _storage_named(folder), transaction(con):
            replaced, manual = _clear_loaded(con, bills, bill_type, bill_date)
            for path, (header, members) in staged.items():
                _insert_rows(con, path, header, members)
            _check_summaries(con, bills, bill_type, bill_date)
            _insert_summaries(con, bills)
            _insert_loads(con, bills)
            for bill in bills:
                sha1 = manual.get(bill.load.mchid)
                settle_manual(con, sha1, bill.load.mchid, bill_type, bill_date, bill.load.archive_sha1)
            now = datetime.now(UTC)
            record_bill_fetches(
                con,
                [
                    (f.mchid, f.bill_type, f.bill_date, f.outcome, None if f.archived else NO_STATEMENT,
                     f.archived.sha1 if f.archived else None, now, run_id, None)
                    for f in fetched
                ],
            )  # fmt: skip
            if _after_insert is not None:
                _after_insert(con)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    reload_doubled(con, archive, [bill.fetched.archived for bill in bills if bill.fetched.archived is not None])
    by_mchid = {bill.load.mchid: bill for bill in bills}
    results = []
    for f in fetched:
        bill = by_mchid.get(f.mchid)
        if bill is None:
            results.append(IngestResult(f.mchid, f.bill_type, f.bill_date, "no_statement"))
            continue
        assert f.archived is not None
        archive.record(f.archived, parser_version=PARSER_VERSION, loaded_rows=bill.rows)
        loaded = load_result(
            bill.load,
            bill.header,
            bill.summary,
            row_count=bill.rows,
            replaced=replaced.get(f.mchid, 0),
            started=started,
            loader="batched",
        )
        results.append(IngestResult(f.mchid, f.bill_type, f.bill_date, "loaded", f.archived, loaded, f.downloaded,
                                    f.attempts))  # fmt: skip
    return results


def reload_doubled(
    con: duckdb.DuckDBPyConnection, archive: BillArchive, bills: Sequence[ArchivedBill], retries: int = 5
) -> list[str]:
    """On a DuckLake, load again each of ``bills`` whose day is now loaded twice; return their merchants.

    A DuckLake has no constraints, and writers conflict only when one deleted rows of a table another inserted
    into meanwhile: two loads of a day that no one loaded before (two units given the same merchant — a unit
    given up while it still ran, and its re-run) delete nothing, both insert, and both commit. The one
    committing last sees two loads here, and loads the day again from its archived file: that load deletes
    both copies and inserts one, and conflicts with any other writer meanwhile (then it is tried again), so
    the day ends loaded once. A DuckDB file refuses the second load itself (the primary key of
    ``raw.bill_loads``)."""
    if not bills or not is_lake(con):
        return []
    bill_type, bill_date = bills[0].bill_type, bills[0].bill_date
    marks = ", ".join("?" * len(bills))
    doubled = {
        mchid
        for (mchid,) in con.execute(
            f"select mchid from raw.bill_loads where bill_type = ? and bill_date = ? and mchid in ({marks})"  # noqa: S608
            " group by mchid having count(*) > 1",
            [bill_type, bill_date, *(bill.mchid for bill in bills)],
        ).fetchall()
    }
    for bill in bills:
        if bill.mchid not in doubled:
            continue
        _log.warning(
            "%s %s %s was loaded twice by concurrent loads: loading it again", bill.mchid, bill_type, bill_date
        )
        for attempt in range(retries + 1):
            try:
                load_bill(
                    con,
                    bill.path,
                    mchid=bill.mchid,
                    bill_date=bill_date,
                    bill_type=bill_type,
                    archive_sha1=bill.sha1,
                    source_label=archive.source_label(bill),
                    memory_limit=None,
                )
                break
            except duckdb.Error as exc:
                if not is_conflict(exc) or attempt == retries:
                    raise
    return sorted(doubled)


@contextmanager
def _storage_named(folder: Path) -> Iterator[None]:
    """A full disk under the warehouse or its spill files is raised as the storage fault it is."""
    try:
        yield
    except duckdb.Error as exc:
        fault = storage_fault_in(exc, folder, "loading bills into the warehouse")
        if fault is None:
            raise
        raise fault from exc


def _stage(
    archive: BillArchive, fetched: Sequence[Fetched], folder: Path
) -> tuple[list[_Bill], dict[Path, tuple[BillHeader, list[_Bill]]]]:
    """Read each bill once and stage its detail lines, keyed, in the file of its header layout."""
    bills: list[_Bill] = []
    staged: dict[Path, tuple[BillHeader, list[_Bill]]] = {}
    files: dict[tuple, tuple[Path, BinaryIO]] = {}
    try:
        for number, f in enumerate(fetched):
            if f.archived is None:
                continue
            bill, body = _read(archive, f, number)
            layout = (bill.header.kind, bill.header.titles)
            if layout not in files:
                path = folder / f"batch{len(files):03d}.csv"
                files[layout] = (path, path.open("wb"))
                staged[path] = (bill.header, [])
            path, out = files[layout]
            out.write(b"".join(b"%d,`%d,`%s\n" % (number, line, text) for line, text in enumerate(body, start=2)))
            staged[path][1].append(bill)
            bills.append(bill)
    finally:
        for _, out in files.values():
            out.close()
    return bills, staged


def _read(archive: BillArchive, fetched: Fetched, number: int) -> tuple[_Bill, list[bytes]]:
    """One bill's header, summary and detail lines (the lines as they are, line ends cut)."""
    bill = fetched.archived
    assert bill is not None
    data = bytearray()
    for chunk in bill_chunks(bill.path, is_gzip(bill.path)):
        data += chunk
        if len(data) > SMALL_BILL_BYTES:
            raise BatchRefused(f"{bill.path.name}: more than {SMALL_BILL_BYTES} bytes")
    if hashlib.sha1(data).hexdigest() != bill.sha1.lower():  # noqa: S324 - WeChat Pay's bill hash is SHA-1 (spec §5.3)
        raise BatchRefused(f"{bill.path.name}: its SHA-1 is not {bill.sha1}")
    load = BillLoad.of(
        bill.path,
        mchid=fetched.mchid,
        bill_date=fetched.bill_date,
        bill_type=fetched.bill_type,
        archive_sha1=bill.sha1,
        source_label=archive.source_label(bill),
    )
    end = data.find(b"\n")
    lines = bytes(data[end + 1 :]).split(b"\n") if end >= 0 else []
    while lines and lines[-1] in (b"", b"\r"):  # blank lines after the summary block
        lines.pop()
    try:
        header = read_header(bytes(data[: end + 1]), load)
        if len(lines) < 2:
            raise BatchRefused(f"{load.name}: no summary block")
        if header.crlf:  # every line ends with CR LF (the last one may have no line end)
            if not all(line.endswith(b"\r") for line in lines[:-1]):
                raise BatchRefused(f"{load.name}: line ends are not all CRLF")
            lines = [line.removesuffix(b"\r") for line in lines]
        body, summary_lines = lines[:-2], lines[-2:]
        if any(not line or line.endswith(b"\r") for line in body):
            raise BatchRefused(f"{load.name}: an empty line or a stray carriage return")
        texts = [line.decode("utf-8") for line in summary_lines]
        summary = parse_summary(texts[0], texts[1], kind=header.kind, file=load.name, line=len(body) + 2)
    except (BillFormatError, UnicodeDecodeError) as exc:
        raise BatchRefused(f"{load.name}: {exc}") from exc
    return _Bill(number, fetched, load, header, summary, len(body)), body


def _clear_loaded(
    con: duckdb.DuckDBPyConnection, bills: list[_Bill], bill_type: str, bill_date: date
) -> tuple[dict[str, int], dict[str, str]]:
    """Delete the previous loads of the day of the merchants that have one; return the rows each had and the
    SHA-1 of the days that were loaded by hand."""
    mchids = [bill.load.mchid for bill in bills]
    if not mchids:
        return {}, {}
    marks = ", ".join("?" * len(mchids))
    loaded = con.execute(
        f"select mchid, archive_sha1, lineage from raw.bill_loads where bill_type = ? and bill_date = ?"  # noqa: S608
        f" and mchid in ({marks})",
        [bill_type, bill_date, *mchids],
    ).fetchall()
    manual = {mchid: sha1 for mchid, sha1, lineage in loaded if lineage == "manual"}
    again = sorted({mchid for mchid, _, _ in loaded})
    if not again:
        return {}, manual
    marks = ", ".join("?" * len(again))
    where = f"bill_type = ? and bill_date = ? and bill_mchid in ({marks})"
    params = [bill_type, bill_date, *again]
    table, summaries = bills[0].load.rows_table, bills[0].load.summary_table
    counted = f"select bill_mchid, count(*) from {table} where {where} group by all"  # noqa: S608
    replaced = dict(con.execute(counted, params).fetchall())
    con.execute(f"delete from {table} where {where}", params)  # noqa: S608
    con.execute(f"delete from {summaries} where {where}", params)  # noqa: S608
    con.execute(f"delete from raw.bill_loads where bill_type = ? and bill_date = ? and mchid in ({marks})", params)  # noqa: S608
    return replaced, manual


def _insert_rows(con: duckdb.DuckDBPyConnection, path: Path, header: BillHeader, staged: list[_Bill]) -> None:
    """The staged lines of one layout into the rows table, each row with its bill's lineage; one statement."""
    bills = ", ".join("(?, ?, ?, ?, ?)" for _ in staged)
    parts = (
        f"select b.bill_mchid, b.bill_type, b.bill_date, b.archive_sha1, r.ln as line_no, r.* exclude (bk, ln)"  # noqa: S608
        f" from {read_csv_sql(path, header, compression='none', keyed=True)} r"
        f" join (values {bills}) b(bk, bill_mchid, bill_type, bill_date, archive_sha1) using (bk)"
    )
    table = "raw.trade_bill_rows" if header.kind.is_trade else "raw.fund_flow_rows"
    sql = streamed_insert(header, table, "bill_mchid, bill_type, bill_date, archive_sha1").replace("{parts}", parts)
    params = []
    for bill in staged:
        params += [bill.number, *bill.load.lineage]
    try:
        con.execute(sql, params)
    except duckdb.Error as exc:
        if storage_fault_in(exc, path, "loading bills into the warehouse") is not None:
            raise
        raise BatchRefused(f"rows of {len(staged)} bills: {exc}") from exc


def _check_summaries(con: duckdb.DuckDBPyConnection, bills: list[_Bill], bill_type: str, bill_date: date) -> None:
    """Every bill's summary against COUNT/SUM of its rows: one query per summary layout."""
    layouts: dict[tuple, list[_Bill]] = {}
    for bill in bills:
        layouts.setdefault((bill.load.rows_table, bill.summary.columns), []).append(bill)
    for (table, specs), group in layouts.items():
        marks = ", ".join("?" * len(group))
        found = {
            mchid: values
            for mchid, *values in con.execute(
                f"select bill_mchid, {', '.join(aggregate(s) for s in specs)} from {table}"  # noqa: S608
                f" where bill_type = ? and bill_date = ? and bill_mchid in ({marks}) group by bill_mchid",
                [bill_type, bill_date, *(bill.load.mchid for bill in group)],
            ).fetchall()
        }
        for bill in group:
            got = found.get(bill.load.mchid, [0] * len(specs))
            if any(bill.summary.values[s.name] != int(v) for s, v in zip(specs, got, strict=True)):
                raise BatchRefused(f"{bill.load.name}: the summary disagrees with the detail rows")


def _insert_summaries(con: duckdb.DuckDBPyConnection, bills: list[_Bill]) -> None:
    """The summary line of every bill: one INSERT per summary layout."""
    layouts: dict[tuple, list[_Bill]] = {}
    for bill in bills:
        layouts.setdefault((bill.load.summary_table, tuple(bill.summary.values)), []).append(bill)
    for (table, names), group in layouts.items():
        marks = "(" + ", ".join("?" * (6 + len(names))) + ")"
        params = []
        for bill in group:
            extra = json.dumps(bill.summary.extra, ensure_ascii=False) if bill.summary.extra else None
            params += [*bill.load.lineage, bill.rows + 2, *bill.summary.values.values(), extra]
        con.execute(
            f"insert into {table} (bill_mchid, bill_type, bill_date, archive_sha1, line_no, {', '.join(names)},"  # noqa: S608
            f" extra_columns) values {', '.join([marks] * len(group))}",
            params,
        )


def _insert_loads(con: duckdb.DuckDBPyConnection, bills: list[_Bill]) -> None:
    """One ``raw.bill_loads`` row per bill, as :func:`flows.bills.lineage.record_load` writes it."""
    if not bills:
        return
    marks = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'api')"
    params = []
    for bill in bills:
        header, load = bill.header, bill.load
        params += [*load.lineage, load.source_label, PARSER_VERSION, bill.rows, list(header.titles),
                   list(header.extra_columns), list(header.absent_columns), list(bill.summary.extra)]  # fmt: skip
    con.execute(
        "insert into raw.bill_loads (mchid, bill_type, bill_date, archive_sha1, source_label, parser_version,"  # noqa: S608
        " row_count, header_titles, extra_columns, absent_columns, extra_summary_columns, lineage)"
        f" values {', '.join([marks] * len(bills))}",
        params,
    )
