"""Payment notifications (spec §3): verify → check algorithm → decrypt → typed notification.

:func:`parse_notification` is the one entry point; nothing of a callback is trusted or even
parsed as JSON before its signature and timestamp have been checked. The reply helpers say
what WeChat Pay expects back: 200/204 for success, 4xx/5xx with ``{"code":"FAIL"}`` for
failure (the HTTP status decides, §3.3).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from wxpay import aead
from wxpay.errors import MalformedNotificationError, UnknownSerialError, UnsupportedAlgorithmError
from wxpay.models import CombineOrder, CombinePaymentNotification, NotificationEnvelope
from wxpay.verifying import Verifier

PAYMENT_SUCCESS = "TRANSACTION.SUCCESS"


def parse_notification(
    headers: Mapping[str, str],
    body: bytes,
    *,
    verifier: Verifier,
    api_v3_key: bytes | str,
    refresh_certificates: Callable[[], None] | None = None,
) -> CombinePaymentNotification:
    """Verify and decrypt one combine payment callback.

    ``headers`` are the HTTP headers as received and ``body`` the exact body bytes.
    ``refresh_certificates`` (platform-certificate mode) is called once on an unknown serial.
    Raises a :class:`~wxpay.errors.VerificationError`, :class:`~wxpay.errors.DecryptionError`
    or :class:`~wxpay.errors.MalformedNotificationError`.
    """
    try:
        signed = verifier.verify(headers, body)
    except UnknownSerialError:
        if refresh_certificates is None:
            raise
        refresh_certificates()
        signed = verifier.verify(headers, body)
    try:
        envelope = NotificationEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedNotificationError(f"callback envelope is invalid: {_first(exc)}") from None
    resource = envelope.resource
    if resource.algorithm != aead.ALGORITHM:
        raise UnsupportedAlgorithmError(
            f"resource algorithm {resource.algorithm!r} is not {aead.ALGORITHM}",
            serial=signed.serial,
            request_id=signed.request_id,
        )
    plaintext = aead.decrypt(api_v3_key, resource.nonce, resource.ciphertext, resource.associated_data)
    try:
        order = CombineOrder.model_validate_json(plaintext)
    except ValidationError as exc:
        raise MalformedNotificationError(f"notification {envelope.id}: decrypted payload: {_first(exc)}") from None
    return CombinePaymentNotification(
        id=envelope.id,
        create_time=envelope.create_time,
        event_type=envelope.event_type,
        summary=envelope.summary,
        serial=signed.serial,
        order=order,
    )


def _first(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"


@dataclass(frozen=True)
class Reply:
    """What to answer WeChat Pay: an HTTP status, body and headers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def success_reply(status: int = 204) -> Reply:
    """Acknowledge a notification: 204 with no body (200 is equally accepted)."""
    if status not in (200, 204):
        raise ValueError("a success reply is HTTP 200 or 204")
    return Reply(status)


def failure_reply(message: str = "失败", status: int = 400) -> Reply:
    """Refuse a notification so WeChat Pay retries it: 4xx/5xx with ``{"code":"FAIL"}``."""
    if not 400 <= status < 600:
        raise ValueError("a failure reply is HTTP 4xx or 5xx")
    body = json.dumps({"code": "FAIL", "message": message}, ensure_ascii=False).encode("utf-8")
    return Reply(status, body, {"Content-Type": "application/json"})
