"""The canonical shape of the merchant's own records, and the conversion of a fetched Arrow table into it.

Whatever the source (see :mod:`flows.sources`), the reconciliation relies on these Arrow schemas.

Canonical local sub order (:data:`LOCAL_ORDER_SCHEMA`, one row per sub order, sorted by
combine_out_trade_no, out_trade_no, mchid)::

    combine_out_trade_no  string                 not null
    out_trade_no          string                 not null   the sub order's out_trade_no
    mchid                 string                 not null   the sub order's merchant (receives the money)
    amount_fen            int64                  not null   exact; yuan sources are converted with decimals
    status                string                 not null   NOTPAY | SUCCESS | CLOSED | REFUND | PAYERROR
    created_at            timestamp[us, tz=UTC]  not null
    paid_at               timestamp[us, tz=UTC]  null
    transaction_id        string                 null
    attach                string                 null
    description           string                 null

Canonical local refund (:data:`LOCAL_REFUND_SCHEMA`, sorted by out_refund_no, out_trade_no, mchid)::

    out_refund_no  string not null;  out_trade_no string not null;  mchid string null;  amount_fen int64 not null;
    status string not null (SUCCESS | PROCESSING | CLOSED | ABNORMAL);  created_at timestamp[us, tz=UTC] not null;
    succeeded_at timestamp[us, tz=UTC] null

Timestamps are instants (DuckDB sees TIMESTAMPTZ). Source columns that carry a zone (PostgreSQL timestamptz,
Parquet timestamps with tz, text with an offset) keep their instant; naive ones (MySQL DATETIME/TIMESTAMP,
PostgreSQL timestamp, naive Parquet, text without offset) are local times in ``naive_timezone``
(default Asia/Shanghai). Key columns may be text or integers (an integer mchid becomes its decimal text).
``status_map`` is applied to the status as text (an integer code 1 is looked up as "1"); values already in the
canonical vocabulary pass unchanged; anything else is an error listing the unmapped values. Yuan amounts
(``amount_unit = "yuan"``) become fen exactly, with decimals, never through a float; fen must be whole numbers.

Every problem raises :class:`LocalSourceError` naming the column, the source and the first offending key; no row
is dropped silently.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from flows.sources.source import LocalSource

__all__ = [
    "LOCAL_ORDER_SCHEMA",
    "LOCAL_REFUND_SCHEMA",
    "ORDER_STATUSES",
    "REFUND_STATUSES",
    "UTC_TS",
    "LocalSourceError",
    "SuspiciousSourceError",
    "canonicalize",
    "is_text",
]

UTC_TS = pa.timestamp("us", tz="UTC")
LOCAL_ORDER_SCHEMA = pa.schema(
    [
        pa.field("combine_out_trade_no", pa.string(), nullable=False),
        pa.field("out_trade_no", pa.string(), nullable=False),
        pa.field("mchid", pa.string(), nullable=False),
        pa.field("amount_fen", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("created_at", UTC_TS, nullable=False),
        pa.field("paid_at", UTC_TS),
        pa.field("transaction_id", pa.string()),
        pa.field("attach", pa.string()),
        pa.field("description", pa.string()),
    ]
)
LOCAL_REFUND_SCHEMA = pa.schema(
    [
        pa.field("out_refund_no", pa.string(), nullable=False),
        pa.field("out_trade_no", pa.string(), nullable=False),
        pa.field("mchid", pa.string()),
        pa.field("amount_fen", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("created_at", UTC_TS, nullable=False),
        pa.field("succeeded_at", UTC_TS),
    ]
)
ORDER_STATUSES = ("NOTPAY", "SUCCESS", "CLOSED", "REFUND", "PAYERROR")
REFUND_STATUSES = ("SUCCESS", "PROCESSING", "CLOSED", "ABNORMAL")

_NUMERAL = re.compile(r"^[+-]?[0-9]{1,27}(\.[0-9]{1,10})?$")
_FLOAT_EXACT_LIMIT = 2**53


class LocalSourceError(ValueError):
    """The merchant's source cannot be read into the canonical shape; the message names column, source and key.

    Deterministic: reading the same source again gives the same error, so it is never retried.
    """

    problem_kind = "integrity"  # what flows.outcome.classify makes of it: the merchant's data failed its checks


class SuspiciousSourceError(LocalSourceError):
    """A read that looks like a broken export (empty, or far fewer records than the warehouse holds for the
    same window): nothing was replaced; the message names the source and the counts."""


def is_text(kind: pa.DataType) -> bool:
    """Whether an Arrow type is a string type (plain, large or view)."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def canonicalize(raw: pa.Table, source: LocalSource, renamed: bool) -> pa.Table:
    """``raw`` (as fetched from ``source``) in ``source.schema_``: types, nulls, amounts, statuses, sorted.

    ``renamed``: the columns of ``raw`` already carry their canonical names (table mode); otherwise they carry
    the source's column names (query mode).
    """
    schema = source.schema_
    columns: dict[str, pa.ChunkedArray] = {}
    for canonical in schema.names:
        column = source.column(canonical)
        if column is None:
            columns[canonical] = pa.nulls(raw.num_rows, schema.field(canonical).type)
            continue
        name = canonical if renamed else column
        if name not in raw.column_names:
            raise LocalSourceError(
                f"column {column!r} (for {canonical}) not found in the result of {source.label}; "
                f"it has columns {raw.column_names}"
            )
        values = raw.column(name)
        is_null_type = pa.types.is_null(values.type)  # an all-null column written without a type (Parquet)
        columns[canonical] = pa.nulls(len(values), schema.field(canonical).type) if is_null_type else values
    checker = _Checker(source, columns)
    for field in schema:
        if not field.nullable:
            checker.no_nulls(field.name)
    for field in schema:
        if field.type == pa.string() and field.name != "status":
            columns[field.name] = checker.text(field.name)
    columns["amount_fen"] = checker.amount()
    columns["status"] = checker.status()
    for field in schema:
        if field.type == UTC_TS:
            columns[field.name] = checker.timestamp(field.name)
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    table = table.sort_by([(name, "ascending") for name in schema.names[:3]])
    _no_duplicate_keys(table, source)
    return table


