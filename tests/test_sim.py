"""The simulator itself: notification delivery on WeChat's retry schedule with faults, request
authentication, admin calls and determinism."""

from __future__ import annotations

import itertools
import json
from copy import copy
from datetime import timedelta

import httpx
import pytest

import wxpay
from tests.conftest import INITIATOR, START, combine_request
from wxpay.notify import failure_reply, parse_notification, success_reply
from wxpay.sim import SimOptions, Simulator, VirtualClock
from wxpay.sim.notifier import RETRY_INTERVALS


class ScriptedReceiver:
    """A merchant notify_url: verifies each callback; answers from a script of statuses."""

    def __init__(self, merchant, script=()):
        self.merchant = merchant
        self.script = list(script)
        self.received = []  # (accepted, notification id or error class name)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        try:
            note = parse_notification(
                request.headers, request.content, verifier=self.merchant.verifier(), api_v3_key=self.merchant.api_v3_key
            )
        except wxpay.WxPayError as exc:
            self.received.append((False, type(exc).__name__))
            reply = failure_reply(type(exc).__name__, 401)
        else:
            status = self.script.pop(0) if self.script else 204
            self.received.append((200 <= status < 300, note.id))
            reply = success_reply(status) if status in (200, 204) else failure_reply("busy", status)
        return httpx.Response(reply.status, content=reply.body, headers=reply.headers)


@pytest.fixture
def make_sim(merchant_pool):
    made = []

    def make(receiver_script=(), **options):
        receiver = ScriptedReceiver(merchant_pool[0], receiver_script)
        sim = Simulator(
            [copy(m) for m in merchant_pool],
            options=SimOptions(seed=7, **options),
            clock=VirtualClock(START),
            notify_transport=httpx.MockTransport(receiver),
        )
        client = wxpay.Client(transport=httpx.MockTransport(sim.handle), **sim.merchants[INITIATOR].client_kwargs())
        client.combine.create_native(combine_request())
        made.append((sim, client))
        return sim, receiver

    yield make
    for sim, client in made:
        client.close()
        sim.close()


def test_a_paid_order_is_notified_once_and_acknowledged(make_sim):
    sim, receiver = make_sim()
    sim.pay(INITIATOR, "C20261126001")
    delivery = sim.deliveries[0]
    assert delivery.acknowledged
    assert len(delivery.attempts) == 1
    assert delivery.attempts[0].status == 204
    assert receiver.received == [(True, delivery.notification_id)]


def test_failures_are_retried_on_the_documented_schedule(make_sim):
    sim, receiver = make_sim(receiver_script=[500, 503, 404, 200])
    sim.pay(INITIATOR, "C20261126001")
    sim.advance(timedelta(hours=1))
    delivery = sim.deliveries[0]
    times = [a.at for a in delivery.attempts]
    assert [int((b - a).total_seconds()) for a, b in itertools.pairwise(times)] == [15, 15, 30]
    assert [a.status for a in delivery.attempts] == [500, 503, 404, 200]
    assert delivery.acknowledged
    assert len({note for _, note in receiver.received}) == 1  # the same notification id every time


def test_after_sixteen_failures_wechat_gives_up(make_sim):
    sim, _receiver = make_sim(receiver_script=[500] * 20)
    sim.pay(INITIATOR, "C20261126001")
    sim.advance(timedelta(days=2))
    delivery = sim.deliveries[0]
    assert len(delivery.attempts) == 1 + len(RETRY_INTERVALS) == 16
    assert delivery.given_up
    assert not delivery.acknowledged
    span = delivery.attempts[-1].at - delivery.attempts[0].at
    assert span == timedelta(hours=24, minutes=4)


def test_a_200_with_a_fail_body_counts_as_success(merchant_pool):
    def says_fail(request):
        return httpx.Response(200, json={"code": "FAIL", "message": "失败"})

    sim = Simulator(
        [copy(m) for m in merchant_pool],
        options=SimOptions(seed=1),
        clock=VirtualClock(START),
        notify_transport=httpx.MockTransport(says_fail),
    )
    with wxpay.Client(transport=httpx.MockTransport(sim.handle), **sim.merchants[INITIATOR].client_kwargs()) as c:
        c.combine.create_native(combine_request())
    sim.pay(INITIATOR, "C20261126001")
    assert sim.deliveries[0].acknowledged
    assert sim.deliveries[0].due_at is None
    sim.close()


def test_duplicate_delivery(make_sim):
    sim, receiver = make_sim()
    sim.faults.add("notify", "duplicate")
    sim.pay(INITIATOR, "C20261126001")
    assert len(receiver.received) == 2
    assert receiver.received[0] == receiver.received[1]
    assert sim.deliveries[0].attempts[0].copies == 2


