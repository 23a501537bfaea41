"""Read the merchant's own combine-order records into Arrow, in one canonical shape, for a window of time.

Merchants' tables differ, so a source is configuration (:class:`LocalOrdersSource`, :class:`LocalRefundsSource`)
and every kind of source ends in the same Arrow schema, which the reconciliation relies on:
:data:`LOCAL_ORDER_SCHEMA` and :data:`LOCAL_REFUND_SCHEMA`, drawn (with how timestamps, keys, statuses and amounts
are converted into them) in :mod:`flows.canonical`, whose names this module re-exports.

Source kinds: ``postgresql`` and ``mysql`` (MySQL/MariaDB) URLs, read with connectorx ``return_type="arrow"``;
``parquet`` and ``csv`` files (paths or globs), read with DuckDB (CSV is read as text, so yuan never passes
through a float and keys keep their leading zeros; the header row names the columns).

A source is either a ``table`` (databases; for files, the files themselves) with ``columns`` mapping canonical
name -> source column (identity by default; ``None`` for an optional column the source does not have), or a
``query`` the operator writes (for files it reads the view ``source``). The window is pushed down:

* table mode generates ``... WHERE (created_at in window) OR (paid_at in window) OR created_at IS NULL`` (for
  refunds succeeded_at instead of paid_at); rows with a null created_at are read so they fail loudly.
* query mode: the query must contain the window placeholders ``{start}`` / ``{end}`` (instants: a TIMESTAMPTZ
  literal for PostgreSQL, a bind parameter for DuckDB; MySQL has no zoned type, so there they are local times in
  ``naive_timezone``) or ``{start_local}`` / ``{end_local}`` (a naive TIMESTAMP in ``naive_timezone``, for naive
  columns). Write them bare, unquoted: ``WHERE paid >= {start} AND paid < {end}``. The window is half-open.

Injection: the query and table/column names are trusted configuration; only the window values are substituted.
connectorx has no bind parameters, so those are rendered by this module from ``datetime`` objects and checked
against ``^[0-9: .+-]+$`` before use; DuckDB gets real bind parameters. Identifiers are quoted.

Know your types: MySQL TIMESTAMP columns arrive as local times of the server session's ``time_zone``, so set
``naive_timezone`` to it; PostgreSQL CHAR(n) values arrive blank-padded (``rtrim`` them in a query).

Every problem raises :class:`LocalSourceError` naming the column, the source and the first offending key; no row
is dropped silently. Not used: connectorx ``partition_on`` (it silently skips rows whose partition column is NULL).
connectorx reads PostgreSQL NUMERIC as decimal(38,10): digits past the 10th decimal are cut before we see them.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import connectorx as cx
import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from flows.canonical import (
    LOCAL_ORDER_SCHEMA,
    LOCAL_REFUND_SCHEMA,
    ORDER_STATUSES,
    REFUND_STATUSES,
    LocalSourceError,
    canonicalize,
    is_text,
)

__all__ = [
    "LOCAL_ORDER_SCHEMA",
    "LOCAL_REFUND_SCHEMA",
    "ORDER_STATUSES",
    "REFUND_STATUSES",
    "LocalOrdersSource",
    "LocalRefundsSource",
    "LocalSourceError",
    "bill_day_window",
    "read_local_orders",
    "read_local_refunds",
]

_URL_SCHEMES = {"postgresql": ("postgresql", "postgres"), "mysql": ("mysql", "mariadb")}
_PLACEHOLDER = re.compile(r"\{(start|end|start_local|end_local)\}")
_SAFE_LITERAL = re.compile(r"^[0-9: .+-]+$")


class _LocalSource(BaseModel):
    """Where one relation of local records lives and how its columns and values map to the canonical shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: ClassVar[pa.Schema]
    statuses: ClassVar[tuple[str, ...]]
    key: ClassVar[str]
    window_columns: ClassVar[tuple[str, str]]

    kind: Literal["postgresql", "mysql", "parquet", "csv"]
    url: SecretStr | None = None
    """connectorx URL for postgresql/mysql, e.g. ``postgresql://user:pw@host:5432/db``, ``mysql://...``."""
    paths: tuple[str, ...] = ()
    """Files (or globs) for parquet/csv; several files are unioned by column name."""
    table: str | None = None
    """Database table, optionally ``schema.table``; for file kinds leave it unset (the files are the table)."""
    query: str | None = None
    """A full SELECT with window placeholders (see the module docstring)."""
    columns: dict[str, str | None] = Field(default_factory=dict)
    """canonical name -> source column name; unmapped names are looked up as themselves."""
    status_map: dict[str, str] = Field(default_factory=dict)
    """source status value (as text) -> canonical status."""
    amount_unit: Literal["fen", "yuan"] = "fen"
    naive_timezone: str = "Asia/Shanghai"
    csv_delimiter: str = ","

    @model_validator(mode="after")
    def _check(self) -> _LocalSource:
        names = self.schema_.names
        if self.kind in _URL_SCHEMES:
            if self.url is None or self.paths:
                raise ValueError(f"a {self.kind} source needs url and no paths")
            scheme = urllib.parse.urlsplit(self.url.get_secret_value()).scheme
            if scheme not in _URL_SCHEMES[self.kind]:
                raise ValueError(f"a {self.kind} source needs a {'/'.join(_URL_SCHEMES[self.kind])}:// url")
            if (self.table is None) == (self.query is None):
                raise ValueError("give exactly one of table or query")
        else:
            if self.url is not None or not self.paths:
                raise ValueError(f"a {self.kind} source needs paths and no url")
            if self.table is not None:
                raise ValueError(f"a {self.kind} source reads its files as the table; use query for custom SQL")
        if self.query is not None:
            used = set(_PLACEHOLDER.findall(self.query))
            if not ({"start", "start_local"} & used and {"end", "end_local"} & used):
                raise ValueError("query must contain window placeholders {start}/{end} or {start_local}/{end_local}")
        for canonical, column in self.columns.items():
            if canonical not in names:
                raise ValueError(f"columns: {canonical!r} is not a canonical column; expected one of {names}")
            if column is None and not self.schema_.field(canonical).nullable:
                raise ValueError(f"columns: required column {canonical!r} cannot be mapped to None")
        unknown = sorted(set(self.status_map.values()) - set(self.statuses))
        if unknown:
            raise ValueError(f"status_map: {unknown} are not canonical statuses {self.statuses}")
        try:
            ZoneInfo(self.naive_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"naive_timezone: unknown time zone {self.naive_timezone!r}") from exc
        if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", self.naive_timezone):
            raise ValueError(f"naive_timezone: unsupported time zone name {self.naive_timezone!r}")
        return self

    def column(self, canonical: str) -> str | None:
        return self.columns.get(canonical, canonical)

    @property
    def label(self) -> str:
        """How error messages name this source (never with a password)."""
        what = f"table {self.table}" if self.table else "query" if self.query else "files"
        if self.url is None:
            return f"{self.kind} {what} {list(self.paths)}"
        parts = urllib.parse.urlsplit(self.url.get_secret_value())
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username + "@" if parts.username else ""
        return f"{self.kind} {what} at {parts.scheme}://{user}{netloc}{parts.path}"


