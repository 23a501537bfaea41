"""Evidence behind a mart row: a line of an archived bill, a notification-log line, its verification status.

:func:`read_bill_line` reads one line of an archived bill (``flows/archive.py`` layout),
:func:`read_notification_line` the non-secret envelope of one notification-log line
(``flows/notifications/log.py``); the verification result comes from the marts, never from decrypting
(notebooks do not hold the APIv3 key). Payer identifiers are masked in everything returned.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from isal import igzip

from flows.finance.errors import EvidenceNotFound
from flows.finance.masking import PAYER_KEYS, mask_id, mask_text, mask_value
from flows.finance.paths import project_path

__all__ = ["BillLine", "NotificationLine", "read_bill_line", "read_notification_line", "verification_status"]


def _inside(root: Path, relative: str | Path) -> Path:
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise EvidenceNotFound(f"{relative} is outside {root}")
    if not target.is_file():
        raise EvidenceNotFound(f"no file {target}")
    return target


@dataclass(frozen=True)
class BillLine:
    """One line of an archived bill, payer identifiers masked. ``fields``: title -> value (no backtick)."""

    path: Path
    line_no: int
    text: str
    fields: dict[str, str] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"字段 field": list(self.fields), "值 value": list(self.fields.values())})


def read_bill_line(archive_root: str | Path, archive_path: str | Path, line_no: int) -> BillLine:
    """Line ``line_no`` (1-based; the header is line 1) of an archived bill, e.g. the
    ``bill_archive_path`` / ``bill_line_no`` of a mart row. Reads the file as a stream."""
    path = _inside(project_path(archive_root), archive_path)
    if int(line_no) < 1:
        raise EvidenceNotFound(f"line numbers start at 1, got {line_no}")
    opener = igzip.open if path.name.endswith(".gz") else open
    header: list[str] = []
    line, seen = None, 0
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        for seen, content in enumerate(text, start=1):
            content = content.rstrip("\r\n")
            if seen == int(line_no):
                line = content
                break
            if not content.startswith("`"):
                header = content.split(",")  # the detail header, later the summary header
    if line is None:
        raise EvidenceNotFound(f"{path} has {seen} lines, not {line_no}")
    if line.startswith("`"):
        values = [cell.removeprefix("`") for cell in line.split(",")]
        titles = header if len(header) == len(values) else [f"#{i}" for i in range(1, len(values) + 1)]
        fields = {t: (mask_id(v) if t in PAYER_KEYS else mask_text(v)) for t, v in zip(titles, values, strict=True)}
    else:
        fields = {f"#{i}": t for i, t in enumerate(line.split(","), start=1)}
    masked = ",".join("`" + v for v in fields.values()) if line.startswith("`") else line
    return BillLine(path, int(line_no), masked, fields)


# --- evidence: the notification log ---------------------------------------------------------

_HEADER_FIELDS = (
    "request-id",
    "wechatpay-serial",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-signature-type",
    "wechatpay-signature",
)
_ENVELOPE_FIELDS = ("id", "create_time", "event_type", "resource_type", "summary")
_RESOURCE_FIELDS = ("algorithm", "original_type", "associated_data", "nonce")


@dataclass(frozen=True)
class NotificationLine:
    """The non-secret parts of one notification-log line: where and when it arrived, what the
    receiver answered, the ``Wechatpay-*`` headers and the envelope (never the ciphertext's content)."""

    path: Path
    line_no: int
    receiver: dict[str, Any]
    headers: dict[str, str]
    envelope: dict[str, Any]

    def frame(self) -> pd.DataFrame:
        rows = [(f"receiver.{k}", v) for k, v in self.receiver.items()]
        rows += [(f"header.{k}", v) for k, v in self.headers.items()]
        rows += [(f"envelope.{k}", v) for k, v in self.envelope.items()]
        return pd.DataFrame([(k, "" if v is None else str(v)) for k, v in rows], columns=["字段 field", "值 value"])


def read_notification_line(log_root: str | Path, log_file: str | Path, line_no: int) -> NotificationLine:
    """Line ``line_no`` (1-based) of ``<log_root>/<log_file>`` (the marts' ``notification_log_file``)."""
    path = _inside(project_path(log_root), log_file)
    with path.open("rb") as handle:
        raw = next((content for number, content in enumerate(handle, start=1) if number == int(line_no)), None)
    if raw is None:
        raise EvidenceNotFound(f"{path} has no line {line_no}")
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        receiver = {"unreadable": f"{type(exc).__name__}: {exc}", "bytes": len(raw.rstrip(b"\n"))}
        return NotificationLine(path, int(line_no), receiver, {}, {})
    receiver = {k: obj.get(k) for k in ("received_at", "mchid", "outcome", "reason", "notification_id", "reply_status")}
    # a record of a refused request (format 2) keeps these instead of the body
    receiver.update({k: obj[k] for k in ("peer", "path", "body_length", "body_sha256", "excerpt") if k in obj})
    sent = obj["headers"] if isinstance(obj.get("headers"), dict) else {}
    headers = {k: str(sent[k]) for k in _HEADER_FIELDS if k in sent}
    if "wechatpay-signature" in headers:
        sig = headers["wechatpay-signature"]
        headers["wechatpay-signature"] = f"{sig[:16]}… ({len(sig)} characters)"
    envelope: dict[str, Any] = {}
    body = obj.get("body")
    if isinstance(obj.get("body_b64"), str):  # the exact bytes, in Base64 when that is shorter (format 2)
        try:
            body = base64.b64decode(obj["body_b64"], validate=True)
        except ValueError:
            body = None
    try:
        message = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        message = None
    if isinstance(message, dict):
        envelope = {k: message[k] for k in _ENVELOPE_FIELDS if k in message}
        resource = message.get("resource") if isinstance(message.get("resource"), dict) else {}
        envelope.update({f"resource.{k}": resource[k] for k in _RESOURCE_FIELDS if k in resource})
        if isinstance(resource.get("ciphertext"), str):
            envelope["resource.ciphertext"] = f"({len(resource['ciphertext'])} Base64 characters, encrypted)"
    elif body is not None or "body_b64" in obj:
        envelope = {"body": "not a JSON object (the line's body is kept as received)"}
    elif "body_length" in obj:
        envelope = {"body": "not kept: the receiver refused the request and kept a bounded record of it"}
    return NotificationLine(
        path, int(line_no), mask_value("", receiver), mask_value("", headers), mask_value("", envelope)
    )


def verification_status(lines: pd.DataFrame) -> str:
    """What the nightly verification recorded about one log line, from its ``mart_notifications`` rows."""
    if lines.empty:
        return "无记录 no finding: the nightly run has not recorded this line yet (its day may not be reconciled)."
    first = lines.iloc[0]
    if bool(first["verified"]):
        return "已验证 verified: signature, time window, decryption and payload checked by the nightly run"
    detail = first["failure_detail"] if isinstance(first["failure_detail"], str) else ""
    return f"未通过验证 NOT verified: {first['failure']}" + (f": {detail}" if detail else "")
