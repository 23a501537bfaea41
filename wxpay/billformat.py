"""The catalog of WeChat Pay trade and fund-flow bill files (spec §6): what each layout's columns are.

The four layouts (:class:`BillKind`) and the bill-type names that select them; every known detail
column by its Chinese title (:class:`Column`: warehouse name, value kind, nullability); the current
headers in order (:data:`HEADERS`); the columns reconciliation cannot do without (:data:`REQUIRED`);
the summary columns and the detail aggregates they must equal (:data:`SUMMARY_COLUMNS`,
:data:`SUMMARY_HEADERS`). Data only: parsing lines is :mod:`wxpay.billfile`, values :mod:`wxpay.billvalues`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from wxpay.billvalues import ValueKind

__all__ = [
    "FUND_FLOW_COLUMNS",
    "HEADERS",
    "REQUIRED",
    "SUMMARY_COLUMNS",
    "SUMMARY_HEADERS",
    "TRADE_COLUMNS",
    "BillKind",
    "Column",
    "SummaryColumn",
    "bill_kind_for_type",
    "bill_type_label",
    "columns_for",
]


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