class LocalOrdersSource(_LocalSource):
    """The merchant's sub orders of combine orders; read with :func:`read_local_orders`."""

    schema_: ClassVar[pa.Schema] = LOCAL_ORDER_SCHEMA
    statuses: ClassVar[tuple[str, ...]] = ORDER_STATUSES
    key: ClassVar[str] = "out_trade_no"
    window_columns: ClassVar[tuple[str, str]] = ("created_at", "paid_at")


class LocalRefundsSource(_LocalSource):
    """The merchant's refunds of sub orders; read with :func:`read_local_refunds`."""

    schema_: ClassVar[pa.Schema] = LOCAL_REFUND_SCHEMA
    statuses: ClassVar[tuple[str, ...]] = REFUND_STATUSES
    key: ClassVar[str] = "out_refund_no"
    window_columns: ClassVar[tuple[str, str]] = ("created_at", "succeeded_at")


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


def _read(source: _LocalSource, start: dt.datetime, end: dt.datetime) -> pa.Table:
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, dt.datetime) or value.utcoffset() is None:
            raise LocalSourceError(f"window {name} must be a timezone-aware datetime, got {value!r}")
    if not start < end:
        raise LocalSourceError(f"empty window: start {start.isoformat()} is not before end {end.isoformat()}")
    window = _Window(start, end, ZoneInfo(source.naive_timezone))
    if source.kind in _URL_SCHEMES:
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


