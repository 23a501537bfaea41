"""End to end over real loopback HTTP: the simulator served on 127.0.0.1, a merchant receiver
served on 127.0.0.1, the client in between."""

from __future__ import annotations

import queue

import httpx
import pytest

import wxpay
from tests.conftest import INITIATOR, PARTICIPANTS, combine_request
from wxpay.notify import failure_reply, parse_notification, success_reply
from wxpay.sim import serve


@pytest.fixture
def loopback(sim, initiator):
    received: queue.Queue = queue.Queue()

    def receive(request: httpx.Request) -> httpx.Response:
        try:
            note = parse_notification(
                request.headers, request.content, verifier=initiator.verifier(), api_v3_key=initiator.api_v3_key
            )
        except wxpay.WxPayError as exc:
            received.put(exc)
            reply = failure_reply(type(exc).__name__)
        else:
            received.put(note)
            reply = success_reply()
        return httpx.Response(reply.status, content=reply.body, headers=reply.headers)

    class Receiver:
        handle = staticmethod(receive)

    with serve(sim) as sim_server, serve(Receiver()) as receiver_server:
        yield sim_server.url, receiver_server.url, received


def test_create_pay_notify_query_and_refused_close_over_http(sim, initiator, loopback):
    sim_url, receiver_url, received = loopback
    request = combine_request(notify_url=receiver_url + "/wxpay/notify")
    with wxpay.Client(base_url=sim_url, **initiator.client_kwargs()) as client:
        code_url = client.combine.create_native(request)
        assert code_url.startswith("weixin://wxpay/bizpayurl/up?pr=")

        paid = httpx.post(
            sim_url + "/sim/pay",
            json={"combine_mchid": INITIATOR, "combine_out_trade_no": request.combine_out_trade_no},
        )
        assert paid.status_code == 200

        note = received.get(timeout=10)
        assert isinstance(note, wxpay.CombinePaymentNotification), note
        assert note.order.combine_out_trade_no == request.combine_out_trade_no
        assert [s.mchid for s in note.order.sub_orders] == list(PARTICIPANTS)
        assert note.order.total_amount == request.total_amount

        order = client.combine.query(request.combine_out_trade_no)
        assert order.trade_state == "SUCCESS"
        assert [s.transaction_id for s in order.sub_orders] == [s.transaction_id for s in note.order.sub_orders]

        with pytest.raises(wxpay.OrderPaidError) as refused:
            client.combine.close(request.combine_out_trade_no, request)
        assert refused.value.status == 400
        assert refused.value.request_id

    deliveries = httpx.get(sim_url + "/sim/deliveries").json()
    assert deliveries[0]["acknowledged"]
    assert deliveries[0]["attempts"][0]["status"] == 204


def test_async_client_over_http(sim, initiator, loopback):
    import asyncio

    sim_url, _, _ = loopback

    async def run():
        async with wxpay.AsyncClient(base_url=sim_url, **initiator.client_kwargs()) as client:
            await client.combine.create_native(combine_request("C20261126009"))
            return await client.combine.query("C20261126009")

    assert asyncio.run(run()).trade_state == "NOTPAY"


def test_a_forged_callback_over_http_is_refused(sim, initiator, loopback):
    sim_url, receiver_url, received = loopback
    with wxpay.Client(base_url=sim_url, **initiator.client_kwargs()) as client:
        client.combine.create_native(combine_request(notify_url=receiver_url + "/notify"))
    sim.faults.add("notify", "wrong_key")
    httpx.post(sim_url + "/sim/pay", json={"combine_mchid": INITIATOR, "combine_out_trade_no": "C20261126001"})
    assert isinstance(received.get(timeout=10), wxpay.SignatureMismatchError)
    httpx.post(sim_url + "/sim/clock", json={"advance_seconds": 15})
    assert isinstance(received.get(timeout=10), wxpay.CombinePaymentNotification)
