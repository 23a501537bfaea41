"""Loading a bill into the ``raw`` tables of the warehouse while one pass reads it.

:func:`load_bill` and :func:`load_bill_stream` load a bill while one pass reads it (the download
itself, or ISA-L inflate + SHA-1 of an archived file): the decompressed text is cut into plain
CSV part files of one DuckDB row group each, and DuckDB's ``read_csv`` of each finished part —
the two-byte delimiter ``,``` (which also strips the backticks), every column VARCHAR by the
header read from the file's first line, lines numbered from the part's first line — feeds one
``INSERT … SELECT`` per batch of parts while the rest still arrives. Each row's typed values are
checked by one regular expression built from the exact patterns of :mod:`wxpay.billfile`, then
cast to integers without rounding. The summary block is cut off the end and compared with
COUNT/SUM of the rows. Everything of one (mchid, bill_type, bill_date) is replaced in one
transaction that commits only after header, rows, summary and SHA-1 all pass. A bill that is
not clean goes through the exact path instead (``read_csv`` of the whole file with
``store_rejects``, a regex per value and ``error()`` naming line and field), so every error
names file, line and field. Figures: ``bench/README.md``.

The part files are :mod:`flows.bills.parts`, the exact path :mod:`flows.bills.exactpath`, what both
paths write alike (the day replaced, the summary checked, ``raw.bill_loads``, the
:class:`LoadResult`) :mod:`flows.bills.lineage`.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from flows.bills.exactpath import ERROR_TAG, VALUE_PATTERNS, bill_chunks, is_gzip, load_exact, read_csv_sql
from flows.bills.lineage import (
    AfterInsert,
    BillLoad,
    LoadResult,
    clear_day,
    load_result,
    read_header,
    record_load,
    row_columns,
)
from flows.bills.parts import PART_LINES, Part, Staging
from flows.storage import storage_fault_in
from flows.warehouse import LOAD_MEMORY_LIMIT, lowered_memory_limit, quote_literal, transaction
from wxpay.billfile import BillHeader, Column, parse_summary
from wxpay.bills import BillProof
from wxpay.errors import BillFormatError, BillHashMismatchError

__all__ = ["PART_LINES", "LoadResult", "load_bill", "load_bill_stream"]


class _UseExactPath(Exception):
    """The streamed path met something other than a clean bill: the exact path names it."""


def load_bill(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    mchid: str,
    bill_date: date | str,
    bill_type: str,
    archive_sha1: str,
    source_label: str = "",
    proof: BillProof | None = None,
    staging_dir: str | Path | None = None,
    memory_limit: str | None = LOAD_MEMORY_LIMIT,
    _after_insert: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> LoadResult:
    """Load one bill file (gzip or plain, told by its magic bytes) into the ``raw`` tables.

    ``bill_type``: ``trade_all | trade_success | trade_refund | fundflow_basic | fundflow_operation
    | fundflow_fees`` (the archive's names; ``ALL``, ``BASIC``... are accepted and stored under
    those names); the header must announce the matching layout. ``archive_sha1`` is the SHA-1
    of the decompressed bill (WeChat Pay's ``hash_value``, under which the archive keeps it);
    it is verified again here — unless ``proof`` says the download that wrote this file already
    verified it — and kept on every row with the row's line number. All rows of (``mchid``,
    ``bill_type``, ``bill_date``) are replaced in one transaction: a reload never doubles, and
    any failure — a bad value (:class:`BillFormatError` naming file, line and field), a summary
    that disagrees with the rows (:class:`BillSummaryMismatchError`), a hash mismatch, or an
    exception from ``_after_insert`` (a test hook called after the insert) — leaves the
    previous load of that day as it was. ``load_bill`` owns its transaction: call it on a
    connection with no transaction open.

    One pass reads the file (ISA-L inflate, SHA-1) and stages the text in part files under
    ``staging_dir`` (default: the system temp directory) that DuckDB loads while the pass goes
    on; see :func:`load_bill_stream`.
    """
    path = Path(path)
    if proof is not None and proof.sha1.lower() != archive_sha1.lower():
        raise ValueError(f"the proof is for {proof.sha1}, not for {archive_sha1}")
    gz = is_gzip(path)

    def produce(feed: Callable[[bytes], None]) -> str:
        digest = None if proof else hashlib.sha1()  # noqa: S324 - WeChat Pay's bill hash is SHA-1 (spec §5.3)
        size = 0
        for chunk in bill_chunks(path, gz):
            if digest is not None:
                digest.update(chunk)
            size += len(chunk)
            feed(chunk)
        if proof is None:
            assert digest is not None
            return digest.hexdigest()
        if size != proof.size:
            raise BillHashMismatchError(
                expected=archive_sha1,
                actual=f"a file of {size} bytes (the verified one had {proof.size})",
                source=path.name,
            )
        return proof.sha1.lower()

    return load_bill_stream(
        con,
        produce,
        path=path,
        mchid=mchid,
        bill_date=bill_date,
        bill_type=bill_type,
        archive_sha1=archive_sha1,
        source_label=source_label,
        staging_dir=staging_dir,
        memory_limit=memory_limit,
        _after_insert=_after_insert,
    )


def load_bill_stream(
    con: duckdb.DuckDBPyConnection,
    produce: Callable[[Callable[[bytes], None]], str],
    *,
    path: str | Path,
    mchid: str,
    bill_date: date | str,
    bill_type: str,
    archive_sha1: str,
    source_label: str = "",
    staging_dir: str | Path | None = None,
    part_lines: int = PART_LINES,
    memory_limit: str | None = LOAD_MEMORY_LIMIT,
    _after_insert: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> LoadResult:
    """:func:`load_bill` for a bill that is still arriving: load it while ``produce`` reads it.

    ``produce(feed)`` runs in a thread of its own. It calls ``feed`` with the decompressed bill,
    in order, in pieces of any size, and returns the SHA-1 hex digest of all of it (a download
    returns the digest it verified, a file pass the one it computed), or raises — which rolls
    the load back and is raised here. When it returns, the file is complete at ``path``.

    The pieces are cut into plain CSV part files at line ends (:class:`Staging`); each batch
    of finished parts is inserted by one ``INSERT … SELECT`` over ``read_csv`` of each part,
    numbered from the part's first line, so DuckDB works while the bill streams in and, at the
    end, on both cores. Every typed value of a row is checked by one regular expression over
    the row (the exact patterns of :mod:`wxpay.billfile`), then cast without rounding. The
    transaction commits only after the digest matched ``archive_sha1`` and the summary block
    matched the rows. Anything but a clean bill (a bad value, a line that does not fit the
    header, an empty line, a missing summary block...) rolls back and, once ``produce`` has
    finished, runs the exact path over the file at ``path``, whose errors name file, line and
    field; a failure of ``produce`` itself (hash mismatch, truncated gzip, broken download)
    wins over any of those. A storage fault (the warehouse, its spill files or the staging
    directory cannot be written: no space, quota, ``ulimit -f``, permissions) is raised as the
    :class:`~flows.storage.StorageError` it is, naming the file, without trying the exact path.
    DuckDB's ``memory_limit`` is lowered to ``memory_limit`` meanwhile (see
    :data:`LOAD_MEMORY_LIMIT`; ``None`` leaves it alone).
    """
    path = Path(path)
    try:
        with lowered_memory_limit(con, memory_limit):
            load = BillLoad.of(
                path,
                mchid=mchid,
                bill_date=bill_date,
                bill_type=bill_type,
                archive_sha1=archive_sha1,
                source_label=source_label,
            )
            return _load_streamed(con, produce, path, load, staging_dir, part_lines, _after_insert)
    except duckdb.Error as exc:  # a full disk under the warehouse is named as such, never as the bill's fault
        fault = storage_fault_in(exc, path, "loading a bill into the warehouse")
        if fault is None:
            raise
        raise fault from exc
    except OSError as exc:  # staging names its own files: a write error without a name is the bill file's
        fault = storage_fault_in(exc, path.parent, f"writing {path.name}")
        if fault is None or fault is exc:
            raise
        raise fault from exc


def _load_streamed(
    con: duckdb.DuckDBPyConnection,
    produce: Callable[[Callable[[bytes], None]], str],
    path: Path,
    load: BillLoad,
    staging_dir: str | Path | None,
    part_lines: int,
    _after_insert: AfterInsert | None,
) -> LoadResult:
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="wxbill-", dir=staging_dir))
    staging = Staging(folder, part_lines)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["sha1"] = produce(staging.feed)
            staging.finish()
        except BaseException as exc:  # handed to the loader, raised there
            outcome["error"] = exc
            staging.fail(exc)

    def produced() -> str:
        """Wait for the producer; raise what it raised."""
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["sha1"]

    thread = threading.Thread(target=run, name="bill-stream", daemon=True)
    thread.start()
    try:
        try:
            header = read_header(staging.header(), load)
        except BillFormatError:
            staging.stop("drain")
            produced()  # a broken download is the real cause
            raise
        try:
            with transaction(con):
                replaced = clear_day(con, load)
                sql = streamed_insert(header, load.rows_table)
                row_count = 0
                while parts := staging.take():
                    row_count += _insert_parts(con, sql, parts, header, load.lineage)
                    for part in parts:
                        part.path.unlink()
                sha1 = produced()
                if row_count != staging.body_lines or staging.summary_lines is None:
                    raise _UseExactPath("rows and lines differ, or no summary block")
                try:
                    texts = [line.decode("utf-8") for line in staging.summary_lines]
                    summary = parse_summary(texts[0], texts[1], kind=header.kind, file=load.name, line=row_count + 2)
                except (UnicodeDecodeError, BillFormatError) as exc:
                    raise _UseExactPath(str(exc)) from exc
                record_load(con, load, header, summary, row_count, sha1, _after_insert)
        except _UseExactPath:
            staging.stop("drain")
            produced()
            return load_exact(con, path, load, _after_insert)
    except BaseException:
        staging.stop("cancel")
        thread.join()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return load_result(
        load, header, summary, row_count=row_count, replaced=replaced, started=started, loader="streamed"
    )


_SEPARATOR = r"\|"  # the values joined by "|" (no checked value can hold one)


def _fast_value(col: Column, v: str) -> str:
    """SQL for ``col``'s value from ``v``, whose text the row check already matched: no rounding can happen."""
    if col.kind == "yuan":  # exactly 2 decimals: DECIMAL(18,2) holds the text as is; beyond it the cast fails
        return f"cast(cast({v} as decimal(18, 2)) * 100 as bigint)"
    if col.kind == "fee":  # exactly 5 decimals, in milli-fen
        return f"cast(cast({v} as decimal(18, 5)) * 100000 as bigint)"
    if col.kind == "rate":
        return f"cast(left({v}, -1) as decimal(7, 4))"
    if col.kind == "time":  # Beijing wall time, +08:00 (no DST since 1991); 2025-02-30 fails the parse
        return f"make_timestamptz(epoch_us(strptime({v}, '%Y-%m-%d %H:%M:%S')) - 28800000000)"
    return v


