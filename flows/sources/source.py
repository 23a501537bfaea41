"""A source of the merchant's own records: where it lives and how its columns map to the canonical shape."""

from __future__ import annotations

import re
import urllib.parse
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from flows.sources.canonical import LOCAL_ORDER_SCHEMA, LOCAL_REFUND_SCHEMA, ORDER_STATUSES, REFUND_STATUSES

DATABASE_KINDS = {"postgresql": ("postgresql", "postgres"), "mysql": ("mysql", "mariadb")}
WINDOW_PLACEHOLDER = re.compile(r"\{(start|end|start_local|end_local)\}")


class LocalSource(BaseModel):
    """Where one relation of local records lives and how its columns and values map to the canonical shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: ClassVar[pa.Schema]
    statuses: ClassVar[tuple[str, ...]]
    key: ClassVar[str]
    window_columns: ClassVar[tuple[str, str]]

    kind: Literal["postgresql", "mysql", "parquet", "csv"]
    url: SecretStr | None = None
    """connectorx URL for postgresql/mysql, e.g. ``postgresql://user:pw@host:5432/db``, ``mysql://...``."""
    paths: tuple[str, ...] = ()
    """Files (or globs) for parquet/csv; several files are unioned by column name."""
    table: str | None = None
    """Database table, optionally ``schema.table``; for file kinds leave it unset (the files are the table)."""
    query: str | None = None
    """A full SELECT with window placeholders (see the module docstring)."""
    columns: dict[str, str | None] = Field(default_factory=dict)
    """canonical name -> source column name; unmapped names are looked up as themselves."""
    status_map: dict[str, str] = Field(default_factory=dict)
    """source status value (as text) -> canonical status."""
    amount_unit: Literal["fen", "yuan"] = "fen"
    naive_timezone: str = "Asia/Shanghai"
    csv_delimiter: str = ","

    @model_validator(mode="after")
    def _check(self) -> LocalSource:
        names = self.schema_.names
        if self.kind in DATABASE_KINDS:
            if self.url is None or self.paths:
                raise ValueError(f"a {self.kind} source needs url and no paths")
            scheme = urllib.parse.urlsplit(self.url.get_secret_value()).scheme
            if scheme not in DATABASE_KINDS[self.kind]:
                raise ValueError(f"a {self.kind} source needs a {'/'.join(DATABASE_KINDS[self.kind])}:// url")
            if (self.table is None) == (self.query is None):
                raise ValueError("give exactly one of table or query")
        else:
            if self.url is not None or not self.paths:
                raise ValueError(f"a {self.kind} source needs paths and no url")
            if self.table is not None:
                raise ValueError(f"a {self.kind} source reads its files as the table; use query for custom SQL")
        if self.query is not None:
            used = set(WINDOW_PLACEHOLDER.findall(self.query))
            if not ({"start", "start_local"} & used and {"end", "end_local"} & used):
                raise ValueError("query must contain window placeholders {start}/{end} or {start_local}/{end_local}")
        for canonical, column in self.columns.items():
            if canonical not in names:
                raise ValueError(f"columns: {canonical!r} is not a canonical column; expected one of {names}")
            if column is None and not self.schema_.field(canonical).nullable:
                raise ValueError(f"columns: required column {canonical!r} cannot be mapped to None")
        unknown = sorted(set(self.status_map.values()) - set(self.statuses))
        if unknown:
            raise ValueError(f"status_map: {unknown} are not canonical statuses {self.statuses}")
        try:
            ZoneInfo(self.naive_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"naive_timezone: unknown time zone {self.naive_timezone!r}") from exc
        if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", self.naive_timezone):
            raise ValueError(f"naive_timezone: unsupported time zone name {self.naive_timezone!r}")
        return self

    def column(self, canonical: str) -> str | None:
        return self.columns.get(canonical, canonical)

    @property
    def label(self) -> str:
        """How error messages name this source (never with a password)."""
        what = f"table {self.table}" if self.table else "query" if self.query else "files"
        if self.url is None:
            return f"{self.kind} {what} {list(self.paths)}"
        parts = urllib.parse.urlsplit(self.url.get_secret_value())
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username + "@" if parts.username else ""
        return f"{self.kind} {what} at {parts.scheme}://{user}{netloc}{parts.path}"


class LocalOrdersSource(LocalSource):
    """The merchant's sub orders of combine orders; read with :func:`read_local_orders`."""

    schema_: ClassVar[pa.Schema] = LOCAL_ORDER_SCHEMA
    statuses: ClassVar[tuple[str, ...]] = ORDER_STATUSES
    key: ClassVar[str] = "out_trade_no"
    window_columns: ClassVar[tuple[str, str]] = ("created_at", "paid_at")


class LocalRefundsSource(LocalSource):
    """The merchant's refunds of sub orders; read with :func:`read_local_refunds`."""

    schema_: ClassVar[pa.Schema] = LOCAL_REFUND_SCHEMA
    statuses: ClassVar[tuple[str, ...]] = REFUND_STATUSES
    key: ClassVar[str] = "out_refund_no"
    window_columns: ClassVar[tuple[str, str]] = ("created_at", "succeeded_at")
