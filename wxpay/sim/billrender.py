"""Render trade and fund-flow bill files from typed rows (spec §6, simulator checklist §9).

Rows are mappings keyed by the warehouse column names of :mod:`wxpay.billfile`
(``trade_time``, ``out_trade_no``, ``order_amount_fen`` ...): amounts in integer fen, the fee
in integer milli-fen (``fee_millifen``), times as aware datetimes, the fee rate as a Decimal
fraction or ``"0.60%"`` text. A missing key prints as an empty value (text, optional times)
or ``0.00`` (amounts). A title :mod:`wxpay.billfile` does not know (schema drift) takes its
value from the row keyed by that title.

The summary block is computed from the rows. Defaults follow spec §6.1 [SIM]: UTF-8 BOM on,
CRLF line endings with a trailing CRLF. These are pure functions: bytes in memory, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from wxpay.billfile import (
    BOM,
    HEADERS,
    SUMMARY_COLUMNS,
    SUMMARY_HEADERS,
    BillKind,
    Column,
    columns_for,
    format_count,
    format_fee,
    format_rate,
    format_time,
    format_yuan,
)

__all__ = ["render_bill", "render_fund_flow_bill", "render_trade_bill", "summarise"]

Row = Mapping[str, Any]


def _format_value(col: Column, value: Any) -> str:
    if value is None or value == "":
        if col.kind in ("yuan", "fee"):
            return format_yuan(0) if col.kind == "yuan" else format_fee(0)
        if not col.nullable:
            raise ValueError(f"{col.name} ({col.title}) needs a value")
        return ""
    if col.kind == "yuan":
        return format_yuan(_int(col, value))
    if col.kind == "fee":
        return format_fee(_int(col, value))
    if col.kind == "time":
        if not isinstance(value, datetime):
            raise TypeError(f"{col.name} must be an aware datetime, got {type(value).__name__}")
        return format_time(value)
    if col.kind == "rate":
        return value if isinstance(value, str) else format_rate(value)
    return _text(col.title, value)


def _int(col: Column, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{col.name} must be an int ({'milli-fen' if col.kind == 'fee' else 'fen'}), got {value!r}")
    return value


def _text(title: str, value: Any) -> str:
    text = str(value)
    if "\r" in text or "\n" in text or ",`" in text:
        raise ValueError(f"{title} value {text!r} would break the bill format (CR, LF or ',`')")
    return text


def summarise(kind: BillKind, rows: Sequence[Row]) -> dict[str, int]:
    """Every known summary value of ``kind`` computed from ``rows`` (by summary name)."""
    out: dict[str, int] = {}
    for spec in SUMMARY_COLUMNS[kind].values():
        selected = [r for r in rows if spec.direction is None or r.get("direction") == spec.direction]
        out[spec.name] = len(selected) if spec.of is None else sum(int(r.get(spec.of) or 0) for r in selected)
    return out


def render_bill(
    kind: BillKind,
    rows: Iterable[Row],
    *,
    bom: bool = True,
    crlf: bool = True,
    trailing_newline: bool = True,
    titles: Sequence[str] | None = None,
    summary_titles: Sequence[str] | None = None,
    summary_override: Mapping[str, int] | None = None,
) -> bytes:
    """The bytes of one bill file of ``kind``.

    ``titles`` replaces the detail header (to drop a column or add an unknown one);
    ``summary_titles`` replaces the summary header (e.g. the 7-column SUCCESS variant);
    ``summary_override`` replaces computed summary values by name (to publish a wrong summary).
    """
    rows = list(rows)
    titles = tuple(titles if titles is not None else HEADERS[kind])
    known = columns_for(kind)
    lines = [",".join(titles)]
    for row in rows:
        values = []
        for title in titles:
            col = known.get(title)
            values.append(_format_value(col, row.get(col.name)) if col else _text(title, row.get(title, "")))
        lines.append(",".join("`" + v for v in values))

    specs = SUMMARY_COLUMNS[kind]
    summary_titles = tuple(summary_titles if summary_titles is not None else SUMMARY_HEADERS[kind])
    totals = {**summarise(kind, rows), **(summary_override or {})}
    formatters = {"count": format_count, "yuan": format_yuan, "fee": format_fee}
    lines.append(",".join(summary_titles))
    lines.append(",".join("`" + formatters[specs[t].kind](totals[specs[t].name]) for t in summary_titles))

    newline = "\r\n" if crlf else "\n"
    text = newline.join(lines) + (newline if trailing_newline else "")
    return ((BOM if bom else "") + text).encode("utf-8")


def render_trade_bill(rows: Iterable[Row], *, bill_type: str = "ALL", **options: Any) -> bytes:
    """A trade bill: ``bill_type`` ``ALL`` (27 columns), ``SUCCESS`` (20) or ``REFUND`` (29).

    Keyword options as :func:`render_bill`. For SUCCESS/REFUND bills select the rows yourself
    (SUCCESS: payment rows; REFUND: refund rows, with ``refund_applied_at``/``refund_succeeded_at``).
    """
    kind = BillKind(bill_type)
    if not kind.is_trade:
        raise ValueError(f"{bill_type!r} is not a trade bill type (ALL, SUCCESS, REFUND)")
    return render_bill(kind, rows, **options)


def render_fund_flow_bill(rows: Iterable[Row], **options: Any) -> bytes:
    """A fund-flow bill (11 columns); ``direction`` is ``收入`` or ``支出``, ``amount_fen`` unsigned."""
    return render_bill(BillKind.FUND_FLOW, rows, **options)
