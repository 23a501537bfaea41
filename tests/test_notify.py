"""Payment notifications: verify → check algorithm → decrypt → typed notification; and the replies."""

from __future__ import annotations

import json

import httpx
import pytest

import wxpay
from tests.conftest import INITIATOR, combine_request
from wxpay import aead
from wxpay.errors import (
    DecryptionError,
    MalformedNotificationError,
    SignatureMismatchError,
    SignatureProbeError,
    TimestampOutOfWindowError,
    UnknownSerialError,
    UnsupportedAlgorithmError,
)
from wxpay.notify import failure_reply, parse_notification, success_reply
from wxpay.sim.notifier import envelope


@pytest.fixture
def paid_callback(sim, client):
    """The body and headers of the callback the simulator would send for a paid order."""
    client.combine.create_native(combine_request())
    sim.pay(INITIATOR, "C20261126001", deliver=False)
    return sim.deliveries[-1].body


def callback(sim, body, fault=None):
    headers, sent = sim.signed_headers(sim.merchants[INITIATOR], body, fault=fault)
    return headers, sent


def test_a_real_callback_verifies_and_decrypts(sim, initiator, paid_callback):
    headers, body = callback(sim, paid_callback)
    note = parse_notification(headers, body, verifier=initiator.verifier(), api_v3_key=initiator.api_v3_key)
    assert note.event_type == "TRANSACTION.SUCCESS"
    assert note.summary == "支付成功"
    assert note.serial == initiator.public_key_id
    assert note.order.combine_out_trade_no == "C20261126001"
    assert note.order.trade_state == "SUCCESS"
    assert [s.amount.total_amount for s in note.order.sub_orders] == [12800, 3550]
    assert note.order.combine_payer_info.openid.startswith("o")
    assert note.create_time.utcoffset().total_seconds() == 8 * 3600


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("tamper", SignatureMismatchError),
        ("wrong_key", SignatureMismatchError),
        ("stale", TimestampOutOfWindowError),
        ("signtest", SignatureProbeError),
        ("unknown_serial", UnknownSerialError),
    ],
)
def test_untrustworthy_callbacks_are_refused_before_parsing(sim, initiator, paid_callback, fault, error):
    headers, body = callback(sim, paid_callback, fault)
    with pytest.raises(error):
        parse_notification(headers, body, verifier=initiator.verifier(), api_v3_key=initiator.api_v3_key)


def test_wrong_apiv3_key(sim, initiator, paid_callback):
    headers, body = callback(sim, paid_callback)
    with pytest.raises(DecryptionError):
        parse_notification(headers, body, verifier=initiator.verifier(), api_v3_key="x" * 32)


def test_unknown_resource_algorithm(sim, initiator, paid_callback):
    data = json.loads(paid_callback)
    data["resource"]["algorithm"] = "AEAD_SM4_GCM"
    headers, body = callback(sim, json.dumps(data).encode())
    with pytest.raises(UnsupportedAlgorithmError):
        parse_notification(headers, body, verifier=initiator.verifier(), api_v3_key=initiator.api_v3_key)


def test_a_signed_body_that_is_not_an_envelope(sim, initiator):
    headers, body = callback(sim, b"[1,2,3]")
    with pytest.raises(MalformedNotificationError):
        parse_notification(headers, body, verifier=initiator.verifier(), api_v3_key=initiator.api_v3_key)


def test_an_envelope_whose_payload_is_not_a_combine_order(sim, initiator):
    from datetime import datetime

    from wxpay.models import BEIJING

    body = envelope(
        {"hello": "world"},
        initiator.api_v3_key,
        notification_id="EV-1",
        create_time=datetime(2026, 11, 26, tzinfo=BEIJING),
        nonce="abcdefabcdef",
    )
    headers, body = callback(sim, body)
    with pytest.raises(MalformedNotificationError, match="EV-1"):
        parse_notification(headers, body, verifier=initiator.verifier(), api_v3_key=initiator.api_v3_key)


def test_certificate_mode_refreshes_on_an_unknown_serial(sim, paid_callback):
    merchant = sim.merchants["1900000200"]
    body = envelope(
        json.loads(
            aead.decrypt(
                sim.merchants[INITIATOR].api_v3_key,
                json.loads(paid_callback)["resource"]["nonce"],
                json.loads(paid_callback)["resource"]["ciphertext"],
                "transaction",
            )
        ),
        merchant.api_v3_key,
        notification_id="EV-2",
        create_time=sim.clock.now(),
        nonce="0123456789ab",
    )
    headers, body = sim.signed_headers(merchant, body)
    with wxpay.Client(transport=httpx.MockTransport(sim.handle), **merchant.client_kwargs()) as c:
        note = parse_notification(
            headers,
            body,
            verifier=c.verifier,
            api_v3_key=merchant.api_v3_key,
            refresh_certificates=c.refresh_certificates,
        )
    assert note.serial == merchant.platform.serial


def test_replies():
    assert success_reply().status == 204
    assert success_reply().body == b""
    assert success_reply(200).accepted
    fail = failure_reply("签名错误", 401)
    assert not fail.accepted
    assert json.loads(fail.body) == {"code": "FAIL", "message": "签名错误"}
    with pytest.raises(ValueError, match="200 or 204"):
        success_reply(302)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        failure_reply(status=200)
