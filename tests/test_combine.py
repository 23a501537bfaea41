"""Combine orders through the client against the simulator's state machine (MockTransport)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import wxpay
from tests.conftest import INITIATOR, PARTICIPANTS, combine_request
from wxpay.combine import close_request_for
from wxpay.errors import (
    InvalidRequestError,
    OrderClosedError,
    OrderNotFoundError,
    OrderPaidError,
    PermissionDeniedError,
    RequestValidationError,
)


def test_create_query_pay_query(sim, client):
    request = combine_request()
    code_url = client.combine.create_native(request)
    assert code_url.startswith("weixin://wxpay/bizpayurl/up?pr=")
    assert code_url.endswith("&groupid=00")

    unpaid = client.combine.query("C20261126001")
    assert unpaid.trade_state == "NOTPAY"
    assert unpaid.total_amount == 12800 + 3550
    assert all(s.transaction_id is None and s.success_time is None for s in unpaid.sub_orders)
    assert unpaid.combine_payer_info is None

    sim.pay(INITIATOR, "C20261126001", deliver=False)
    paid = client.combine.query("C20261126001")
    assert paid.trade_state == "SUCCESS"
    assert [s.mchid for s in paid.sub_orders] == list(PARTICIPANTS)
    assert len({s.success_time for s in paid.sub_orders}) == 1  # all sub orders at once
    ids = [s.transaction_id for s in paid.sub_orders]
    assert len(set(ids)) == 2
    assert all(len(i) == 28 and i.startswith("42000") for i in ids)
    assert paid.sub_orders[0].amount.payer_amount == 12800
    assert paid.sub_orders[0].success_time.utcoffset() == timedelta(hours=8)


def test_close_an_unpaid_order_then_again(sim, client):
    request = combine_request()
    client.combine.create_native(request)
    assert client.combine.close("C20261126001", request) is None
    assert client.combine.query("C20261126001").trade_state == "CLOSED"
    with pytest.raises(OrderClosedError):
        client.combine.close("C20261126001", request)
    with pytest.raises(wxpay.ApiError, match=r"PAY|CLOSED"):
        sim.pay(INITIATOR, "C20261126001")


def test_close_must_name_every_sub_order_as_created(client):
    request = combine_request()
    client.combine.create_native(request)
    subset = close_request_for(request).model_copy(update={"sub_orders": close_request_for(request).sub_orders[:1]})
    with pytest.raises(InvalidRequestError, match="INVALID_REQUEST"):
        client.combine.close("C20261126001", subset)
    wrong_mchid = {
        "combine_appid": request.combine_appid,
        "sub_orders": [{"mchid": PARTICIPANTS[1], "out_trade_no": s.out_trade_no} for s in request.sub_orders],
    }
    with pytest.raises(InvalidRequestError):
        client.combine.close("C20261126001", wrong_mchid)
    assert client.combine.query("C20261126001").trade_state == "NOTPAY"


def test_a_paid_order_cannot_be_closed(sim, client):
    client.combine.create_native(combine_request())
    sim.pay(INITIATOR, "C20261126001", deliver=False)
    with pytest.raises(OrderPaidError) as info:
        client.combine.close("C20261126001", combine_request())
    assert info.value.code == "ORDER_PAID"
    assert not info.value.retryable


def test_paid_close_code_is_configurable(sim, client):
    sim.options.paid_close_code = "ORDERPAID"
    client.combine.create_native(combine_request())
    sim.pay(INITIATOR, "C20261126001", deliver=False)
    with pytest.raises(OrderPaidError) as info:
        client.combine.close("C20261126001", combine_request())
    assert info.value.code == "ORDERPAID"


def test_unknown_order(client):
    with pytest.raises(OrderNotFoundError):
        client.combine.query("C20261126404")


def test_path_numbers_are_validated_before_sending(client):
    with pytest.raises(RequestValidationError):
        client.combine.query("../../v3/certificates")


def test_resubmitting_the_same_order_is_idempotent_but_different_parameters_are_refused(client):
    first = client.combine.create_native(combine_request())
    second = client.combine.create_native(combine_request())
    assert first != second  # a fresh code_url for the same order
    with pytest.raises(PermissionDeniedError, match="OUT_TRADE_NO_USED"):
        client.combine.create_native(combine_request(amounts=(12800, 3551)))


def test_a_sub_order_number_cannot_be_reused_by_another_combine_order(client):
    client.combine.create_native(combine_request())
    reuse = combine_request("C20261126002").model_copy(update={"sub_orders": combine_request().sub_orders})
    with pytest.raises(PermissionDeniedError):
        client.combine.create_native(reuse)


def test_unpaid_orders_expire(sim, client):
    from datetime import datetime

    request = combine_request().model_copy(update={"time_expire": sim.clock.now() + timedelta(minutes=30)})
    client.combine.create_native(request)
    sim.advance(timedelta(minutes=31))
    assert client.combine.query("C20261126001").trade_state == "CLOSED"
    assert isinstance(sim.clock.now(), datetime)


def test_the_server_checks_merchants_and_appids(sim, client):
    unknown = combine_request().model_copy(
        update={
            "sub_orders": [
                s.model_copy(update={"mchid": "1999999999"}) if i == 0 else s
                for i, s in enumerate(combine_request().sub_orders)
            ]
        }
    )
    with pytest.raises(InvalidRequestError, match="MCH_NOT_EXISTS"):
        client.combine.create_native(unknown)
    with pytest.raises(InvalidRequestError, match="APPID_MCHID_NOT_MATCH"):
        client.combine.create_native(combine_request().model_copy(update={"combine_appid": "wx0000000000000000"}))
    with pytest.raises(InvalidRequestError, match="PARAM_ERROR"):
        client.combine.create_native(combine_request().model_copy(update={"combine_mchid": PARTICIPANTS[0]}))


def test_query_tolerates_milliseconds_and_combine_transaction_id(sim, client):
    sim.options.success_time_millis = True
    sim.options.combine_transaction_id = True
    client.combine.create_native(combine_request())
    sim.pay(INITIATOR, "C20261126001", deliver=False)
    order = client.combine.query("C20261126001")
    assert order.combine_transaction_id
    assert order.sub_orders[0].success_time is not None


def test_refunds_move_a_sub_order_to_refund(sim, client):
    client.combine.create_native(combine_request())
    sim.pay(INITIATOR, "C20261126001", deliver=False)
    refund = sim.refund(PARTICIPANTS[0], "C20261126001S1", 2000)
    assert len(refund.refund_id) == 29
    assert refund.refund_id.startswith("503")
    order = client.combine.query("C20261126001")
    assert [s.trade_state for s in order.sub_orders] == ["REFUND", "SUCCESS"]
    with pytest.raises(wxpay.ApiError, match="NOT_ENOUGH"):
        sim.refund(PARTICIPANTS[0], "C20261126001S1", 12800 - 2000 + 1)
