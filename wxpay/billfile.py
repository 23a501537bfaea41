"""Header-driven parsing of WeChat Pay trade and fund-flow bill files (spec §6).

A bill file is four blocks, no blank lines between them: the detail header line, the detail
rows, the summary header line and the summary value line. Header lines are bare; every value
in a detail row or the summary value line starts with one backtick. UTF-8, maybe a BOM,
CRLF or LF. Columns are found by their Chinese title, never by position.

The catalog of columns and layouts is :mod:`wxpay.billformat`; the value kinds, their exact
``*_PATTERN`` texts, units (fen, milli-fen, Beijing times, exact rates) and the fee rule are
:mod:`wxpay.billvalues`. Both are re-exported here, so ``from wxpay.billfile import ...`` reaches
the whole bill format. Nothing here goes through ``float``. This module knows nothing of DuckDB:
the loaders in ``flows/bill*.py`` turn the :class:`Column` specs and the ``*_PATTERN``
regular expressions into SQL, so Python and SQL accept exactly the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wxpay.billformat import (
    FUND_FLOW_COLUMNS,
    HEADERS,
    REQUIRED,
    SUMMARY_COLUMNS,
    SUMMARY_HEADERS,
    TRADE_COLUMNS,
    BillKind,
    Column,
    SummaryColumn,
    bill_kind_for_type,
    bill_type_label,
    columns_for,
)
from wxpay.billvalues import (
    COUNT_PATTERN,
    FEE_PATTERN,
    RATE_PATTERN,
    TIME_PATTERN,
    YUAN_PATTERN,
    ValueKind,
    fee_fen,
    fee_to_millifen,
    format_count,
    format_fee,
    format_rate,
    format_time,
    format_yuan,
    parse_count,
    parse_rate,
    parse_time,
    yuan_to_fen,
)
from wxpay.errors import BillFormatError

__all__ = [
    "BOM",
    "COUNT_PATTERN",
    "FEE_PATTERN",
    "FUND_FLOW_COLUMNS",
    "HEADERS",
    "RATE_PATTERN",
    "REQUIRED",
    "SUMMARY_COLUMNS",
    "SUMMARY_HEADERS",
    "TIME_PATTERN",
    "TRADE_COLUMNS",
    "YUAN_PATTERN",
    "BillHeader",
    "BillKind",
    "BillSummary",
    "Column",
    "SummaryColumn",
    "ValueKind",
    "bill_kind_for_type",
    "bill_type_label",
    "columns_for",
    "detect_kind",
    "fee_fen",
    "fee_to_millifen",
    "format_count",
    "format_fee",
    "format_rate",
    "format_time",
    "format_yuan",
    "parse_count",
    "parse_header",
    "parse_rate",
    "parse_summary",
    "parse_time",
    "split_values",
    "yuan_to_fen",
]

BOM = "\ufeff"


def _bare(line: str) -> str:
    return line.removeprefix(BOM).rstrip("\r\n")


def split_values(line: str, *, file: str = "<bill>", line_no: int | None = None) -> list[str]:
    """The values of a detail row or summary value line, each with its leading backtick removed."""
    cells = _bare(line).split(",")
    for i, cell in enumerate(cells):
        if not cell.startswith("`"):
            raise BillFormatError(
                f"value {i + 1} ({cell!r}) does not start with a backtick", file=file, line=line_no, field=f"#{i + 1}"
            )
    return [cell[1:] for cell in cells]


def detect_kind(header_line: str, *, file: str = "<bill>") -> BillKind:
    """Which layout a detail header line announces, from column titles only (never positions).

    A leading BOM and the line ending are ignored. 记账时间 -> fund flow; 交易时间 with
    退款申请时间/退款成功时间 -> REFUND; with 微信退款单号 or 退款金额 -> ALL; else SUCCESS.
    """
    titles = set(_bare(header_line).split(","))
    if "记账时间" in titles or "资金流水单号" in titles:
        return BillKind.FUND_FLOW
    if "交易时间" not in titles:
        raise BillFormatError(
            f"not a bill header (no 交易时间 or 记账时间 column): {_bare(header_line)[:80]!r}", file=file, line=1
        )
    if "退款申请时间" in titles or "退款成功时间" in titles:
        return BillKind.TRADE_REFUND
    if "微信退款单号" in titles or "退款金额" in titles:
        return BillKind.TRADE_ALL
    return BillKind.TRADE_SUCCESS


@dataclass(frozen=True)
class BillHeader:
    """A checked detail header: per position the known :class:`Column` or ``None`` (schema drift)."""

    kind: BillKind
    titles: tuple[str, ...]
    columns: tuple[Column | None, ...]
    extra_columns: tuple[str, ...]
    """Titles we do not know, in file order: kept by the loader and reported."""
    absent_columns: tuple[str, ...]
    """Optional known titles of this kind's current header that the file lacks (loaded as NULL)."""
    crlf: bool
    bom: bool

    @property
    def known(self) -> dict[str, Column]:
        """Known columns by warehouse name."""
        return {c.name: c for c in self.columns if c is not None}


