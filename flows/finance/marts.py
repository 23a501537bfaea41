"""The documented marts, read through :class:`Warehouse`: read-only, one query per call, money exact.

:class:`Warehouse` opens the DuckDB file **read-only** for one query on one of the marts in
:data:`MARTS` and closes it before returning, so a notebook left open never holds the file. While
the nightly run writes, DuckDB refuses the read-only open (a conflicting lock); the call retries
briefly, then raises :class:`~flows.finance.errors.WarehouseBusy`. Integers (``*_fen``,
``*_millifen``, sums) come back as ``Int64``, times in Beijing, payer identifiers masked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.finance.errors import (
    EvidenceNotFound,
    FinanceError,
    MartNotAllowed,
    MartNotBuilt,
    WarehouseBusy,
    WarehouseMissing,
)
from flows.finance.masking import mask_frame
from flows.finance.paths import DEFAULT_WAREHOUSE, project_path
from flows.recon import CLASSES
from flows.warehouse import Lake, connect

__all__ = ["MARTS", "Warehouse"]

BEIJING = "Asia/Shanghai"

# mart -> (its date column, its merchant column, its class expression); the only relations notebooks read
MARTS: dict[str, tuple[str, str | None, str | None]] = {
    "mart_recon_items": ("recon_date", "mchid", "class"),
    "mart_daily_summary": ("recon_date", "mchid", "class"),
    "mart_control_totals": ("bill_date", "mchid", None),
    "mart_exceptions": ("recon_date", "mchid", "class"),
    "mart_exception_changes": ("recon_date", "mchid", "coalesce(to_class, from_class)"),
    "mart_exception_audit": ("recon_date", "mchid", "class"),
    "mart_exception_backlog": ("as_of_date", "mchid", "class"),
    "mart_runs": ("as_of_date", None, None),
    "mart_fund_flow_daily": ("bill_date", "mchid", None),
    "mart_notifications": ("received_date", "mchid", None),
}
_COLUMN = re.compile(r"^[a-z][a-z0-9_]*$")


def _dates(start: date | str | None, end: date | str | None) -> tuple[date | None, date | None]:
    return tuple(d if d is None or isinstance(d, date) else date.fromisoformat(str(d)) for d in (start, end))


def _strings(values: str | Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [values] if isinstance(values, str) else [str(v) for v in values]


@dataclass(frozen=True)
class Warehouse:
    """The warehouse file, opened read-only for each call and closed before it returns.

    ``busy_retries`` × ``busy_wait`` seconds is how long a call waits for the nightly run's write
    lock before it raises :class:`WarehouseBusy`. ``path`` may also be a DuckLake
    (``Settings.warehouse_target``): it is read at its last committed snapshot, or at ``snapshot`` (what an
    alert saw), never waiting for the night's writers.
    """

    path: str | Path | Lake = DEFAULT_WAREHOUSE
    busy_retries: int = 6
    busy_wait: float = 0.5
    snapshot: int | None = None

    @property
    def file(self) -> Path:
        if isinstance(self.path, Lake):
            raise TypeError("a DuckLake warehouse has no file")
        return project_path(self.path)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if isinstance(self.path, Lake):
            return connect(self.path, read_only=True, snapshot=self.snapshot, threads=2)
        if not self.file.is_file():
            raise WarehouseMissing(f"no warehouse at {self.file}: run the nightly reconciliation (or the demo) first")
        for attempt in range(self.busy_retries + 1):
            try:
                return duckdb.connect(str(self.file), read_only=True, config={"threads": 2})
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if attempt < self.busy_retries:
                    time.sleep(self.busy_wait)
        raise WarehouseBusy(f"the nightly run is writing {self.file.name}; try again in a moment") from None

    def mart(
        self,
        name: str,
        *,
        start: date | str | None = None,
        end: date | str | None = None,
        merchants: str | Iterable[str] | None = None,
        classes: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        order_by: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Rows of one mart: dates ``start``..``end`` (inclusive) of its date column, ``merchants``,
        ``classes`` (exception classes), and ``where`` (column -> value, or a list of values)."""
        if name not in MARTS:
            raise MartNotAllowed(f"{name!r} is not one of the marts notebooks may read: {sorted(MARTS)}")
        date_col, merchant_col, class_col = MARTS[name]
        conditions: list[str] = []
        params: list[Any] = []
        first, last = _dates(start, end)
        if first:
            conditions.append(f"{date_col} >= ?")
            params.append(first)
        if last:
            conditions.append(f"{date_col} <= ?")
            params.append(last)
        wanted = _strings(merchants)
        if wanted is not None:
            conditions.append(f"list_contains(?, {merchant_col})" if merchant_col else "list_has_any(?, merchants)")
            params.append(wanted)
        kinds = _strings(classes)
        if kinds is not None:
            unknown = sorted(set(kinds) - set(CLASSES))
            if unknown or not class_col:
                raise MartNotAllowed(f"{name} cannot be filtered by class {unknown or kinds}; classes: {CLASSES}")
            conditions.append(f"list_contains(?, {class_col})")
            params.append(kinds)
        for column, value in (where or {}).items():
            column = _column(column)
            if isinstance(value, (list, tuple, set, frozenset)):
                conditions.append(f"list_contains(?, {column})")
                params.append([_plain(v) for v in value])
            elif _plain(value) is None:
                conditions.append(f"{column} is null")
            else:
                conditions.append(f"{column} = ?")
                params.append(_plain(value))
        sql = f"select * from marts.{name}"  # noqa: S608 - names from MARTS / _column only; values bound
        if conditions:
            sql += " where " + " and ".join(conditions)
        if order_by:
            sql += " order by " + ", ".join(
                _column(c.removesuffix(" desc")) + (" desc" if c.endswith(" desc") else "") for c in order_by
            )
        return _frame(self._query(name, sql, params))

    def _query(self, name: str, sql: str, params: list[Any]) -> pa.Table:
        con = self._connect()
        try:
            return con.sql(sql, params=params).to_arrow_table()
        except duckdb.CatalogException:
            raise MartNotBuilt(f"this warehouse has no marts.{name} yet: it is built by the next nightly run") from None
        except duckdb.BinderException as exc:
            raise MartNotAllowed(f"{name}: {str(exc).splitlines()[0]}") from None
        finally:
            con.close()

    def period(
        self, start: date | str | None = None, end: date | str | None = None, *, days: int = 7
    ) -> tuple[date, date]:
        """The days to show: ``end`` defaults to the newest reconciled bill day, ``start`` to ``days`` days up to it."""
        first, last = _dates(start, end)
        if last is None:
            runs = self.runs()
            if runs.empty:
                raise FinanceError("the warehouse has no reconciliation run yet")
            last = max(runs["as_of_date"])
        first = first or last - timedelta(days=days - 1)
        if first > last:
            raise ValueError(f"start_date {first} is after end_date {last}")
        return first, last

    # one method per mart, for the notebooks
    def recon_items(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_recon_items", **kw)

    def daily_summary(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_daily_summary", **kw)

    def control_totals(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_control_totals", **kw)

    def exceptions(self, *, states: str | Iterable[str] | None = ("open", "pending"), **kw: Any) -> pd.DataFrame:
        where = dict(kw.pop("where", None) or {})
        if states is not None:
            where["state"] = _strings(states)
        return self.mart("mart_exceptions", where=where, **kw)

    def exception_changes(self, *, latest_run: bool = True, **kw: Any) -> pd.DataFrame:
        where = dict(kw.pop("where", None) or {})
        if latest_run:
            where["is_latest"] = True
        return self.mart("mart_exception_changes", where=where, **kw)

    def runs(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_runs", order_by=kw.pop("order_by", ("started_at",)), **kw)

    def fund_flow_daily(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_fund_flow_daily", **kw)

    def notifications(self, **kw: Any) -> pd.DataFrame:
        """Notification-log lines with our own verification result and the sub orders they report."""
        return self.mart("mart_notifications", order_by=kw.pop("order_by", ("received_at", "line_no")), **kw)

    def exception(self, key: str) -> pd.Series:
        """One exception by its ``exception_id`` or its ``item_key`` (e.g. ``CB0002S1``)."""
        found = self.mart("mart_exceptions", where={"item_key": key})
        if found.empty:
            found = self.mart("mart_exceptions", where={"exception_id": key})
        if len(found) != 1:
            raise EvidenceNotFound(
                f"{len(found)} exceptions match {key!r}"
                + (f": use one of the exception_ids {list(found['exception_id'])}" if len(found) else "")
            )
        return found.iloc[0]


def _plain(value: Any) -> Any:
    """numpy / pandas scalars (a value taken from a frame) -> Python values DuckDB binds."""
    if value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _column(name: str) -> str:
    if not _COLUMN.match(name):
        raise MartNotAllowed(f"not a column name: {name!r}")
    return name


def _frame(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas without float: integers (sums come as DECIMAL(38,0)) -> Int64; times in Beijing."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_decimal(kind) and kind.scale == 0:
            column = pc.cast(column, pa.int64())  # checked: raises on overflow, never rounds
        columns[name] = column
    frame = pa.table(columns).to_pandas(
        types_mapper=lambda t: pd.Int64Dtype() if pa.types.is_integer(t) else None,
    )
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype):
            frame[name] = frame[name].dt.tz_convert(BEIJING)
    return mask_frame(frame)
