"""A connection to the warehouse (a DuckDB file, or a DuckLake), its memory limit, transactions and SQL literals."""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from flows.warehouse.lake import Lake, open_lake

DEFAULT_MEMORY_LIMIT = "4GB"
LOAD_MEMORY_LIMIT = "512MB"
"""DuckDB's memory_limit while a bill loads (a higher limit of the connection is restored after).

A load holds at most a few parts' rows at a time; what grows with the bill is only the cache
of the blocks it has written, which DuckDB evicts for free under a lower limit. 5M rows peak
at about 0.66 GB RSS with it, 0.86 GB under the 4GB default (``bench/README.md``)."""


def connect(
    target: str | Path | Lake,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    temp_directory: str | Path | None = None,
    threads: int | None = None,
    snapshot: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse — a DuckDB file, or a :class:`~flows.warehouse.lake.Lake` — with
    ``preserve_insertion_order=false`` (1.1–1.2x faster loads).

    ``memory_limit`` bounds DuckDB's buffer pool (default :data:`DEFAULT_MEMORY_LIMIT`, 4GB:
    a 20M×20M reconciliation join fits in 2GB; beyond the limit DuckDB spills; bill loads lower
    it to :data:`LOAD_MEMORY_LIMIT` while they run); ``temp_directory`` is where it spills (DuckDB's default:
    ``<path>.tmp``). The session time zone is left alone: the SQL here never depends on it. ``snapshot``
    (DuckLake only) opens the lake as it was at that snapshot, read-only.
    """
    config: dict[str, Any] = {"preserve_insertion_order": False, "memory_limit": memory_limit or DEFAULT_MEMORY_LIMIT}
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    if threads:
        config["threads"] = threads
    if isinstance(target, Lake):
        con = open_lake(target, config, read_only=read_only or snapshot is not None, snapshot=snapshot)
        _LAKES.add(con)
    else:
        if snapshot is not None:
            raise ValueError("a snapshot can be read from a DuckLake only; a DuckDB file keeps no history")
        con = duckdb.connect(str(target), read_only=read_only, config=config)
    _LIMITS[con] = config["memory_limit"]
    return con


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of ``con`` for another thread, on the same default database (a DuckLake's ``lake``)."""
    cur = con.cursor()
    if con in _LAKES:
        cur.execute("use lake")
        _LAKES.add(cur)
    _LIMITS[cur] = _LIMITS.get(con) or cur.execute("select current_setting('memory_limit')").fetchone()[0]
    return cur


def is_lake(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` is a DuckLake connection (its SQL differs in a few documented ways)."""
    return con in _LAKES


_LAKES: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()


_LIMITS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, str] = weakref.WeakKeyDictionary()
"""The memory_limit each connection was opened with, exactly (DuckDB shows it rounded)."""


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Commit if the block completes, roll back on any exception (including KeyboardInterrupt)."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


_UNITS = {"": 1, "b": 1, "bytes": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def size_bytes(text: str) -> float:
    """``'512MB'``, ``'3.7 GiB'`` (how DuckDB shows it) -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].lower() not in _UNITS:
        raise ValueError(f"not a memory size: {text!r}")
    return float(match[1]) * _UNITS[match[2].lower()]


@contextmanager
def lowered_memory_limit(con: duckdb.DuckDBPyConnection, limit: str | None) -> Iterator[None]:
    """Lower DuckDB's memory_limit to ``limit`` for the block (never raise it); restore it after.

    The limit is restored exactly for a connection opened by :func:`connect`; for another one,
    to what DuckDB shows (``3.7 GiB`` for 4GB: up to 0.1 of the unit lower).
    """
    current = _LIMITS.get(con) or con.execute("select current_setting('memory_limit')").fetchone()[0]
    if limit is None or size_bytes(limit) >= size_bytes(current):
        yield
        return
    con.execute(f"set memory_limit = {quote_literal(limit)}")
    try:
        yield
    finally:
        con.execute(f"set memory_limit = {quote_literal(current)}")


def quote_literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
