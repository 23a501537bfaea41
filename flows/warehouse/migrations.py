"""The warehouse's schema: ``sql/migrations/NNN_name.sql``, applied once each, in order."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import duckdb

from flows.warehouse.connection import is_lake, transaction
from flows.warehouse.lake import lake_ddl
from flows.warehouse.models import SQL_DIR

_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


def migrate(con: duckdb.DuckDBPyConnection, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply ``sql/migrations/NNN_name.sql`` not yet recorded, in order, each in its own transaction.

    Idempotent. Returns the file names applied now. A recorded migration whose file changed
    since is refused (migrations are append-only). On a DuckLake the primary keys are left out
    (:func:`~flows.warehouse.lake.lake_ddl`); the checksum is the file's.
    """
    lake = is_lake(con)
    con.execute("create schema if not exists meta")
    table = (
        "create table if not exists meta.schema_migrations ("
        " version integer primary key, name varchar not null, checksum varchar not null,"
        " applied_at timestamptz not null default current_timestamp)"
    )
    con.execute(lake_ddl(table) if lake else table)
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
        with transaction(con):
            con.execute(lake_ddl(text) if lake else text)
            con.execute(
                "insert into meta.schema_migrations (version, name, checksum) values (?, ?, ?)",
                [version, file.name, checksum],
            )
        applied.append(file.name)
    return applied
