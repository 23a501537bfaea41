"""The DuckDB warehouse: connection, migrations, typed bill loads, SQL models and data checks.

Tables (created by ``sql/migrations``; units: ``*_fen`` BIGINT fen, ``fee_millifen`` BIGINT
milli-fen, times TIMESTAMPTZ converted from Beijing time)::

    meta.schema_migrations   version, name, checksum, applied_at
    raw.bill_loads           one row per loaded (mchid, bill_type, bill_date): archive_sha1, source_label,
                             parser_version, row_count, header_titles, extra_columns, absent_columns,
                             extra_summary_columns, loaded_at
    raw.trade_bill_rows      every trade bill kind (trade_all / trade_success / trade_refund) in one table:
                             load key (bill_mchid, bill_type, bill_date), lineage (archive_sha1, line_no), then
                             the 29 current + 3 old-format columns of wxpay.billfile.TRADE_COLUMNS
                             (refund columns NULL where a kind lacks them), fee_rate text + fee_rate_pct
                             DECIMAL(7,4), extra_columns JSON for unknown titles
    raw.trade_bill_summaries the summary line of each trade load: row_count and each printed total
    raw.fund_flow_rows       fund-flow bill rows (bill_type fundflow_basic / _operation / _fees), same key
                             and lineage
    raw.fund_flow_summaries  the fund-flow summary line: row_count, income/expense counts and amounts

``bill_mchid`` is the merchant whose bill it is (the load key); ``mchid`` is the 商户号 column.

:func:`load_bill` follows notes/performance.md §5: DuckDB's ``read_csv`` reads the ``.gz``
itself with the two-byte delimiter ``,``` (which also strips the backticks), every column
VARCHAR by the header read from the file's first line, each value checked against the exact
pattern of :mod:`wxpay.billfile` (``error()`` names line and field) and cast to integers; the
two summary lines come back through ``store_rejects``; SHA-1 of the decompressed bytes is
computed by ISA-L + hashlib in a parallel thread. Everything of one (mchid, bill_type,
bill_date) is replaced in one transaction that commits only after header, rows, summary and
SHA-1 all pass.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
from isal import igzip, isal_zlib

from wxpay.billfile import (
    FEE_PATTERN,
    RATE_PATTERN,
    TIME_PATTERN,
    YUAN_PATTERN,
    BillHeader,
    BillKind,
    BillSummary,
    Column,
    SummaryColumn,
    bill_kind_for_type,
    bill_type_label,
    parse_header,
    parse_summary,
)
from wxpay.errors import BillFormatError, BillHashMismatchError, BillSummaryMismatchError, BillTruncatedError

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "PARSER_VERSION",
    "SQL_DIR",
    "LoadResult",
    "connect",
    "load_bill",
    "migrate",
    "run_checks",
    "run_models",
]

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
PARSER_VERSION = "duckdb-csv/1"
DEFAULT_MEMORY_LIMIT = "4GB"

_TABLES = {
    True: ("raw.trade_bill_rows", "raw.trade_bill_summaries"),
    False: ("raw.fund_flow_rows", "raw.fund_flow_summaries"),
}
_NEWLINES = {True: "\\r\\n", False: "\\n"}  # read_csv spells them escaped
_KEY = "bill_mchid = ? and bill_type = ? and bill_date = ?"
_ERROR_TAG = "WXBILL"
_ERROR = re.compile(_ERROR_TAG + r"\|(\d+)\|([^|]*)\|(.*)", re.S)


def connect(
    path: str | Path,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    temp_directory: str | Path | None = None,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file with ``preserve_insertion_order=false`` (1.1–1.2x faster loads).

    ``memory_limit`` bounds DuckDB's buffer pool (default :data:`DEFAULT_MEMORY_LIMIT`, 4GB:
    a 5M-row load peaks near 1.1 GB and a 20M×20M reconciliation join fits in 2GB; beyond the
    limit DuckDB spills); ``temp_directory`` is where it spills (DuckDB's default:
    ``<path>.tmp``). The session time zone is left alone: the SQL here never depends on it.
    """
    config: dict[str, Any] = {"preserve_insertion_order": False, "memory_limit": memory_limit or DEFAULT_MEMORY_LIMIT}
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    if threads:
        config["threads"] = threads
    return duckdb.connect(str(path), read_only=read_only, config=config)


# --- migrations -----------------------------------------------------------------------------

_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


