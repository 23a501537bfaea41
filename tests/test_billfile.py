"""Unit tests of the bill format: wxpay.billfile, the renderer and the large-bill generator."""

from __future__ import annotations

import gzip
import hashlib
from datetime import datetime
from decimal import Decimal

import pytest

from wxpay.billfile import (
    HEADERS,
    SUMMARY_HEADERS,
    BillKind,
    bill_kind_for_type,
    bill_type_label,
    detect_kind,
    fee_fen,
    fee_to_millifen,
    format_fee,
    format_rate,
    format_time,
    format_yuan,
    parse_count,
    parse_header,
    parse_rate,
    parse_summary,
    parse_time,
    split_values,
    yuan_to_fen,
)
from wxpay.errors import BillFormatError
from wxpay.models import BEIJING
from wxpay.sim.billgen import generate_trade_bill
from wxpay.sim.billrender import render_bill, render_fund_flow_bill, render_trade_bill, summarise

# The example of spec §6.4, line by line.
SPEC_EXAMPLE_LINES = [
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
    "手续费,费率,订单金额,申请退款金额,费率备注",
    "`2025-03-10 00:01:13,`wxd678efh567hg6787,`1900000109,`0,`,`4200002601202503100011112222,`SUB20250309B002,"
    "`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`35.50,`0.00,`0,`0,`0.00,`0.00,`,`,`Course B,"
    "`cmb=C20250309099,`0.21000,`0.60%,`35.50,`0.00,`",
    "`2025-03-10 09:15:02,`wxd678efh567hg6787,`1900000109,`0,`,`4200002601202503101234567890,`SUB20250310A001,"
    "`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`128.00,`0.00,`0,`0,`0.00,`0.00,`,`,`Course A,"
    "`cmb=C20250310001,`0.77000,`0.60%,`128.00,`0.00,`",
    "`2025-03-10 14:20:45,`wxd678efh567hg6787,`1900000109,`0,`,`4200002601202503085555666677,`SUB20250308C003,"
    "`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300902012025031098765432101,"
    "`RF20250310001,`20.00,`0.00,`ORIGINAL,`SUCCESS,`Course C,`cmb=C20250308042,`-0.12000,`0.60%,`0.00,`20.00,`",
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额",
    "`3,`163.50,`20.00,`0.00,`0.86000,`163.50,`20.00",
]
SPEC_EXAMPLE_SHA1 = "1aa6884effcea91b1d0a9fecb81757576c5def83"


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)


def spec_example_rows() -> list[dict]:
    """The three rows of spec §6.4 as typed rows (fen, milli-fen, aware datetimes)."""
    base = {
        "appid": "wxd678efh567hg6787",
        "mchid": "1900000109",
        "sub_mchid": "0",
        "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "trade_type": "NATIVE",
        "bank_type": "OTHERS",
        "currency": "CNY",
        "fee_rate": Decimal("0.006"),
        "refund_id": "0",
        "out_refund_no": "0",
    }
    return [
        {
            **base,
            "trade_time": at("2025-03-10 00:01:13"),
            "transaction_id": "4200002601202503100011112222",
            "out_trade_no": "SUB20250309B002",
            "trade_state": "SUCCESS",
            "settlement_amount_fen": 3550,
            "order_amount_fen": 3550,
            "fee_millifen": fee_fen(3550, "0.60%") * 1000,
            "description": "Course B",
            "attach": "cmb=C20250309099",
        },
        {
            **base,
            "trade_time": at("2025-03-10 09:15:02"),
            "transaction_id": "4200002601202503101234567890",
            "out_trade_no": "SUB20250310A001",
            "trade_state": "SUCCESS",
            "settlement_amount_fen": 12800,
            "order_amount_fen": 12800,
            "fee_millifen": fee_fen(12800, "0.60%") * 1000,
            "description": "Course A",
            "attach": "cmb=C20250310001",
        },
        {
            **base,
            "trade_time": at("2025-03-10 14:20:45"),
            "transaction_id": "4200002601202503085555666677",
            "out_trade_no": "SUB20250308C003",
            "trade_state": "REFUND",
            "refund_id": "50300902012025031098765432101",
            "out_refund_no": "RF20250310001",
            "refund_amount_fen": 2000,
            "requested_refund_fen": 2000,
            "refund_type": "ORIGINAL",
            "refund_status": "SUCCESS",
            "fee_millifen": -fee_fen(2000, "0.60%") * 1000,
            "description": "Course C",
            "attach": "cmb=C20250308042",
        },
    ]


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [("128.00", 12800), ("0.00", 0), ("0.01", 1), ("-0.05", -5), ("19.99", 1999), ("0.29", 29), ("0.57", 57)],
)
def test_yuan_to_fen_is_exact(text, fen):
    assert yuan_to_fen(text) == fen


