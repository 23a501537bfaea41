"""The one signing path: an :class:`httpx.Auth` that signs every request and verifies every
signed 2xx response (spec §1, §2.4).

It does no I/O of its own, so the same object serves :class:`httpx.Client` and
:class:`httpx.AsyncClient`. Response bodies are read only when they must be verified, so
the unsigned bill download (``/v3/billdownload/file``) stays a stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable

import httpx

from wxpay.errors import ForeignHostError, VerificationError
from wxpay.signing import Signer
from wxpay.verifying import HEADER_SERIAL, Verifier

UNSIGNED_PATHS = ("/v3/billdownload/file",)
"""Responses WeChat Pay does not sign (spec §2.4)."""


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"https": 443, "http": 80}.get(url.scheme)
    return (url.scheme, url.host, url.port or default)


class WechatPayAuth(httpx.Auth):
    """Sign as ``signer``; verify 2xx answers with ``verifier``; talk only to ``base_url``'s origin.

    A request to any other scheme/host/port raises :class:`ForeignHostError` before it is
    signed, so our Authorization header never leaves for a host we do not trust (a bill
    ``download_url`` is used verbatim, so this matters).
    """

    requires_request_body = True

    def __init__(
        self,
        signer: Signer,
        verifier: Verifier,
        *,
        base_url: str | httpx.URL,
        unsigned_paths: Iterable[str] = UNSIGNED_PATHS,
    ):
        self.signer = signer
        self.verifier = verifier
        self._origin = _origin(httpx.URL(str(base_url)))
        self._unsigned = tuple(unsigned_paths)

    def __repr__(self) -> str:
        return f"WechatPayAuth(mchid={self.signer.mchid!r}, origin={self._origin!r})"

    def check_origin(self, url: httpx.URL) -> None:
        if _origin(url) != self._origin:
            scheme, host, port = self._origin
            raise ForeignHostError(f"{url.scheme}://{url.host}:{url.port}", f"{scheme}://{host}:{port}")

    def sign(self, request: httpx.Request) -> None:
        self.check_origin(request.url)
        target = request.url.raw_path.decode("ascii")
        request.headers["Authorization"] = self.signer.authorization(request.method, target, request.content)
        request.headers.setdefault("Accept", "application/json")
        serial = self.verifier.preferred_serial
        if serial:
            request.headers.setdefault(HEADER_SERIAL, serial)

    def must_verify(self, response: httpx.Response) -> bool:
        return response.is_success and response.request.url.path not in self._unsigned

    def verify(self, response: httpx.Response) -> None:
        """Verify a read response; on failure the error keeps the response as ``.response``."""
        try:
            self.verifier.verify(response.headers, response.content)
        except VerificationError as exc:
            exc.response = response  # lets the client re-verify after a certificate refresh
            raise

    # httpx reads every response body when requires_response_body is set; we read only the
    # ones we verify, so a bill download stays streamed.
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        self.sign(request)
        response = yield request
        if self.must_verify(response):
            response.read()
            self.verify(response)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        self.sign(request)
        response = yield request
        if self.must_verify(response):
            await response.aread()
            self.verify(response)