def migrate(con: duckdb.DuckDBPyConnection, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply ``sql/migrations/NNN_name.sql`` not yet recorded, in order, each in its own transaction.

    Idempotent. Returns the file names applied now. A recorded migration whose file changed
    since is refused (migrations are append-only).
    """
    con.execute("create schema if not exists meta")
    con.execute(
        "create table if not exists meta.schema_migrations ("
        " version integer primary key, name varchar not null, checksum varchar not null,"
        " applied_at timestamptz not null default current_timestamp)"
    )
    done = {
        v: (n, c) for v, n, c in con.execute("select version, name, checksum from meta.schema_migrations").fetchall()
    }
    applied = []
    for file in sorted((sql_dir / "migrations").glob("*.sql")):
        match = _MIGRATION_NAME.fullmatch(file.name)
        if not match:
            raise ValueError(f"migration file {file.name!r} is not named NNN_lower_snake.sql")
        version, text = int(match[1]), file.read_text(encoding="utf-8")
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if version in done:
            if done[version] != (file.name, checksum):
                raise ValueError(f"migration {file.name} changed after it was applied as {done[version][0]}")
            continue
        with _transaction(con):
            con.execute(text)
            con.execute(
                "insert into meta.schema_migrations (version, name, checksum) values (?, ?, ?)",
                [version, file.name, checksum],
            )
        applied.append(file.name)
    return applied


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Commit if the block completes, roll back on any exception (including KeyboardInterrupt)."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


# --- models and checks ----------------------------------------------------------------------


def _sql_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.sql"))


def _query_text(file: Path) -> str:
    return file.read_text(encoding="utf-8").strip().rstrip(";").strip()


def run_models(con: duckdb.DuckDBPyConnection, layer: str, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """``create or replace view <layer>.<stem> as <file>`` for each ``sql/<layer>/*.sql``, sorted."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", layer):
        raise ValueError(f"bad layer name {layer!r}")
    con.execute(f"create schema if not exists {layer}")
    names = []
    for file in _sql_files(sql_dir / layer):
        con.execute(f"create or replace view {layer}.{file.stem} as\n{_query_text(file)}")
        names.append(f"{layer}.{file.stem}")
    return names


def run_checks(con: duckdb.DuckDBPyConnection, *, sql_dir: Path = SQL_DIR) -> dict[str, list[dict[str, Any]]]:
    """Run every ``sql/checks/*.sql``; each returns the bad rows (none when healthy). Name -> rows."""
    results = {}
    for file in _sql_files(sql_dir / "checks"):
        cursor = con.execute(_query_text(file))
        names = [d[0] for d in cursor.description]
        results[file.stem] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return results


# --- loading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """What :func:`load_bill` committed. ``summary`` holds the typed summary values by name."""

    mchid: str
    bill_type: str
    bill_date: date
    kind: BillKind
    archive_sha1: str
    source_label: str
    row_count: int
    replaced_rows: int
    """Rows of the same (mchid, bill_type, bill_date) that this load replaced."""
    summary: Mapping[str, int]
    extra_columns: tuple[str, ...]
    """Detail titles we do not know: kept per row in ``extra_columns`` (JSON)."""
    absent_columns: tuple[str, ...]
    extra_summary_columns: tuple[str, ...]
    seconds: float


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fail(title: str, value: str) -> str:
    return f"error(printf('{_ERROR_TAG}|%d|%s|%s', line_no, {_quote(title)}, coalesce({value}, '')))"


def _typed(col: Column, v: str) -> str:
    """SQL turning the VARCHAR ``v`` into ``col``'s warehouse value, or error() naming line and field."""
    if col.kind == "text":
        return v
    fail = _fail(col.title, v)
    pattern = {"yuan": YUAN_PATTERN, "fee": FEE_PATTERN, "time": TIME_PATTERN, "rate": RATE_PATTERN}[col.kind]
    ok = f"regexp_full_match({v}, {_quote(pattern)})"
    if col.kind in ("yuan", "fee"):  # exact: drop the point, read an integer (never DECIMAL rounding, never float)
        value = f"coalesce(try_cast(replace({v}, '.', '') as bigint), {fail})"  # beyond BIGINT: named too
    elif col.kind == "rate":
        value = f"cast(rtrim({v}, '%') as decimal(7, 4))"
    else:  # Beijing wall time; China has had no DST since 1991, so +08:00 is exact
        value = f"coalesce(try_strptime({v} || ' +0800', '%Y-%m-%d %H:%M:%S %z'), {fail})"
    null_ok = f"when {v} is null then null " if col.nullable else ""
    return f"case {null_ok}when {ok} then {value} else {fail} end"


def _chunks(path: Path, gz: bool) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` in ~1 MiB pieces (ISA-L; concatenated gzip members too)."""
    with path.open("rb") as f:
        if not gz:
            while chunk := f.read(1 << 20):
                yield chunk
            return
        inflater = isal_zlib.decompressobj(31)
        while chunk := f.read(1 << 20):
            while chunk:
                yield inflater.decompress(chunk)
                chunk = b""
                if inflater.eof and inflater.unused_data:
                    chunk, inflater = inflater.unused_data, isal_zlib.decompressobj(31)
        if not inflater.eof:
            raise BillTruncatedError(f"{path.name}: the gzip stream ends before its end marker")


@dataclass(frozen=True)
class _Pass:
    sha1: str
    last_lines: list[bytes]
    """The last two non-empty lines, without line endings."""
    lines: int
    """Lines up to the last non-empty one (trailing blank lines are not counted)."""


def _verify_pass(path: Path, gz: bool) -> _Pass:
    """One streaming pass: SHA-1 of the decompressed bytes, the line count and the last two lines.

    hashlib, ISA-L and ``bytes.count`` release the GIL or run at memory speed, so this runs
    beside DuckDB's load at little cost.
    """
    digest = hashlib.sha1()  # noqa: S324 - WeChat Pay's bill hash is SHA-1 (spec §5.3)
    tail, newlines = b"", 0
    for chunk in _chunks(path, gz):
        digest.update(chunk)
        newlines += chunk.count(b"\n")
        tail = (tail + chunk)[-(1 << 16) :] if len(chunk) < (1 << 16) else chunk[-(1 << 16) :]
    content = tail.rstrip(b"\r\n")
    lines = newlines - tail[len(content) :].count(b"\n") + 1 if content else 0
    last = [line.rstrip(b"\r") for line in content.split(b"\n")]
    return _Pass(digest.hexdigest(), [line for line in last if line][-2:], lines)


_BLANK = re.compile(rb"\n\r?\n")


def _first_blank_line(path: Path, gz: bool) -> int | None:
    """The 1-based number of the first empty line (only on the error path)."""
    newlines, carry = 0, b""
    for chunk in _chunks(path, gz):
        buf = carry + chunk
        if found := _BLANK.search(buf):
            return newlines + buf.count(b"\n", 0, found.start()) + 2
        newlines += buf.count(b"\n", 0, max(len(buf) - 2, 0))
        carry = buf[max(len(buf) - 2, 0) :]
    return None


def _line_at(path: Path, gz: bool, offset: int) -> int:
    """The 1-based line holding byte ``offset`` of the decompressed file (only on the error path)."""
    seen = newlines = 0
    for chunk in _chunks(path, gz):
        if seen + len(chunk) >= offset:
            return newlines + chunk.count(b"\n", 0, offset - seen) + 1
        seen += len(chunk)
        newlines += chunk.count(b"\n")
    return newlines + 1


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def load_bill(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    mchid: str,
    bill_date: date | str,
    bill_type: str,
    archive_sha1: str,
    source_label: str = "",
    _after_insert: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> LoadResult:
    """Load one bill file (gzip or plain, told by its magic bytes) into the ``raw`` tables.

    ``bill_type``: ``trade_all | trade_success | trade_refund | fundflow_basic | fundflow_operation
    | fundflow_fees`` (the archive's names; ``ALL``, ``BASIC``... are accepted and stored under
    those names); the header must announce the matching layout. ``archive_sha1`` is the SHA-1
    of the decompressed bill (WeChat Pay's ``hash_value``, under which the archive keeps it);
    it is verified again here and kept on every row with the row's line number. All rows of (``mchid``, ``bill_type``,
    ``bill_date``) are replaced in one transaction: a reload never doubles, and any failure —
    a bad value (:class:`BillFormatError` naming file, line and field), a summary that
    disagrees with the rows (:class:`BillSummaryMismatchError`), a hash mismatch, or an
    exception from ``_after_insert`` (a test hook called after the insert) — leaves the
    previous load of that day as it was. ``load_bill`` owns its transaction: call it on a
    connection with no transaction open.
    """
    started = time.perf_counter()
    path = Path(path)
    name = path.name
    bill_date = _as_date(bill_date)
    bill_type = bill_type_label(bill_type)
    kind = bill_kind_for_type(bill_type)
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with igzip.open(path, "rb") if gz else path.open("rb") as f:
        first = f.readline(1 << 20)
    try:
        header = parse_header(first.decode("utf-8"), file=name, kind=kind)
    except UnicodeDecodeError as exc:
        raise BillFormatError(f"the header is not UTF-8 ({exc.reason})", file=name, line=1) from None
    rows_table, summary_table = _TABLES[kind.is_trade]
    key = [mchid, bill_type, bill_date]
    rejects = f"bill_rejects_{uuid.uuid4().hex[:12]}"

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bill-verify") as pool:
        verified = pool.submit(_verify_pass, path, gz)
        try:
            with _transaction(con):
                replaced = con.execute(f"delete from {rows_table} where {_KEY}", key).fetchone()[0]  # noqa: S608
                con.execute(f"delete from {summary_table} where {_KEY}", key)  # noqa: S608
                con.execute("delete from raw.bill_loads where mchid = ? and bill_type = ? and bill_date = ?", key)
                _insert_rows(con, path, header, rows_table, gz, rejects, [*key, archive_sha1])
                row_count = con.execute(f"select count(*) from {rows_table} where {_KEY}", key).fetchone()[0]  # noqa: S608
                summary = _read_summary(con, path, gz, rejects, header.kind, row_count, verified.result())
                _check_summary(con, rows_table, key, summary, name, row_count + 3)
                _insert_summary(con, summary_table, [*key, archive_sha1, row_count + 2], summary)
                con.execute(
                    "insert into raw.bill_loads (mchid, bill_type, bill_date, archive_sha1, source_label,"
                    " parser_version, row_count, header_titles, extra_columns, absent_columns, extra_summary_columns)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [*key, archive_sha1, source_label, PARSER_VERSION, row_count, list(header.titles),
                     list(header.extra_columns), list(header.absent_columns), list(summary.extra)],
                )  # fmt: skip
                if _after_insert is not None:
                    _after_insert(con)
                if verified.result().sha1 != archive_sha1.lower():
                    raise BillHashMismatchError(expected=archive_sha1, actual=verified.result().sha1, source=name)
        except BillFormatError as exc:
            # a cut gzip stream is the real cause of a file DuckDB cannot read
            if exc.line is None and isinstance(verified.exception(), BillTruncatedError):
                raise verified.exception() from exc
            raise
        finally:
            con.execute(f"drop table if exists temp.{rejects}")
            con.execute(f"drop table if exists temp.{rejects}_scan")
    return LoadResult(
        mchid=mchid,
        bill_type=bill_type,
        bill_date=bill_date,
        kind=header.kind,
        archive_sha1=archive_sha1,
        source_label=source_label,
        row_count=row_count,
        replaced_rows=replaced,
        summary=dict(summary.values),
        extra_columns=header.extra_columns,
        absent_columns=header.absent_columns,
        extra_summary_columns=tuple(summary.extra),
        seconds=round(time.perf_counter() - started, 3),
    )


_EXPECTED = {
    "yuan": "yuan with exactly 2 decimals",
    "fee": "yuan with exactly 5 decimals",
    "time": "a yyyy-MM-dd HH:mm:ss time",
    "rate": "a percentage like 0.60%",
}


def _insert_rows(con, path: Path, header: BillHeader, table: str, gz: bool, rejects: str, lineage: list) -> None:
    """One INSERT ... SELECT over read_csv: every value checked and typed inside DuckDB."""
    n = len(header.titles)
    spec = ", ".join(f"'c{i:03d}': 'VARCHAR'" for i in range(n))
    reader = (
        f"read_csv({_quote(str(path))}, columns = {{{spec}}}, delim = ',`', quote = '', escape = '',"
        f" header = false, skip = 1, auto_detect = false, new_line = {_quote(_NEWLINES[header.crlf])},"
        f" compression = {_quote('gzip' if gz else 'none')}, store_rejects = true,"
        f" rejects_table = {_quote(rejects)}, rejects_scan = {_quote(rejects + '_scan')})"
    )
    # the first value keeps its backtick (the delimiter strips all the others)
    first = f"if(starts_with(c000, '`'), nullif(substr(c000, 2), ''), {_fail(header.titles[0], 'c000')}) as c000"
    targets, exprs, extras = [], [], []
    for i, (title, col) in enumerate(zip(header.titles, header.columns, strict=True)):
        v = f"c{i:03d}"
        if col is None:
            extras.append(f"{_quote(title)}, {v}")
            continue
        targets.append(col.name + ("_pct" if col.kind == "rate" else ""))
        exprs.append(_typed(col, v))
        if col.kind == "rate":
            targets.append(col.name)
            exprs.append(v)
    if extras:
        targets.append("extra_columns")
        exprs.append(f"json_object({', '.join(extras)})")
    rest = "".join(f", c{i:03d}" for i in range(1, n))
    # row_number() over () follows the reader's file order but runs on one thread; materializing the
    # numbered lines lets the casts, checks and compressed writes after it use every core
    # (measured at 1M rows: 3.8 s -> 2.5 s).
    sql = (
        f"insert into {table} (bill_mchid, bill_type, bill_date, archive_sha1, line_no, {', '.join(targets)})\n"  # noqa: S608
        f"with numbered as materialized (select row_number() over () + 1 as line_no, * from {reader})\n"
        f"select ?, ?, ?, ?, line_no, {', '.join(exprs)}\n"
        f"from (select line_no, {first}{rest} from numbered)"
    )
    try:
        con.execute(sql, lineage)
    except duckdb.Error as exc:
        match = _ERROR.search(str(exc))
        if not match:
            raise BillFormatError(f"DuckDB could not read the file: {exc}", file=path.name) from exc
        line, title, value = int(match[1]), match[2], match[3]
        col = dict(zip(header.titles, header.columns, strict=True)).get(title)
        what = _EXPECTED.get(col.kind if col else "", "a value starting with a backtick")
        shown = repr(value) if value else "an empty value"
        raise BillFormatError(f"{shown} is not {what}", file=path.name, line=line, field=title) from None


def _read_summary(con, path: Path, gz: bool, rejects: str, kind: BillKind, row_count: int, scan: _Pass) -> BillSummary:
    """The lines read_csv rejected must be exactly the summary header and values, the file's last two lines."""
    rejected = con.execute(
        f"select line_byte_position, any_value(csv_line), any_value(error_message) from temp.{rejects}"  # noqa: S608
        " group by line_byte_position order by line_byte_position"
    ).fetchall()
    texts = [line.strip("\r\n") for _, line, _ in rejected]
    last = [line.decode("utf-8", "replace") for line in scan.last_lines]
    if len(rejected) == 2 and texts == last:
        if scan.lines != row_count + 3:  # the reader skips empty lines: the line numbers would be off
            raise BillFormatError(
                f"an empty line inside the bill ({scan.lines} lines, but header + {row_count} rows + summary)",
                file=path.name,
                line=_first_blank_line(path, gz),
            )
        return parse_summary(texts[0], texts[1], kind=kind, file=path.name, line=row_count + 2)
    stray = [r for r, text in zip(rejected, texts, strict=True) if text not in last] or rejected[:1]
    if stray:
        offset, _, message = stray[0]
        raise BillFormatError(
            f"a line that does not fit the header: {message}", file=path.name, line=_line_at(path, gz, offset)
        )
    raise BillFormatError(
        "the summary block (header + values) is missing after the last row", file=path.name, line=row_count + 2
    )


def _aggregate(spec: SummaryColumn) -> str:
    where = f" filter (where direction = {_quote(spec.direction)})" if spec.direction else ""
    return f"count(*){where}" if spec.of is None else f"coalesce(sum({spec.of}){where}, 0)"


def _check_summary(con, table: str, key: list, summary: BillSummary, name: str, line: int) -> None:
    """Compare each summary value with COUNT/SUM over the rows just inserted."""
    specs = summary.columns
    sql = f"select {', '.join(_aggregate(s) for s in specs)} from {table} where {_KEY}"  # noqa: S608
    detail = con.execute(sql, key).fetchone()
    differences = {
        s.title: (summary.values[s.name], int(got))
        for s, got in zip(specs, detail, strict=True)
        if summary.values[s.name] != int(got)
    }
    if differences:
        shown = "; ".join(f"{t}: summary {a}, rows {b}" for t, (a, b) in differences.items())
        raise BillSummaryMismatchError(
            f"summary disagrees with the detail rows ({shown})", file=name, line=line, differences=differences
        )


def _insert_summary(con, table: str, head: list, summary: BillSummary) -> None:
    names = ", ".join(summary.values)
    marks = ", ".join("?" * (len(head) + len(summary.values) + 1))
    extra = json.dumps(summary.extra, ensure_ascii=False) if summary.extra else None
    con.execute(
        f"insert into {table} (bill_mchid, bill_type, bill_date, archive_sha1, line_no, {names}, extra_columns)"  # noqa: S608
        f" values ({marks})",
        [*head, *summary.values.values(), extra],
    )
