"""The notification log: every callback the receiver answered, kept as received, for the reconciliation.

The receiver (:mod:`flows.notifications.receiver`) appends one line per callback *before* it answers, so a
callback WeChat Pay saw acknowledged is always on disk. The reconciliation reads the log and
re-verifies every line itself; nothing in a line is trusted because the receiver trusted it.

Layout::

    <root>/<mchid>/YYYY-MM-DD.jsonl     callbacks to /wxpay/notify/<mchid> of a configured merchant
    <root>/_unrouted/YYYY-MM-DD.jsonl   callbacks to a path naming no configured merchant
    <root>/<dir>/.lock                  the writers' lock file (fcntl.flock); not data

``<mchid>`` is the combine initiator whose receiver got the callback; ``YYYY-MM-DD`` is the
Beijing calendar day of ``received_at``. Lines are in append order, which can differ from
``received_at`` order by a few milliseconds between concurrent callbacks.

Line format (version 1): one JSON object per line, terminated by ``\\n`` (0x0A). Lines are pure
ASCII (non-ASCII characters are ``\\uXXXX`` escapes), hence valid UTF-8, and no line splitter
can cut one in two. Keys, in this order:

``v``                1, the format version.
``received_at``      when the request arrived: RFC 3339, Beijing offset, milliseconds,
                     ``2026-11-27T09:00:01.234+08:00``.
``mchid``            the merchant whose receiver got it (for ``_unrouted``: the path segment as
                     requested, at most 64 characters).
``outcome``          ``accepted`` (verified, decrypted, first time for this id: exactly one such line
                     per notification id and merchant), ``duplicate`` (verified, id already accepted;
                     answered with success too) or ``rejected`` (answered with a failure).
``reason``           ``null``, or for ``rejected`` ``"<ExceptionClass>: <message>"``, e.g.
                     ``"SignatureMismatchError: signature does not verify with the key of serial ..."``.
``notification_id``  the envelope ``id``. On ``rejected`` lines it is what the unverified body
                     *claims* (``null`` if the body is not a JSON object with a string ``id``).
``headers``          the ``Wechatpay-*`` headers and ``Request-ID`` exactly as received and nothing
                     else, names lower-cased (HTTP names are case-insensitive; ASGI lower-cases them);
                     for a repeated header the first value, which is the one that was verified.
``body``             the exact request body as text, when it is valid UTF-8, **or**
``body_b64``         (instead of ``body``) the exact body in standard Base64 when it is not.
                     ``body`` is ``null`` only on a ``rejected`` line for a body over the size limit.
``reply_status``     the HTTP status the receiver answered.

Sample (wrapped here; one line on disk)::

    {"v":1,"received_at":"2026-11-27T09:00:01.234+08:00","mchid":"1900000100","outcome":"accepted",
     "reason":null,"notification_id":"3a6f1c2e-...","headers":{"request-id":"08F5...-0",
     "wechatpay-nonce":"...","wechatpay-serial":"PUB_KEY_ID_...","wechatpay-signature":"...",
     "wechatpay-signature-type":"WECHATPAY2-SHA256-RSA2048","wechatpay-timestamp":"1795654801"},
     "body":"{\\"id\\":\\"3a6f1c2e-...\\",\\"create_time\\":...,\\"resource\\":{...}}","reply_status":204}

Never in the log: the APIv3 key, and the decrypted payload (it holds the payer's openid). To
re-verify a line, pass ``headers`` and the body bytes (:attr:`LogEntry.body_bytes`) to
:func:`wxpay.notify.parse_notification` with a :class:`~wxpay.verifying.Verifier` whose clock
returns ``received_at`` (the ±300 s window is judged at arrival time, as the receiver did).

Writing: append, flush and ``os.fsync`` per line, under a per-directory thread lock and an
exclusive ``fcntl.flock`` on the directory's ``.lock``, so concurrent writers in one process
and in several processes never interleave, and deciding ``accepted`` vs ``duplicate`` is
atomic across them. A crash can leave a final line without its ``\\n``; the next writer ends
that fragment with a ``\\n`` before appending, so the fragment becomes one unreadable line and
never swallows a good one. Readers skip unreadable lines and report them (:class:`SkippedLine`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

FORMAT_VERSION = 1
UNROUTED = "_unrouted"
"""Directory (and ``mchid`` argument) for callbacks to a path that names no configured merchant."""
REMEMBER_DAYS = 7
"""Days of log a writer re-reads to know which ids were accepted (WeChat retries for 24 h 4 min)."""

Outcome = Literal["accepted", "duplicate", "rejected"]
OUTCOMES: tuple[str, ...] = ("accepted", "duplicate", "rejected")
_UTC8 = timezone(timedelta(hours=8))
_MCHID = re.compile(r"^[0-9]{1,32}$")
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
_KEYS = ("v", "received_at", "mchid", "outcome", "reason", "notification_id", "headers", "reply_status")


def format_received_at(moment: datetime) -> str:
    """RFC 3339 in Beijing time with milliseconds: ``2026-11-27T09:00:01.234+08:00``."""
    if moment.tzinfo is None:
        raise ValueError("received_at must be an aware datetime")
    return moment.astimezone(_UTC8).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class LogEntry:
    """One line of the log (see the module docstring for the meaning of each field)."""

    received_at: datetime
    mchid: str
    outcome: Outcome
    reason: str | None
    notification_id: str | None
    headers: Mapping[str, str]
    body_bytes: bytes | None
    reply_status: int

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be an aware datetime")

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
        try:
            obj["body"] = None if self.body_bytes is None else self.body_bytes.decode("utf-8")
        except UnicodeDecodeError:
            obj["body_b64"] = base64.b64encode(self.body_bytes).decode("ascii")
        obj["reply_status"] = self.reply_status
        return obj

    def to_line(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"

    @classmethod
    def from_json(cls, obj: Any) -> LogEntry:
        """Read one parsed line; raise ``ValueError`` naming what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("line is not a JSON object")
        missing = [k for k in _KEYS if k not in obj]
        if missing:
            raise ValueError(f"missing keys {missing}")
        if obj["v"] != FORMAT_VERSION:
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
        return cls(
            received_at=datetime.fromisoformat(obj["received_at"]),
            mchid=obj["mchid"],
            outcome=obj["outcome"],
            reason=obj["reason"],
            notification_id=obj["notification_id"],
            headers=headers,
            body_bytes=body,
            reply_status=obj["reply_status"],
        )


