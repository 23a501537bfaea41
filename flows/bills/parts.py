"""The staging of a bill that is still arriving: its decompressed text cut into plain CSV part files.

:class:`Staging` is fed by the download (or a file pass) on one thread and handed to the
streamed loader of :mod:`flows.bills.loader` on another: each finished part is one DuckDB row group
of :data:`PART_LINES` lines, numbered from its first bill line; the header (line 1) and the
summary block (the last two non-empty lines) are kept apart.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flows.storage import storage_fault_in

PART_LINES = 122_880
"""Lines per staged part file: one DuckDB row group (about 34 MB of a trade bill). Each part
becomes whole row groups that DuckDB compresses and writes once while the transaction is
open; parts of fewer rows were written again at the checkpoint (1M rows in 16 MB parts: 1.4x
the CPU and a file twice the size, see ``bench/README.md``)."""
_MAX_PARTS = 4
"""Parts per INSERT at most: DuckDB holds each part's rows until its statement ends."""
_BLOCK = 1 << 20
_MAX_STAGED = 1 << 30
"""Staged bytes not yet loaded at which the producer waits for the loader (page cache, not RSS)."""


def _raise_staging_fault(exc: OSError, path: Path) -> None:
    """A write error of a part file that is a storage fault: raised as a :class:`~flows.storage.StorageError`."""
    fault = storage_fault_in(exc, path, "staging a bill part file")
    if fault is not None:
        raise fault from exc


class _Cancelled(Exception):
    """The loader gave up; the producer stops at its next piece."""


@dataclass
class Part:
    path: Path
    first_line: int
    """The bill line number of the part's first line."""
    lines: int = 0
    size: int = 0


