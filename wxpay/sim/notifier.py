"""Payment notifications of the simulator: envelopes, WeChat Pay's retry schedule, delivery attempts (spec §3).

One notification per paid combine order. A delivery is acknowledged by an HTTP 2xx answer
within 5 s; anything else is a failure and the next attempt falls due after the next
interval of :data:`RETRY_INTERVALS` on the *business* clock. The notification ``id`` and
the encrypted body stay the same across attempts; each attempt is signed afresh (by the
simulator, which owns the keys and the HTTP client and passes them in as ``send``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from wxpay import aead
from wxpay.models import format_rfc3339

RETRY_INTERVALS = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
"""Seconds between a failed attempt and the next one: 1 initial + 15 retries over 24 h 4 min."""


@dataclass
class Attempt:
    number: int  # 1 = the initial delivery
    at: datetime
    status: int | None  # HTTP status of the merchant's answer; None if there was none
    error: str | None = None
    fault: str | None = None
    copies: int = 1

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Delivery:
    notification_id: str
    combine_mchid: str
    combine_out_trade_no: str
    url: str
    body: bytes
    due_at: datetime | None
    attempts: list[Attempt] = field(default_factory=list)
    acknowledged: bool = False
    lost: bool = False  # every attempt is lost (the "lose" fault)

    @property
    def given_up(self) -> bool:
        return not self.acknowledged and self.due_at is None

    def record(self, attempt: Attempt) -> None:
        """Book an attempt and decide the next due time."""
        self.attempts.append(attempt)
        if attempt.acknowledged:
            self.acknowledged = True
            self.due_at = None
        elif len(self.attempts) <= len(RETRY_INTERVALS):
            self.due_at = attempt.at + timedelta(seconds=RETRY_INTERVALS[len(self.attempts) - 1])
        else:
            self.due_at = None

    def summary(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "combine_mchid": self.combine_mchid,
            "combine_out_trade_no": self.combine_out_trade_no,
            "acknowledged": self.acknowledged,
            "given_up": self.given_up,
            "due_at": format_rfc3339(self.due_at) if self.due_at else None,
            "attempts": [
                {
                    "number": a.number,
                    "at": format_rfc3339(a.at),
                    "status": a.status,
                    "error": a.error,
                    "fault": a.fault,
                    "copies": a.copies,
                }
                for a in self.attempts
            ],
        }


def envelope(
    payload: dict[str, Any], api_v3_key: str, *, notification_id: str, create_time: datetime, nonce: str
) -> bytes:
    """The callback body: the payment encrypted with the initiator's APIv3 key (spec §3.2)."""
    plaintext = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    body = {
        "id": notification_id,
        "create_time": format_rfc3339(create_time),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": aead.ALGORITHM,
            "ciphertext": aead.encrypt(api_v3_key, nonce, plaintext, "transaction"),
            "associated_data": "transaction",
            "nonce": nonce,
        },
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def new_delivery(
    payload: dict[str, Any],
    api_v3_key: str,
    *,
    combine_mchid: str,
    combine_out_trade_no: str,
    url: str,
    now: datetime,
    rng: random.Random,
) -> Delivery:
    """The notification of one paid combine order, due ``now``; its id and nonce are drawn from ``rng``."""
    hexid = f"{rng.getrandbits(128):032x}"
    notification_id = f"{hexid[:8]}-{hexid[8:12]}-{hexid[12:16]}-{hexid[16:20]}-{hexid[20:]}"
    nonce = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    body = envelope(payload, api_v3_key, notification_id=notification_id, create_time=now, nonce=nonce)
    return Delivery(notification_id, combine_mchid, combine_out_trade_no, url, body, due_at=now)


def attempt_delivery(
    delivery: Delivery, now: datetime, fault: str | None, send: Callable[[], httpx.Response]
) -> Attempt:
    """Make the next attempt of ``delivery`` at ``now`` (the caller records it); ``send`` signs and posts one copy.

    Faults of the ``notify`` channel: ``lose`` loses this and every later attempt, ``drop`` this one,
    ``duplicate`` sends two copies; the others bend the signature (see ``Simulator.signed_headers``).
    No answer (an HTTP error) or a non-2xx answer is a failed attempt.
    """
    number = len(delivery.attempts) + 1
    if fault == "lose":
        delivery.lost = True
    if delivery.lost or fault == "drop":
        return Attempt(number, now, None, error="lost in transit", fault=fault or "lose")
    copies = 2 if fault == "duplicate" else 1
    status, error = None, None
    for _ in range(copies):
        try:
            answer = send()
            status, error = answer.status_code, None if answer.is_success else answer.text[:200]
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
    return Attempt(number, now, status, error=error, fault=fault, copies=copies)
