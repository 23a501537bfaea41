"""Keeping runs apart: one nightly run per warehouse at a time, and patience with readers.

DuckDB lets one process write a database file, and a process that has the file open (a
notebook between two queries, say) blocks a writer from opening it. :func:`run_lock` makes a
second run of the pipeline wait for the first (it then replaces what the first wrote, so
nothing doubles); :func:`open_warehouse` retries while someone briefly holds the file, and names a
file that is not a readable warehouse (:class:`~flows.storage.DamagedFileError`, with what to do) or
cannot be written (:class:`~flows.storage.StorageError`) instead of a traceback.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from flows.storage import DamagedFileError, storage_fault_in
from flows.warehouse.connection import connect
from flows.warehouse.lake import Lake
from flows.warehouse.migrations import migrate


class RunInProgress(RuntimeError):
    """Another run holds the warehouse and did not finish within the wait."""


class WarehouseBusy(RuntimeError):
    """The warehouse file is held by another process (a run writing, or a reader) longer than we waited."""


@contextmanager
def run_lock(warehouse: Path, *, wait: float = 3600.0, poll: float = 0.2) -> Iterator[None]:
    """Hold ``<warehouse>.run.lock`` exclusively (``flock``) for the duration of a run."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(warehouse.with_name(warehouse.name + ".run.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunInProgress(f"another run holds {warehouse} (waited {wait:.0f} s)") from None
                time.sleep(poll)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_DAMAGED = ("not a valid duckdb database file", "corrupt database file", "could not read enough bytes", "checksum")
WHAT_TO_DO_DAMAGED = (
    "move the file aside (keep it for investigation) and restore the last backup, or run"
    " `wxrecon backfill --start … --end …` to build the days again into a new file (bills already in the archive are"
    " loaded from there, the notification log is verified again; exception history since the backup is lost)"
)


def _damaged(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(words in text for words in _DAMAGED)


def _opening_fault(exc: Exception, path: Path) -> Exception | None:
    """What a failure to open or migrate the warehouse file is, when it is not the file being held."""
    if _damaged(exc):
        problem = f"not a readable DuckDB warehouse ({str(exc).splitlines()[0]})"
        return DamagedFileError(path, problem, WHAT_TO_DO_DAMAGED)
    return storage_fault_in(exc, path, "opening the warehouse")


def _held(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def open_warehouse(
    target: Path | Lake,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    wait: float = 120.0,
    poll: float = 0.5,
    snapshot: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open (and, writable, migrate) the warehouse, retrying while another process holds the file.

    A DuckLake (``target`` a :class:`Lake`) is never held: its writers and readers work side by side."""
    if isinstance(target, Lake):
        con = connect(target, read_only=read_only, memory_limit=memory_limit, snapshot=snapshot)
        if not read_only and snapshot is None:
            migrate(con)
        return con
    path = target
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        try:
            con = connect(path, read_only=read_only, memory_limit=memory_limit, snapshot=snapshot)
            break
        except duckdb.Error as exc:
            if not _held(exc) or time.monotonic() >= deadline:
                if _held(exc):
                    raise WarehouseBusy(f"{path} is held by another process; try again in a moment") from None
                if (fault := _opening_fault(exc, path)) is not None:
                    raise fault from None
                raise
            time.sleep(poll)
    if not read_only:
        try:
            migrate(con)
        except duckdb.Error as exc:
            con.close()
            if (fault := _opening_fault(exc, path)) is not None:
                raise fault from None
            raise
    return con
