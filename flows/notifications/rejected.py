"""Refused requests, recorded with bounded evidence in their own capped stream: ``<root>/_rejected/``.

A refused request (a bad signature, a probe, an unknown path, a body too large or too slow, ...) is not
evidence of a payment; it is evidence of who knocked. It is recorded as one line of at most
:data:`~flows.notifications.entry.MAX_RECORD_BYTES` (:func:`refusal_record`: time, peer, path, the
headers that matter, body length and SHA-256, the reason, a 256-byte excerpt as safe text; never the
body), in the day file ``_rejected/YYYY-MM-DD.jsonl`` (format: :mod:`flows.notifications.log`).

The stream is capped (:class:`RejectedLog`): at most ``day_bytes`` per day file and ``total_bytes`` for
the whole directory. A record that would pass the total first makes room by removing the oldest day
files (never today's); one that would pass the day's cap is dropped: counted (``records_dropped``),
with one warning per day. The merchants' files of accepted callbacks are never touched, so refused
noise can neither crowd out nor slow down the evidence finance relies on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import date, datetime

from flows.notifications.entry import LogEntry
from flows.notifications.guards import Counters
from flows.notifications.log import REJECTED, NotificationLog, append_line
from flows.storage import StorageError

logger = logging.getLogger("flows.notifications.receiver")

RECORD_HEADERS = (
    "content-length",
    "content-type",
    "request-id",
    "wechatpay-nonce",
    "wechatpay-serial",
    "wechatpay-signature",
    "wechatpay-signature-type",
    "wechatpay-timestamp",
)
"""The request headers a record keeps (first value of each), and no other."""
EXCERPT_BYTES = 256
"""Body bytes a record shows (as safe text)."""
HEADER_BYTES = 512  # each of the bounds below is what the value may take in the JSON line
EXCERPT_LINE_BYTES = 6 * EXCERPT_BYTES
PATH_BYTES = 512
REASON_BYTES = 512
PEER_BYTES = 64
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
_CUT = "\u2026"  # "…", 6 bytes in a JSON line


def _json_bytes(piece: str) -> int:
    """What ``piece`` takes inside a JSON string written with ``ensure_ascii``."""
    return sum(2 if c in '"\\' else 1 if c < "\x80" else 6 if c < "\U00010000" else 12 for c in piece)


def safe_text(text: str, limit: int) -> str:
    """``text`` with every character that is not printable escaped as Python writes it (``\\x01``,
    ``\\u202e``; a backslash as two), cut to take at most ``limit`` bytes in a JSON line (``…`` marks a cut).
    Printable text (Chinese included) stays as it is."""
    fits = len(text) <= limit // 12 or (text.isascii() and len(text) <= limit // 2)
    if fits and text.isprintable() and "\\" not in text:
        return text  # the usual case: nothing to escape, and it fits whatever it holds
    out: list[str] = []
    cost = 0
    for ch in text[: limit + 1]:  # a character takes at least a byte: the rest can never fit
        piece = "\\\\" if ch == "\\" else ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        size = _json_bytes(piece)
        if cost + size > limit:
            break
        out.append(piece)
        cost += size
    else:  # no break: all of it fits (limit + 1 characters would not)
        return "".join(out)
    while out and cost + _json_bytes(_CUT) > limit:
        cost -= _json_bytes(out.pop())
    return "".join(out) + _CUT


def excerpt(body: bytes) -> str:
    """The first :data:`EXCERPT_BYTES` of a body as safe text (a byte that is not UTF-8 becomes U+FFFD)."""
    return safe_text(body[:EXCERPT_BYTES].decode("utf-8", errors="replace"), EXCERPT_LINE_BYTES)


def record_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The :data:`RECORD_HEADERS` of a request (first value, as safe text of at most :data:`HEADER_BYTES`)."""
    found: dict[str, str] = {}
    for name_bytes, value in raw:
        name = name_bytes.decode("latin-1").lower()
        if name in RECORD_HEADERS and name not in found:
            found[name] = safe_text(value.decode("latin-1"), HEADER_BYTES)
    return found


def claimed_id(body: bytes | None) -> str | None:
    """The ``id`` an unverified body claims, for the evidence only (at most 64 characters)."""
    if not body:
        return None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