def test_a_dropped_attempt_is_retried(make_sim):
    sim, receiver = make_sim()
    sim.faults.add("notify", "drop")
    sim.pay(INITIATOR, "C20261126001")
    assert receiver.received == []
    sim.advance(15)
    assert len(receiver.received) == 1
    assert sim.deliveries[0].acknowledged


def test_a_lost_notification_never_arrives(make_sim):
    sim, receiver = make_sim()
    sim.faults.add("notify", "lose")
    sim.pay(INITIATOR, "C20261126001")
    sim.advance(timedelta(days=2))
    assert receiver.received == []
    assert sim.deliveries[0].given_up


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("signtest", "SignatureProbeError"),
        ("wrong_key", "SignatureMismatchError"),
        ("stale", "TimestampOutOfWindowError"),
        ("tamper", "SignatureMismatchError"),
    ],
)
def test_bad_callbacks_are_refused_and_the_retry_is_good(make_sim, fault, error):
    sim, receiver = make_sim()
    sim.faults.add("notify", fault)
    sim.pay(INITIATOR, "C20261126001")
    sim.advance(15)
    assert receiver.received[0] == (False, error)
    assert receiver.received[1][0] is True
    assert sim.deliveries[0].attempts[0].status == 401


def test_unreachable_notify_url_is_a_failed_attempt(merchant_pool):
    sim = Simulator([copy(m) for m in merchant_pool], options=SimOptions(seed=1), clock=VirtualClock(START))
    with wxpay.Client(transport=httpx.MockTransport(sim.handle), **sim.merchants[INITIATOR].client_kwargs()) as c:
        c.combine.create_native(combine_request(notify_url="http://127.0.0.1:9/notify"))
    sim.pay(INITIATOR, "C20261126001")
    attempt = sim.deliveries[0].attempts[0]
    assert attempt.status is None
    assert "ConnectError" in attempt.error
    assert sim.deliveries[0].due_at == attempt.at + timedelta(seconds=15)
    sim.close()


def test_a_tampered_request_body_gets_401(sim, client):
    original = client.http._transport

    class Tamper(httpx.BaseTransport):
        def handle_request(self, request):
            forged = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.content.replace(b"12800", b"12801"),
            )
            return original.handle_request(forged)

    client.http._transport = Tamper()
    with pytest.raises(wxpay.AuthenticationError) as info:
        client.combine.create_native(combine_request())
    assert info.value.detail["detail"]["issue"] == "sign not match"


def test_admin_calls_over_the_handler(sim, client):
    client.combine.create_native(combine_request())

    def admin(method, path, body=None):
        response = sim.handle(httpx.Request(method, "http://sim" + path, json=body))
        return response.status_code, response.json()

    status, paid = admin("POST", "/sim/pay", {"combine_mchid": INITIATOR, "combine_out_trade_no": "C20261126001"})
    assert status == 200
    assert paid["sub_orders"][0]["trade_state"] == "SUCCESS"
    status, refund = admin(
        "POST", "/sim/refund", {"mchid": "1900000101", "out_trade_no": "C20261126001S1", "amount": 100}
    )
    assert status == 200
    assert refund["amount"] == 100
    status, clock = admin("POST", "/sim/clock", {"advance_seconds": 3600})
    assert clock["now"] == "2026-11-26T10:00:00+08:00"
    status, _ = admin("POST", "/sim/faults", {"channel": "notify", "kind": "nonsense"})
    assert status == 400
    status, merchants = admin("GET", "/sim/merchants")
    assert {m["mchid"] for m in merchants} >= {INITIATOR}
    assert all("PRIVATE" not in json.dumps(m) for m in merchants)
    status, error = admin("POST", "/sim/pay", {"combine_mchid": INITIATOR, "combine_out_trade_no": "C20261126404"})
    assert status == 404
    assert error["code"] == "ORDER_NOT_EXIST"


def test_same_seed_same_ids(merchant_pool):
    def run():
        sim = Simulator([copy(m) for m in merchant_pool], options=SimOptions(seed=99), clock=VirtualClock(START))
        with wxpay.Client(transport=httpx.MockTransport(sim.handle), **sim.merchants[INITIATOR].client_kwargs()) as c:
            code_url = c.combine.create_native(combine_request())
        order = sim.pay(INITIATOR, "C20261126001", deliver=False)
        sim.close()
        return code_url, [s.transaction_id for s in order.sub_orders], order.payer_openid

    assert run() == run()


def test_the_business_clock_never_goes_back():
    clock = VirtualClock(START)
    with pytest.raises(ValueError, match="never goes back"):
        clock.advance(-1)
    assert clock.advance(timedelta(days=1)) == START + timedelta(days=1)
