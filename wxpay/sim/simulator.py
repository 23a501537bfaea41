"""The simulated WeChat Pay: authentication, routing, response signing, notifications.

:meth:`Simulator.handle` takes an :class:`httpx.Request` and returns an
:class:`httpx.Response`, so unit tests use ``httpx.MockTransport(sim.handle)``;
:func:`wxpay.sim.serve` puts the same object on a loopback port.

Simulator-only admin calls (a payer paying, a refund, the business clock, faults) are
methods here and, over HTTP, unsigned endpoints under ``/sim/`` (:mod:`wxpay.sim.admin`).
Notification envelopes, retries and attempts are :mod:`wxpay.sim.notifier`.
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wxpay import aead
from wxpay.errors import MalformedAuthorizationError, RequestValidationError, SignatureMismatchError
from wxpay.models import (
    CombineCloseRequest,
    CombineNativeRequest,
    check_out_trade_no,
    format_rfc3339,
    validate_request,
)
from wxpay.signing import SCHEME, parse_authorization, request_message, response_message, sign
from wxpay.sim.admin import dispatch
from wxpay.sim.bills import BillDesk
from wxpay.sim.clock import VirtualClock
from wxpay.sim.faults import Faults
from wxpay.sim.keys import SimMerchant, merchant_like, new_merchant, new_rsa_key, rotate_platform_key
from wxpay.sim.notifier import Attempt, Delivery, attempt_delivery, new_delivery
from wxpay.sim.state import Ledger, SimApiError, SimCombineOrder, SimRefund
from wxpay.verifying import SIGNTEST_PREFIX, verify_signature

DEFAULT_APPID = "wxd678efh567hg6787"


@dataclass
class SimOptions:
    """Behaviour switches, for the points the spec leaves unconfirmed."""

    seed: int = 0
    signature_window: int = 300  # s; stale Authorization timestamps get 401 SIGN_ERROR (unconfirmed #1)
    success_time_millis: bool = False  # query/notify success_time with milliseconds (unconfirmed #9)
    combine_transaction_id: bool = False  # include the unconfirmed field (unconfirmed #8)
    sign_error_responses: bool = False  # whether 4xx/5xx carry signatures (unconfirmed #3)
    paid_close_code: str = "ORDER_PAID"  # close/re-create of a paid order (unconfirmed #11)
    notify_timeout: float = 5.0  # s the merchant has to answer a callback
    # Which clock stamps callbacks' Wechatpay-Timestamp. "wall": real time, as WeChat Pay does. "business":
    # the business clock, for a fully simulated world whose receiver verifies against that same clock
    # (the demo, end-to-end tests of days in the past); API answers always carry wall-clock time.
    callback_clock: str = "wall"
    auto_deliver: bool = True  # deliver due notifications as soon as an order is paid
    download_lifetime: float = 30.0  # s a bill download_url lives (unconfirmed #15: 30 s vs 5 min)
    bill_bom: bool = True  # UTF-8 BOM on bill files (unconfirmed #17)
    bill_crlf: bool = True  # CRLF line endings on bill files
    bill_ready_hour: int = 10  # bills of day D exist from D+1 at this Beijing hour


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/v3/combine-transactions/native"), "_create"),
    ("GET", re.compile(r"/v3/combine-transactions/out-trade-no/(?P<no>[^/]+)"), "_query"),
    ("POST", re.compile(r"/v3/combine-transactions/out-trade-no/(?P<no>[^/]+)/close"), "_close"),
    ("GET", re.compile(r"/v3/certificates"), "_certificates"),
]


class Simulator:
    """WeChat Pay APIv3 for combine orders and bills, offline. Deterministic given ``options.seed``
    (ids, nonces, tokens); key material is generated fresh.

    ``clock`` is the business clock; ``wall_clock`` (Unix seconds) drives signature
    timestamps and download-URL lifetimes. ``notify_transport`` lets unit tests deliver
    callbacks without sockets; by default they go over real HTTP.
    """

    def __init__(
        self,
        merchants: Iterable[SimMerchant] = (),
        *,
        options: SimOptions | None = None,
        clock: VirtualClock | None = None,
        wall_clock: Callable[[], float] = time.time,
        notify_transport: httpx.BaseTransport | None = None,
    ):
        self.options = options or SimOptions()
        self.rng = random.Random(self.options.seed)  # noqa: S311 - simulated ids, not security
        self.clock = clock or VirtualClock()
        self.wall_clock = wall_clock
        self.merchants: dict[str, SimMerchant] = {}
        self.ledger = Ledger(self.rng)
        self.faults = Faults()
        self.deliveries: list[Delivery] = []
        self._lock = threading.RLock()
        self._rogue_key: rsa.RSAPrivateKey | None = None
        self._notify_http = httpx.Client(transport=notify_transport, timeout=self.options.notify_timeout)
        self._extra_routes: list[tuple[str, re.Pattern[str], Callable[..., httpx.Response]]] = []
        for merchant in merchants:
            self.add_merchant(merchant)
        self.bills = BillDesk(self).install()

    @classmethod
    def with_merchants(
        cls,
        count: int = 3,
        *,
        appid: str = DEFAULT_APPID,
        first_mchid: int = 1900000100,
        shared_keys: bool = False,
        **kw: Any,
    ) -> Simulator:
        """A simulator with ``count`` merchants bound to one appid (the first is the combine initiator).
        ``shared_keys``: the others reuse the first one's key pairs (load tests with thousands of merchants)."""
        sim = cls(**kw)
        for i in range(count):
            rate = (60, 38, 54)[i % 3]
            if shared_keys and i:
                first = next(iter(sim.merchants.values()))
                sim.add_merchant(merchant_like(first, str(first_mchid + i), rng=sim.rng, fee_rate_bp=rate))
            else:
                sim.add_merchant(new_merchant(str(first_mchid + i), appid, rng=sim.rng, fee_rate_bp=rate))
        return sim

    def __repr__(self) -> str:
        return f"Simulator(merchants={sorted(self.merchants)!r}, now={self.clock.now().isoformat()})"

    def close(self) -> None:
        self._notify_http.close()

    def add_merchant(self, merchant: SimMerchant) -> SimMerchant:
        with self._lock:
            self.merchants[merchant.mchid] = merchant
        return merchant

    def merchant(self, mchid: str) -> SimMerchant:
        try:
            return self.merchants[mchid]
        except KeyError:
            raise SimApiError(400, "MCH_NOT_EXISTS", f"商户号 {mchid} 不存在") from None

    def route(self, method: str, pattern: str, handler: Callable[..., httpx.Response]) -> None:
        """Add an endpoint (used by the bill endpoints): ``handler(sim, request, merchant, **groups)``."""
        self._extra_routes.append((method, re.compile(pattern), handler))

    # --- the request handler ---------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as WeChat Pay would."""
        path = request.url.path
        try:
            if path.startswith("/sim/"):
                return dispatch(self, request)
            injected = self.faults.take_error(path)
            if injected is not None:
                raise SimApiError(injected.status, injected.code, injected.message)
            with self._lock:
                merchant = self._authenticate(request)
                for method, pattern, name in _ROUTES:
                    match = pattern.fullmatch(path)
                    if match and method == request.method:
                        return getattr(self, name)(request, merchant, **match.groupdict())
            for method, pattern, handler in self._extra_routes:  # they take the lock themselves if needed
                match = pattern.fullmatch(path)
                if match and method == request.method:
                    return handler(self, request, merchant, **match.groupdict())
            raise SimApiError(404, "NOT_FOUND", f"no such API: {request.method} {path}")
        except SimApiError as exc:
            return self._error(exc, request)

    def _authenticate(self, request: httpx.Request) -> SimMerchant:
        """Check the Authorization header exactly as §1 describes; 401 SIGN_ERROR otherwise."""
        try:
            auth = parse_authorization(request.headers.get("Authorization"))
        except MalformedAuthorizationError as exc:
            raise SimApiError(
                401, "SIGN_ERROR", f"Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》: {exc}"
            ) from None
        merchant = self.merchant(auth.mchid)
        if auth.serial_no != merchant.merchant_serial:
            raise SimApiError(401, "SIGN_ERROR", "商户证书序列号有误。请使用签名私钥匹配的证书序列号")
        if abs(self.wall_clock() - auth.timestamp) > self.options.signature_window:
            raise SimApiError(401, "SIGN_ERROR", "请求的时间戳已过期，请检查系统时间")
        target = request.url.raw_path.decode("ascii")
        message = request_message(request.method, target, auth.timestamp, auth.nonce_str, request.content)
        try:
            verify_signature(merchant.merchant_key.public_key(), message, auth.signature)
        except SignatureMismatchError:
            shown = message.decode("utf-8", "replace")
            raise SimApiError(
                401,
                "SIGN_ERROR",
                "错误的签名，验签失败",
                {
                    "detail": {"issue": "sign not match"},
                    "field": "signature",
                    "location": "authorization",
                    "sign_information": {
                        "method": request.method,
                        "sign_message_length": len(message),
                        "truncated_sign_message": shown[:80],
                        "url": target,
                    },
                },
            ) from None
        return merchant

    # --- responses ----------------------------------------------------------------------------------
    def _request_id(self) -> str:
        return "".join(self.rng.choice("0123456789ABCDEF") for _ in range(44)) + "-0"

    def signed_headers(
        self,
        merchant: SimMerchant,
        body: bytes,
        *,
        fault: str | None = None,
        requested_serial: str | None = None,
        callback: bool = False,
    ) -> tuple[dict[str, str], bytes]:
        """Wechatpay-* headers over ``body`` as ``merchant``'s WeChat Pay; faults bend them.

        ``callback`` stamps the time by ``options.callback_clock``. Returns the headers and the
        body to send (``tamper`` changes it after signing).
        """
        now = (
            self.clock.now().timestamp()
            if callback and self.options.callback_clock == "business"
            else self.wall_clock()
        )
        timestamp = int(now) - (600 if fault == "stale" else 0)
        nonce = f"{self.rng.getrandbits(128):032x}"
        serial, key = merchant.signing_identity(requested_serial)
        if fault == "wrong_key":
            if self._rogue_key is None:
                self._rogue_key = new_rsa_key()
            key = self._rogue_key
        signature = sign(key, response_message(timestamp, nonce, body))
        if fault == "signtest":
            signature = SIGNTEST_PREFIX + base64.b64encode(self.rng.randbytes(48)).decode("ascii")
        if fault == "unknown_serial":
            serial = "".join(self.rng.choice("0123456789ABCDEF") for _ in range(40))
        headers = {
            "Wechatpay-Timestamp": str(timestamp),
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature-Type": SCHEME,
        }
        return headers, (body + b" " if fault == "tamper" else body)

    def respond(
        self, request: httpx.Request, merchant: SimMerchant, status: int, body: dict[str, Any] | None
    ) -> httpx.Response:
        """A signed answer (2xx), as WeChat Pay would sign it for ``merchant``."""
        content = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Request-ID": self._request_id()}
        if content:
            headers["Content-Type"] = "application/json"
        fault = self.faults.take("response")
        signed, content = self.signed_headers(
            merchant, content, fault=fault, requested_serial=request.headers.get("Wechatpay-Serial")
        )
        headers.update(signed)
        return httpx.Response(status, headers=headers, content=content, request=request)

    def _error(self, exc: SimApiError, request: httpx.Request) -> httpx.Response:
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.detail:
            body["detail"] = exc.detail
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Request-ID": self._request_id(), "Content-Type": "application/json"}
        if self.options.sign_error_responses:
            auth = request.headers.get("Authorization", "")
            mchid = re.search(r'mchid="(\d+)"', auth)
            if mchid and mchid.group(1) in self.merchants:
                headers.update(self.signed_headers(self.merchants[mchid.group(1)], content)[0])
        return httpx.Response(exc.status, headers=headers, content=content, request=request)

    @staticmethod
    def _json(request: httpx.Request) -> dict[str, Any]:
        try:
            body = json.loads(request.content)
        except ValueError:
            raise SimApiError(400, "PARAM_ERROR", "请求体不是合法的JSON") from None
        if not isinstance(body, dict):
            raise SimApiError(400, "PARAM_ERROR", "请求体必须是JSON对象")
        return body

    @staticmethod
    def _validated(model: type, body: dict[str, Any]):
        try:
            return validate_request(model, body)
        except RequestValidationError as exc:
            raise SimApiError(400, "PARAM_ERROR", str(exc)) from None

    # --- combine orders ---------------------------------------------------------------------------
    def _create(self, request: httpx.Request, merchant: SimMerchant) -> httpx.Response:
        body: CombineNativeRequest = self._validated(CombineNativeRequest, self._json(request))
        if body.combine_mchid != merchant.mchid:
            raise SimApiError(
                400,
                "PARAM_ERROR",
                "combine_mchid 与请求头中的商户号不一致",
                {"field": "/combine_mchid", "location": "body"},
            )
        if body.combine_appid != merchant.appid:
            raise SimApiError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        for sub in body.sub_orders:
            if self.merchant(sub.mchid).appid != body.combine_appid:
                raise SimApiError(400, "APPID_MCHID_NOT_MATCH", f"子单商户号 {sub.mchid} 与 combine_appid 不匹配")
        try:
            self.ledger.create(body, self.clock.now())
        except SimApiError as exc:
            if exc.code == "ORDER_PAID":
                exc.code = self.options.paid_close_code
            raise
        token = "".join(self.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789") for _ in range(7))
        return self.respond(request, merchant, 200, {"code_url": f"weixin://wxpay/bizpayurl/up?pr={token}&groupid=00"})

    def _path_number(self, no: str) -> str:
        try:
            return check_out_trade_no(no, "combine_out_trade_no")
        except RequestValidationError as exc:
            raise SimApiError(400, "PARAM_ERROR", str(exc)) from None

    def _query(self, request: httpx.Request, merchant: SimMerchant, no: str) -> httpx.Response:
        order = self.ledger.get(merchant.mchid, self._path_number(no), self.clock.now())
        return self.respond(request, merchant, 200, self._wire(order))

    def _close(self, request: httpx.Request, merchant: SimMerchant, no: str) -> httpx.Response:
        body: CombineCloseRequest = self._validated(CombineCloseRequest, self._json(request))
        try:
            self.ledger.close(merchant.mchid, self._path_number(no), body, self.clock.now())
        except SimApiError as exc:
            if exc.code == "ORDER_PAID":
                exc.code = self.options.paid_close_code
            raise
        return self.respond(request, merchant, 204, None)

    def _certificates(self, request: httpx.Request, merchant: SimMerchant) -> httpx.Response:
        if merchant.mode != "certificate":
            raise SimApiError(404, "RESOURCE_NOT_EXISTS", "无可用的平台证书，请在商户平台-API安全申请使用微信支付公钥")
        data = []
        for platform in merchant.platform_keys:
            nonce = f"{self.rng.getrandbits(48):012x}"
            pem = platform.certificate.public_bytes(serialization.Encoding.PEM)
            data.append(
                {
                    "serial_no": platform.serial,
                    "effective_time": format_rfc3339(platform.certificate.not_valid_before_utc),
                    "expire_time": format_rfc3339(platform.certificate.not_valid_after_utc),
                    "encrypt_certificate": {
                        "algorithm": aead.ALGORITHM,
                        "nonce": nonce,
                        "associated_data": "certificate",
                        "ciphertext": aead.encrypt(merchant.api_v3_key, nonce, pem, "certificate"),
                    },
                }
            )
        return self.respond(request, merchant, 200, {"data": data})

    def _wire(self, order: SimCombineOrder) -> dict[str, Any]:
        return order.wire(
            millis=self.options.success_time_millis, combine_transaction_id=self.options.combine_transaction_id
        )

    # --- what payers and operators do (simulator-only) --------------------------------------------
    def pay(
        self, combine_mchid: str, combine_out_trade_no: str, *, openid: str | None = None, deliver: bool | None = None
    ) -> SimCombineOrder:
        """A payer scans the QR code and pays: every sub order succeeds now (business clock)."""
        with self._lock:
            order = self.ledger.pay(combine_mchid, combine_out_trade_no, self.clock.now(), openid)
            self._schedule_notification(order)
        if self.options.auto_deliver if deliver is None else deliver:
            self.deliver_due()
        return order

    def refund(self, mchid: str, out_trade_no: str, amount: int, **kw: Any) -> SimRefund:
        """Record a refund on a paid sub order, submitted now (business clock)."""
        with self._lock:
            return self.ledger.refund(mchid, out_trade_no, amount, self.clock.now(), **kw)

    def rotate_platform_certificate(self, mchid: str):
        """Issue a new platform certificate for ``mchid``; answers are signed with it from now on."""
        with self._lock:
            return rotate_platform_key(self.merchant(mchid), self.rng)

    def advance(self, delta: timedelta | float) -> datetime:
        """Move the business clock forward, delivering every notification that falls due on the way."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        target = self.clock.now() + step
        while True:
            with self._lock:
                due = [d.due_at for d in self.deliveries if d.due_at is not None and d.due_at <= target]
            if not due:
                break
            self.clock.set(max(min(due), self.clock.now()))
            self.deliver_due()
        self.clock.set(target)
        return target

    # --- notifications ------------------------------------------------------------------------------
    def _schedule_notification(self, order: SimCombineOrder) -> Delivery:
        merchant = self.merchant(order.combine_mchid)
        delivery = new_delivery(
            self._wire(order),
            merchant.api_v3_key,
            combine_mchid=order.combine_mchid,
            combine_out_trade_no=order.combine_out_trade_no,
            url=order.notify_url,
            now=self.clock.now(),
            rng=self.rng,
        )
        self.deliveries.append(delivery)
        return delivery

    def deliver_due(self) -> list[Attempt]:
        """Make every delivery attempt that is due at the current business time."""
        now = self.clock.now()
        with self._lock:
            due = [d for d in self.deliveries if d.due_at is not None and d.due_at <= now]
            for delivery in due:
                delivery.due_at = None  # taken; record() sets the next one
        return [self._attempt(delivery, now) for delivery in due]

    def _attempt(self, delivery: Delivery, now: datetime) -> Attempt:
        fault = self.faults.take("notify")
        attempt = attempt_delivery(delivery, now, fault, lambda: self._post_notification(delivery, fault))
        with self._lock:
            delivery.record(attempt)
        return attempt

    def _post_notification(self, delivery: Delivery, fault: str | None) -> httpx.Response:
        """One signed copy of the callback, posted to the merchant's notify_url."""
        merchant = self.merchant(delivery.combine_mchid)
        headers, body = self.signed_headers(merchant, delivery.body, fault=fault, callback=True)
        headers["Content-Type"] = "application/json"
        return self._notify_http.post(delivery.url, content=body, headers=headers)
