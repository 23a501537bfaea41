"""Request models refuse what WeChat Pay would refuse; response models tolerate what it may send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import combine_request
from wxpay.errors import RequestValidationError
from wxpay.models import (
    BEIJING,
    CombineNativeRequest,
    CombineOrder,
    format_rfc3339,
    validate_request,
)


def body(**changes):
    base = combine_request().model_dump(mode="json", exclude_none=True)
    base.update(changes)
    return base


def sub(i=1, **changes):
    item = {
        "mchid": "1900000101",
        "attach": "cmb=C1",
        "amount": {"total_amount": 100},
        "out_trade_no": f"SUBNO{i}X",
        "description": "课程",
    }
    item.update(changes)
    return item


def test_a_valid_request_serialises_to_the_wire_shape():
    wire = combine_request().wire()
    assert wire["sub_orders"][0]["amount"] == {"total_amount": 12800, "currency": "CNY"}
    assert "scene_info" not in wire
    assert "time_expire" not in wire


@pytest.mark.parametrize("count", [0, 1, 11])
def test_two_to_ten_sub_orders(count):
    with pytest.raises(RequestValidationError, match="sub_orders"):
        validate_request(CombineNativeRequest, body(sub_orders=[sub(i) for i in range(count)]))


def test_ten_sub_orders_are_fine():
    assert len(validate_request(CombineNativeRequest, body(sub_orders=[sub(i) for i in range(10)])).sub_orders) == 10


@pytest.mark.parametrize("amount", [0, -1, 12.5, "100", True, None])
def test_amounts_are_positive_integer_fen(amount):
    with pytest.raises(RequestValidationError, match="total_amount"):
        validate_request(CombineNativeRequest, body(sub_orders=[sub(1, amount={"total_amount": amount}), sub(2)]))


def test_attach_is_required():
    item = sub(1)
    del item["attach"]
    with pytest.raises(RequestValidationError, match="attach"):
        validate_request(CombineNativeRequest, body(sub_orders=[item, sub(2)]))


@pytest.mark.parametrize("number", ["C1234", "C" * 33, "C2025 0310", "C2025@0310", "订单20250310"])
def test_order_number_charset_and_length(number):
    with pytest.raises(RequestValidationError, match="combine_out_trade_no"):
        validate_request(CombineNativeRequest, body(combine_out_trade_no=number))


def test_order_number_allows_the_documented_punctuation():
    assert validate_request(CombineNativeRequest, body(combine_out_trade_no="C_2025-03|10*1"))


def test_duplicate_sub_order_numbers_are_refused():
    with pytest.raises(RequestValidationError, match="unique"):
        validate_request(CombineNativeRequest, body(sub_orders=[sub(1), sub(1)]))


def test_currency_is_cny():
    with pytest.raises(RequestValidationError, match="currency"):
        validate_request(
            CombineNativeRequest, body(sub_orders=[sub(1, amount={"total_amount": 1, "currency": "USD"}), sub(2)])
        )


@pytest.mark.parametrize(
    "url",
    [
        "https://m.example.com/notify?x=1",
        "https://m.example.com/notify#frag",
        "http://m.example.com/notify",
        "/notify",
        "ftp://m.example.com/notify",
    ],
)
def test_notify_url_is_https_without_a_query(url):
    with pytest.raises(RequestValidationError, match="notify_url"):
        validate_request(CombineNativeRequest, body(notify_url=url))


def test_plain_http_is_allowed_on_loopback_for_the_simulator():
    assert validate_request(CombineNativeRequest, body(notify_url="http://127.0.0.1:8080/notify"))


def test_times_are_rfc3339_in_plus_eight():
    utc = datetime(2026, 11, 26, 1, 2, 3, 456000, tzinfo=UTC)
    request = validate_request(CombineNativeRequest, body(time_expire=utc.isoformat()))
    assert request.wire()["time_expire"] == "2026-11-26T09:02:03+08:00"
    assert format_rfc3339(datetime(2026, 11, 26, 23, 59, 59, tzinfo=BEIJING)) == "2026-11-26T23:59:59+08:00"


def test_naive_times_are_refused():
    with pytest.raises(RequestValidationError, match="time_start"):
        validate_request(CombineNativeRequest, body(time_start="2026-11-26T09:00:00"))


def test_expire_after_start():
    start = datetime(2026, 11, 26, 9, tzinfo=BEIJING)
    with pytest.raises(RequestValidationError, match="time_expire"):
        validate_request(
            CombineNativeRequest,
            body(time_start=start.isoformat(), time_expire=(start - timedelta(minutes=1)).isoformat()),
        )


def test_four_byte_characters_are_refused():
    with pytest.raises(RequestValidationError, match="description"):
        validate_request(CombineNativeRequest, body(sub_orders=[sub(1, description="课程 😀"), sub(2)]))


def test_scene_info_needs_a_payer_ip():
    with pytest.raises(RequestValidationError, match="payer_client_ip"):
        validate_request(CombineNativeRequest, body(scene_info={"device_id": "POS1"}))
    with pytest.raises(RequestValidationError, match="payer_client_ip"):
        validate_request(CombineNativeRequest, body(scene_info={"payer_client_ip": "not an ip"}))
    assert validate_request(CombineNativeRequest, body(scene_info={"payer_client_ip": "2001:db8::1"}))


def test_unknown_request_fields_are_refused():
    with pytest.raises(RequestValidationError, match="colour"):
        validate_request(CombineNativeRequest, body(colour="red"))


PAID = {
    "combine_appid": "wxd678efh567hg6787",
    "combine_mchid": "1900000100",
    "combine_out_trade_no": "C20250310001",
    "scene_info": {"device_id": "POS1:1"},
    "combine_payer_info": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "sub_orders": [
        {
            "mchid": "1900000109",
            "trade_type": "NATIVE",
            "trade_state": "SUCCESS",
            "bank_type": "OTHERS",
            "attach": "cmb=C20250310001",
            "success_time": "2025-03-10T09:15:02+08:00",
            "transaction_id": "4200002601202503101234567890",
            "out_trade_no": "SUB20250310A001",
            "amount": {"total_amount": 12800, "currency": "CNY", "payer_amount": 12800, "payer_currency": "CNY"},
        }
    ],
}


def test_the_spec_query_example_parses():
    order = CombineOrder.model_validate(PAID)
    assert order.trade_state == "SUCCESS"
    assert order.total_amount == 12800
    assert order.sub_orders[0].success_time == datetime(2025, 3, 10, 9, 15, 2, tzinfo=BEIJING)
    assert order.combine_transaction_id is None
    assert "oUpF8u" not in repr(order)


def test_success_time_with_milliseconds_and_combine_transaction_id():
    data = {**PAID, "combine_transaction_id": "1217752501201407033233368018"}
    data["sub_orders"] = [{**PAID["sub_orders"][0], "success_time": "2015-05-20T13:29:35.120+08:00"}]
    order = CombineOrder.model_validate(data)
    assert order.sub_orders[0].success_time.microsecond == 120000
    assert order.combine_transaction_id == "1217752501201407033233368018"


def test_unpaid_order_without_payment_fields_and_with_unknown_new_fields():
    data = {k: v for k, v in PAID.items() if k not in ("combine_payer_info",)}
    data["sub_orders"] = [
        {
            "mchid": "1900000109",
            "trade_state": "NOTPAY",
            "out_trade_no": "SUB20250310A001",
            "amount": {"total_amount": 12800, "currency": "CNY"},
            "brand_new_field": 1,
        }
    ]
    order = CombineOrder.model_validate(data)
    assert order.trade_state == "NOTPAY"
    assert order.sub_orders[0].success_time is None
    assert order.sub_orders[0].transaction_id is None
    assert order.combine_payer_info is None
