"""The one exception tree of :mod:`wxpay`.

Catching :class:`WxPayError` catches everything the library raises::

    WxPayError
    ├── ConfigurationError          bad key material or settings handed to a constructor
    ├── RequestValidationError      our request model refused the input; nothing was sent
    ├── MalformedAuthorizationError an Authorization header that cannot be parsed (simulator side)
    ├── TransportError              connect / read failure or timeout            (retryable)
    ├── VerificationError           a message claiming to come from WeChat Pay is not trusted
    │   ├── MissingSignatureError       a signed response or callback without Wechatpay-* headers
    │   ├── SignatureMismatchError      RSA check failed: tampered body or wrong key
    │   ├── SignatureProbeError         a WECHATPAY/SIGNTEST/ probe (always rejected)
    │   ├── UnknownSerialError          no key for that serial / PUB_KEY_ID
    │   ├── TimestampOutOfWindowError   |now - Wechatpay-Timestamp| >= 300 s
    │   └── UnsupportedAlgorithmError   signature type or resource algorithm we do not know
    ├── DecryptionError             AEAD_AES_256_GCM tag check failed (wrong APIv3 key or tampered data)
    ├── MalformedNotificationError  a verified callback body that is not the documented envelope
    ├── ApiError                    a non-2xx answer: status, code, message, detail, Request-ID, retryable
    │   ├── UnexpectedResponseError     a body we cannot read (non-JSON error, 2xx of the wrong shape)
    │   ├── AuthenticationError         401 SIGN_ERROR
    │   ├── PermissionDeniedError       403 NO_AUTH and other 403 business rules
    │   ├── InvalidRequestError         400 PARAM_ERROR / INVALID_REQUEST / APPID_MCHID_NOT_MATCH ...
    │   ├── OrderNotFoundError          404 ORDER_NOT_EXIST (old spelling ORDERNOTEXIST)
    │   ├── OrderClosedError            400 ORDER_CLOSED
    │   ├── OrderPaidError              ORDER_PAID / ORDERPAID (code unconfirmed, spec §7)
    │   ├── BillNotReadyError           400 STATEMENT_CREATING: try again later       (retryable)
    │   ├── NoStatementError            400 NO_STATEMENT_EXIST: no trades that day (a legitimate empty day)
    │   ├── RateLimitedError            429 FREQUENCY_LIMITED                          (retryable)
    │   └── ServerError                 5xx SYSTEM_ERROR / BANK_ERROR / SERVICE_UNAVAILABLE (retryable)
    └── BillError                   a downloaded bill cannot be trusted or read
        ├── ForeignHostError            download URL points outside the configured API host
        ├── BillDownloadError           the download failed or the URL expired (re-apply and retry)
        ├── BillTruncatedError          the gzip stream ended early: never a short bill
        ├── BillHashMismatchError       SHA1 of the decompressed file differs from hash_value
        └── BillFormatError             a bad line in the file: names the file, line and field
            └── BillSummaryMismatchError  the summary line disagrees with the detail rows

Every error carries its evidence as attributes (itsdangerous style); none of them ever
carries a key or the APIv3 key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class WxPayError(Exception):
    """Root of everything :mod:`wxpay` raises."""

    retryable: bool = False


class ConfigurationError(WxPayError, ValueError):
    """Key material or settings handed to a constructor are unusable."""


class RequestValidationError(WxPayError, ValueError):
    """A request model refused its input before anything was sent."""


class MalformedAuthorizationError(WxPayError, ValueError):
    """An Authorization header is not ``WECHATPAY2-SHA256-RSA2048`` with the five pairs."""


class TransportError(WxPayError):
    """The request did not complete (connect, read, timeout). Safe to retry queries."""

    retryable = True


# --- verification ---------------------------------------------------------------------------


class VerificationError(WxPayError):
    """A response or callback that claims to come from WeChat Pay is not trusted.

    ``serial`` is the ``Wechatpay-Serial`` the message named (``None`` if absent) and
    ``request_id`` the ``Request-ID`` header, when there was one. ``response`` is the
    (already read) HTTP response that failed, when the failure was on an API answer.
    """

    response: Any = None

    def __init__(self, message: str, *, serial: str | None = None, request_id: str | None = None):
        super().__init__(message)
        self.serial = serial
        self.request_id = request_id


class MissingSignatureError(VerificationError):
    """A message that must be signed has no (or incomplete) Wechatpay-* headers."""


class SignatureMismatchError(VerificationError):
    """The RSA signature does not match the message (tampered body or a different key)."""


class SignatureProbeError(VerificationError):
    """``Wechatpay-Signature`` starts with ``WECHATPAY/SIGNTEST/``: a probe, always rejected."""


class UnknownSerialError(VerificationError):
    """No verification key is known for ``serial``."""


class TimestampOutOfWindowError(VerificationError):
    """``Wechatpay-Timestamp`` is 300 s or more away from our clock."""

    def __init__(self, message: str, *, timestamp: int, now: float, **kw: Any):
        super().__init__(message, **kw)
        self.timestamp = timestamp
        self.now = now


class UnsupportedAlgorithmError(VerificationError):
    """A signature type or resource algorithm other than the ones WeChat Pay documents."""


class DecryptionError(WxPayError):
    """AEAD_AES_256_GCM decryption failed: wrong APIv3 key, or tampered ciphertext/nonce/AAD."""


class MalformedNotificationError(WxPayError, ValueError):
    """A callback that verified but is not the documented envelope or payload."""


# --- API errors -----------------------------------------------------------------------------


class ApiError(WxPayError):
    """WeChat Pay answered with an error.

    Attributes: ``status`` (HTTP), ``code`` and ``message`` from the body, ``detail`` (dict or
    ``None``), ``request_id`` (the ``Request-ID`` header) and ``retryable``.
    """

    retryable_codes: ClassVar[frozenset[str]] = frozenset(
        {
            "SYSTEM_ERROR",
            "SYSTEMERROR",
            "BANK_ERROR",
            "SERVICE_UNAVAILABLE",
            "FREQUENCY_LIMITED",
            "RATELIMIT_EXCEEDED",
            "STATEMENT_CREATING",
        }
    )

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        detail: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ):
        self.status = status
        self.code = code
        self.message = message
        self.detail = dict(detail) if detail else None
        self.request_id = request_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"HTTP {self.status} {self.code or '-'}: {self.message}"
        if self.request_id:
            text += f" (Request-ID {self.request_id})"
        return text

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status == 429 or self.status >= 500 or (self.code or "") in self.retryable_codes


class UnexpectedResponseError(ApiError):
    """A body we cannot read: a non-JSON error page, or a 2xx body of the wrong shape.

    ``body_excerpt`` holds at most the first 200 characters of what arrived.
    """

    def __init__(self, status: int, message: str, *, body_excerpt: str = "", request_id: str | None = None):
        self.body_excerpt = body_excerpt[:200]
        super().__init__(status, None, message, request_id=request_id)


class AuthenticationError(ApiError):
    """401 SIGN_ERROR: WeChat Pay rejected our signature or Authorization header."""


class PermissionDeniedError(ApiError):
    """403: NO_AUTH, OUT_TRADE_NO_USED, RULE_LIMIT and other business refusals."""


class InvalidRequestError(ApiError):
    """400: PARAM_ERROR, INVALID_REQUEST, APPID_MCHID_NOT_MATCH, MCH_NOT_EXISTS ..."""


class OrderNotFoundError(ApiError):
    """404 ORDER_NOT_EXIST (also spelled ORDERNOTEXIST)."""


class OrderClosedError(ApiError):
    """400 ORDER_CLOSED: the combine order is already closed."""


class OrderPaidError(ApiError):
    """The combine order is already paid (code unconfirmed; ORDER_PAID / ORDERPAID)."""


class BillNotReadyError(ApiError):
    """400 STATEMENT_CREATING: the bill is still being generated; apply again later."""


class NoStatementError(ApiError):
    """400 NO_STATEMENT_EXIST: no trades that day. A legitimate empty day, not a failure."""


class RateLimitedError(ApiError):
    """429 FREQUENCY_LIMITED."""


class ServerError(ApiError):
    """5xx SYSTEM_ERROR, BANK_ERROR, SERVICE_UNAVAILABLE: retry with the same parameters."""


_BY_CODE: dict[str, type[ApiError]] = {
    "SIGN_ERROR": AuthenticationError,
    "ORDER_NOT_EXIST": OrderNotFoundError,
    "ORDERNOTEXIST": OrderNotFoundError,
    "ORDER_CLOSED": OrderClosedError,
    "ORDERCLOSED": OrderClosedError,
    "ORDER_PAID": OrderPaidError,
    "ORDERPAID": OrderPaidError,
    "STATEMENT_CREATING": BillNotReadyError,
    "NO_STATEMENT_EXIST": NoStatementError,
    "FREQUENCY_LIMITED": RateLimitedError,
    "RATELIMIT_EXCEEDED": RateLimitedError,
    "SYSTEM_ERROR": ServerError,
    "SYSTEMERROR": ServerError,
    "BANK_ERROR": ServerError,
    "SERVICE_UNAVAILABLE": ServerError,
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: OrderNotFoundError,
    429: RateLimitedError,
}


def api_error_class(status: int, code: str | None) -> type[ApiError]:
    """The most specific :class:`ApiError` subclass for an HTTP status and WeChat code."""
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    if status >= 500:
        return ServerError
    if status == 404 and code not in (None, "ORDER_NOT_EXIST", "ORDERNOTEXIST"):
        return ApiError  # e.g. RESOURCE_NOT_EXISTS: not an order
    return _BY_STATUS.get(status, ApiError)


# --- bills ----------------------------------------------------------------------------------


class BillError(WxPayError):
    """A downloaded bill cannot be trusted or read."""


class ForeignHostError(BillError):
    """We refuse to send our Authorization header to ``host`` (not the configured API host)."""

    def __init__(self, host: str, allowed: str):
        super().__init__(f"refusing to sign a request to {host!r}: only {allowed!r} is trusted")
        self.host = host
        self.allowed = allowed


class BillDownloadError(BillError):
    """The download failed mid-way or its URL expired; apply again and retry."""

    retryable = True


class BillTruncatedError(BillError):
    """The gzip stream ended before its end marker: the bill is incomplete."""


class BillHashMismatchError(BillError):
    """SHA1 of the decompressed bill differs from the ``hash_value`` WeChat Pay announced."""

    def __init__(self, *, expected: str, actual: str, source: str = ""):
        where = f" for {source}" if source else ""
        super().__init__(f"bill SHA1 mismatch{where}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual
        self.source = source


class BillFormatError(BillError, ValueError):
    """A bill file line that cannot be read. Names the file, the 1-based line and the field."""

    def __init__(self, message: str, *, file: str, line: int | None = None, field: str | None = None):
        where = file + (f":{line}" if line is not None else "")
        what = f" [{field}]" if field else ""
        super().__init__(f"{where}{what}: {message}")
        self.file = file
        self.line = line
        self.field = field


class BillSummaryMismatchError(BillFormatError):
    """The summary line disagrees with the detail rows; ``differences`` maps field -> (summary, detail)."""

    def __init__(self, message: str, *, file: str, line: int | None, differences: Mapping[str, tuple[Any, Any]]):
        super().__init__(message, file=file, line=line, field=", ".join(differences))
        self.differences = dict(differences)