@dataclass(frozen=True)
class LogRecord:
    """A readable line and where it is, for evidence: ``str(record)`` is ``path:line``."""

    path: Path
    line: int  # 1-based
    entry: LogEntry

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class SkippedLine:
    """A line the reader could not use. ``final``: the file's last line has no ``\\n`` (a write cut
    short by a crash, or one in progress); otherwise the line is complete but unreadable (e.g. a
    crash fragment that a later writer terminated)."""

    path: Path
    line: int
    size: int
    reason: str
    final: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LogScan:
    """Iterate the lines of some day files (once); unreadable lines are skipped and listed in ``skipped``."""

    paths: list[Path]
    skipped: list[SkippedLine] = field(default_factory=list)

    def __iter__(self) -> Iterator[LogRecord]:
        for path in self.paths:
            yield from self._file(path)

    def _file(self, path: Path) -> Iterator[LogRecord]:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    self.skipped.append(
                        SkippedLine(path, number, len(raw), "incomplete final line (no newline): cut short", True)
                    )
                    break
                try:
                    entry = LogEntry.from_json(json.loads(raw))
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                    self.skipped.append(SkippedLine(path, number, len(raw), f"unreadable line: {exc}", False))
                    continue
                yield LogRecord(path, number, entry)


@dataclass
class _Seen:
    """Accepted ids of one directory, and how far each day file has been read."""

    ids: set[str] = field(default_factory=set)
    offsets: dict[Path, int] = field(default_factory=dict)


