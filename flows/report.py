"""What the command line prints about a reconciled day, read from the marts (read-only).

``warehouse`` is the settings' target (a DuckDB file or a :class:`~flows.warehouse.Lake`); ``snapshot``
reads a DuckLake as it was at that snapshot (what an alert saw), never waiting for a writer."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from flows.warehouse import Lake, open_warehouse


def _rows(
    warehouse: Path | Lake, sql: str, args: list[Any], wait: float = 30.0, snapshot: int | None = None
) -> list[dict[str, Any]]:
    con = open_warehouse(warehouse, read_only=True, wait=wait, snapshot=snapshot)
    try:
        cursor = con.execute(sql, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def exceptions_of_day(
    warehouse: Path | Lake, day: date, *, wait: float = 30.0, snapshot: int | None = None
) -> list[dict[str, Any]]:
    """The day's exception items (pending ones included), most money at stake first; ``work_state`` says which
    finance resolved by hand (``resolved``)."""
    return _rows(
        warehouse,
        "select mchid, class, state, item_kind, item_key, bill_fen, local_fen, notified_fen, diff_fen, exposure_fen,"
        " detail, bill_archive_path, bill_line_no, notification_id, notification_log_file, notification_line_no,"
        " exception_id, work_state"
        " from marts.mart_recon_items where recon_date = ? and class <> 'matched'"
        " order by exposure_fen desc, mchid, item_key",
        [day],
        wait,
        snapshot,
    )


def summary_of_day(
    warehouse: Path | Lake, day: date, *, wait: float = 30.0, snapshot: int | None = None
) -> list[dict[str, Any]]:
    """Per merchant and class: items and fen sums (matched included)."""
    return _rows(
        warehouse,
        "select mchid, item_kind, class, state, items, bill_fen, local_fen, abs_diff_fen, exposure_fen"
        " from marts.mart_daily_summary where recon_date = ? order by mchid, item_kind, class",
        [day],
        wait,
        snapshot,
    )


def control_totals(
    warehouse: Path | Lake, day: date, *, wait: float = 30.0, snapshot: int | None = None
) -> list[dict[str, Any]]:
    return _rows(
        warehouse,
        "select mchid, summary_rows, detail_rows, summary_order_fen, detail_order_fen, local_paid_fen,"
        " summary_minus_detail_fen, bill_minus_local_fen from marts.mart_control_totals where bill_date = ?"
        " order by mchid",
        [day],
        wait,
        snapshot,
    )
