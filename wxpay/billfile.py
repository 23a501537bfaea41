"""Header-driven knowledge of WeChat Pay trade and fund-flow bill files (spec §6).

A bill file is four blocks, no blank lines between them: the detail header line, the detail
rows, the summary header line and the summary value line. Header lines are bare; every value
in a detail row or the summary value line starts with one backtick. UTF-8, maybe a BOM,
CRLF or LF. Columns are found by their Chinese title, never by position.

Units, everywhere downstream of this module:

* amounts (yuan with exactly 2 decimals in the file) are integer **fen**, BIGINT in DuckDB:
  ``"128.00" -> 12800``;
* fees (手续费, yuan with exactly 5 decimals) are integer **milli-fen** (1/1000 fen), BIGINT:
  ``"0.77000" -> 77000``, ``"-0.12000" -> -12000``;
* times (``yyyy-MM-dd HH:mm:ss``, Beijing time) are aware datetimes in Asia/Shanghai,
  TIMESTAMPTZ in DuckDB;
* fee rates (``0.60%``) are kept as printed and as an exact :class:`~decimal.Decimal` fraction
  (``Decimal("0.006")``).

Nothing here goes through ``float``. This module knows nothing of DuckDB: the loader in
``flows/warehouse.py`` turns the :class:`Column` specs and the ``*_PATTERN`` regular
expressions below into SQL, so Python and SQL accept exactly the same text.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from wxpay.errors import BillFormatError
from wxpay.models import BEIJING

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

# The exact text each value kind accepts. RE2 (DuckDB) and Python `re` read these the same way;
# `[0-9]` rather than `\d` because Python's `\d` also matches non-ASCII digits.
YUAN_PATTERN = r"-?[0-9]+\.[0-9]{2}"
FEE_PATTERN = r"-?[0-9]+\.[0-9]{5}"
RATE_PATTERN = r"[0-9]{1,3}(\.[0-9]{1,4})?%"
"""A fee rate in percent, at most 4 decimals (so DECIMAL(7,4) holds it exactly): ``0.60%``, ``0.375%``."""
TIME_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
COUNT_PATTERN = r"[0-9]+(\.0+)?"
"""Summary counts: ``20`` or ``20.0`` (the v2 fund-flow sample prints ``20.0``, spec §6.5)."""

_YUAN = re.compile(YUAN_PATTERN)
_FEE = re.compile(FEE_PATTERN)
_RATE = re.compile(RATE_PATTERN)
_TIME = re.compile(TIME_PATTERN)
_COUNT = re.compile(COUNT_PATTERN)

ValueKind = Literal["text", "time", "yuan", "fee", "rate", "count"]


class BillKind(enum.Enum):
    """The four file layouts (spec §6.2, §6.5). The value is the API's trade ``bill_type``."""

    TRADE_ALL = "ALL"
    TRADE_SUCCESS = "SUCCESS"
    TRADE_REFUND = "REFUND"
    FUND_FLOW = "FUNDFLOW"

    @property
    def is_trade(self) -> bool:
        return self is not BillKind.FUND_FLOW


_BILL_TYPES = {
    "trade_all": BillKind.TRADE_ALL,
    "trade_success": BillKind.TRADE_SUCCESS,
    "trade_refund": BillKind.TRADE_REFUND,
    "fundflow_basic": BillKind.FUND_FLOW,
    "fundflow_operation": BillKind.FUND_FLOW,
    "fundflow_fees": BillKind.FUND_FLOW,
}
_BILL_TYPE_ALIASES = {
    "ALL": "trade_all",
    "SUCCESS": "trade_success",
    "REFUND": "trade_refund",
    "BASIC": "fundflow_basic",
    "OPERATION": "fundflow_operation",
    "FEES": "fundflow_fees",
}


def bill_type_label(bill_type: str) -> str:
    """The project's name of a bill type, as the archive and the warehouse store it.

    ``trade_all | trade_success | trade_refund | fundflow_basic | fundflow_operation |
    fundflow_fees``; the API's ``ALL``/``SUCCESS``/``REFUND`` (trade ``bill_type``) and
    ``BASIC``/``OPERATION``/``FEES`` (fund-flow ``account_type``) are accepted too.
    """
    label = _BILL_TYPE_ALIASES.get(bill_type, bill_type)
    if label not in _BILL_TYPES:
        raise ValueError(f"unknown bill type {bill_type!r}; expected one of {sorted(_BILL_TYPES)}")
    return label


