"""The SQL models and data checks of ``sql/``: one relation per file, run in dependency order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

_REFERENCE = re.compile(r"\b([a-z_]+)\.([a-z0-9_]+)\b")
_PARAMETER = re.compile(r"\$([a-z_][a-z0-9_]*)")


def sql_text(file: Path) -> str:
    """A model's query: the file without its trailing semicolon."""
    return file.read_text(encoding="utf-8").strip().rstrip(";").strip()


def ordered_models(folder: Path, layer: str) -> list[Path]:
    """The layer's SQL files, each after the files of the same layer it reads (``layer.name``)."""
    files = {f.stem: f for f in sorted(folder.glob("*.sql"))}
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


def run_statement(con: duckdb.DuckDBPyConnection, file: Path, params: dict[str, Any]) -> None:
    """Execute one SQL statement file; its ``$name`` parameters are bound from ``params`` (others ignored)."""
    text = sql_text(file)
    wanted = set(_PARAMETER.findall(text))
    missing = wanted - params.keys()
    if missing:
        raise ValueError(f"{file.name} needs parameters {sorted(missing)}")
    con.execute(text, {name: params[name] for name in wanted})


def _layer(layer: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", layer):
        raise ValueError(f"bad layer name {layer!r}")
    return layer


def run_models(con: duckdb.DuckDBPyConnection, layer: str, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """``create or replace view <layer>.<stem> as <file>`` for each ``sql/<layer>/*.sql``, in dependency order."""
    con.execute(f"create schema if not exists {_layer(layer)}")
    names = []
    for file in ordered_models(sql_dir / layer, layer):
        con.execute(f"create or replace view {layer}.{file.stem} as\n{sql_text(file)}")
        names.append(f"{layer}.{file.stem}")
    return names


def build_tables(con: duckdb.DuckDBPyConnection, layer: str, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """``create or replace table <layer>.<stem> as <file>`` for each model, in dependency order."""
    names = []
    for file in ordered_models(sql_dir / _layer(layer), layer):
        con.execute(f"create or replace table {layer}.{file.stem} as\n{sql_text(file)}")
        names.append(f"{layer}.{file.stem}")
    return names


def run_checks(con: duckdb.DuckDBPyConnection, *, sql_dir: Path = SQL_DIR) -> dict[str, list[dict[str, Any]]]:
    """Run every ``sql/checks/*.sql``; each returns the bad rows (none when healthy). Name -> rows."""
    results = {}
    for file in sorted((sql_dir / "checks").glob("*.sql")):
        cursor = con.execute(sql_text(file))
        names = [d[0] for d in cursor.description]
        results[file.stem] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return results