@pytest.mark.parametrize("text", ["3.315", "12.3", "12", "1e2", "+1.00", " 1.00", "1,000.00", "１.00", "", "-.50"])
def test_yuan_to_fen_refuses_anything_but_two_decimals(text):
    with pytest.raises(BillFormatError) as info:
        yuan_to_fen(text, file="bill.csv", line=7, field="订单金额")
    assert info.value.file == "bill.csv"
    assert info.value.line == 7
    assert info.value.field == "订单金额"
    assert "bill.csv:7" in str(info.value)


def test_fees_are_kept_in_millifen():
    assert fee_to_millifen("0.77000") == 77000
    assert fee_to_millifen("-0.12000") == -12000
    assert fee_to_millifen("0.00000") == 0
    assert fee_to_millifen("12.34567") == 1234567
    with pytest.raises(BillFormatError):
        fee_to_millifen("0.77")


@pytest.mark.parametrize(
    ("amount", "rate", "fee"),
    [
        (12800, "0.60%", 77),  # 76.8 -> 77
        (3550, "0.60%", 21),  # 21.3 -> 21
        (6000, "0.54%", 32),  # 32.4 -> 32 (spec §6.3)
        (1, "0.60%", 0),  # 0.006 -> 0
        (250, "0.60%", 2),  # exactly 1.5 -> 2
        (2500, "0.38%", 10),  # exactly 9.5 -> 10
        (1250, "0.20%", 3),  # exactly 2.5 -> 3 (banker's rounding would give 2)
        (-1250, "0.20%", -3),  # symmetric for refunds
        (-2000, "0.60%", -12),
        (12800, Decimal("0.006"), 77),
    ],
)
def test_fee_fen_rounds_half_up(amount, rate, fee):
    assert fee_fen(amount, rate) == fee


def test_fee_fen_refuses_float_rates():
    with pytest.raises(TypeError):
        fee_fen(12800, 0.006)


def test_formatters_invert_the_parsers():
    for fen in (0, 1, -5, 12800, 16350, -2000, 123456789):
        assert yuan_to_fen(format_yuan(fen)) == fen
    for millifen in (0, 77000, -12000, 86000, 1):
        assert fee_to_millifen(format_fee(millifen)) == millifen
    assert format_yuan(-5) == "-0.05"
    assert format_fee(-12000) == "-0.12000"
    assert format_rate(Decimal("0.006")) == "0.60%"
    assert format_rate("0.375%") == "0.375%"
    assert parse_rate("0.60%") == Decimal("0.006")
    assert format_time(at("2025-03-10 09:15:02")) == "2025-03-10 09:15:02"


def test_times_are_beijing_and_strict():
    moment = parse_time("2025-03-10 00:01:13")
    assert moment.utcoffset().total_seconds() == 8 * 3600
    assert moment.astimezone(BEIJING).date().isoformat() == "2025-03-10"
    for bad in ("2025-3-10 00:01:13", "2025-02-30 00:00:00", "2025-03-10T00:01:13", ""):
        with pytest.raises(BillFormatError):
            parse_time(bad)
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2025, 3, 10))


def test_counts_accept_a_zero_fraction_only():
    assert parse_count("3") == 3
    assert parse_count("20.0") == 20
    with pytest.raises(BillFormatError):
        parse_count("2.5")


def test_bill_types_use_the_archive_names():
    assert bill_type_label("ALL") == "trade_all"
    assert bill_type_label("trade_refund") == "trade_refund"
    assert bill_type_label("BASIC") == "fundflow_basic"
    assert bill_kind_for_type("fundflow_fees") is BillKind.FUND_FLOW
    assert bill_kind_for_type("SUCCESS") is BillKind.TRADE_SUCCESS
    with pytest.raises(ValueError, match="unknown bill type"):
        bill_type_label("ALL_SPECIAL")


# --- headers --------------------------------------------------------------------------------


def test_headers_have_the_documented_widths():
    assert {kind: len(titles) for kind, titles in HEADERS.items()} == {
        BillKind.TRADE_ALL: 27,
        BillKind.TRADE_SUCCESS: 20,
        BillKind.TRADE_REFUND: 29,
        BillKind.FUND_FLOW: 11,
    }
    assert HEADERS[BillKind.TRADE_ALL] == tuple(SPEC_EXAMPLE_LINES[0].split(","))
    assert HEADERS[BillKind.TRADE_REFUND][14:16] == ("退款申请时间", "退款成功时间")