def bill_kind_for_type(bill_type: str) -> BillKind:
    """The file layout a bill type comes in (see :func:`bill_type_label` for the names)."""
    return _BILL_TYPES[bill_type_label(bill_type)]


@dataclass(frozen=True)
class Column:
    """One known detail column: its Chinese ``title``, snake_case ``name`` and value ``kind``.

    ``name`` is the warehouse column: ``*_fen`` for yuan amounts, ``fee_millifen`` for the fee.
    ``nullable`` columns may print a lone backtick (empty); the others must hold a value.
    """

    title: str
    name: str
    kind: ValueKind
    nullable: bool = True


def _cols(*specs: tuple) -> dict[str, Column]:
    return {spec[0]: Column(*spec) for spec in specs}


TRADE_COLUMNS: dict[str, Column] = _cols(
    ("交易时间", "trade_time", "time", False),
    ("公众账号ID", "appid", "text"),
    ("商户号", "mchid", "text"),
    ("特约商户号", "sub_mchid", "text"),
    ("设备号", "device_info", "text"),
    ("微信订单号", "transaction_id", "text"),
    ("商户订单号", "out_trade_no", "text"),
    ("用户标识", "openid", "text"),
    ("交易类型", "trade_type", "text"),
    ("交易状态", "trade_state", "text"),
    ("付款银行", "bank_type", "text"),
    ("货币种类", "currency", "text"),
    ("应结订单金额", "settlement_amount_fen", "yuan", False),
    ("代金券金额", "coupon_amount_fen", "yuan", False),
    ("退款申请时间", "refund_applied_at", "time"),
    ("退款成功时间", "refund_succeeded_at", "time"),
    ("微信退款单号", "refund_id", "text"),
    ("商户退款单号", "out_refund_no", "text"),
    ("退款金额", "refund_amount_fen", "yuan", False),
    ("充值券退款金额", "recharge_coupon_refund_fen", "yuan", False),
    ("退款类型", "refund_type", "text"),
    ("退款状态", "refund_status", "text"),
    ("商品名称", "description", "text"),
    ("商户数据包", "attach", "text"),
    ("手续费", "fee_millifen", "fee", False),
    ("费率", "fee_rate", "rate"),
    ("订单金额", "order_amount_fen", "yuan", False),
    ("申请退款金额", "requested_refund_fen", "yuan", False),
    ("费率备注", "fee_rate_remark", "text"),
    # Old-format merchants (before 免充值券 was enabled, spec §6.1): kept under their own names.
    ("总金额", "legacy_total_amount_fen", "yuan", False),
    ("企业红包金额", "legacy_red_packet_fen", "yuan", False),
    ("企业红包退款金额", "legacy_red_packet_refund_fen", "yuan", False),
    ("子商户号", "sub_mchid", "text"),
)
"""Every trade-bill column we know, by Chinese title (current format, REFUND-only and legacy)."""

FUND_FLOW_COLUMNS: dict[str, Column] = _cols(
    ("记账时间", "booked_at", "time", False),
    ("微信支付业务单号", "business_no", "text"),
    ("资金流水单号", "flow_no", "text"),
    ("业务名称", "business_name", "text"),
    ("业务类型", "business_type", "text"),
    ("收支类型", "direction", "text"),
    ("收支金额(元)", "amount_fen", "yuan", False),
    ("账户结余(元)", "balance_fen", "yuan", False),
    ("资金变更提交申请人", "applicant", "text"),
    ("备注", "remark", "text"),
    ("业务凭证号", "voucher_no", "text"),
    # Full-width parentheses: never seen in captures (spec §6.5), accepted as the same column.
    ("收支金额（元）", "amount_fen", "yuan", False),
    ("账户结余（元）", "balance_fen", "yuan", False),
)

