"""A notification-log line's fields, read exactly as :class:`flows.notifylog.LogEntry` reads them."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from flows.notifylog import OUTCOMES, LogEntry

try:  # optional: ~2x faster JSON; results are identical without it (see _loads)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

_RECEIVED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00")  # as the log writes it


def _loads(data: bytes | str) -> Any:
    """``json.loads``, faster with orjson where orjson agrees (it refuses what it would read differently)."""
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(data)


_is_str = str.__instancecheck__


def _read_line(raw: bytes) -> tuple | str:
    """The fields of a log line as the log reader reads it, or the reader's reason it is unreadable.

    The checks of :meth:`LogEntry.from_json`, inline; anything they do not pass plainly is
    handed to ``LogEntry.from_json`` itself, so readable/unreadable is exactly the reader's.
    Returns (received_at, its RFC 3339 text, mchid, outcome, reason, notification_id, headers,
    body bytes or None, reply_status).
    """
    try:
        obj = _loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if type(obj) is dict and len(obj) == 9:
        try:
            version, text, mchid, outcome = obj["v"], obj["received_at"], obj["mchid"], obj["outcome"]
            reason, claimed, headers = obj["reason"], obj["notification_id"], obj["headers"]
            body, status = obj["body"], obj["reply_status"]
        except KeyError:
            pass
        else:
            if (
                version == 1
                and outcome in OUTCOMES
                and type(text) is str
                and type(mchid) is str
                and type(status) is int
                and type(body) is str
                and (reason is None or type(reason) is str)
                and (claimed is None or type(claimed) is str)
                and type(headers) is dict
                and all(map(_is_str, headers.values()))
                and _RECEIVED_AT.fullmatch(text)
            ):
                try:
                    return (
                        datetime.fromisoformat(text),
                        text,
                        mchid,
                        outcome,
                        reason,
                        claimed,
                        headers,
                        body.encode("utf-8"),
                        status,
                    )
                except ValueError:
                    pass
    try:  # the reader's own verdict, for everything else (body_b64, a null body, odd but valid, broken)
        entry = LogEntry.from_json(json.loads(raw))
    except (ValueError, RecursionError) as exc:
        return f"unreadable line: {exc}"
    return (
        entry.received_at,
        entry.received_at.isoformat(),
        entry.mchid,
        entry.outcome,
        entry.reason,
        entry.notification_id,
        dict(entry.headers),
        entry.body_bytes,
        entry.reply_status,
    )
