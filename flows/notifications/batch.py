"""A worker's task: line positions in one file, whose bytes the worker reads back against the parent's digests."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

__all__ = ["LogChangedError"]

_SPARSE = 4  # read lines one by one when the batch's span is this many times their bytes (incremental runs)


@dataclass
class _Batch:
    """Lines of one file for a worker: (line_no, byte offset, length, sha256 digest, record the occurrence,
    verify the content). The worker reads the bytes from ``path`` itself and checks them against the
    digest the parent looked up (the bytes verified are the bytes hashed; nothing large is pickled)."""

    log_file: str
    path: str
    items: list[tuple[int, int, int, bytes, bool, bool]]


class LogChangedError(RuntimeError):
    """A log line changed between being hashed and being verified (log files are append-only)."""


def _read_lines(batch: _Batch) -> list[bytes]:
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