def parse_header(header_line: str, *, file: str = "<bill>", kind: BillKind | None = None) -> BillHeader:
    """Check a detail header line and map each title to its column.

    ``kind`` is what the caller asked for (e.g. from ``bill_type``); the header must announce
    that kind. Raises :class:`BillFormatError` for a missing required column (naming it and the
    file), a duplicated column, or a backticked (data) line where the header should be.
    """
    bom = header_line.startswith(BOM)
    crlf = header_line.endswith("\r\n")
    bare = _bare(header_line)
    if "`" in bare:
        raise BillFormatError("the first line holds backticked values, not the column titles", file=file, line=1)
    detected = detect_kind(bare, file=file)
    if kind is not None and detected is not kind:
        raise BillFormatError(f"the header announces a {detected.value} bill, expected {kind.value}", file=file, line=1)
    titles = tuple(bare.split(","))
    known = columns_for(detected)
    seen: dict[str, str] = {}
    for title in titles:
        col = known.get(title)
        key = col.name if col else title
        if key in seen:
            raise BillFormatError(f"column {title!r} appears twice (or with {seen[key]!r})", file=file, line=1)
        seen[key] = title
    for group in REQUIRED[detected]:
        if not any(t in titles for t in group):
            alternatives = f" (or {', '.join(group[1:])})" if len(group) > 1 else ""
            raise BillFormatError(
                f"required column {group[0]}{alternatives} is missing from the header",
                file=file,
                line=1,
                field=group[0],
            )
    columns = tuple(known.get(t) for t in titles)
    return BillHeader(
        kind=detected,
        titles=titles,
        columns=columns,
        extra_columns=tuple(t for t, c in zip(titles, columns, strict=True) if c is None),
        absent_columns=tuple(t for t in HEADERS[detected] if t not in titles),
        crlf=crlf,
        bom=bom,
    )


@dataclass(frozen=True)
class BillSummary:
    """The summary block, typed: ``values`` by name (``row_count``, ``*_fen``, ``fee_millifen`` ...)."""

    kind: BillKind
    values: dict[str, int]
    columns: tuple[SummaryColumn, ...]
    extra: dict[str, str] = field(default_factory=dict)
    """Summary titles we do not know, with their raw values (reported, not checked)."""


_PARSERS = {"count": parse_count, "yuan": yuan_to_fen, "fee": fee_to_millifen}


def parse_summary(
    header_line: str, value_line: str, *, kind: BillKind, file: str = "<bill>", line: int | None = None
) -> BillSummary:
    """Parse the summary header line and its (backticked) value line into typed values.

    Header-driven and tolerant of the layout: a SUCCESS bill's summary may carry the documented
    4 columns or the 7 seen in captures; counts may print as ``20.0``. ``line`` is the 1-based
    line number of ``header_line`` (the values are on ``line + 1``). The row count is required.
    """
    value_no = None if line is None else line + 1
    titles = _bare(header_line).split(",")
    if any("`" in t for t in titles):
        raise BillFormatError("the summary header line holds backticked values", file=file, line=line)
    values = split_values(value_line, file=file, line_no=value_no)
    if len(values) != len(titles):
        raise BillFormatError(
            f"summary has {len(titles)} titles but {len(values)} values", file=file, line=value_no, field="summary"
        )
    known = SUMMARY_COLUMNS[kind]
    typed: dict[str, int] = {}
    columns: list[SummaryColumn] = []
    extra: dict[str, str] = {}
    for title, raw in zip(titles, values, strict=True):
        spec = known.get(title)
        if spec is None:
            extra[title] = raw
            continue
        if spec.name in typed:
            raise BillFormatError(f"summary column {title!r} appears twice", file=file, line=line, field=title)
        typed[spec.name] = _PARSERS[spec.kind](raw, file=file, line=value_no, field=title)
        columns.append(spec)
    if "row_count" not in typed:
        count_title = next(iter(known))
        raise BillFormatError(
            f"required summary column {count_title} is missing", file=file, line=line, field=count_title
        )
    return BillSummary(kind=kind, values=typed, columns=tuple(columns), extra=extra)
