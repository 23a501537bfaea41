"""What both bill loaders write the same way: one load of (mchid, bill_type, bill_date) into the raw tables.

:class:`BillLoad` is the load's key and lineage; :func:`read_header` parses the bill's first line;
:func:`clear_day` deletes the previous load of the day; :func:`row_columns` spells the typed
columns of the row INSERT; :func:`record_load` checks the summary against the inserted rows, writes
the summary row and the ``raw.bill_loads`` row and checks the SHA-1, all inside the caller's
transaction; :func:`load_result` is the :class:`LoadResult` it committed. The loaders themselves are
:mod:`flows.bills.loader` (streamed) and :mod:`flows.bills.exactpath` (exact).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb

from flows.bills.summaries import aggregate
from flows.warehouse import quote_literal
from wxpay.billfile import (
    BillHeader,
    BillKind,
    BillSummary,
    Column,
    bill_kind_for_type,
    bill_type_label,
    parse_header,
)
from wxpay.errors import BillFormatError, BillHashMismatchError, BillSummaryMismatchError

PARSER_VERSION = "duckdb-csv/1"
"""Recorded with every load (``raw.bill_loads.parser_version``) and in the archive's sidecar."""

_TABLES = {
    True: ("raw.trade_bill_rows", "raw.trade_bill_summaries"),
    False: ("raw.fund_flow_rows", "raw.fund_flow_summaries"),
}
LOAD_KEY = "bill_mchid = ? and bill_type = ? and bill_date = ?"

NOT_STORED = frozenset({"openid"})
"""Bill columns never stored in the warehouse (payer identifiers: the archived bill is their evidence)."""

AfterInsert = Callable[[duckdb.DuckDBPyConnection], None]
"""The test hook both loaders call inside the transaction, after everything was inserted."""


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
    loader: str = "streamed"
    """``streamed`` (staged parts, one regex per row) or ``exact`` (the exact path loaded it)."""


@dataclass(frozen=True)
class BillLoad:
    """One load: its key (``mchid``, ``bill_type`` by the archive's name, ``bill_date``), lineage and file."""

    mchid: str
    bill_type: str
    bill_date: date
    kind: BillKind
    """The layout ``bill_type`` comes in (the header must announce it)."""
    archive_sha1: str
    source_label: str
    name: str
    """The file name errors name."""

    @classmethod
    def of(
        cls, path: Path, *, mchid: str, bill_date: date | str, bill_type: str, archive_sha1: str, source_label: str
    ) -> BillLoad:
        bill_type = bill_type_label(bill_type)
        return cls(
            mchid=mchid,
            bill_type=bill_type,
            bill_date=bill_date if isinstance(bill_date, date) else date.fromisoformat(bill_date),
            kind=bill_kind_for_type(bill_type),
            archive_sha1=archive_sha1,
            source_label=source_label,
            name=path.name,
        )

    @property
    def key(self) -> list:
        return [self.mchid, self.bill_type, self.bill_date]

    @property
    def lineage(self) -> list:
        """The values of ``bill_mchid, bill_type, bill_date, archive_sha1`` on every row."""
        return [*self.key, self.archive_sha1]

    @property
    def rows_table(self) -> str:
        return _TABLES[self.kind.is_trade][0]

    @property
    def summary_table(self) -> str:
        return _TABLES[self.kind.is_trade][1]


def read_header(first: bytes, load: BillLoad) -> BillHeader:
    """The bill's first line, parsed; bytes that are not UTF-8 are a :class:`BillFormatError` on line 1."""
    try:
        return parse_header(first.decode("utf-8"), file=load.name, kind=load.kind)
    except UnicodeDecodeError as exc:
        raise BillFormatError(f"the header is not UTF-8 ({exc.reason})", file=load.name, line=1) from None


