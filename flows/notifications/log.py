"""The notification log: every callback the receiver answered, kept as received, for the reconciliation.

The receiver (:mod:`flows.notifications.receiver`) appends one line per callback *before* it answers, so a
callback WeChat Pay saw acknowledged is always on disk. The reconciliation reads the log and
re-verifies every line itself; nothing in a line is trusted because the receiver trusted it.

Layout::

    <root>/<mchid>/YYYY-MM-DD.jsonl     accepted and duplicate callbacks to /wxpay/notify/<mchid>, whole
    <root>/_rejected/YYYY-MM-DD.jsonl   a bounded record of every refused request, any path (format 2;
                                        capped per day and in total: :mod:`flows.notifications.rejected`)
    <root>/<dir>/.lock                  the writers' lock file (fcntl.flock); not data

and, written by format 1 and still read: rejected lines with their whole body in ``<root>/<mchid>/``, and
``<root>/_unrouted/YYYY-MM-DD.jsonl`` for callbacks to a path naming no configured merchant.

``<mchid>`` is the combine initiator whose receiver got the callback; ``YYYY-MM-DD`` is the
Beijing calendar day of ``received_at``. Lines are in append order, which can differ from
``received_at`` order by a few milliseconds between concurrent callbacks. Keeping refused requests
out of the merchants' files means a flood of them neither grows the evidence finance relies on nor
slows the start of a receiver, which reads only the merchants' files of the last days.

Line format (version 2; version 1 lines are read as before): one JSON object per line, terminated by
``\\n`` (0x0A). Lines are pure ASCII (non-ASCII characters are ``\\uXXXX`` escapes), hence valid UTF-8,
and no line splitter can cut one in two. Keys, in this order:

``v``                2 (1 for lines written before records of refused requests existed).
``received_at``      when the request arrived: RFC 3339, Beijing offset, milliseconds,
                     ``2026-11-27T09:00:01.234+08:00``.
``mchid``            the merchant whose receiver got it; ``_unrouted`` on the record of a request to a
                     path that names no configured merchant (the path is in ``path``). In format 1,
                     ``_unrouted`` lines held the path segment as requested, at most 64 characters.
``outcome``          ``accepted`` (verified, decrypted, first time for this id: exactly one such line
                     per notification id and merchant), ``duplicate`` (verified, id already accepted;
                     answered with success too) or ``rejected`` (answered with a failure).
``reason``           ``null``, or for ``rejected`` ``"<ExceptionClass>: <message>"``, e.g.
                     ``"SignatureMismatchError: signature does not verify with the key of serial ..."``.
``notification_id``  the envelope ``id``. On ``rejected`` lines it is what the unverified body
                     *claims* (``null`` if the body is not a JSON object with a string ``id``).
``headers``          the ``Wechatpay-*`` headers and ``Request-ID`` exactly as received and nothing
                     else, names lower-cased (HTTP names are case-insensitive; ASGI lower-cases them);
                     for a repeated header the first value, which is the one that was verified. On a
                     record of a refused request (below): only ``wechatpay-nonce``, ``-serial``,
                     ``-signature``, ``-signature-type``, ``-timestamp``, ``request-id``,
                     ``content-length`` and ``content-type``, each as safe text (below) of at most 400
                     characters.
``body``             the exact request body as text **or**
``body_b64``         (instead of ``body``) the exact body in standard Base64. ``body`` is used when the
                     body is UTF-8 and its JSON string is no longer than its Base64 would be, so no body
                     is stored larger than 4/3 of its size: a body with control bytes (which JSON must
                     write as 6-byte ``\\u0001`` escapes) or mostly non-ASCII text is Base64. Either way
                     the bytes read back are exactly the bytes received.
                     ``body`` is ``null`` on the record of a refused request (format 2: the body is
                     never kept whole; format 1: a ``rejected`` line for a body over the size limit).
``reply_status``     the HTTP status the receiver answered.

A record of a refused request (format 2, ``outcome`` ``rejected``, ``body`` ``null``) has, between
``body`` and ``reply_status``, these keys, and is at most :data:`MAX_RECORD_BYTES` long whatever was sent:

``body_length``      how many body bytes the receiver read (all of them unless ``body_complete`` is false).
``body_sha256``      lowercase hex SHA-256 of those bytes.
``body_complete``    false when the receiver stopped reading: over the size limit (413) or too slow (408).
``excerpt``          the first 256 bytes of the body as safe text: decoded as UTF-8 (a byte that is not
                     UTF-8 becomes U+FFFD), then escaped as Python's ``unicode_escape`` does, so it is
                     printable ASCII only (``\\x01``, ``\\u652f``, ``\\\\`` for a backslash).
``peer``             the client address (behind a trusted proxy, the address it forwarded).
``path``             the request path as safe text, at most 256 characters.

Sample (wrapped here; one line on disk)::

    {"v":2,"received_at":"2026-11-27T09:00:01.234+08:00","mchid":"1900000100","outcome":"accepted",
     "reason":null,"notification_id":"3a6f1c2e-...","headers":{"request-id":"08F5...-0",
     "wechatpay-nonce":"...","wechatpay-serial":"PUB_KEY_ID_...","wechatpay-signature":"...",
     "wechatpay-signature-type":"WECHATPAY2-SHA256-RSA2048","wechatpay-timestamp":"1795654801"},
     "body":"{\\"id\\":\\"3a6f1c2e-...\\",\\"create_time\\":...,\\"resource\\":{...}}","reply_status":204}

Never in the log: the APIv3 key, and the decrypted payload (it holds the payer's openid). To
re-verify a line, pass ``headers`` and the body bytes (:attr:`LogEntry.body_bytes`) to
:func:`wxpay.notify.parse_notification` with a :class:`~wxpay.verifying.Verifier` whose clock
returns ``received_at`` (the ±300 s window is judged at arrival time, as the receiver did). A record
without a body cannot be re-verified: the re-verification records it as a ``BodyNotKept`` finding with
its length, digest and the receiver's reason.

Writing: append and ``os.fsync`` per line, under a per-directory thread lock and an exclusive
``fcntl.flock`` on the directory's ``.lock``, so concurrent writers in one process and in several
processes never interleave, and deciding ``accepted`` vs ``duplicate`` is atomic across them. A
crash can leave a final line without its ``\\n``; the next writer ends that fragment with a ``\\n``
before appending, so the fragment becomes one unreadable line and never swallows a good one.
Readers skip unreadable lines and report them (:class:`SkippedLine`). A write that fails raises
:class:`~flows.storage.StorageError` naming the file (a partial line is taken back where the
filesystem allows). Records of refused requests are written the same way but not fsynced: nothing
was acknowledged for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from flows.notifications.entry import LogEntry
from flows.notifications.seen import DaySeen, MerchantSeen
from flows.storage import StorageError

logger = logging.getLogger(__name__)

UNROUTED = "_unrouted"
"""``mchid`` of a record of a request to a path naming no configured merchant (and, in format 1, their
directory)."""
REJECTED = "_rejected"
"""Directory of the records of refused requests (format 2)."""
REMEMBER_DAYS = 7
"""Days of log a writer re-reads to know which ids were accepted (WeChat retries for 24 h 4 min)."""
MAX_DUPLICATES = 32
"""Duplicate lines logged per notification id; more are answered but only counted (WeChat sends at most 16)."""

_MCHID = re.compile(r"^[0-9]{1,32}$")
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")


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


class NotificationLog:
    """The log under ``root``. Thread-safe; several processes may share one ``root``.

    ``remember_days``: how many days back a writer looks for an earlier ``accepted`` line of the
    same id; only those days are held in memory (:mod:`flows.notifications.seen`), so a process that
    runs for months holds what a restarted one would read. ``max_duplicates``: duplicate lines logged
    per id within those days; further deliveries of the id are answered as duplicates (the accepted
    line is on disk) and counted in ``stats`` instead of written.
    """

    def __init__(self, root: str | Path, *, remember_days: int = REMEMBER_DAYS, max_duplicates: int = MAX_DUPLICATES):
        if remember_days < 1:
            raise ValueError("remember_days must be at least 1 (WeChat Pay retries for 24 h 4 min)")
        self.root = Path(root)
        self.remember_days = remember_days
        self.max_duplicates = max_duplicates
        self.stats = {"duplicates_not_logged": 0}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._seen: dict[str, MerchantSeen] = {}

    def __repr__(self) -> str:
        return f"NotificationLog({str(self.root)!r})"

    # --- where ----------------------------------------------------------------------------------
    def directory(self, mchid: str) -> Path:
        if mchid not in (UNROUTED, REJECTED) and not _MCHID.match(mchid):
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
        (or :data:`REJECTED`, :data:`UNROUTED`), in day order then line order."""
        days = [d for d in self.days(mchid) if (start is None or d >= start) and (end is None or d <= end)]
        return LogScan([p for p in (self.path(mchid, d) for d in days) if p.is_file()])  # not a device or dir

    # --- writing --------------------------------------------------------------------------------
    def append(self, entry: LogEntry, *, unrouted: bool = False) -> Path:
        """Append a rejected line with its whole body, in the layout of format 1 (the merchant's directory,
        or :data:`UNROUTED`); the receiver now writes bounded records instead
        (:class:`~flows.notifications.rejected.RejectedLog`).

        Returns the file once the line is fsynced; raises :class:`~flows.storage.StorageError` if it
        could not be written.
        """
        if entry.outcome == "accepted":
            raise ValueError("accepted lines go through accept(), which keeps them unique")
        name = UNROUTED if unrouted else entry.mchid
        with self.locked(name) as folder:
            return append_line(folder / f"{entry.day.isoformat()}.jsonl", entry.to_line())[0]

    def accept(self, entry: LogEntry) -> LogEntry:
        """Append a verified notification: ``accepted`` the first time its id is seen for the merchant,
        ``duplicate`` afterwards. Returns the entry as written (durable once this returns) or, for a
        duplicate beyond ``max_duplicates``, as it was answered (not written; counted in ``stats``)."""
        if entry.outcome != "accepted" or not entry.notification_id or entry.body_bytes is None:
            raise ValueError("accept() takes an accepted entry with a notification id and its body")
        with self.locked(entry.mchid) as folder:
            seen = self._catch_up(entry.mchid, entry.day)
            if seen.is_accepted(entry.notification_id):
                entry = replace(entry, outcome="duplicate")
                if seen.duplicates(entry.notification_id) >= self.max_duplicates:
                    self._not_logged(entry)
                    return entry
            _, before, after = append_line(folder / f"{entry.day.isoformat()}.jsonl", entry.to_line())
            day = seen.days.setdefault(entry.day, DaySeen())
            if entry.outcome == "accepted":
                day.accepted.add(entry.notification_id)  # known at once; a set does not mind a re-read
            if day.offset == before:  # nothing unread before our line: it counts now, not at the next read
                day.offset = after
                if entry.outcome == "duplicate":
                    day.add(entry.outcome, entry.notification_id)
            return entry

    def warm(self, mchid: str, today: date) -> int:
        """Read the last ``remember_days`` of ``mchid`` now (at start-up); returns how many ids are known."""
        with self._thread_lock(mchid):
            return len(self._catch_up(mchid, today).ids())

    def accepted_ids(self, mchid: str) -> frozenset[str]:
        """The ids this log object knows to be accepted for ``mchid`` (as of its last read)."""
        with self._thread_lock(mchid):
            return frozenset(self._seen.get(mchid, MerchantSeen()).ids())

    def remembered_days(self, mchid: str) -> list[date]:
        """The day files of ``mchid`` held in memory (the window around the last day written or warmed)."""
        with self._thread_lock(mchid):
            return sorted(self._seen.get(mchid, MerchantSeen()).days)

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[Path]:
        """The directory of ``name`` (made if missing), held under the thread lock and the ``flock``."""
        folder = self.directory(name)
        with self._thread_lock(name):
            try:
                if not folder.is_dir():
                    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
                    fsync_directory(folder.parent)
                fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
            except OSError as exc:
                raise StorageError(folder, "opening a notification-log directory", exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield folder
            finally:
                os.close(fd)  # releases the flock

    # --- internals ------------------------------------------------------------------------------
    def _thread_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _catch_up(self, mchid: str, today: date) -> MerchantSeen:
        seen = self._seen.setdefault(mchid, MerchantSeen())
        seen.catch_up(lambda day: self.path(mchid, day), today, self.remember_days)
        return seen

    def _not_logged(self, entry: LogEntry) -> None:
        with self._guard:
            self.stats["duplicates_not_logged"] += 1
            first = self.stats["duplicates_not_logged"] == 1
        (logger.warning if first else logger.debug)(
            "notification %s for %s: more than %d duplicates; answered, not logged again (counted)",
            entry.notification_id,
            entry.mchid,
            self.max_duplicates,
        )


def append_line(path: Path, line: bytes, *, fsync: bool = True) -> tuple[Path, int, int]:
    """Append one line (the caller holds the directory's locks), fsynced unless ``fsync`` is false.
    Returns (file, size before, size after); raises :class:`~flows.storage.StorageError` naming the file."""
    try:
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
                if fsync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)  # take back a partial line, where the file allows it
                raise
        finally:
            os.close(fd)
        if created:
            fsync_directory(path.parent)
    except OSError as exc:
        raise StorageError(path, "appending to the notification log", exc) from exc
    return path, before, before + len(line)


def fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