def refusal_record(
    *,
    received_at: datetime,
    mchid: str,
    reason: str,
    status: int,
    raw_headers: list[tuple[bytes, bytes]],
    body: bytes,
    complete: bool,
    peer: str,
    path: str,
    notification_id: str | None = None,
) -> LogEntry:
    """The bounded record of a refused request (``body``: the bytes read, all of them when ``complete``)."""
    return LogEntry(
        received_at,
        mchid,
        "rejected",
        safe_text(reason, REASON_BYTES),
        notification_id,
        record_headers(raw_headers),
        None,
        status,
        body_length=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_complete=complete,
        excerpt=excerpt(body),
        peer=safe_text(peer, PEER_BYTES),
        path=safe_text(path, PATH_BYTES),
    )


class RejectedLog:
    """The capped stream of records under ``<log root>/_rejected/`` (see the module docstring)."""

    def __init__(self, log: NotificationLog, counters: Counters, *, day_bytes: int, total_bytes: int):
        if day_bytes > total_bytes:
            raise ValueError("the day's cap of refused-request records cannot exceed their total cap")
        self.log = log
        self.counters = counters
        self.day_bytes = day_bytes
        self.total_bytes = total_bytes
        self._older: tuple[date, dict[date, int]] | None = None  # (today, sizes of the other day files)
        self._warned: set[tuple[str, date]] = set()

    def usage(self) -> dict[str, int]:
        """Bytes in the stream now: today's file (by the last write's day) and the total."""
        sizes = self._sizes()
        today = max(sizes, default=None)
        return {"today_bytes": sizes.get(today, 0) if today else 0, "total_bytes": sum(sizes.values())}

    def write(self, entry: LogEntry) -> bool:
        """Record one refused request; ``False`` when a cap dropped it. Raises :class:`StorageError`."""
        if not entry.is_record:
            raise ValueError("only bounded records go to the rejected stream")
        line = entry.to_line()
        day = entry.day
        with self.log.locked(REJECTED) as folder:
            path = folder / f"{day.isoformat()}.jsonl"
            try:
                today = path.stat().st_size
            except FileNotFoundError:
                today = 0
            except OSError as exc:
                raise StorageError(path, "reading the size of the refused-request records", exc) from exc
            if today + len(line) > self.day_bytes:
                return self._drop("day", day, f"the day's cap of {self.day_bytes} bytes ({path})")
            older = self._older_sizes(day)
            while older and today + len(line) + sum(older.values()) > self.total_bytes:
                self._remove_oldest(folder, older)
            if today + len(line) + sum(older.values()) > self.total_bytes:
                return self._drop("total", day, f"the total cap of {self.total_bytes} bytes ({folder})")
            append_line(path, line, fsync=False)
        self.counters.add("records_written")
        return True

    # --- internals ------------------------------------------------------------------------------
    def _sizes(self) -> dict[date, int]:
        folder = self.log.directory(REJECTED)
        sizes: dict[date, int] = {}
        if folder.is_dir():
            for path in folder.iterdir():
                match = _DAY_FILE.match(path.name)
                if match:
                    try:
                        sizes[date.fromisoformat(match[1])] = path.stat().st_size
                    except (OSError, ValueError):
                        continue
        return sizes

    def _older_sizes(self, day: date) -> dict[date, int]:
        """Sizes of the day files other than ``day``'s, listed again when the day changes (they no longer grow)."""
        if self._older is None or self._older[0] != day:
            self._older = (day, {d: size for d, size in self._sizes().items() if d != day})
        return self._older[1]

    def _remove_oldest(self, folder, older: dict[date, int]) -> None:
        oldest = min(older)
        path = folder / f"{oldest.isoformat()}.jsonl"
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(path, "removing an old day of refused-request records", exc) from exc
        size = older.pop(oldest)
        self.counters.add("record_files_removed")
        logger.warning(
            "removed %s (%d bytes of refused-request records) to keep %s under its total cap of %d bytes",
            path,
            size,
            folder,
            self.total_bytes,
        )

    def full_on(self, day: date) -> bool:
        """Whether a record of ``day`` was dropped by a cap (in this process)."""
        return any(d == day for _, d in self._warned)

    def _drop(self, which: str, day: date, cap: str) -> bool:
        self.counters.add("records_dropped")
        if (which, day) not in self._warned:
            self._warned.add((which, day))
            logger.warning(
                "refused requests of %s reached %s: further ones are answered and counted (records_dropped),"
                " not recorded; valid callbacks are logged as always",
                day,
                cap,
            )
        return False
