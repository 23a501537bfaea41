"""The DuckDB warehouse: connection, migrations, the memory limit of a load, SQL models and data checks.

Tables (created by ``sql/migrations``; units: ``*_fen`` BIGINT fen, ``fee_millifen`` BIGINT
milli-fen, times TIMESTAMPTZ converted from Beijing time)::

    meta.schema_migrations   version, name, checksum, applied_at
    raw.bill_loads           one row per loaded (mchid, bill_type, bill_date): archive_sha1, source_label,
                             parser_version, row_count, header_titles, extra_columns, absent_columns,
                             extra_summary_columns, loaded_at
    raw.trade_bill_rows      every trade bill kind (trade_all / trade_success / trade_refund) in one table:
                             load key (bill_mchid, bill_type, bill_date), lineage (archive_sha1, line_no), then
                             the 29 current + 3 old-format columns of wxpay.billfile.TRADE_COLUMNS
                             (refund columns NULL where a kind lacks them), fee_rate text + fee_rate_pct
                             DECIMAL(7,4), extra_columns JSON for unknown titles
    raw.trade_bill_summaries the summary line of each trade load: row_count and each printed total
    raw.fund_flow_rows       fund-flow bill rows (bill_type fundflow_basic / _operation / _fees), same key
                             and lineage
    raw.fund_flow_summaries  the fund-flow summary line: row_count, income/expense counts and amounts

``bill_mchid`` is the merchant whose bill it is (the load key); ``mchid`` is the 商户号 column.

Bills are loaded by :mod:`flows.billload` (:func:`load_bill`, :func:`load_bill_stream` and
:class:`LoadResult` are importable from here too). Models run in dependency order: a model that
reads ``<layer>.<other>`` of its own layer is created after that one.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from flows.billload import LoadResult, load_bill, load_bill_stream

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "LOAD_MEMORY_LIMIT",
    "PARSER_VERSION",
    "SQL_DIR",
    "LoadResult",
    "connect",
    "load_bill",
    "load_bill_stream",
    "migrate",
    "run_checks",
    "run_models",
]

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
PARSER_VERSION = "duckdb-csv/1"
DEFAULT_MEMORY_LIMIT = "4GB"
LOAD_MEMORY_LIMIT = "512MB"
"""DuckDB's memory_limit while a bill loads (a higher limit of the connection is restored after).

A load holds at most a few parts' rows at a time; what grows with the bill is only the cache
of the blocks it has written, which DuckDB evicts for free under a lower limit. 5M rows peak
at about 0.66 GB RSS with it, 0.86 GB under the 4GB default (``bench/README.md``)."""


def connect(
    path: str | Path,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    temp_directory: str | Path | None = None,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file with ``preserve_insertion_order=false`` (1.1–1.2x faster loads).

    ``memory_limit`` bounds DuckDB's buffer pool (default :data:`DEFAULT_MEMORY_LIMIT`, 4GB:
    a 20M×20M reconciliation join fits in 2GB; beyond the limit DuckDB spills; bill loads lower
    it to :data:`LOAD_MEMORY_LIMIT` while they run); ``temp_directory`` is where it spills (DuckDB's default:
    ``<path>.tmp``). The session time zone is left alone: the SQL here never depends on it.
    """
    config: dict[str, Any] = {"preserve_insertion_order": False, "memory_limit": memory_limit or DEFAULT_MEMORY_LIMIT}
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    if threads:
        config["threads"] = threads
    con = duckdb.connect(str(path), read_only=read_only, config=config)
    _LIMITS[con] = config["memory_limit"]
    return con


_LIMITS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, str] = weakref.WeakKeyDictionary()
"""The memory_limit each connection was opened with, exactly (DuckDB shows it rounded)."""


# --- migrations -----------------------------------------------------------------------------

_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