def clear_day(con: duckdb.DuckDBPyConnection, load: BillLoad) -> int:
    """Delete the previous load of the day (rows, summary, ``raw.bill_loads``); return how many rows it had."""
    replaced = con.execute(f"delete from {load.rows_table} where {LOAD_KEY}", load.key).fetchone()[0]  # noqa: S608
    con.execute(f"delete from {load.summary_table} where {LOAD_KEY}", load.key)  # noqa: S608
    con.execute("delete from raw.bill_loads where mchid = ? and bill_type = ? and bill_date = ?", load.key)
    return replaced


def row_columns(header: BillHeader, value: Callable[[Column, str], str], first: str) -> tuple[list[str], list[str]]:
    """The target columns of the row INSERT and their SQL, from the VARCHAR columns ``c000``, ``c001``...

    ``value(col, v)`` types a known column (``first`` stands for ``c000``); a rate goes in as
    ``<name>_pct`` and as text; unknown titles go into ``extra_columns`` (JSON); :data:`NOT_STORED`
    columns go nowhere.
    """
    targets, exprs, extras = [], [], []
    for i, (title, col) in enumerate(zip(header.titles, header.columns, strict=True)):
        v = first if i == 0 else f"c{i:03d}"
        if col is not None and col.name in NOT_STORED:
            continue
        if col is None:
            extras.append(f"{quote_literal(title)}, {v}")
            continue
        targets.append(col.name + ("_pct" if col.kind == "rate" else ""))
        exprs.append(value(col, v))
        if col.kind == "rate":
            targets.append(col.name)
            exprs.append(v)
    if extras:
        targets.append("extra_columns")
        exprs.append(f"json_object({', '.join(extras)})")
    return targets, exprs


def record_load(
    con: duckdb.DuckDBPyConnection,
    load: BillLoad,
    header: BillHeader,
    summary: BillSummary,
    row_count: int,
    sha1: str,
    after_insert: AfterInsert | None,
) -> None:
    """Finish a load inside its transaction, after its rows were inserted.

    The summary is checked against COUNT/SUM of the rows and inserted, then the ``raw.bill_loads``
    row; ``after_insert`` runs; last, ``sha1`` (of the whole bill) must match ``archive_sha1``.
    """
    _check_summary(con, load.rows_table, load.key, summary, load.name, row_count + 3)
    _insert_summary(con, load.summary_table, [*load.lineage, row_count + 2], summary)
    con.execute(
        "insert into raw.bill_loads (mchid, bill_type, bill_date, archive_sha1, source_label,"
        " parser_version, row_count, header_titles, extra_columns, absent_columns, extra_summary_columns, lineage)"
        " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'api')",
        [*load.lineage, load.source_label, PARSER_VERSION, row_count, list(header.titles),
         list(header.extra_columns), list(header.absent_columns), list(summary.extra)],
    )  # fmt: skip
    if after_insert is not None:
        after_insert(con)
    if sha1 != load.archive_sha1.lower():
        raise BillHashMismatchError(expected=load.archive_sha1, actual=sha1, source=load.name)


def load_result(
    load: BillLoad,
    header: BillHeader,
    summary: BillSummary,
    *,
    row_count: int,
    replaced: int,
    started: float,
    loader: str,
) -> LoadResult:
    """The :class:`LoadResult` of a committed load; ``started`` is its ``time.perf_counter()``."""
    return LoadResult(
        mchid=load.mchid,
        bill_type=load.bill_type,
        bill_date=load.bill_date,
        kind=header.kind,
        archive_sha1=load.archive_sha1,
        source_label=load.source_label,
        row_count=row_count,
        replaced_rows=replaced,
        summary=dict(summary.values),
        extra_columns=header.extra_columns,
        absent_columns=header.absent_columns,
        extra_summary_columns=tuple(summary.extra),
        seconds=round(time.perf_counter() - started, 3),
        loader=loader,
    )


def _check_summary(con, table: str, key: list, summary: BillSummary, name: str, line: int) -> None:
    """Compare each summary value with COUNT/SUM over the rows just inserted."""
    specs = summary.columns
    sql = f"select {', '.join(aggregate(s) for s in specs)} from {table} where {LOAD_KEY}"  # noqa: S608
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