class NotificationLog:
    """The log under ``root``. Thread-safe; several processes may share one ``root``.

    ``remember_days``: how many days back a writer looks for an earlier ``accepted`` line of the
    same id (ids accepted since the process started are remembered regardless).
    """

    def __init__(self, root: str | Path, *, remember_days: int = REMEMBER_DAYS):
        self.root = Path(root)
        self.remember_days = remember_days
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._seen: dict[str, _Seen] = {}

    def __repr__(self) -> str:
        return f"NotificationLog({str(self.root)!r})"

    # --- where ----------------------------------------------------------------------------------
    def directory(self, mchid: str) -> Path:
        if mchid != UNROUTED and not _MCHID.match(mchid):
            raise ValueError(f"not a merchant id for the notification log: {mchid!r}")
        return self.root / mchid

    def path(self, mchid: str, day: date) -> Path:
        return self.directory(mchid) / f"{day.isoformat()}.jsonl"

    def days(self, mchid: str) -> list[date]:
        """The days that have a file, oldest first."""
        folder = self.directory(mchid)
        if not folder.is_dir():
            return []
        found = (_DAY_FILE.match(p.name) for p in folder.iterdir())
        return sorted(date.fromisoformat(m.group(1)) for m in found if m)

    # --- reading --------------------------------------------------------------------------------
    def read(self, mchid: str, start: date | None = None, end: date | None = None) -> LogScan:
        """The lines of the days ``start``..``end`` (inclusive; open ends mean all) of ``mchid``
        (or :data:`UNROUTED`), in day order then line order."""
        days = [d for d in self.days(mchid) if (start is None or d >= start) and (end is None or d <= end)]
        return LogScan([p for p in (self.path(mchid, d) for d in days) if p.is_file()])  # not a device or dir

    # --- writing --------------------------------------------------------------------------------
    def append(self, entry: LogEntry, *, unrouted: bool = False) -> Path:
        """Append a line as it is (``rejected`` lines; ``unrouted`` ones go to :data:`UNROUTED`).

        Returns the file once the line is fsynced; raises ``OSError`` if it could not be written.
        """
        if entry.outcome == "accepted":
            raise ValueError("accepted lines go through accept(), which keeps them unique")
        name = UNROUTED if unrouted else entry.mchid
        with self._locked(name) as folder:
            return self._write(folder, entry)[0]

    def accept(self, entry: LogEntry) -> LogEntry:
        """Append a verified notification: ``accepted`` the first time its id is seen for the merchant,
        ``duplicate`` afterwards. Returns the entry as written (durable once this returns)."""
        if entry.outcome != "accepted" or not entry.notification_id:
            raise ValueError("accept() takes an accepted entry with a notification id")
        with self._locked(entry.mchid) as folder:
            seen = self._catch_up(entry.mchid, entry.day)
            if entry.notification_id in seen.ids:
                entry = replace(entry, outcome="duplicate")
            path, before, after = self._write(folder, entry)
            if entry.outcome == "accepted":
                seen.ids.add(entry.notification_id)
            if seen.offsets.get(path, 0) == before:
                seen.offsets[path] = after  # nothing unread before our line
            return entry

    def warm(self, mchid: str, today: date) -> int:
        """Read the last ``remember_days`` of ``mchid`` now (at start-up); returns how many ids are known."""
        with self._thread_lock(mchid):
            return len(self._catch_up(mchid, today).ids)

    def accepted_ids(self, mchid: str) -> frozenset[str]:
        """The ids this log object knows to be accepted for ``mchid`` (as of its last read)."""
        with self._thread_lock(mchid):
            return frozenset(self._seen.get(mchid, _Seen()).ids)

    # --- internals ------------------------------------------------------------------------------
    def _thread_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        folder = self.directory(name)
        with self._thread_lock(name):
            if not folder.is_dir():
                folder.mkdir(mode=0o750, parents=True, exist_ok=True)
                _fsync_directory(folder.parent)
            fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield folder
            finally:
                os.close(fd)  # releases the flock

    def _catch_up(self, mchid: str, today: date) -> _Seen:
        """Read what was appended (by anyone) since our last look, for the days around ``today``."""
        seen = self._seen.setdefault(mchid, _Seen())
        for back in range(-1, self.remember_days + 1):
            path = self.path(mchid, today - timedelta(days=back))
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                continue
            offset = seen.offsets.get(path, 0)
            if size < offset:
                offset = 0  # replaced or truncated under us: read it again
            if size == offset:
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break  # a line still being written, or a crash fragment: not consumed
                    offset += len(raw)
                    if b'"accepted"' in raw:
                        with contextlib.suppress(ValueError):
                            obj = json.loads(raw)
                            if obj.get("outcome") == "accepted" and isinstance(obj.get("notification_id"), str):
                                seen.ids.add(obj["notification_id"])
            seen.offsets[path] = offset
        return seen

    @staticmethod
    def _write(folder: Path, entry: LogEntry) -> tuple[Path, int, int]:
        """Append + fsync one line (the caller holds the locks). Returns (file, size before, size after)."""
        path = folder / f"{entry.day.isoformat()}.jsonl"
        line = entry.to_line()
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o640)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
            created = False
        try:
            before = os.fstat(fd).st_size
            if before and os.pread(fd, 1, before - 1) != b"\n":
                line = b"\n" + line  # end a crash fragment so it cannot swallow this line
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)  # take back a partial line, where the file allows it
                raise
        finally:
            os.close(fd)
        if created:
            _fsync_directory(folder)
        return path, before, before + len(line)


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