_ALL_HEADER_LINE = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
    "手续费,费率,订单金额,申请退款金额,费率备注"
)
_ALL_HEADER = _ALL_HEADER_LINE.split(",")
_REFUND_ONLY = ("微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "申请退款金额")
_AT = _ALL_HEADER.index("微信退款单号")

HEADERS: dict[BillKind, tuple[str, ...]] = {
    BillKind.TRADE_ALL: tuple(_ALL_HEADER),
    BillKind.TRADE_SUCCESS: tuple(t for t in _ALL_HEADER if t not in _REFUND_ONLY),
    BillKind.TRADE_REFUND: (*_ALL_HEADER[:_AT], "退款申请时间", "退款成功时间", *_ALL_HEADER[_AT:]),
    BillKind.FUND_FLOW: (
        "记账时间",
        "微信支付业务单号",
        "资金流水单号",
        "业务名称",
        "业务类型",
        "收支类型",
        "收支金额(元)",
        "账户结余(元)",
        "资金变更提交申请人",
        "备注",
        "业务凭证号",
    ),
}
"""The current headers, in order, exactly as spec §6.2 / §6.5 print them (27, 20, 29 and 11 columns)."""

_TRADE_BASE_REQUIRED: tuple[tuple[str, ...], ...] = (
    ("交易时间",),
    ("商户号",),
    ("微信订单号",),
    ("商户订单号",),
    ("交易状态",),
    ("手续费",),
    ("订单金额", "总金额"),
)
_TRADE_REFUND_REQUIRED = (("微信退款单号",), ("商户退款单号",), ("退款金额",))

REQUIRED: dict[BillKind, tuple[tuple[str, ...], ...]] = {
    BillKind.TRADE_ALL: _TRADE_BASE_REQUIRED + _TRADE_REFUND_REQUIRED,
    BillKind.TRADE_SUCCESS: _TRADE_BASE_REQUIRED,
    BillKind.TRADE_REFUND: _TRADE_BASE_REQUIRED + _TRADE_REFUND_REQUIRED,
    BillKind.FUND_FLOW: (("记账时间",), ("资金流水单号",), ("收支类型",), ("收支金额(元)", "收支金额（元）")),
}
"""Columns reconciliation cannot do without. Each entry is a group of alternatives: one must be there.

Deliberately *not* required: 应结订单金额 and 代金券金额 (old-format merchants print 总金额 and
企业红包金额 instead, spec §6.1), so an old-format bill still loads; 订单金额 may be replaced by
the old 总金额. Every other column is optional (NULL when absent).
"""


def columns_for(kind: BillKind) -> Mapping[str, Column]:
    """The known columns of a bill kind, by Chinese title."""
    return FUND_FLOW_COLUMNS if kind is BillKind.FUND_FLOW else TRADE_COLUMNS


# --- summary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryColumn:
    """A summary value and the detail aggregate it must equal.

    ``of`` names the detail column summed (``None`` = a row count); ``direction`` restricts a
    fund-flow aggregate to rows whose 收支类型 is that value.
    """

    title: str
    name: str
    kind: ValueKind
    of: str | None = None
    direction: str | None = None


SUMMARY_COLUMNS: dict[BillKind, dict[str, SummaryColumn]] = {
    kind: {
        c.title: c
        for c in (
            (
                SummaryColumn("总交易单数", "row_count", "count"),
                SummaryColumn("应结订单总金额", "settlement_amount_fen", "yuan", "settlement_amount_fen"),
                SummaryColumn("退款总金额", "refund_amount_fen", "yuan", "refund_amount_fen"),
                SummaryColumn("充值券退款总金额", "recharge_coupon_refund_fen", "yuan", "recharge_coupon_refund_fen"),
                SummaryColumn("手续费总金额", "fee_millifen", "fee", "fee_millifen"),
                SummaryColumn("订单总金额", "order_amount_fen", "yuan", "order_amount_fen"),
                SummaryColumn("申请退款总金额", "requested_refund_fen", "yuan", "requested_refund_fen"),
                # old format (inferred from v2 captures; unknown titles are kept and reported, not checked)
                SummaryColumn("总交易额", "legacy_total_amount_fen", "yuan", "legacy_total_amount_fen"),
                SummaryColumn("总退款金额", "refund_amount_fen", "yuan", "refund_amount_fen"),
                SummaryColumn(
                    "总企业红包退款金额", "legacy_red_packet_refund_fen", "yuan", "legacy_red_packet_refund_fen"
                ),
            )
            if kind.is_trade
            else (
                SummaryColumn("资金流水总笔数", "row_count", "count"),
                SummaryColumn("收入笔数", "income_count", "count", None, "收入"),
                SummaryColumn("收入金额", "income_amount_fen", "yuan", "amount_fen", "收入"),
                SummaryColumn("支出笔数", "expense_count", "count", None, "支出"),
                SummaryColumn("支出金额", "expense_amount_fen", "yuan", "amount_fen", "支出"),
            )
        )
    }
    for kind in BillKind
}
"""Known summary columns per kind, by title. A SUCCESS bill may print 4 or all 7 trade ones (spec §6.2)."""

_TRADE_SUMMARY = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)
SUMMARY_HEADERS: dict[BillKind, tuple[str, ...]] = {
    BillKind.TRADE_ALL: _TRADE_SUMMARY,
    BillKind.TRADE_SUCCESS: ("总交易单数", "应结订单总金额", "手续费总金额", "订单总金额"),
    BillKind.TRADE_REFUND: _TRADE_SUMMARY,
    BillKind.FUND_FLOW: ("资金流水总笔数", "收入笔数", "收入金额", "支出笔数", "支出金额"),
}
"""Summary headers as the current docs print them. SUCCESS: the documented 4 columns (captures show 7)."""