@pytest.mark.parametrize("kind", list(BillKind))
def test_detect_kind_reads_titles_with_bom_and_crlf(kind):
    line = "\ufeff" + ",".join(HEADERS[kind]) + "\r\n"
    assert detect_kind(line) is kind
    header = parse_header(line, kind=kind)
    assert header.bom
    assert header.crlf
    assert header.extra_columns == ()
    assert header.titles[0] in ("交易时间", "记账时间")  # the BOM is gone


def test_columns_are_found_by_title_not_position():
    titles = list(reversed(HEADERS[BillKind.TRADE_ALL]))
    header = parse_header(",".join(titles), kind=BillKind.TRADE_ALL)
    assert header.columns[0].name == "fee_rate_remark"
    assert header.columns[-1].name == "trade_time"
    assert header.known["order_amount_fen"].title == "订单金额"


def test_old_format_header_still_parses():
    old = (*HEADERS[BillKind.TRADE_ALL][:12], "总金额", "企业红包金额", *HEADERS[BillKind.TRADE_ALL][14:24])
    header = parse_header(",".join(old), kind=BillKind.TRADE_ALL)
    assert header.known["legacy_total_amount_fen"].title == "总金额"
    assert "应结订单金额" in header.absent_columns
    assert "订单金额" in header.absent_columns
    assert header.extra_columns == ()


def test_missing_required_column_names_column_and_file():
    titles = [t for t in HEADERS[BillKind.TRADE_ALL] if t != "商户订单号"]
    with pytest.raises(BillFormatError) as info:
        parse_header(",".join(titles), file="1900000109_20250310.csv", kind=BillKind.TRADE_ALL)
    assert info.value.field == "商户订单号"
    assert "商户订单号" in str(info.value)
    assert "1900000109_20250310.csv:1" in str(info.value)


def test_extra_columns_are_allowed_and_reported():
    header = parse_header(",".join([*HEADERS[BillKind.TRADE_ALL], "营销活动ID"]), kind=BillKind.TRADE_ALL)
    assert header.extra_columns == ("营销活动ID",)
    assert header.columns[-1] is None


def test_header_refuses_duplicates_wrong_kind_and_data_lines():
    with pytest.raises(BillFormatError, match="twice"):
        parse_header(",".join([*HEADERS[BillKind.TRADE_ALL], "商户号"]))
    with pytest.raises(BillFormatError, match="SUCCESS bill, expected ALL"):
        parse_header(",".join(HEADERS[BillKind.TRADE_SUCCESS]), kind=BillKind.TRADE_ALL)
    with pytest.raises(BillFormatError, match="backticked"):
        parse_header(SPEC_EXAMPLE_LINES[1])
    with pytest.raises(BillFormatError, match="not a bill header"):
        detect_kind("a,b,c")


def test_split_values_strips_one_backtick_each():
    assert split_values("`a,`,`b`c\r\n") == ["a", "", "b`c"]
    with pytest.raises(BillFormatError) as info:
        split_values("`a,b", file="f.csv", line_no=9)
    assert info.value.line == 9


# --- summary --------------------------------------------------------------------------------


def test_summary_of_the_spec_example():
    summary = parse_summary(SPEC_EXAMPLE_LINES[4], SPEC_EXAMPLE_LINES[5], kind=BillKind.TRADE_ALL)
    assert summary.values == {
        "row_count": 3,
        "settlement_amount_fen": 16350,
        "refund_amount_fen": 2000,
        "recharge_coupon_refund_fen": 0,
        "fee_millifen": 86000,
        "order_amount_fen": 16350,
        "requested_refund_fen": 2000,
    }
    assert summary.extra == {}


def test_success_summary_may_have_four_or_seven_columns():
    four = parse_summary(
        "总交易单数,应结订单总金额,手续费总金额,订单总金额", "`2,`163.50,`0.98000,`163.50", kind=BillKind.TRADE_SUCCESS
    )
    assert four.values == {
        "row_count": 2,
        "settlement_amount_fen": 16350,
        "fee_millifen": 98000,
        "order_amount_fen": 16350,
    }
    seven = parse_summary(
        SPEC_EXAMPLE_LINES[4], "`2,`163.50,`0.00,`0.00,`0.98000,`163.50,`0.00", kind=BillKind.TRADE_SUCCESS
    )
    assert seven.values["refund_amount_fen"] == 0
    assert len(seven.columns) == 7


def test_fund_flow_summary_counts_may_print_as_decimals():
    summary = parse_summary(
        ",".join(SUMMARY_HEADERS[BillKind.FUND_FLOW]), "`20.0,`18.0,`1127.23,`2.0,`20.00", kind=BillKind.FUND_FLOW
    )
    assert summary.values == {
        "row_count": 20,
        "income_count": 18,
        "income_amount_fen": 112723,
        "expense_count": 2,
        "expense_amount_fen": 2000,
    }