def streamed_insert(header: BillHeader, table: str, lineage: str = "?, ?, ?, ?") -> str:
    """The INSERT of the streamed path, with ``{parts}`` where the numbered part readers go.

    ``ok`` is one regular expression over the row's typed values (and the first value's
    backtick): one call per row instead of one per value. A row that fails it, or a cast that
    fails, fails the statement; the exact path then finds and names the value. ``lineage`` is the
    SQL of ``bill_mchid, bill_type, bill_date, archive_sha1`` (parameters, or columns of the parts:
    :mod:`flows.bills.batch`).
    """
    checked, patterns = [], []
    for i, col in enumerate(header.columns):
        v = f"c{i:03d}"
        pattern = VALUE_PATTERNS.get(col.kind) if col is not None else None
        if i == 0:  # it keeps its backtick (the delimiter strips all the others)
            checked.append(v)
            patterns.append("`" + (f"(?:{pattern})" if pattern else ".*") + ("?" if pattern and col.nullable else ""))
        elif pattern:
            checked.append(v)
            patterns.append(f"(?:{pattern})" + ("?" if col.nullable else ""))
    targets, exprs = row_columns(header, _fast_value, "nullif(substr(c000, 2), '')")
    joined = ", '|', ".join(checked)
    ok = f"regexp_full_match(concat({joined}), {quote_literal(_SEPARATOR.join(patterns))})"
    return (
        f"insert into {table} (bill_mchid, bill_type, bill_date, archive_sha1, line_no, {', '.join(targets)})\n"  # noqa: S608
        f"select {lineage}, if(ok, line_no, error('{ERROR_TAG}: a value does not fit')), {', '.join(exprs)}\n"
        f"from (select *, {ok} as ok from ({{parts}}))"
    )


def _insert_parts(con, sql: str, parts: list[Part], header: BillHeader, lineage: list) -> int:
    """Insert the rows of ``parts`` (one statement; DuckDB reads the parts side by side); return the row count."""
    readers = " union all ".join(
        f"select row_number() over () + {part.first_line - 1} as line_no, *"  # noqa: S608
        f" from {read_csv_sql(part.path, header, compression='none')}"
        for part in parts
    )
    try:
        return con.execute(sql.replace("{parts}", readers), lineage).fetchone()[0]
    except duckdb.Error as exc:
        fault = storage_fault_in(exc, parts[0].path, "loading a bill into the warehouse")
        if fault is not None:  # not the bill's fault: the exact path would only fail the same way, slower
            raise fault from exc
        raise _UseExactPath(str(exc)) from exc