def _after_newline(data: bytes | bytearray, start: int, n: int) -> int:
    """The offset just after the ``n``-th line end of ``data`` from ``start`` (there are at least ``n``)."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8)[start:] == 10)
    return start + int(ends[n - 1]) + 1


class Staging:
    """The decompressed bill, cut into plain CSV part files of :data:`PART_LINES` lines as it streams in.

    Producer side (one thread): :meth:`feed` the decompressed pieces in order, then
    :meth:`finish` (or :meth:`fail`). Loader side: :meth:`header` waits for line 1; :meth:`take`
    waits for finished parts and hands over all of them, ``[]`` once everything was taken.
    Line 1 (the header) is kept apart; the summary block (the last two non-empty lines) is cut
    off the end into :attr:`summary_lines`, so a finished part is handed over only once the
    next one holds a few lines; ``body_lines`` counts the lines handed over.
    """

    def __init__(self, folder: Path, part_lines: int = PART_LINES):
        self.folder = folder
        self.part_lines = part_lines
        self.size = 0
        self.body_lines = 0
        self.summary_lines: list[bytes] | None = None
        """``None`` when the stream has no two lines after the header that can be the summary."""
        self._cond = threading.Condition()
        self._ready: list[Part] = []
        self._staged = 0
        self._ended = False
        self._error: BaseException | None = None
        self._stop: str | None = None  # "drain": verify on, stage nothing; "cancel": the producer stops
        self.read_header: bytes | None = None
        self._head = bytearray()
        self._block = bytearray()
        self._tail = b""  # the last bytes of the body: the summary block is in there
        self._body = 0  # body bytes staged so far
        self._part: Part | None = None
        self._held: Part | None = None  # finished, handed over once the next part has a few lines
        self._fd: int | None = None
        self._next_line = 2
        self._count = 0

    # --- producer side ---------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._stop is not None:
            if self._stop == "cancel":
                raise _Cancelled
            self.size += len(data)
            return
        self.size += len(data)
        if self.read_header is None:
            self._head += data
            end = self._head.find(b"\n")
            if end < 0 and len(self._head) <= _BLOCK:
                return
            end = len(self._head) - 1 if end < 0 else end
            with self._cond:
                self.read_header = bytes(self._head[: end + 1])
                self._cond.notify_all()
            data = bytes(self._head[end + 1 :])
            self._head = bytearray()
        if not self._block and len(data) >= _BLOCK:
            self._write(data)
            return
        self._block += data
        if len(self._block) >= _BLOCK:
            block, self._block = self._block, bytearray()
            self._write(block)

    def _write(self, data: bytes | bytearray) -> None:
        """Stage ``data``, starting a new part after every :attr:`part_lines` lines."""
        self._tail = bytes(data[-_BLOCK:]) if len(data) >= _BLOCK else (self._tail + data)[-_BLOCK:]
        if self._part is None:
            self._open()
        assert self._part is not None
        start, newlines = 0, data.count(b"\n")
        while newlines >= (need := self.part_lines - self._part.lines):
            cut = _after_newline(data, start, need)
            self._append(data, start, cut, need)
            self._close()
            self._open()
            start, newlines = cut, newlines - need
        if start < len(data):
            self._append(data, start, len(data), newlines)
        if self._held is not None and self._part.lines >= 3 and self._part.size >= 1 << 16:
            # the summary block (two short lines, maybe blank lines after them) is not in the held part
            self._publish(self._held)
            self._held = None

    def _append(self, data: bytes | bytearray, start: int, end: int, lines: int) -> None:
        assert self._part is not None
        assert self._fd is not None
        view = memoryview(data)[start:end]
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            _raise_staging_fault(exc, self._part.path)
            raise
        self._part.size += end - start
        self._part.lines += lines
        self._body += end - start

    def _open(self) -> None:
        self._count += 1
        path = self.folder / f"part{self._count:05d}.csv"
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            _raise_staging_fault(exc, path)
            raise
        self._part = Part(path, self._next_line)

    def _close(self) -> None:
        assert self._part is not None
        assert self._fd is not None
        os.close(self._fd)
        part, self._fd, self._part = self._part, None, None
        self._next_line = part.first_line + part.lines
        if self._held is not None:
            self._publish(self._held)
        self._held = part

    def _publish(self, part: Part) -> None:
        self.body_lines += part.lines
        if not part.size:
            return
        with self._cond:
            self._ready.append(part)
            self._staged += part.size
            self._cond.notify_all()
            while self._staged > _MAX_STAGED and self._stop is None:
                self._cond.wait()

    def finish(self) -> None:
        """The stream is complete: cut the summary block off the end and hand the last parts over."""
        if self._stop == "cancel":
            raise _Cancelled
        if self._stop is not None:  # draining: nothing more is staged
            self._release()
        else:
            if self.read_header is None:  # a stream without a line end
                with self._cond:
                    self.read_header = bytes(self._head)
            if self._block:
                block, self._block = self._block, bytearray()
                self._write(block)
            if self._part is None:
                self._open()
            assert self._part is not None
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
            last, held, self._part, self._held = self._part, self._held, None, None
            self._cut_summary(last, held)
            for part in (held, last):
                if part is not None:
                    self._publish(part)
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _cut_summary(self, last: Part, held: Part | None) -> None:
        """Truncate the part(s) holding the last two non-empty lines; keep those as :attr:`summary_lines`."""
        tail = self._tail
        content = tail.rstrip(b"\r\n")
        end = content.rfind(b"\n")
        before = content.rfind(b"\n", 0, max(end, 0))
        if end < 0 or (before < 0 and self._body != len(tail)):
            return  # no summary block to be seen here: the exact path says what is wrong
        start = self._body - len(tail) + before + 1  # where the summary block starts in the body
        dropped = tail.count(b"\n", before + 1)
        last_start = self._body - last.size
        if start >= last_start:
            os.truncate(last.path, start - last_start)
            last.size, last.lines = start - last_start, last.lines - dropped
        elif held is not None and start >= last_start - held.size:
            keep = start - (last_start - held.size)
            os.truncate(held.path, keep)
            held.size, held.lines = keep, held.lines - (dropped - last.lines)
            last.size = last.lines = 0
        else:
            return
        self.summary_lines = [line.rstrip(b"\r") for line in (content[before + 1 : end], content[end + 1 :])]

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def fail(self, error: BaseException) -> None:
        self._release()
        with self._cond:
            self._error = error
            self._ended = True
            self._cond.notify_all()

    # --- loader side -------------------------------------------------------------------------
    def header(self) -> bytes:
        with self._cond:
            while self.read_header is None and self._error is None:
                self._cond.wait()
            if self.read_header is None:
                raise self._error  # type: ignore[misc]
            return self.read_header

    def take(self) -> list[Part]:
        """Finished parts not yet taken, waiting for one; ``[]`` when the stream has ended.

        While the stream goes on, an even number of parts when there are several: each part is
        one single-threaded pipeline, so two threads finish a statement of an even number
        together (an odd one leaves a core idle for a part's time); at the end, all of them.
        """
        with self._cond:
            while not self._ready and not self._ended:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            n = len(self._ready) if self._ended or len(self._ready) == 1 else len(self._ready) // 2 * 2
            n = min(n, _MAX_PARTS)
            parts, self._ready = self._ready[:n], self._ready[n:]
            self._staged -= sum(p.size for p in parts)
            self._cond.notify_all()
            return parts

    def stop(self, how: str) -> None:
        with self._cond:
            self._stop = how
            self._cond.notify_all()