def _selected(source: _LocalSource, available: list[str], dialect: str) -> list[str]:
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
    source: _LocalSource, types: Mapping[str, pa.DataType], render: Any, dialect: str, text_cast: bool
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


def _fetch_database(source: _LocalSource, window: _Window) -> tuple[pa.Table, bool]:
    url = source.url.get_secret_value() if source.url else ""
    dialect = source.kind
    if dialect == "mysql" and url.startswith("mariadb://"):
        url = "mysql://" + url.removeprefix("mariadb://")

    def render(name: str) -> str:
        return window.literal(name, dialect)

    if source.query is not None:
        sql = _PLACEHOLDER.sub(lambda m: render(m.group(1)), source.query)
        return _connectorx(url, sql, source), False
    table = ".".join(_quote(part, dialect) for part in source.table.split("."))  # type: ignore[union-attr]
    probe = _connectorx(url, f"SELECT * FROM {table} WHERE 1 = 0", source)  # noqa: S608  quoted identifier
    select = ", ".join(_selected(source, probe.column_names, dialect))
    types = dict(zip(probe.column_names, probe.schema.types, strict=True))
    where = _window_predicate(source, types, render, dialect, text_cast=False)
    sql = f"SELECT {select} FROM {table} WHERE {where}"  # noqa: S608  quoted identifiers, checked literals
    return _connectorx(url, sql, source), True


def _connectorx(url: str, sql: str, source: _LocalSource) -> pa.Table:
    try:
        return cx.read_sql(url, sql, return_type="arrow")
    except RuntimeError as exc:  # connection and SQL errors: keep the driver's message, add which source
        exc.add_note(f"while reading {source.label}")
        raise


def _fetch_files(source: _LocalSource, window: _Window) -> tuple[pa.Table, bool]:
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
            used = set(_PLACEHOLDER.findall(source.query))
            sql = _PLACEHOLDER.sub(lambda m: "$" + m.group(1), source.query)
            return con.sql(sql, params={k: v for k, v in params.items() if k in used}).to_arrow_table(), False
        probe = con.sql("SELECT * FROM source LIMIT 0").to_arrow_table()
        select = ", ".join(_selected(source, probe.column_names, "duckdb"))
        types = dict(zip(probe.column_names, probe.schema.types, strict=True))
        used = set()

        def render(name: str) -> str:
            used.add(name)
            return "$" + name

        where = _window_predicate(source, types, render, "duckdb", text_cast=True)
        sql = f"SELECT {select} FROM source WHERE {where}"  # noqa: S608  quoted identifiers, bind parameters
        return con.sql(sql, params={k: v for k, v in params.items() if k in used}).to_arrow_table(), True
    except duckdb.IOException as exc:  # missing or unreadable files
        raise LocalSourceError(f"cannot read {source.label}: {exc}") from exc
    except duckdb.Error as exc:  # e.g. an error in the operator's query: keep DuckDB's message, add which source
        exc.add_note(f"while reading {source.label}")
        raise
    finally:
        con.close()