def migrate(con: duckdb.DuckDBPyConnection, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply ``sql/migrations/NNN_name.sql`` not yet recorded, in order, each in its own transaction.

    Idempotent. Returns the file names applied now. A recorded migration whose file changed
    since is refused (migrations are append-only).
    """
    con.execute("create schema if not exists meta")
    con.execute(
        "create table if not exists meta.schema_migrations ("
        " version integer primary key, name varchar not null, checksum varchar not null,"
        " applied_at timestamptz not null default current_timestamp)"
    )
    done = {
        v: (n, c) for v, n, c in con.execute("select version, name, checksum from meta.schema_migrations").fetchall()
    }
    applied = []
    for file in sorted((sql_dir / "migrations").glob("*.sql")):
        match = _MIGRATION_NAME.fullmatch(file.name)
        if not match:
            raise ValueError(f"migration file {file.name!r} is not named NNN_lower_snake.sql")
        version, text = int(match[1]), file.read_text(encoding="utf-8")
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if version in done:
            if done[version] != (file.name, checksum):
                raise ValueError(f"migration {file.name} changed after it was applied as {done[version][0]}")
            continue
        with _transaction(con):
            con.execute(text)
            con.execute(
                "insert into meta.schema_migrations (version, name, checksum) values (?, ?, ?)",
                [version, file.name, checksum],
            )
        applied.append(file.name)
    return applied


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
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


def _size_bytes(text: str) -> float:
    """``'512MB'``, ``'3.7 GiB'`` (how DuckDB shows it) -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].lower() not in _UNITS:
        raise ValueError(f"not a memory size: {text!r}")
    return float(match[1]) * _UNITS[match[2].lower()]


@contextmanager
def _memory_limit(con: duckdb.DuckDBPyConnection, limit: str | None) -> Iterator[None]:
    """Lower DuckDB's memory_limit to ``limit`` for the block (never raise it); restore it after.

    The limit is restored exactly for a connection opened by :func:`connect`; for another one,
    to what DuckDB shows (``3.7 GiB`` for 4GB: up to 0.1 of the unit lower).
    """
    current = _LIMITS.get(con) or con.execute("select current_setting('memory_limit')").fetchone()[0]
    if limit is None or _size_bytes(limit) >= _size_bytes(current):
        yield
        return
    con.execute(f"set memory_limit = {_quote(limit)}")
    try:
        yield
    finally:
        con.execute(f"set memory_limit = {_quote(current)}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- models and checks ----------------------------------------------------------------------

_REFERENCE = re.compile(r"\b([a-z_]+)\.([a-z0-9_]+)\b")


def _sql_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.sql"))


def _query_text(file: Path) -> str:
    return file.read_text(encoding="utf-8").strip().rstrip(";").strip()


def _ordered(folder: Path, layer: str) -> list[Path]:
    """The layer's SQL files, each after the files of the same layer it reads (``layer.name``)."""
    files = {f.stem: f for f in _sql_files(folder)}
    needs = {
        name: {ref for schema, ref in _REFERENCE.findall(path.read_text()) if schema == layer and ref in files} - {name}
        for name, path in files.items()
    }
    ordered: list[Path] = []
    done: set[str] = set()
    while needs:
        ready = sorted(n for n, deps in needs.items() if deps <= done)
        if not ready:
            raise ValueError(f"circular references between models of {layer}: {sorted(needs)}")
        for name in ready:
            ordered.append(files[name])
            done.add(name)
            del needs[name]
    return ordered


def run_models(con: duckdb.DuckDBPyConnection, layer: str, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """``create or replace view <layer>.<stem> as <file>`` for each ``sql/<layer>/*.sql``, in dependency order."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", layer):
        raise ValueError(f"bad layer name {layer!r}")
    con.execute(f"create schema if not exists {layer}")
    names = []
    for file in _ordered(sql_dir / layer, layer):
        con.execute(f"create or replace view {layer}.{file.stem} as\n{_query_text(file)}")
        names.append(f"{layer}.{file.stem}")
    return names


def run_checks(con: duckdb.DuckDBPyConnection, *, sql_dir: Path = SQL_DIR) -> dict[str, list[dict[str, Any]]]:
    """Run every ``sql/checks/*.sql``; each returns the bad rows (none when healthy). Name -> rows."""
    results = {}
    for file in _sql_files(sql_dir / "checks"):
        cursor = con.execute(_query_text(file))
        names = [d[0] for d in cursor.description]
        results[file.stem] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return results


_LOADING = frozenset({"LoadResult", "load_bill", "load_bill_stream"})


def __getattr__(name: str) -> Any:
    """The bill loaders, imported from :mod:`flows.billload` on first use (it imports this module)."""
    if name in _LOADING:
        from flows import billload

        return getattr(billload, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