def test_summary_errors_name_the_value_line_and_field():
    with pytest.raises(BillFormatError) as info:
        parse_summary(SPEC_EXAMPLE_LINES[4], "`3,`163.5,`20.00,`0.00,`0.86000,`163.50,`20.00",
                      kind=BillKind.TRADE_ALL, file="b.csv", line=5)  # fmt: skip
    assert (info.value.line, info.value.field) == (6, "应结订单总金额")
    with pytest.raises(BillFormatError, match="7 titles but 6 values"):
        parse_summary(SPEC_EXAMPLE_LINES[4], "`3,`163.50,`20.00,`0.00,`0.86000,`163.50", kind=BillKind.TRADE_ALL)
    with pytest.raises(BillFormatError, match="总交易单数"):
        parse_summary("应结订单总金额", "`1.00", kind=BillKind.TRADE_ALL)


def test_unknown_summary_columns_are_kept_not_checked():
    summary = parse_summary("总交易单数,营销总金额", "`1,`9.99", kind=BillKind.TRADE_ALL)
    assert summary.values == {"row_count": 1}
    assert summary.extra == {"营销总金额": "9.99"}


# --- renderer -------------------------------------------------------------------------------


def test_renderer_reproduces_the_spec_example_byte_for_byte():
    expected = ("\r\n".join(SPEC_EXAMPLE_LINES) + "\r\n").encode("utf-8")
    assert hashlib.sha1(expected).hexdigest() == SPEC_EXAMPLE_SHA1
    rendered = render_trade_bill(spec_example_rows(), bom=False)
    assert rendered == expected


def test_renderer_defaults_to_bom_and_crlf_and_switches():
    rendered = render_trade_bill(spec_example_rows())
    assert rendered.startswith(b"\xef\xbb\xbf\xe4\xba\xa4")  # BOM then 交
    assert rendered.endswith(b"`20.00\r\n")
    assert rendered.count(b"\r\n") == 6
    lf = render_trade_bill(spec_example_rows(), bom=False, crlf=False, trailing_newline=False)
    assert b"\r" not in lf
    assert lf.endswith(b"`20.00")
    assert lf.decode().split("\n") == SPEC_EXAMPLE_LINES


def test_renderer_computes_the_summary_and_can_lie_on_request():
    rows = spec_example_rows()
    assert summarise(BillKind.TRADE_ALL, rows)["fee_millifen"] == 86000
    lying = render_trade_bill(rows, summary_override={"order_amount_fen": 1})
    assert lying.decode("utf-8-sig").splitlines()[-1] == "`3,`163.50,`20.00,`0.00,`0.86000,`0.01,`20.00"


def test_renderer_success_refund_and_fund_flow_layouts():
    rows = spec_example_rows()
    success = render_trade_bill(rows[1:2], bill_type="SUCCESS", bom=False).decode().splitlines()
    assert success[1] == (
        "`2025-03-10 09:15:02,`wxd678efh567hg6787,`1900000109,`0,`,`4200002601202503101234567890,`SUB20250310A001,"
        "`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`128.00,`0.00,`Course A,`cmb=C20250310001,"
        "`0.77000,`0.60%,`128.00,`"
    )  # spec §6.4, the SUCCESS-type row
    assert success[2:] == ["总交易单数,应结订单总金额,手续费总金额,订单总金额", "`1,`128.00,`0.77000,`128.00"]
    refund_row = {
        **rows[2],
        "refund_applied_at": at("2025-03-10 14:20:45"),
        "refund_succeeded_at": at("2025-03-10 14:20:49"),
    }
    refund = render_trade_bill([refund_row], bill_type="REFUND", bom=False).decode().splitlines()
    assert refund[1] == (
        "`2025-03-10 14:20:45,`wxd678efh567hg6787,`1900000109,`0,`,`4200002601202503085555666677,`SUB20250308C003,"
        "`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`2025-03-10 14:20:45,"
        "`2025-03-10 14:20:49,`50300902012025031098765432101,`RF20250310001,`20.00,`0.00,`ORIGINAL,`SUCCESS,"
        "`Course C,`cmb=C20250308042,`-0.12000,`0.60%,`0.00,`20.00,`"
    )  # spec §6.4, the REFUND-type row
    flow = render_fund_flow_bill(
        [
            {
                "booked_at": at("2025-03-10 09:15:03"),
                "business_no": "4200002601202503101234567890",
                "flow_no": "4200002601202503101234567890",
                "business_name": "交易",
                "business_type": "交易",
                "direction": "收入",
                "amount_fen": 12723,
                "balance_fen": 112723,
                "applicant": "system",
                "remark": "结算总金额 128.00 元;含手续费 0.77 元",
                "voucher_no": "SUB20250310A001",
            }
        ],
        bom=False,
    ).decode()
    assert flow.splitlines()[1:] == [
        "`2025-03-10 09:15:03,`4200002601202503101234567890,`4200002601202503101234567890,`交易,`交易,`收入,`127.23,"
        "`1127.23,`system,`结算总金额 128.00 元;含手续费 0.77 元,`SUB20250310A001",
        "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额",
        "`1,`1,`127.23,`0,`0.00",
    ]  # spec §6.5


