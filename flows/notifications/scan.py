"""The parent's reading of the log: the day files in range, cut into lines hashed with SHA-256."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from flows.notifylog import UNROUTED, NotificationLog

LOOKUP_LINES = 65536
"""Lines hashed by the parent and looked up in the warehouse with one query."""

_MCHID_DIR = re.compile(r"^[0-9]{1,32}$")


def _files(log: NotificationLog, start: date, end: date) -> list[tuple[str, Path]]:
    """(log_file relative to the root, path) of every day file in range, every directory of the log."""
    if not log.root.is_dir():
        return []
    names = sorted(
        p.name for p in log.root.iterdir() if p.is_dir() and (p.name == UNROUTED or _MCHID_DIR.match(p.name))
    )
    found = []
    for name in names:
        for day in log.days(name):
            path = log.path(name, day)
            if start <= day <= end and path.is_file():
                found.append((f"{name}/{path.name}", path))
    return found


def _scan(path: Path) -> Iterator[tuple[int, list[tuple[int, int]], list[bytes], int | None]]:
    """The file's complete lines in groups: (first line number, (offset, length) of each line without its
    ``\n``, their SHA-256 digests, and after the last group the size of a torn final line or None).

    The file is mapped read-only; its size when opened bounds the scan (lines appended meanwhile wait
    for the next run)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as data:
            sha256, find = hashlib.sha256, data.find
            line_no, position = 1, 0
            while True:
                spans: list[tuple[int, int]] = []
                digests: list[bytes] = []
                while len(spans) < LOOKUP_LINES:
                    end = find(b"\n", position)
                    if end < 0:
                        break
                    spans.append((position, end - position))
                    digests.append(sha256(data[position:end]).digest())
                    position = end + 1
                done = len(spans) < LOOKUP_LINES
                torn = size - position if done and position < size else None
                if spans or torn is not None:
                    yield line_no, spans, digests, torn
                line_no += len(spans)
                if done:
                    return
