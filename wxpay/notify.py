"""Payment notifications (spec §3): verify → check algorithm → decrypt → typed notification.

:func:`parse_notification` is the entry point for a receiver; :func:`open_notification` is its
first half (verify, check the envelope and the algorithm, decrypt) without the typed model, for
bulk re-verification (the reconciliation re-opens every logged callback with it). There is one
verification path: ``parse_notification`` calls ``open_notification``. Nothing of a callback is
trusted or even parsed as JSON before its signature and timestamp have been checked. The reply
helpers say what WeChat Pay expects back: 200/204 for success, 4xx/5xx with ``{"code":"FAIL"}``
for failure (the HTTP status decides, §3.3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from wxpay import aead
from wxpay.errors import MalformedNotificationError, UnknownSerialError, UnsupportedAlgorithmError
from wxpay.models import CombineOrder, CombinePaymentNotification, NotificationEnvelope
from wxpay.verifying import SignedHeaders, Verifier

PAYMENT_SUCCESS = "TRANSACTION.SUCCESS"

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_MAX_BRACKETS = 64  # far below the typed model's JSON nesting limit (200)
_is_str = str.__instancecheck__


@dataclass(frozen=True, eq=False)
class OpenedNotification:
    """A callback whose signature verified and whose resource decrypted, not yet typed.

    ``envelope`` is the callback's outer JSON object as sent (``id``, ``create_time``,
    ``event_type``, ``resource_type``, ``summary``, ``resource`` with the ciphertext, and any
    other field); the other fields are its checked values. ``plaintext`` is the decrypted
    resource: it holds the payer's openid, so it is never shown (``repr`` omits it).
    """

    signed: SignedHeaders
    id: str
    create_time: datetime
    event_type: str
    resource_type: str
    summary: str
    original_type: str | None
    envelope: Mapping[str, Any] = field(repr=False)
    plaintext: bytes = field(repr=False)


def open_notification(
    headers: Mapping[str, str],
    body: bytes,
    *,
    verifier: Verifier,
    api_v3_key: bytes | str,
    refresh_certificates: Callable[[], None] | None = None,
) -> OpenedNotification:
    """Verify one callback, check its envelope and algorithm, decrypt its resource.

    The same checks, in the same order and with the same exceptions, as
    :func:`parse_notification` up to (not including) the typed payload:
    a :class:`~wxpay.errors.VerificationError` (headers, probe, timestamp window judged by
    ``verifier``'s clock, serial, RSA), :class:`~wxpay.errors.MalformedNotificationError`
    (the body is not the documented envelope), :class:`~wxpay.errors.UnsupportedAlgorithmError`,
    :class:`~wxpay.errors.DecryptionError`. Uses ``json`` and explicit checks, no model
    validation, for well-formed envelopes; anything unusual is judged by the typed envelope
    model, so both functions accept and refuse exactly the same bodies.
    """
    try:
        signed = verifier.verify(headers, body)
    except UnknownSerialError:
        if refresh_certificates is None:
            raise
        refresh_certificates()
        signed = verifier.verify(headers, body)
    opened = _envelope_fast(body)
    if opened is None:
        opened = _envelope_model(body)
    envelope, create_time, resource = opened
    algorithm = resource["algorithm"]
    if algorithm != aead.ALGORITHM:
        raise UnsupportedAlgorithmError(
            f"resource algorithm {algorithm!r} is not {aead.ALGORITHM}",
            serial=signed.serial,
            request_id=signed.request_id,
        )
    plaintext = aead.decrypt(api_v3_key, resource["nonce"], resource["ciphertext"], resource.get("associated_data", ""))
    return OpenedNotification(
        signed=signed,
        id=envelope["id"],
        create_time=create_time,
        event_type=envelope["event_type"],
        resource_type=envelope["resource_type"],
        summary=envelope.get("summary", ""),
        original_type=resource.get("original_type"),
        envelope=envelope,
        plaintext=plaintext,
    )


def _envelope_fast(body: bytes) -> tuple[dict[str, Any], datetime, dict[str, Any]] | None:
    """The envelope of an ordinary body by ``json`` and explicit checks, or ``None``.

    ``None`` means "not the plain shape": the caller asks the typed model, which accepts or
    refuses it exactly as before. Everything accepted here the model accepts with equal values
    (UTF-8 only, no lone-surrogate escapes, shallow nesting, RFC 3339 ``create_time``).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if body.count(b"{") + body.count(b"[") > _MAX_BRACKETS or (b"\\u" in body and _SURROGATE_ESCAPE.search(text)):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    try:
        create_time, resource = obj["create_time"], obj["resource"]
        fields = (obj["id"], obj["event_type"], obj["resource_type"], obj.get("summary", ""), create_time)
        fields += (
            resource["algorithm"],
            resource["ciphertext"],
            resource["nonce"],
            resource.get("associated_data", ""),
        )
    except (KeyError, TypeError):  # a missing field, or ``resource`` not an object
        return None
    original_type = resource.get("original_type")
    if not (
        type(resource) is dict
        and all(map(_is_str, fields))
        and (original_type is None or type(original_type) is str)
        and _RFC3339.fullmatch(create_time)
    ):
        return None
    try:
        moment = datetime.fromisoformat(create_time)
    except ValueError:
        return None
    return obj, moment, resource


def _envelope_model(body: bytes) -> tuple[dict[str, Any], datetime, dict[str, Any]]:
    """The envelope by the typed model (unusual bodies); raises MalformedNotificationError."""
    try:
        model = NotificationEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedNotificationError(f"callback envelope is invalid: {_first(exc)}") from None
    envelope = model.model_dump()
    return envelope, model.create_time, envelope["resource"]


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
    opened = open_notification(
        headers, body, verifier=verifier, api_v3_key=api_v3_key, refresh_certificates=refresh_certificates
    )
    try:
        order = CombineOrder.model_validate_json(opened.plaintext)
    except ValidationError as exc:
        raise MalformedNotificationError(f"notification {opened.id}: decrypted payload: {_first(exc)}") from None
    return CombinePaymentNotification(
        id=opened.id,
        create_time=opened.envelope["create_time"],  # as sent: the model reads it exactly as it always did
        event_type=opened.event_type,
        summary=opened.summary,
        serial=opened.signed.serial,
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
