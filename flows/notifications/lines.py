"""A notification-log line read back for re-verification: its fields, exactly as
:class:`flows.notifications.entry.LogEntry` reads them, and its decrypted payload, read strictly into the
combine order and one row per sub order. A line that does not pass raises :class:`LineFailure`."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from flows.notifications.entry import OUTCOMES, READ_VERSIONS, LogEntry

try:  # optional: ~2x faster JSON; results are identical without it (see loads_json)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


class LineFailure(Exception):
    """A line that does not verify: the exception class name and message to record.

    ``signed``: the signature had verified (the envelope is authentic, so its id is recorded)."""

    def __init__(self, failure: str, detail: str, *, signed: bool = False):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        self.signed = signed


_RECEIVED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00")  # as the log writes it


def loads_json(data: bytes | str) -> Any:
    """``json.loads``, faster with orjson where orjson agrees (it refuses what it would read differently)."""
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(data)


_is_str = str.__instancecheck__


def read_line(raw: bytes) -> tuple | str:
    """The fields of a log line as the log reader reads it, or the reader's reason it is unreadable.

    The checks of :meth:`LogEntry.from_json`, inline; anything they do not pass plainly is
    handed to ``LogEntry.from_json`` itself, so readable/unreadable is exactly the reader's.
    Returns (received_at, its RFC 3339 text, mchid, outcome, reason, notification_id, headers,
    body bytes or None, reply_status).
    """
    try:
        obj = loads_json(raw)
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
                version in READ_VERSIONS
                and type(version) is int
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


def body_not_kept(raw: bytes, *, known_merchant: bool) -> LineFailure:
    """The finding for a line without its body (which cannot be re-verified): a record of a refused request
    (format 2) is ``BodyNotKept`` with its length, digest and the receiver's answer; a format-1 line is what
    it always was (``UnknownMerchantError``, else ``PayloadTooLargeError``)."""
    entry = LogEntry.from_json(json.loads(raw))
    if not entry.is_record:
        if not known_merchant:
            return LineFailure("UnknownMerchantError", f"no keys configured for merchant {entry.mchid!r}")
        return LineFailure("PayloadTooLargeError", "the receiver did not keep the body (over its size limit)")
    read = "" if entry.body_complete else " (it stopped reading there)"
    where = f" to {entry.path}" if entry.path and entry.mchid.startswith("_") else ""
    return LineFailure(
        "BodyNotKept",
        f"the receiver kept a record, not the body: {entry.body_length} bytes{read}, sha256 {entry.body_sha256};"
        f" it answered {entry.reply_status}{where}: {entry.reason}",
    )


RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
_BIGINT = 1 << 63


def read_payload(notification_id: str, plaintext: bytes) -> tuple[dict, list[tuple]]:
    """The combine order of a decrypted payload, read strictly: the order object and one row per sub
    order (mchid, out_trade_no, transaction_id, trade_state, total and payer amount in fen, currency,
    success_time text, attach; no payer identifiers). Raises LineFailure naming the first bad field."""
    try:
        order = loads_json(plaintext)
    except (ValueError, RecursionError):
        raise LineFailure(
            "MalformedNotificationError", f"notification {notification_id}: decrypted payload is not JSON"
        ) from None
    rows: list[tuple] = []
    try:  # the plain shape, checked inline; anything else is explained field by field below
        subs = order["sub_orders"]
        ctid = order.get("combine_transaction_id")
        ok = (
            type(order["combine_appid"]) is str
            and type(order["combine_mchid"]) is str
            and type(order["combine_out_trade_no"]) is str
            and (ctid is None or type(ctid) is str)
            and type(subs) is list
            and len(subs) > 0
        )
        for sub in subs if ok else ():
            amount = sub["amount"]
            total, payer, currency = amount["total_amount"], amount.get("payer_amount"), amount.get("currency")
            mchid, number, state = sub["mchid"], sub["out_trade_no"], sub["trade_state"]
            tid, paid, attach = sub.get("transaction_id"), sub.get("success_time"), sub.get("attach")
            if not (
                type(mchid) is str
                and type(number) is str
                and type(state) is str
                and type(total) is int
                and -_BIGINT <= total < _BIGINT
                and (payer is None or (type(payer) is int and -_BIGINT <= payer < _BIGINT))
                and (currency is None or type(currency) is str)
                and (tid is None or type(tid) is str)
                and (attach is None or type(attach) is str)
                and (paid is None or (type(paid) is str and RFC3339.fullmatch(paid) and datetime.fromisoformat(paid)))
            ):
                ok = False
                break
            rows.append((mchid, number, tid, state, total, payer, currency, paid, attach))
    except (KeyError, TypeError, AttributeError, ValueError):
        ok = False
    if not ok:
        _explain_payload(f"notification {notification_id}: decrypted payload", order)
        raise LineFailure("MalformedNotificationError", f"notification {notification_id}: decrypted payload is invalid")
    return order, rows


def _text(value: Any, where: str, *, optional: bool = False) -> None:
    if not (type(value) is str or (optional and value is None)):
        raise LineFailure("MalformedNotificationError", f"{where} must be a string{' or absent' if optional else ''}")


def _fen(value: Any, where: str, *, optional: bool = False) -> None:
    if not ((type(value) is int and -_BIGINT <= value < _BIGINT) or (optional and value is None)):
        raise LineFailure("MalformedNotificationError", f"{where} must be a whole number of fen (a JSON integer)")


def _time(value: Any, where: str) -> None:
    if value is None:
        return
    if type(value) is str and RFC3339.fullmatch(value):
        try:
            datetime.fromisoformat(value)
            return
        except ValueError:
            pass
    raise LineFailure("MalformedNotificationError", f"{where} must be an RFC 3339 time or absent")


def _explain_payload(where: str, order: Any) -> None:
    """Raise LineFailure naming the first field of ``order`` that is not as documented (the slow path)."""
    if type(order) is not dict:
        raise LineFailure("MalformedNotificationError", f"{where} is not a JSON object")
    for name in ("combine_appid", "combine_mchid", "combine_out_trade_no"):
        _text(order.get(name), f"{where}: {name}")
    _text(order.get("combine_transaction_id"), f"{where}: combine_transaction_id", optional=True)
    subs = order.get("sub_orders")
    if type(subs) is not list or not subs:
        raise LineFailure("MalformedNotificationError", f"{where}: sub_orders must be a non-empty list")
    for i, sub in enumerate(subs):
        at = f"{where}: sub_orders[{i}]"
        if type(sub) is not dict:
            raise LineFailure("MalformedNotificationError", f"{at} is not an object")
        amount = sub.get("amount")
        if type(amount) is not dict:
            raise LineFailure("MalformedNotificationError", f"{at}.amount is not an object")
        _text(sub.get("mchid"), f"{at}.mchid")
        _text(sub.get("out_trade_no"), f"{at}.out_trade_no")
        _text(sub.get("transaction_id"), f"{at}.transaction_id", optional=True)
        _text(sub.get("trade_state"), f"{at}.trade_state")
        _fen(amount.get("total_amount"), f"{at}.amount.total_amount")
        _fen(amount.get("payer_amount"), f"{at}.amount.payer_amount", optional=True)
        _text(amount.get("currency"), f"{at}.amount.currency", optional=True)
        _time(sub.get("success_time"), f"{at}.success_time")
        _text(sub.get("attach"), f"{at}.attach", optional=True)
