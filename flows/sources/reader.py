"""Reading a source for a window of time into the canonical Arrow shape (see :mod:`flows.sources`)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

import connectorx as cx
import duckdb
import pyarrow as pa

from flows.sources.canonical import LocalSourceError, canonicalize, is_text
from flows.sources.source import DATABASE_KINDS, WINDOW_PLACEHOLDER, LocalOrdersSource, LocalRefundsSource, LocalSource

_SAFE_LITERAL = re.compile(r"^[0-9: .+-]+$")


def bill_day_window(bill_date: dt.date, days: int = 1, tz: str = "Asia/Shanghai") -> tuple[dt.datetime, dt.datetime]:
    """The half-open window [bill_date 00:00, bill_date + days 00:00) in ``tz`` (WeChat bills are Beijing days)."""
    zone = ZoneInfo(tz)
    start = dt.datetime.combine(bill_date, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(bill_date + dt.timedelta(days=days), dt.time(), tzinfo=zone)
    return start, end


def read_local_orders(source: LocalOrdersSource, start: dt.datetime, end: dt.datetime) -> pa.Table:
    """Sub orders created or paid in [start, end) (aware datetimes), as :data:`LOCAL_ORDER_SCHEMA`.

    Raises :class:`LocalSourceError` for anything that does not fit the canonical shape; driver errors
    (connection, SQL) propagate as raised by connectorx / DuckDB, with a note naming the source.
    """
    if not isinstance(source, LocalOrdersSource):
        raise TypeError(f"read_local_orders needs a LocalOrdersSource, got {type(source).__name__}")
    return _read(source, start, end)


def read_local_refunds(source: LocalRefundsSource, start: dt.datetime, end: dt.datetime) -> pa.Table:
    """Refunds created or succeeded in [start, end) (aware datetimes), as :data:`LOCAL_REFUND_SCHEMA`."""
    if not isinstance(source, LocalRefundsSource):
        raise TypeError(f"read_local_refunds needs a LocalRefundsSource, got {type(source).__name__}")
    return _read(source, start, end)


# -- fetching: one SELECT per source, window pushed down -----------------------------------------------------------


def _read(source: LocalSource, start: dt.datetime, end: dt.datetime) -> pa.Table:
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, dt.datetime) or value.utcoffset() is None:
            raise LocalSourceError(f"window {name} must be a timezone-aware datetime, got {value!r}")
    if not start < end:
        raise LocalSourceError(f"empty window: start {start.isoformat()} is not before end {end.isoformat()}")
    window = _Window(start, end, ZoneInfo(source.naive_timezone))
    if source.kind in DATABASE_KINDS:
        raw, renamed = _fetch_database(source, window)
    else:
        raw, renamed = _fetch_files(source, window)
    return canonicalize(raw, source, renamed)


class _Window:
    """The half-open window [start, end): as instants (``start``/``end``) and as naive local times (``*_local``)."""

    def __init__(self, start: dt.datetime, end: dt.datetime, zone: ZoneInfo) -> None:
        self.start, self.end, self.zone = start, end, zone

    def params(self) -> dict[str, dt.datetime]:
        """DuckDB bind parameters: aware datetimes bind as TIMESTAMPTZ, naive ones as TIMESTAMP."""
        bounds = {"start": self.start, "end": self.end}
        local = {f"{n}_local": v.astimezone(self.zone).replace(tzinfo=None) for n, v in bounds.items()}
        return {**bounds, **local}

    def literal(self, name: str, dialect: str) -> str:
        """A typed SQL literal for connectorx, which has no bind parameters.

        PostgreSQL instants are TIMESTAMPTZ literals in UTC; MySQL has no zoned type, so its instants are, like
        every ``*_local`` value, TIMESTAMP literals of the local time in ``naive_timezone``.
        """
        value = self.start if name.startswith("start") else self.end
        if dialect == "postgresql" and not name.endswith("_local"):
            rendered, sql_type = value.astimezone(dt.UTC).isoformat(sep=" ", timespec="microseconds"), "TIMESTAMPTZ"
        else:
            local = value.astimezone(self.zone).replace(tzinfo=None)
            rendered, sql_type = local.isoformat(sep=" ", timespec="microseconds"), "TIMESTAMP"
        if not _SAFE_LITERAL.fullmatch(rendered):  # only digits and separators ever reach the SQL text
            raise LocalSourceError(f"refusing to render window value {rendered!r}")
        return f"{sql_type} '{rendered}'"


def _quote(name: str, dialect: str) -> str:
    if "\0" in name:
        raise LocalSourceError(f"identifier {name!r} contains a NUL byte")
    q = "`" if dialect == "mysql" else '"'
    return q + name.replace(q, q + q) + q


def _selected(source: LocalSource, available: list[str], dialect: str) -> list[str]:
    """SELECT list aliasing each mapped source column to its canonical name; checks the columns exist."""
    items = []
    for canonical in source.schema_.names:
        column = source.column(canonical)
        if column is None:
            continue
        if column not in available:
            raise LocalSourceError(
                f"column {column!r} (for {canonical}) not found in {source.label}; it has columns {available}"
            )
        items.append(f"{_quote(column, dialect)} AS {_quote(canonical, dialect)}")
    return items


def _window_predicate(
    source: LocalSource, types: Mapping[str, pa.DataType], render: Any, dialect: str, text_cast: bool
) -> str:
    """``c IS NULL OR (c >= start AND c < end) OR (p >= start AND p < end)`` with literals matching each type."""
    created, other = source.window_columns
    terms = []
    for canonical in (created, other):
        column = source.column(canonical)
        if column is None:
            continue
        expr, kind = _quote(column, dialect), types[column]
        if canonical == created:
            terms.append(f"{expr} IS NULL")
        if pa.types.is_null(kind):  # an all-null column in a file: no value can be in the window
            continue
        if pa.types.is_timestamp(kind):
            suffix = "" if kind.tz is not None else "_local"
        elif is_text(kind):
            if not text_cast:
                raise LocalSourceError(
                    f"column {column!r} ({canonical}) of {source.label} is text, not a timestamp; "
                    "use a query that casts it"
                )
            terms.append(f"({expr} IS NOT NULL AND TRY_CAST({expr} AS TIMESTAMPTZ) IS NULL)")  # read to fail loudly
            expr, suffix = f"TRY_CAST({expr} AS TIMESTAMPTZ)", ""
        else:
            raise LocalSourceError(f"column {column!r} ({canonical}) of {source.label} is {kind}, not a timestamp")
        terms.append(f"({expr} >= {render('start' + suffix)} AND {expr} < {render('end' + suffix)})")
    return " OR ".join(terms)


def _fetch_database(source: LocalSource, window: _Window) -> tuple[pa.Table, bool]:
    url = source.url.get_secret_value() if source.url else ""
    dialect = source.kind
    if dialect == "mysql" and url.startswith("mariadb://"):
        url = "mysql://" + url.removeprefix("mariadb://")

    def render(name: str) -> str:
        return window.literal(name, dialect)

    if source.query is not None:
        sql = WINDOW_PLACEHOLDER.sub(lambda m: render(m.group(1)), source.query)
        return _connectorx(url, sql, source), False
    table = ".".join(_quote(part, dialect) for part in source.table.split("."))  # type: ignore[union-attr]
    probe = _connectorx(url, f"SELECT * FROM {table} WHERE 1 = 0", source)  # noqa: S608  quoted identifier
    select = ", ".join(_selected(source, probe.column_names, dialect))
    types = dict(zip(probe.column_names, probe.schema.types, strict=True))
    where = _window_predicate(source, types, render, dialect, text_cast=False)
    sql = f"SELECT {select} FROM {table} WHERE {where}"  # noqa: S608  quoted identifiers, checked literals
    return _connectorx(url, sql, source), True


def _connectorx(url: str, sql: str, source: LocalSource) -> pa.Table:
    try:
        return cx.read_sql(url, sql, return_type="arrow")
    except RuntimeError as exc:  # connection and SQL errors: keep the driver's message, add which source
        exc.add_note(f"while reading {source.label}")
        raise


def _parquet_null_columns(con: duckdb.DuckDBPyConnection, paths: str) -> set[str]:
    """Columns whose Parquet logical type is NULL in every file that has them (all-null columns written untyped)."""
    sql = f"select name from parquet_schema({paths}) group by name having bool_and(logical_type = 'NullType()')"  # noqa: S608
    return {name for (name,) in con.execute(sql).fetchall()}


def _fetch_files(source: LocalSource, window: _Window) -> tuple[pa.Table, bool]:
    paths = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in source.paths) + "]"
    if source.kind == "parquet":
        scan = f"read_parquet({paths}, union_by_name = true)"
    else:
        delim = "'" + source.csv_delimiter.replace("'", "''") + "'"
        scan = f"read_csv({paths}, all_varchar = true, header = true, delim = {delim}, union_by_name = true)"
    con = duckdb.connect()
    try:
        con.execute(f"SET TimeZone = '{source.naive_timezone}'")  # naive text -> TIMESTAMPTZ in this zone
        con.execute(f"CREATE TEMP VIEW source AS SELECT * FROM {scan}")  # noqa: S608  quoted paths
        params = window.params()
        if source.query is not None:
            used = set(WINDOW_PLACEHOLDER.findall(source.query))
            sql = WINDOW_PLACEHOLDER.sub(lambda m: "$" + m.group(1), source.query)
            return con.sql(sql, params={k: v for k, v in params.items() if k in used}).to_arrow_table(), False
        probe = con.sql("SELECT * FROM source LIMIT 0").to_arrow_table()
        select = ", ".join(_selected(source, probe.column_names, "duckdb"))
        types = dict(zip(probe.column_names, probe.schema.types, strict=True))
        nulls = _parquet_null_columns(con, paths) if source.kind == "parquet" else set()
        types |= dict.fromkeys(nulls & types.keys(), pa.null())  # DuckDB 1.5 reads a Parquet null column as INTEGER
        used = set()

        def render(name: str) -> str:
            used.add(name)
            return "$" + name

        where = _window_predicate(source, types, render, "duckdb", text_cast=True)
        sql = f"SELECT {select} FROM source WHERE {where}"  # noqa: S608  quoted identifiers, bind parameters
        table = con.sql(sql, params={k: v for k, v in params.items() if k in used}).to_arrow_table()
        for canonical in source.schema_.names:  # keep such columns null-typed, as DuckDB 2.0 returns them
            if source.column(canonical) in nulls and not pa.types.is_null(table.schema.field(canonical).type):
                index = table.schema.get_field_index(canonical)
                table = table.set_column(index, canonical, pa.nulls(table.num_rows, pa.null()))
        return table, True
    except duckdb.IOException as exc:  # missing or unreadable files
        raise LocalSourceError(f"cannot read {source.label}: {exc}") from exc
    except duckdb.Error as exc:  # e.g. an error in the operator's query: keep DuckDB's message, add which source
        exc.add_note(f"while reading {source.label}")
        raise
    finally:
        con.close()
