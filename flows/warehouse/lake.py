"""DuckLake: the warehouse as a catalog database plus Parquet data files, written and read by many processes.

A :class:`Lake` names the catalog (a PostgreSQL database — ``postgres:dbname=… host=… user=…`` — or, on one
machine, a local ``.ducklake`` file) and where the data files go (``s3://bucket/prefix/`` on any S3-compatible
store — MinIO, Ceph, Aliyun OSS, Tencent COS, AWS — or a shared directory). Every connection is a DuckDB of
its own in memory that attaches the lake as ``lake`` and makes it the default database, so the SQL of
``sql/`` runs unchanged; many processes on many machines commit into it at once, each commit a snapshot,
and readers see the last committed snapshot (or an older one: ``snapshot``) without waiting for writers.

Differences from the DuckDB file, each handled here or by the callers:

* no constraints: the migrations' primary keys are left out (:func:`lake_ddl`); every write that relied on
  them is a MERGE or a delete-then-insert, and duplicates are checked by the loaders;
* a cursor does not inherit ``USE lake``: take cursors with :func:`flows.warehouse.cursor`;
* writers conflict per table, not per row: a commit that deleted rows of a table another transaction
  inserted into meanwhile fails with a "Transaction conflict" (DuckLake retries its own commit, not ours):
  :func:`is_conflict` tells, and the loaders retry the whole (merchant, day);
* the extensions (``ducklake``, ``postgres_scanner``, ``httpfs``) come from PyPI packages built for DuckDB
  1.5.5 (the ``ducklake`` extra) and are installed into DuckDB's extension directory from there
  (:func:`ensure_extensions`); nothing is downloaded at run time.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import duckdb

NAME = "lake"
EXTENSIONS = ("ducklake", "postgres_scanner", "httpfs")
_installed = threading.Lock()
_done: set[str] = set()


class LakeUnavailable(RuntimeError):
    """DuckLake was chosen but this environment cannot open it (the ``ducklake`` extra is not installed)."""


def ensure_extensions() -> None:
    """Install the DuckLake, PostgreSQL and S3 extensions from their PyPI packages, once per process."""
    with _installed:
        if _done:
            return
        try:
            from duckdb_extensions import import_extension
        except ImportError:
            raise LakeUnavailable(
                f"warehouse_backend = 'ducklake' needs the ducklake extra (pip install -e '.[ducklake]'), which pins"
                f" DuckDB 1.5.5; this environment has DuckDB {duckdb.__version__} without it"
            ) from None
        for name in EXTENSIONS:
            import_extension(name)
            _done.add(name)


@dataclass(frozen=True)
class Lake:
    """Where a DuckLake lives (see the module docstring). Secrets are given here, never logged."""

    catalog: str
    data_path: str
    s3_endpoint: str | None = None
    s3_key_id: str | None = None
    s3_secret: str | None = None
    s3_region: str = "us-east-1"
    s3_url_style: str = "path"
    s3_use_ssl: bool = True

    def __repr__(self) -> str:  # the catalog string may carry a password
        return f"Lake(data_path={self.data_path!r})"

    def attach(self, con: duckdb.DuckDBPyConnection, *, read_only: bool = False, snapshot: int | None = None) -> None:
        """Attach the lake to ``con`` as ``lake`` and make it the default database."""
        if self.data_path.startswith("s3://"):
            options = [
                "type s3",
                f"region {_literal(self.s3_region)}",
                f"url_style {_literal(self.s3_url_style)}",
                f"use_ssl {'true' if self.s3_use_ssl else 'false'}",
            ]
            if self.s3_endpoint:
                options.append(f"endpoint {_literal(self.s3_endpoint)}")
            if self.s3_key_id:
                options += [f"key_id {_literal(self.s3_key_id)}", f"secret {_literal(self.s3_secret or '')}"]
            else:
                options.append("provider credential_chain")
            con.execute(f"create or replace temporary secret wxrecon_lake ({', '.join(options)})")
        options = [f"data_path {_literal(self.data_path)}"]
        if read_only:
            options.append("read_only")
        if snapshot is not None:
            options.append(f"snapshot_version {int(snapshot)}")
        con.execute(f"attach {_literal('ducklake:' + self.catalog)} as {NAME} ({', '.join(options)})")
        con.execute(f"use {NAME}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def open_lake(lake: Lake, config: dict[str, Any], *, read_only: bool = False, snapshot: int | None = None):
    """A new in-memory DuckDB with ``lake`` attached as its default database."""
    ensure_extensions()
    con = duckdb.connect(":memory:", config=config)
    try:
        lake.attach(con, read_only=read_only, snapshot=snapshot)
    except BaseException:
        con.close()
        raise
    return con


_TABLE_KEY = re.compile(r",(\s*(?:--[^\n]*)?\n\s*)primary key \([^)]*\)", re.IGNORECASE)
_COLUMN_KEY = re.compile(r"\s+primary key(?=\s*(?:,|\n|--|\)))", re.IGNORECASE)


def lake_ddl(text: str) -> str:
    """A migration's DDL for DuckLake, which has no constraints: its primary keys left out."""
    return _COLUMN_KEY.sub("", _TABLE_KEY.sub(r"\1", text))


def is_conflict(error: BaseException) -> bool:
    """Whether a failed commit lost a race with another writer (run the whole transaction again)."""
    text = str(error)
    return "Transaction conflict" in text or "Failed to commit DuckLake transaction" in text


def current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    """The lake's newest committed snapshot id."""
    return int(con.execute("select max(snapshot_id) from lake.snapshots()").fetchone()[0])
