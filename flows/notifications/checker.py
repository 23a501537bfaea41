"""The per-line check, in a worker process (or in-process): verify, decrypt and read each line of a batch.

Re-verifying a line is what the receiver did, judged again from the line alone:
:func:`wxpay.notify.open_notification` (signature, with the ±300 s window evaluated at the line's
``received_at``; algorithm; AEAD decryption with the merchant's APIv3 key), the receiver's
combine_mchid check, then a strict reading of the decrypted payload (``payload.py``). A line that
fails becomes a failed check row, never a drop.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from flows.notifications.keys import MerchantKeys
from flows.notifications.lines import RFC3339, LineFailure, body_not_kept, read_line, read_payload
from flows.notifications.rows import BatchResult, BatchRows, unreadable_row
from wxpay.errors import DecryptionError, MalformedNotificationError, UnsupportedAlgorithmError, WxPayError
from wxpay.notify import open_notification

_SPARSE = 4  # read lines one by one when the batch's span is this many times their bytes (incremental runs)


@dataclass
class Batch:
    """Lines of one file for a worker: (line_no, byte offset, length, sha256 digest, record the occurrence,
    verify the content). The worker reads the bytes from ``path`` itself and checks them against the
    digest the parent looked up (the bytes verified are the bytes hashed; nothing large is pickled)."""

    log_file: str
    path: str
    items: list[tuple[int, int, int, bytes, bool, bool]]


class LogChangedError(RuntimeError):
    """A log line changed between being hashed and being verified (log files are append-only)."""


def read_batch_lines(batch: Batch) -> list[bytes]:
    """The batch's lines as bytes, read from its file, each checked against the digest the parent hashed."""
    items = batch.items
    first, last = items[0], items[-1]
    start, stop = first[1], last[1] + last[2]
    fd = os.open(batch.path, os.O_RDONLY)
    try:
        if stop - start <= _SPARSE * sum(item[2] for item in items):
            block = os.pread(fd, stop - start, start)
            lines = [block[offset - start : offset - start + length] for _, offset, length, *_ in items]
        else:
            lines = [os.pread(fd, length, offset) for _, offset, length, *_ in items]
    finally:
        os.close(fd)
    sha256 = hashlib.sha256
    for (line_no, _, _, digest, _, _), line in zip(items, lines, strict=True):
        if sha256(line).digest() != digest:
            raise LogChangedError(f"{batch.log_file}:{line_no} changed while it was being verified; run again")
    return lines


_NO_ORDER = (None, None, None, None, None)


class Checker:
    """Verifiers built once per process; the verifiers' clock reads the line being checked."""

    def __init__(self, merchants: Mapping[str, MerchantKeys]):
        self.now = 0.0
        self.merchants = {mchid: (keys.verifier(self._clock), keys.api_v3_key) for mchid, keys in merchants.items()}

    def _clock(self) -> float:
        return self.now

    def check(self, batch: Batch) -> BatchResult:
        rows = BatchRows()
        lines, checks = rows.lines, rows.checks
        for (line_no, _offset, _length, sha, need_row, verify), raw in zip(
            batch.items, read_batch_lines(batch), strict=True
        ):
            entry = read_line(raw)
            if type(entry) is str:
                lines.append(unreadable_row(line_no, len(raw), entry))
                rows.unreadable += 1
                continue
            received_at, text, mchid, outcome, reason, claimed, headers, body, status = entry
            if need_row:
                lines.append((line_no, sha, mchid, outcome, text, claimed, status, reason, None, len(raw)))
            if not verify:
                continue
            opened = None
            try:
                merchant = self.merchants.get(mchid)
                if body is None:
                    raise body_not_kept(raw, known_merchant=merchant is not None)
                if merchant is None:
                    raise LineFailure("UnknownMerchantError", f"no keys configured for merchant {mchid!r}")
                self.now = received_at.timestamp()  # the signature window is judged at arrival
                try:
                    opened = open_notification(headers, body, verifier=merchant[0], api_v3_key=merchant[1])
                except WxPayError as exc:
                    raise LineFailure(type(exc).__name__, str(exc), signed=_after_signature(exc)) from None
                order, subs = read_payload(opened.id, opened.plaintext)
                if order["combine_mchid"] != mchid:
                    raise LineFailure(
                        "MalformedNotificationError",
                        f"notification {opened.id} is for combine_mchid {order['combine_mchid']}, not {mchid}",
                    )
            except LineFailure as failed:
                serial = next((v for k, v in headers.items() if k.lower() == "wechatpay-serial"), None)
                envelope = _envelope_row(opened) if opened is not None or not failed.signed else _claimed_envelope(body)
                checks.append((sha, False, failed.failure, failed.detail, serial, *envelope, *_NO_ORDER))
                rows.failed += 1
                continue
            checks.append(
                (
                    sha,
                    True,
                    None,
                    None,
                    opened.signed.serial,
                    *_envelope_row(opened),
                    order["combine_appid"],
                    order["combine_mchid"],
                    order["combine_out_trade_no"],
                    order.get("combine_transaction_id"),
                    len(subs),
                )
            )
            rows.sub_orders += [(sha, number, *sub) for number, sub in enumerate(subs, start=1)]
        return rows.result(batch.log_file)


def _envelope_row(opened) -> tuple:
    """notification_id, event_type, create_time (RFC 3339 text) of an opened notification, or NULLs."""
    if opened is None:
        return (None, None, None)
    raw = opened.envelope.get("create_time")
    return (opened.id, opened.event_type, raw if type(raw) is str else opened.create_time.isoformat())


def _after_signature(exc: WxPayError) -> bool:
    """Whether open_notification failed after the signature verified (envelope, algorithm, decryption)."""
    if isinstance(exc, UnsupportedAlgorithmError):
        return str(exc).startswith("resource algorithm")
    return isinstance(exc, DecryptionError | MalformedNotificationError)


def _claimed_envelope(body: bytes) -> tuple:
    """notification_id, event_type, create_time of a signed body that could not be opened (failure path)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return (None, None, None)
    if type(obj) is not dict:
        return (None, None, None)
    texts = [obj.get(k) if type(obj.get(k)) is str else None for k in ("id", "event_type", "create_time")]
    try:
        if texts[2] is not None and not (RFC3339.fullmatch(texts[2]) and datetime.fromisoformat(texts[2])):
            texts[2] = None
    except ValueError:
        texts[2] = None
    return tuple(texts)


# --- in a worker process -----------------------------------------------------------------------

_CHECKER: Checker | None = None


def init_worker(merchants: dict[str, MerchantKeys]) -> None:
    global _CHECKER  # one checker per worker process, built once
    _CHECKER = Checker(merchants)
    gc.freeze()  # the modules and keys loaded so far are never garbage: keep them out of every collection


def check_in_worker(batch: Batch) -> BatchResult:
    assert _CHECKER is not None, "worker not initialised"
    return _CHECKER.check(batch)
