"""The client against the simulator (httpx.MockTransport): signing, verification, error mapping,
certificate mode, the async twin, and the bad inputs each with their own exception."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import wxpay
from tests.conftest import combine_request
from wxpay._operation import error_from_response
from wxpay.errors import (
    ApiError,
    AuthenticationError,
    ConfigurationError,
    ForeignHostError,
    InvalidRequestError,
    MissingSignatureError,
    OrderClosedError,
    OrderNotFoundError,
    RateLimitedError,
    ServerError,
    SignatureMismatchError,
    SignatureProbeError,
    TimestampOutOfWindowError,
    TransportError,
    UnexpectedResponseError,
    UnknownSerialError,
)
from wxpay.sim.keys import new_merchant


def test_every_request_is_signed_and_every_answer_verified(sim, client):
    seen = []
    original = sim.handle

    def spy(request):
        seen.append(request.headers["Authorization"])
        return original(request)

    client.http._transport = httpx.MockTransport(spy)
    client.combine.create_native(combine_request())
    client.combine.query("C20261126001")
    assert len(seen) == 2
    assert all(h.startswith('WECHATPAY2-SHA256-RSA2048 mchid="1900000100"') for h in seen)


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
def test_untrustworthy_answers_are_refused(sim, client, fault, error):
    sim.faults.add("response", fault)
    with pytest.raises(error):
        client.combine.create_native(combine_request())


def test_an_unsigned_2xx_is_refused(sim, initiator):
    def unsigned(request):
        return httpx.Response(200, json={"code_url": "weixin://x"})

    with (
        wxpay.Client(transport=httpx.MockTransport(unsigned), **initiator.client_kwargs()) as c,
        pytest.raises(MissingSignatureError),
    ):
        c.combine.create_native(combine_request())


def test_a_wrong_merchant_key_gets_401_sign_error(sim, initiator):
    impostor = new_merchant(initiator.mchid, initiator.appid)
    kwargs = {**initiator.client_kwargs(), "private_key": impostor.merchant_key}
    with (
        wxpay.Client(transport=httpx.MockTransport(sim.handle), **kwargs) as c,
        pytest.raises(AuthenticationError) as info,
    ):
        c.combine.query("C20261126001")
    assert info.value.status == 401
    assert info.value.code == "SIGN_ERROR"
    assert not info.value.retryable
    assert info.value.detail["location"] == "authorization"
    assert info.value.request_id


def test_a_stale_request_timestamp_gets_401(sim, initiator):
    with (
        wxpay.Client(
            transport=httpx.MockTransport(sim.handle),
            clock=lambda: 1_000_000_000,
            **{**initiator.client_kwargs(), "verifier": initiator.verifier()},
        ) as c,
        pytest.raises(AuthenticationError, match="时间戳"),
    ):
        c.combine.query("C20261126001")


def test_a_malformed_authorization_header_gets_401(sim):
    request = httpx.Request(
        "GET",
        "https://api.mch.weixin.qq.com/v3/combine-transactions/out-trade-no/C20261126001",
        headers={"Authorization": 'WECHATPAY2-SHA256-RSA2048 mchid="1900000100"'},
    )
    response = sim.handle(request)
    error = error_from_response(response)
    assert isinstance(error, AuthenticationError)
    assert "Authorization" in error.message


def test_a_non_json_error_body(initiator):
    def html(request):
        return httpx.Response(502, text="<html>Bad Gateway</html>", headers={"Request-ID": "RID-1"})

    with (
        wxpay.Client(transport=httpx.MockTransport(html), **initiator.client_kwargs()) as c,
        pytest.raises(UnexpectedResponseError) as info,
    ):
        c.combine.query("C20261126001")
    assert info.value.status == 502
    assert info.value.retryable
    assert info.value.request_id == "RID-1"
    assert "Bad Gateway" in info.value.body_excerpt


def test_a_2xx_of_the_wrong_shape(sim, initiator):
    def weird(request):
        body = b'{"unexpected":true}'
        headers, body = sim.signed_headers(initiator, body)
        return httpx.Response(200, headers=headers, content=body)

    with (
        wxpay.Client(transport=httpx.MockTransport(weird), **initiator.client_kwargs()) as c,
        pytest.raises(UnexpectedResponseError, match="code_url"),
    ):
        c.combine.create_native(combine_request())


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (400, "PARAM_ERROR", InvalidRequestError, False),
        (400, "INVALID_REQUEST", InvalidRequestError, False),
        (400, "ORDER_CLOSED", OrderClosedError, False),
        (404, "ORDER_NOT_EXIST", OrderNotFoundError, False),
        (404, "ORDERNOTEXIST", OrderNotFoundError, False),
        (404, "RESOURCE_NOT_EXISTS", ApiError, False),
        (403, "NO_AUTH", wxpay.PermissionDeniedError, False),
        (429, "FREQUENCY_LIMITED", RateLimitedError, True),
        (500, "SYSTEM_ERROR", ServerError, True),
        (500, "SYSTEMERROR", ServerError, True),
        (500, "BANK_ERROR", ServerError, True),
        (503, "SERVICE_UNAVAILABLE", ServerError, True),
        (400, "STATEMENT_CREATING", wxpay.BillNotReadyError, True),
        (400, "NO_STATEMENT_EXIST", wxpay.NoStatementError, False),
        (418, "SOMETHING_NEW", ApiError, False),
    ],
)
def test_error_codes_map_to_the_tree(status, code, cls, retryable):
    response = httpx.Response(
        status,
        json={"code": code, "message": "m", "detail": {"field": "/x"}},
        headers={"Request-ID": "R-9"},
        request=httpx.Request("GET", "https://h/x"),
    )
    error = error_from_response(response)
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.detail, error.request_id) == (
        status,
        code,
        "m",
        {"field": "/x"},
        "R-9",
    )
    assert error.retryable is retryable
    assert "R-9" in str(error)


def test_injected_rate_limit_and_system_error(sim, client):
    sim.faults.error("/v3/combine-transactions", 429, "FREQUENCY_LIMITED", "请求过于频繁")
    sim.faults.error("/v3/combine-transactions", 500, "SYSTEM_ERROR", "系统错误")
    with pytest.raises(RateLimitedError) as first:
        client.combine.query("C20261126001")
    with pytest.raises(ServerError) as second:
        client.combine.query("C20261126001")
    assert first.value.retryable
    assert second.value.retryable
    with pytest.raises(OrderNotFoundError):  # faults used up: the real answer again
        client.combine.query("C20261126001")


def test_transport_failures_are_retryable_transport_errors(initiator):
    def down(request):
        raise httpx.ConnectError("connection refused", request=request)

    with (
        wxpay.Client(transport=httpx.MockTransport(down), **initiator.client_kwargs()) as c,
        pytest.raises(TransportError) as info,
    ):
        c.combine.query("C20261126001")
    assert info.value.retryable


def test_our_authorization_never_goes_to_a_foreign_host(initiator):
    sent = []
    with wxpay.Client(
        transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)), **initiator.client_kwargs()
    ) as c:
        for url in (
            "https://evil.example.com/v3/billdownload/file?token=x",
            "http://api.mch.weixin.qq.com/v3/billdownload/file?token=x",
            "https://api.mch.weixin.qq.com:8443/v3/billdownload/file?token=x",
        ):
            with pytest.raises(ForeignHostError):
                c.http.get(url)
    assert sent == []


def test_a_client_must_be_able_to_verify(initiator):
    kwargs = {k: v for k, v in initiator.client_kwargs().items() if k != "verifier"}
    with pytest.raises(ConfigurationError):
        wxpay.Client(**kwargs)
    with pytest.raises(ConfigurationError):
        wxpay.Client(**{**kwargs, "api_v3_key": None}, certificates=True)


def test_secrets_stay_out_of_reprs(initiator, client):
    text = repr(client) + repr(client.auth) + repr(client.verifier) + repr(initiator)
    assert initiator.api_v3_key not in text
    assert "PRIVATE" not in text


def test_error_answers_need_no_certificate(sim):
    merchant = sim.merchants["1900000200"]
    paths = []
    original = sim.handle

    def count(request):
        paths.append(request.url.path)
        return original(request)

    with (
        wxpay.Client(transport=httpx.MockTransport(count), **merchant.client_kwargs()) as c,
        pytest.raises(OrderNotFoundError),
    ):
        c.combine.query("C20261126001")
    assert "/v3/certificates" not in paths  # only 2xx answers are verified (spec §2.4)


def test_certificate_mode_learns_a_rotated_certificate(sim):
    merchant = sim.merchants["1900000200"]
    participant = sim.merchants["1900000101"]
    paths = []
    original = sim.handle

    def count(request):
        paths.append(request.url.path)
        return original(request)

    request = combine_request("C20261126777").model_copy(update={"combine_mchid": merchant.mchid})
    request = request.model_copy(
        update={
            "sub_orders": [
                s.model_copy(update={"mchid": merchant.mchid if i == 0 else participant.mchid})
                for i, s in enumerate(request.sub_orders)
            ]
        }
    )
    with wxpay.Client(transport=httpx.MockTransport(count), **merchant.client_kwargs()) as c:
        assert c.combine.create_native(request).startswith("weixin://")  # first answer: unknown serial → refresh
        assert paths.count("/v3/certificates") == 1
        sim.rotate_platform_certificate(merchant.mchid)
        c._last_refresh = float("-inf")  # the refresh throttle would otherwise hold for a minute
        assert c.combine.query("C20261126777").trade_state == "NOTPAY"
        assert paths.count("/v3/certificates") == 2
        sim.faults.add("response", "unknown_serial")  # a forged serial: refresh does not help
        c._last_refresh = float("-inf")
        with pytest.raises(UnknownSerialError):
            c.combine.query("C20261126777")
        assert paths.count("/v3/certificates") == 3
        sim.faults.add("response", "unknown_serial")  # within the throttle: no second refresh
        with pytest.raises(UnknownSerialError):
            c.combine.query("C20261126777")
        assert paths.count("/v3/certificates") == 3


def test_public_key_merchant_has_no_certificates(sim, client):
    from wxpay._operation import Operation, json_body

    with pytest.raises(ApiError) as info:
        client.send(Operation("GET", "/v3/certificates", json_body))
    assert info.value.code == "RESOURCE_NOT_EXISTS"
    assert info.value.status == 404


def test_async_client_shares_the_endpoints(sim, initiator):
    async def run():
        async with wxpay.AsyncClient(transport=httpx.MockTransport(sim.handle), **initiator.client_kwargs()) as c:
            code_url = await c.combine.create_native(combine_request())
            order = await c.combine.query("C20261126001")
            await c.combine.close("C20261126001", combine_request())
            closed = await c.combine.query("C20261126001")
            return code_url, order, closed

    code_url, order, closed = asyncio.run(run())
    assert code_url.startswith("weixin://wxpay/bizpayurl/up?pr=")
    assert order.trade_state == "NOTPAY"
    assert closed.trade_state == "CLOSED"


def test_request_bodies_are_compact_utf8_json(sim, client):
    bodies = []
    original = sim.handle

    def spy(request):
        bodies.append(request.content)
        return original(request)

    client.http._transport = httpx.MockTransport(spy)
    client.combine.create_native(combine_request())
    assert "课程".encode() in bodies[0]
    assert b": " not in bodies[0]
    assert json.loads(bodies[0])["combine_out_trade_no"] == "C20261126001"
