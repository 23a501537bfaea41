"""One line of the notification log: :class:`LogEntry`, written as JSON and read back (formats 1 and 2).

What each key means, and the layout of the files, is described in :mod:`flows.notifications.log`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
MAX_RECORD_BYTES = 8 * 1024
"""The longest a record of a refused request can be (a test sends the worst it can think of)."""

Outcome = Literal["accepted", "duplicate", "rejected"]
OUTCOMES: tuple[str, ...] = ("accepted", "duplicate", "rejected")
RECORD_KEYS = ("body_length", "body_sha256", "body_complete", "excerpt", "peer", "path")
_UTC8 = timezone(timedelta(hours=8))
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = ("v", "received_at", "mchid", "outcome", "reason", "notification_id", "headers", "reply_status")


def format_received_at(moment: datetime) -> str:
    """RFC 3339 in Beijing time with milliseconds: ``2026-11-27T09:00:01.234+08:00``."""
    if moment.tzinfo is None:
        raise ValueError("received_at must be an aware datetime")
    return moment.astimezone(_UTC8).isoformat(timespec="milliseconds")


def body_fields(body: bytes) -> dict[str, str]:
    """``{"body": text}`` or ``{"body_b64": ...}``: whichever is shorter in the line (text on a tie)."""
    b64_size = 4 * ((len(body) + 2) // 3)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(json.dumps(text, ensure_ascii=True)) - 2 <= b64_size:
        return {"body": text}
    return {"body_b64": base64.b64encode(body).decode("ascii")}


@dataclass(frozen=True)
class LogEntry:
    """One line of the log (see the module docstring for the meaning of each field).

    A record of a refused request has ``body_bytes`` ``None`` and the record fields set (``body_length``
    not ``None``); accepted and duplicate lines have the body and no record fields.
    """

    received_at: datetime
    mchid: str
    outcome: Outcome
    reason: str | None
    notification_id: str | None
    headers: Mapping[str, str]
    body_bytes: bytes | None
    reply_status: int
    body_length: int | None = None
    body_sha256: str | None = None
    body_complete: bool | None = None
    excerpt: str | None = None
    peer: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be an aware datetime")
        if self.is_record and (self.outcome != "rejected" or self.body_bytes is not None):
            raise ValueError("a record (body_length set) is a rejected line without its body")

    @property
    def is_record(self) -> bool:
        """A bounded record of a refused request (format 2): no body, its length and digest instead."""
        return self.body_length is not None

    @property
    def day(self) -> date:
        """The Beijing calendar day of ``received_at``: which file the line belongs to."""
        return self.received_at.astimezone(_UTC8).date()

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "received_at": format_received_at(self.received_at),
            "mchid": self.mchid,
            "outcome": self.outcome,
            "reason": self.reason,
            "notification_id": self.notification_id,
            "headers": dict(sorted(self.headers.items())),
        }
        if self.body_bytes is None:
            obj["body"] = None
            if self.is_record:
                obj.update((key, getattr(self, key)) for key in RECORD_KEYS)
        else:
            obj.update(body_fields(self.body_bytes))
        obj["reply_status"] = self.reply_status
        return obj

    def to_line(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"

    @classmethod
    def from_json(cls, obj: Any) -> LogEntry:
        """Read one parsed line (format 1 or 2); raise ``ValueError`` naming what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("line is not a JSON object")
        missing = [k for k in _KEYS if k not in obj]
        if missing:
            raise ValueError(f"missing keys {missing}")
        if obj["v"] not in READ_VERSIONS or type(obj["v"]) is not int:
            raise ValueError(f"unknown format version {obj['v']!r}")
        if ("body" in obj) == ("body_b64" in obj):
            raise ValueError("exactly one of body / body_b64 is required")
        headers = obj["headers"]
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ValueError("headers must be an object of strings")
        if "body_b64" in obj:
            try:
                body: bytes | None = base64.b64decode(obj["body_b64"], validate=True)
            except (binascii.Error, TypeError) as exc:
                raise ValueError(f"body_b64 is not Base64: {exc}") from None
        elif obj["body"] is None or isinstance(obj["body"], str):
            body = None if obj["body"] is None else obj["body"].encode("utf-8")
        else:
            raise ValueError("body must be a string or null")
        if not isinstance(obj["received_at"], str) or not obj["received_at"].endswith("+08:00"):
            raise ValueError(f"received_at is not RFC 3339 with +08:00: {obj['received_at']!r}")
        for key, kind in (("mchid", str), ("reply_status", int)):
            if not isinstance(obj[key], kind):
                raise ValueError(f"{key} must be {kind.__name__}")
        for key in ("reason", "notification_id"):
            if obj[key] is not None and not isinstance(obj[key], str):
                raise ValueError(f"{key} must be a string or null")
        record = _record_fields(obj) if obj["v"] >= 2 and body is None else {}
        if obj["v"] >= 2 and body is None and obj["outcome"] != "rejected":
            raise ValueError("only a rejected line may be without its body")
        return cls(
            received_at=datetime.fromisoformat(obj["received_at"]),
            mchid=obj["mchid"],
            outcome=obj["outcome"],
            reason=obj["reason"],
            notification_id=obj["notification_id"],
            headers=headers,
            body_bytes=body,
            reply_status=obj["reply_status"],
            **record,
        )


def _record_fields(obj: dict) -> dict[str, Any]:
    """The record keys of a format-2 line without a body, checked."""
    missing = [k for k in RECORD_KEYS if k not in obj]
    if missing:
        raise ValueError(f"a record without its body is missing keys {missing}")
    length, digest, complete = obj["body_length"], obj["body_sha256"], obj["body_complete"]
    if type(length) is not int or length < 0:
        raise ValueError("body_length must be a whole number of bytes")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ValueError("body_sha256 must be 64 lowercase hex digits")
    if type(complete) is not bool:
        raise ValueError("body_complete must be true or false")
    for key in ("excerpt", "peer", "path"):
        if obj[key] is not None and not isinstance(obj[key], str):
            raise ValueError(f"{key} must be a string or null")
    return {key: obj[key] for key in RECORD_KEYS}
