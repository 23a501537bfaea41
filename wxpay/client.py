"""The WeChat Pay APIv3 clients: :class:`Client` (sync) and :class:`AsyncClient`.

Both own an httpx client with the same :class:`~wxpay.auth.WechatPayAuth`, send the same
:class:`~wxpay._operation.Operation` objects and map error answers to the same exceptions;
only the waiting differs. Endpoints hang off them as namespaces::

    client = Client(mchid=..., serial_no=..., private_key=pem,
                    verifier=Verifier.from_public_key("PUB_KEY_ID_...", public_pem))
    code_url = client.combine.create_native(request)
    order = client.combine.query("C20250310001")

Secrets (the private key, the APIv3 key) enter only through the constructor and never
appear in a repr, log line or error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from wxpay._operation import Operation, error_from_response, json_body
from wxpay.auth import WechatPayAuth
from wxpay.certificates import CERTIFICATES_PATH, parse_certificates
from wxpay.combine import CombineOrders
from wxpay.errors import ConfigurationError, TransportError, UnknownSerialError
from wxpay.signing import Signer, new_nonce
from wxpay.verifying import Verifier

DEFAULT_BASE_URL = "https://api.mch.weixin.qq.com"
BACKUP_BASE_URL = "https://api2.mch.weixin.qq.com"
USER_AGENT = "wxpay-recon/0.1 (python; httpx)"
CERTIFICATE_REFRESH_INTERVAL = 60.0  # seconds: at most one refresh a minute, so forged serials cannot flood us

T = TypeVar("T")


class _BaseClient:
    """What both clients share: credentials, auth, request building and answer reading."""

    def __init__(
        self,
        *,
        mchid: str,
        serial_no: str,
        private_key: rsa.RSAPrivateKey | bytes | str,
        verifier: Verifier | None = None,
        api_v3_key: bytes | str | None = None,
        certificates: bool = False,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | httpx.Timeout = 10.0,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] = new_nonce,
    ):
        if certificates and not api_v3_key:
            raise ConfigurationError("platform-certificate mode needs the APIv3 key to decrypt certificates")
        if verifier is None and not certificates:
            raise ConfigurationError(
                "give a verifier (WeChat Pay public key) or certificates=True: responses must be verified"
            )
        self.mchid = mchid
        self.base_url = base_url.rstrip("/")
        self.verifier = verifier or Verifier(clock=clock)
        self._api_v3_key = api_v3_key
        self._certificates = certificates
        self._clock = clock
        self._last_refresh = float("-inf")
        self.auth = WechatPayAuth(
            Signer(mchid, serial_no, private_key, clock=clock, nonce=nonce), self.verifier, base_url=self.base_url
        )
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mchid={self.mchid!r}, base_url={self.base_url!r})"

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "auth": self.auth,
            "timeout": self._timeout,
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
            "follow_redirects": False,
        }

    def _request(self, http: httpx.Client | httpx.AsyncClient, op: Operation[Any]) -> httpx.Request:
        content = None
        headers = {}
        if op.json is not None:
            content = json.dumps(op.json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        return http.build_request(op.method, op.path, params=op.params, content=content, headers=headers)

    @staticmethod
    def _result(op: Operation[T], response: httpx.Response) -> T:
        if not response.is_success:
            raise error_from_response(response)
        return op.parse(response)

    def _may_refresh(self, exc: UnknownSerialError) -> bool:
        return (
            self._certificates
            and exc.response is not None
            and self._clock() - self._last_refresh >= CERTIFICATE_REFRESH_INTERVAL
        )

    def _install_certificates(self, response: httpx.Response) -> None:
        """Install the certificates of a /v3/certificates answer, then verify that answer with them."""
        if not response.is_success:
            raise error_from_response(response)
        assert self._api_v3_key is not None
        keys = parse_certificates(response.content, self._api_v3_key, status=response.status_code)
        self.verifier.replace_certificates(keys)
        self.auth.verify(response)

    def _mapped_transport_error(self, op: Operation[Any], exc: httpx.TransportError) -> TransportError:
        return TransportError(f"{op.method} {op.path}: {type(exc).__name__}: {exc}")

    @property
    def combine(self) -> CombineOrders:
        """Combine orders: ``create_native``, ``query``, ``close``."""
        return CombineOrders(self.send)

    def send(self, op: Operation[T]) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class Client(_BaseClient):
    """Synchronous client. Use as a context manager or call :meth:`close`.

    ``transport`` is for tests (``httpx.MockTransport(simulator.handle)``).
    """

    def __init__(self, *, transport: httpx.BaseTransport | None = None, **kw: Any):
        super().__init__(**kw)
        self.http = httpx.Client(transport=transport, **self._http_options())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, op: Operation[T]) -> T:
        """Send one operation; return its parsed result or raise from the :mod:`wxpay` tree."""
        try:
            try:
                response = self.http.send(self._request(self.http, op))
            except UnknownSerialError as exc:
                if not self._may_refresh(exc):
                    raise
                self.refresh_certificates()
                self.auth.verify(exc.response)
                response = exc.response
        except httpx.TransportError as exc:
            raise self._mapped_transport_error(op, exc) from None
        return self._result(op, response)

    def refresh_certificates(self) -> None:
        """Download ``/v3/certificates`` and swap in the platform certificates it holds."""
        self._last_refresh = self._clock()
        op = Operation("GET", CERTIFICATES_PATH, json_body)
        try:
            response = self.http.send(self._request(self.http, op))
        except UnknownSerialError as exc:
            response = exc.response  # signed by a certificate we are about to learn
        except httpx.TransportError as exc:
            raise self._mapped_transport_error(op, exc) from None
        self._install_certificates(response)


class AsyncClient(_BaseClient):
    """Asynchronous client: the same operations, awaited."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None, **kw: Any):
        super().__init__(**kw)
        self.http = httpx.AsyncClient(transport=transport, **self._http_options())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, op: Operation[T]) -> T:
        try:
            try:
                response = await self.http.send(self._request(self.http, op))
            except UnknownSerialError as exc:
                if not self._may_refresh(exc):
                    raise
                await self.refresh_certificates()
                self.auth.verify(exc.response)
                response = exc.response
        except httpx.TransportError as exc:
            raise self._mapped_transport_error(op, exc) from None
        return self._result(op, response)

    async def refresh_certificates(self) -> None:
        self._last_refresh = self._clock()
        op = Operation("GET", CERTIFICATES_PATH, json_body)
        try:
            response = await self.http.send(self._request(self.http, op))
        except UnknownSerialError as exc:
            response = exc.response
        except httpx.TransportError as exc:
            raise self._mapped_transport_error(op, exc) from None
        self._install_certificates(response)