# --- values ---------------------------------------------------------------------------------


def _where(file: str, line: int | None, field: str | None) -> dict:
    return {"file": file, "line": line, "field": field}


def yuan_to_fen(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> int:
    """``"128.00" -> 12800``. Exactly ``-?[0-9]+\\.[0-9]{2}``, else :class:`BillFormatError`."""
    if not _YUAN.fullmatch(text):
        raise BillFormatError(f"amount {text!r} is not yuan with exactly 2 decimals", **_where(file, line, field))
    return int(text.replace(".", "", 1))


def fee_to_millifen(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> int:
    """``"0.77000" -> 77000`` milli-fen (1/1000 fen). Exactly ``-?[0-9]+\\.[0-9]{5}``."""
    if not _FEE.fullmatch(text):
        raise BillFormatError(f"fee {text!r} is not yuan with exactly 5 decimals", **_where(file, line, field))
    return int(text.replace(".", "", 1))


def parse_rate(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> Decimal:
    """``"0.60%" -> Decimal("0.0060")``: the exact fraction."""
    if not _RATE.fullmatch(text):
        raise BillFormatError(f"fee rate {text!r} is not a percentage like 0.60%", **_where(file, line, field))
    return Decimal(text[:-1]) / 100


def parse_time(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> datetime:
    """``"2025-03-10 09:15:02"`` (Beijing) -> an aware datetime in Asia/Shanghai."""
    if not _TIME.fullmatch(text):
        raise BillFormatError(f"time {text!r} is not yyyy-MM-dd HH:mm:ss", **_where(file, line, field))
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except ValueError as exc:
        raise BillFormatError(f"time {text!r}: {exc}", **_where(file, line, field)) from None


def parse_count(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> int:
    """A summary count: ``"3" -> 3``; ``"20.0" -> 20`` (fund-flow v2 sample). ``"2.5"`` is an error."""
    if not _COUNT.fullmatch(text):
        raise BillFormatError(f"count {text!r} is not a whole number", **_where(file, line, field))
    return int(text.split(".", 1)[0])


def format_yuan(fen: int) -> str:
    """``12800 -> "128.00"``, ``-5 -> "-0.05"``."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"


def format_fee(millifen: int) -> str:
    """``77000 -> "0.77000"``, ``-12000 -> "-0.12000"``."""
    sign = "-" if millifen < 0 else ""
    whole, part = divmod(abs(millifen), 100_000)
    return f"{sign}{whole}.{part:05d}"


def format_rate(rate: Decimal | str) -> str:
    """``Decimal("0.006") -> "0.60%"`` (at least 2 decimals, more only when the rate needs them)."""
    pct = _rate_fraction(rate) * 100
    text = format(pct.normalize(), "f")
    whole, _, part = text.partition(".")
    return f"{whole}.{part.ljust(2, '0')}%"


def format_time(moment: datetime) -> str:
    """An aware datetime -> ``yyyy-MM-dd HH:mm:ss`` in Beijing time. Naive datetimes are refused."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no time zone; give an aware one (e.g. tzinfo=BEIJING)")
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def format_count(count: int) -> str:
    return str(count)


def _rate_fraction(rate: Decimal | str) -> Decimal:
    if isinstance(rate, str):
        return parse_rate(rate)
    if isinstance(rate, Decimal):
        return rate
    raise TypeError(f"a fee rate is a Decimal fraction or a '0.60%' string, not {type(rate).__name__}")


def fee_fen(amount_fen: int, rate: Decimal | str) -> int:
    """The fee of one row in fen: ``round_half_up(amount × rate)`` to the fen (spec §6.3, inferred rule).

    ``rate`` is an exact fraction (``Decimal("0.006")``) or the bill's percent text (``"0.60%"``);
    floats are refused. Half-up is symmetric, so a refund's (negative) fee is the negated fee of
    the same positive amount: ``fee_fen(12800, "0.60%") == 77``, ``fee_fen(-2000, "0.60%") == -12``.
    Multiply by 1000 for the milli-fen the bill prints (``format_fee(fee_fen(...) * 1000)``).
    """
    exact = Decimal(amount_fen) * _rate_fraction(rate)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- lines ----------------------------------------------------------------------------------


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