_KEYS = {"out_trade_no": ("mchid", "out_trade_no"), "out_refund_no": ("out_trade_no", "out_refund_no")}
"""The warehouse key of each kind of record (by the source's key column)."""


def _no_duplicate_keys(table: pa.Table, source: LocalSource) -> None:
    """Two records under one key cannot both be the merchant's truth: name the source, the columns and the key."""
    keys = _KEYS[source.key]
    counted = table.group_by(list(keys)).aggregate([([], "count_all")])
    twice = counted.filter(pc.greater(counted.column("count_all"), 1))
    if twice.num_rows:
        first = ", ".join(f"{name}={twice.column(name)[0].as_py()}" for name in keys)
        columns = ", ".join(repr(source.column(name)) for name in keys)
        raise LocalSourceError(
            f"{source.label} has {twice.num_rows} duplicate key(s) in columns {columns} ({' + '.join(keys)}),"
            f" first {first} ({twice.column('count_all')[0].as_py()} records)"
        )


class _Checker:
    """Converts one column at a time, raising :class:`LocalSourceError` with the first offending row's key."""

    def __init__(self, source: LocalSource, columns: dict[str, Any]) -> None:
        self.source, self.columns = source, columns

    def where(self, canonical: str) -> str:
        return f"column {self.source.column(canonical)!r} ({canonical}) of {self.source.label}"

    def key_of(self, mask: pa.Array) -> str:
        index = pc.index(pc.fill_null(mask, False), True).as_py()
        key = self.source.key
        value = self.columns[key][index].as_py()
        if value is None:
            other = "combine_out_trade_no" if key == "out_trade_no" else "out_trade_no"
            return f"row {index} ({key} is null, {other}={self.columns[other][index].as_py()!r})"
        return f"{key}={value!s}"

    def no_nulls(self, canonical: str) -> None:
        values = self.columns[canonical]
        if values.null_count:
            raise LocalSourceError(f"{self.where(canonical)} is null for {self.key_of(pc.is_null(values))}")

    def text(self, canonical: str) -> pa.Array:
        values = self.columns[canonical]
        kind = values.type
        if is_text(kind):
            return values.cast(pa.string())
        if pa.types.is_integer(kind):
            return values.cast(pa.string())
        if pa.types.is_decimal(kind):
            bad = pc.not_equal(pc.floor(values), values)
            if pc.any(bad).as_py():
                raise LocalSourceError(f"{self.where(canonical)} is not text nor a whole number: {self.key_of(bad)}")
            return values.cast(pa.int64()).cast(pa.string())
        raise LocalSourceError(f"{self.where(canonical)} has type {kind}; expected text or an integer")

    def amount(self) -> pa.Array:
        values, where, yuan = self.columns["amount_fen"], self.where("amount_fen"), self.source.amount_unit == "yuan"
        kind = values.type
        if is_text(kind):
            bad = pc.invert(pc.match_substring_regex(values, _NUMERAL.pattern))
            if pc.any(bad).as_py():
                sample = values.filter(pc.fill_null(bad, False))[0].as_py()
                raise LocalSourceError(
                    f"{where} holds {sample!r}, not a decimal number (at most 10 decimals), at {self.key_of(bad)}"
                )
            values, kind = values.cast(pa.decimal128(38, 10)), pa.decimal128(38, 10)
        if pa.types.is_integer(kind):
            try:
                return pc.multiply_checked(values.cast(pa.int64()), 100) if yuan else values.cast(pa.int64())
            except pa.ArrowInvalid as exc:
                raise LocalSourceError(f"{where} holds an amount too large for int64 fen: {exc}") from exc
        if pa.types.is_floating(kind):
            if yuan:
                raise LocalSourceError(f"{where} is {kind}: a float cannot hold yuan exactly; store DECIMAL")
            bad = pc.or_(pc.not_equal(pc.floor(values), values), pc.greater(pc.abs(values), _FLOAT_EXACT_LIMIT))
            if pc.any(bad).as_py():
                sample = values.filter(pc.fill_null(bad, False))[0].as_py()
                raise LocalSourceError(f"{where} holds {sample!r}, not a whole number of fen, at {self.key_of(bad)}")
            return values.cast(pa.int64())
        if pa.types.is_decimal(kind):
            places = 2 if yuan else 0
            bad = pc.not_equal(pc.round(values, places), values)
            if pc.any(bad).as_py():
                sample = values.filter(pc.fill_null(bad, False))[0].as_py().normalize()
                unit = "yuan with more than 2 decimals" if yuan else "not a whole number of fen"
                raise LocalSourceError(f"{where} holds {sample}, {unit}, at {self.key_of(bad)}")
            if not yuan:
                too_large = pc.greater(pc.abs(values), pa.scalar(Decimal(2**63 - 1)).cast(values.type))
                if pc.any(too_large).as_py():
                    sample = values.filter(pc.fill_null(too_large, False))[0].as_py().normalize()
                    raise LocalSourceError(
                        f"{where} holds {sample}, beyond the int64 range of fen, at {self.key_of(too_large)}"
                    )
                return values.cast(pa.int64())
            try:  # exact: rescale to 2 places, times 100 at scale 2, then the integral value
                cents = pc.multiply(values.cast(pa.decimal128(34, 2)), pa.scalar(Decimal(100), pa.decimal128(3, 0)))
                return cents.cast(pa.int64())
            except pa.ArrowInvalid as exc:
                raise LocalSourceError(f"{where} holds a yuan amount too large for int64 fen: {exc}") from exc
        raise LocalSourceError(f"{where} has type {kind}; expected an integer, decimal or numeric text")

    def status(self) -> pa.Array:
        values = self.text("status")
        mapping = {**{s: s for s in self.source.statuses}, **self.source.status_map}
        keys = pa.array(list(mapping), pa.string())
        index = pc.index_in(values, value_set=keys)
        unmapped = pc.is_null(index)
        if pc.any(unmapped).as_py():
            found = sorted(pc.unique(values.filter(unmapped)).to_pylist())
            raise LocalSourceError(
                f"{self.where('status')} has values not in status_map: {found} (first at {self.key_of(unmapped)}); "
                f"map each to one of {self.source.statuses}"
            )
        return pc.take(pa.array(list(mapping.values()), pa.string()), index)

    def timestamp(self, canonical: str) -> pa.Array:
        values, where = self.columns[canonical], self.where(canonical)
        kind = values.type
        try:
            if pa.types.is_timestamp(kind) and kind.tz is not None:
                return values.cast(UTC_TS)
            if pa.types.is_timestamp(kind):
                local = pc.assume_timezone(
                    values, timezone=self.source.naive_timezone, ambiguous="raise", nonexistent="raise"
                )
                return local.cast(UTC_TS)
        except pa.ArrowInvalid as exc:
            raise LocalSourceError(f"{where}: {exc}") from exc
        if is_text(kind):
            parsed = _parse_timestamps(values.cast(pa.string()), self.source.naive_timezone)
            bad = pc.and_(pc.is_valid(values), pc.is_null(parsed))
            if pc.any(bad).as_py():
                sample = values.filter(pc.fill_null(bad, False))[0].as_py()
                raise LocalSourceError(f"{where} holds {sample!r}, not a timestamp, at {self.key_of(bad)}")
            return parsed
        raise LocalSourceError(f"{where} has type {kind}; expected a timestamp")


def _parse_timestamps(values: pa.Array, zone: str) -> pa.Array:
    """ISO text -> instants with DuckDB's parser: an offset is honoured, naive text is local time in ``zone``."""
    con = duckdb.connect()
    try:
        con.execute(f"SET TimeZone = '{zone}'")
        con.register("text_values", pa.table({"v": values}))
        parsed = con.sql("SELECT TRY_CAST(v AS TIMESTAMPTZ) AS t FROM text_values").to_arrow_table()
        return parsed.column("t").combine_chunks().cast(UTC_TS)
    finally:
        con.close()