def test_renderer_refuses_values_that_break_the_format():
    with pytest.raises(ValueError, match="break the bill format"):
        render_trade_bill([{**spec_example_rows()[0], "description": "two\r\nlines"}])
    with pytest.raises(TypeError):
        render_trade_bill([{**spec_example_rows()[0], "order_amount_fen": Decimal("35.50")}])
    with pytest.raises(ValueError, match="not a trade bill"):
        render_trade_bill([], bill_type="FUNDFLOW")


def test_renderer_can_drop_and_add_columns():
    titles = [*HEADERS[BillKind.TRADE_ALL], "营销活动ID"]
    text = render_bill(
        BillKind.TRADE_ALL, [{**spec_example_rows()[0], "营销活动ID": "A1"}], titles=titles, bom=False
    ).decode()
    assert text.splitlines()[0].endswith(",费率备注,营销活动ID")
    assert text.splitlines()[1].endswith(",`,`A1")


# --- generator ------------------------------------------------------------------------------


def test_generator_is_deterministic_and_realistic(tmp_path):
    first = generate_trade_bill(tmp_path / "a.csv.gz", rows=5000, seed=7, chunk_rows=1500)
    again = generate_trade_bill(tmp_path / "b.csv.gz", rows=5000, seed=7, chunk_rows=1500)
    other = generate_trade_bill(tmp_path / "c.csv.gz", rows=5000, seed=8, chunk_rows=1500)
    assert first == again
    assert other.sha1 != first.sha1

    data = gzip.decompress((tmp_path / "a.csv.gz").read_bytes())
    assert hashlib.sha1(data).hexdigest() == first.sha1
    assert len(data) == first.uncompressed_bytes
    lines = data.decode("utf-8-sig").split("\r\n")
    assert lines[-1] == ""  # trailing CRLF
    header, rows, summary = lines[0], lines[1:-3], lines[-3:-1]
    assert parse_header(header).kind is BillKind.TRADE_ALL
    assert len(rows) == first.row_count == 5000
    cells = [split_values(row) for row in rows]
    refunds = [c for c in cells if c[9] == "REFUND"]
    assert len(refunds) == first.refund_rows
    assert 0.02 < len(refunds) / len(rows) < 0.04
    assert all(len(c[5]) == 28 and c[5].startswith("42000") for c in cells)
    assert all(len(c[14]) == 29 and c[14].startswith("503") for c in refunds)
    assert all(c[24] == "0.00" and fee_to_millifen(c[22]) <= 0 for c in refunds)
    assert len({c[6] for c in cells}) == first.distinct_out_trade_no < first.row_count
    assert sum(yuan_to_fen(c[24]) for c in cells) == first.order_amount_fen
    assert sum(fee_to_millifen(c[22]) for c in cells) == first.fee_millifen
    for c in cells[:200]:  # fee = round_half_up(amount × rate)
        amount = yuan_to_fen(c[12]) if c[9] == "SUCCESS" else -yuan_to_fen(c[16])
        assert fee_to_millifen(c[22]) == fee_fen(amount, c[23]) * 1000
    assert any("\u4e00" <= ch <= "\u9fff" for ch in cells[0][20])  # a Chinese product name
    parsed = parse_summary(summary[0], summary[1], kind=BillKind.TRADE_ALL)
    assert parsed.values["row_count"] == 5000
    assert parsed.values["settlement_amount_fen"] == first.settlement_amount_fen


def test_generator_can_inject_a_bad_amount(tmp_path):
    fp = generate_trade_bill(tmp_path / "bad.csv.gz", rows=100, seed=1, bad_amount_row=3)
    lines = gzip.decompress((tmp_path / "bad.csv.gz").read_bytes()).decode("utf-8-sig").split("\r\n")
    assert fp.bad_line == 5
    assert split_values(lines[4])[12] == "3.315"
