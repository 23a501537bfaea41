"""The reconciliation engine: bills × the merchant's records × notification logs, in DuckDB.

A run reconciles one bill day (``as_of``) for a set of merchants. It recomputes every day from
``as_of - pending_days`` (and any older day that still holds a pending item) through ``as_of``,
so an order paid just before midnight that was ``pending`` on day D is settled by D+1's bill,
and one that no bill shows when the window has passed becomes ``missing_in_bill``.

Steps (all SQL lives in ``sql/``; this module only orders it and keeps the state):

1. ``recon.params`` / ``recon.run_merchants`` hold the run's parameters;
2. ``sql/staging`` (views) and ``sql/intermediate`` (tables in an attached in-memory database, in
   dependency order) classify items;
3. in one transaction: the recomputed days of ``recon.items`` are replaced (``sql/recon/items.sql``
   unions the kinds), ``recon.exceptions`` is updated by the exception state machine
   (``sql/recon/current_exceptions.sql``, then :data:`EXCEPTION_STEPS`: opened / reclassified /
   resolved / reopened, each an ``exception_events`` row);
4. ``sql/marts`` (views) are what notebooks, reports and alerts read.

Re-running a day gives the same items; exceptions keep their first-seen time and age.
Money is integer fen throughout; ``tolerance_fen`` (default 0) allows a difference in amount
comparisons, ``fee_tolerance_fen`` (default 0) in the fee check.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from flows.notifications.log import UNROUTED
from flows.recon.run import MAX_LOOKBACK_DAYS, ClassCount, ExceptionChange, ReconParams, ReconResult
from flows.warehouse import SQL_DIR, build_tables, run_models, run_statement, transaction
from flows.warehouse.models import sql_text

# --- the run --------------------------------------------------------------------------------


def _window_start(con: duckdb.DuckDBPyConnection, params: ReconParams) -> date:
    start = params.as_of - timedelta(days=params.pending_days)
    oldest = con.execute(
        "select min(recon_date) from recon.exceptions where state = 'pending' and list_contains(?, mchid)"
        " and recon_date >= ?",
        [list(params.merchants), params.as_of - timedelta(days=MAX_LOOKBACK_DAYS)],
    ).fetchone()[0]
    return min(start, oldest) if oldest else start


def reconcile(con: duckdb.DuckDBPyConnection, params: ReconParams, *, sql_dir: Path = SQL_DIR) -> ReconResult:
    """Reconcile ``params.as_of`` for ``params.merchants``; see the module docstring."""
    run_id = uuid.uuid4().hex
    started = datetime.now(UTC)
    # callbacks to an unknown merchant's path are logged under "_unrouted"; every run reports them
    merchants = sorted(set(params.merchants) | {UNROUTED})
    window_start = _window_start(con, params)
    with transaction(con):
        con.execute("delete from recon.params")
        con.execute("delete from recon.run_merchants")
        con.execute(
            "insert into recon.params (run_id, as_of_date, window_start, pending_days, tolerance_fen,"
            " fee_tolerance_fen, local_refunds, check_notifications) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                params.as_of,
                window_start,
                params.pending_days,
                params.tolerance_fen,
                params.fee_tolerance_fen,
                params.local_refunds,
                params.check_notifications,
            ],
        )
        con.executemany("insert into recon.run_merchants values (?)", [[m] for m in merchants])
        con.execute(
            "insert into recon.runs (run_id, as_of_date, window_start, merchants, pending_days, tolerance_fen,"
            " fee_tolerance_fen, local_refunds, started_at, check_notifications) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                params.as_of,
                window_start,
                merchants,
                params.pending_days,
                params.tolerance_fen,
                params.fee_tolerance_fen,
                params.local_refunds,
                started,
                params.check_notifications,
            ],
        )
    run_models(con, "staging", sql_dir=sql_dir)
    # a run's intermediate tables are scratch: an in-memory database (spilling under memory_limit), never
    # written into the warehouse file
    con.execute("attach if not exists ':memory:' as intermediate")
    build_tables(con, "intermediate", sql_dir=sql_dir)
    now = datetime.now(UTC)
    with transaction(con):
        for table in ("recon.items", "recon.daily_totals"):
            con.execute(
                f"delete from {table} where list_contains(?, mchid) and recon_date between ? and ?",
                [merchants, window_start, params.as_of],
            )
        items = (sql_dir / "recon" / "items.sql").read_text()
        con.execute(f"insert into recon.items by name select *, ? as run_id from (\n{items}\n)", [run_id])
        con.execute(
            "insert into recon.daily_totals select recon_date, mchid, item_kind, items, bill_fen, local_fen, ?"
            " from intermediate.int_daily_totals",
            [run_id],
        )
        _update_exceptions(
            con,
            sql_dir,
            {
                "run_id": run_id,
                "now": now,
                "merchants": merchants,
                "window_start": window_start,
                "as_of": params.as_of,
            },
        )
        exception_count = con.execute("select count(*) from recon.items where run_id = ?", [run_id]).fetchone()[0]
        matched_count = con.execute(
            "select coalesce(sum(items), 0) from recon.daily_totals where run_id = ?", [run_id]
        ).fetchone()[0]
        item_count = exception_count + matched_count
        con.execute(
            "update recon.runs set finished_at = ?, item_count = ?, exception_count = ? where run_id = ?",
            [datetime.now(UTC), item_count, exception_count, run_id],
        )
    con.execute("detach intermediate")
    run_models(con, "marts", sql_dir=sql_dir)
    return _result(con, run_id, params.as_of, window_start, merchants)


EXCEPTION_STEPS = (
    "events_changed.sql",
    "actions_reopened.sql",
    "events_resolved.sql",
    "exceptions_resolved.sql",
    "exceptions_upserted.sql",
)
"""The exception state machine (``sql/recon/``), after ``current_exceptions.sql``: events first, then state."""


def _update_exceptions(con: duckdb.DuckDBPyConnection, sql_dir: Path, params: dict) -> None:
    con.execute(
        "create or replace temp table current_exceptions as\n" + sql_text(sql_dir / "recon" / "current_exceptions.sql"),
        {"run_id": params["run_id"]},
    )
    for step in EXCEPTION_STEPS:
        run_statement(con, sql_dir / "recon" / step, params)
    con.execute("drop table current_exceptions")


def _result(con: duckdb.DuckDBPyConnection, run_id: str, as_of: date, start: date, merchants: list[str]) -> ReconResult:
    counts = [
        ClassCount(kind, cls, n, bill or 0, local or 0)
        for kind, cls, n, bill, local in con.execute(
            "select item_kind, class, count(*), sum(bill_fen), sum(local_fen) from recon.items"
            " where run_id = ? and recon_date = ? group by all"
            " union all select item_kind, 'matched', sum(items), sum(bill_fen), sum(local_fen) from recon.daily_totals"
            " where run_id = ? and recon_date = ? group by all order by all",
            [run_id, as_of, run_id, as_of],
        ).fetchall()
    ]
    changes = [
        ExceptionChange(*row)
        for row in con.execute(
            "select ev.event, e.item_kind, e.mchid, e.item_key, ev.from_class, ev.to_class"
            " from recon.exception_events ev join recon.exceptions e on ev.exception_id = e.exception_id"
            " where ev.run_id = ? order by ev.event, e.item_kind, e.mchid, e.item_key",
            [run_id],
        ).fetchall()
    ]
    open_count, pending = con.execute(
        "select count(*) filter (where state = 'open'), count(*) filter (where state = 'pending')"
        " from recon.exceptions where list_contains(?, mchid)",
        [merchants],
    ).fetchone()
    return ReconResult(run_id, as_of, start, tuple(merchants), counts, changes, open_count, pending)


def item_rows(con: duckdb.DuckDBPyConnection, as_of: date, merchants: Iterable[str] | None = None) -> list[dict]:
    """The exception items of one day as dicts (for reports and tests)."""
    sql = "select * exclude (run_id) from recon.items where recon_date = ?"
    args: list = [as_of]
    if merchants is not None:
        sql += " and list_contains(?, mchid)"
        args.append(sorted(merchants))
    cursor = con.execute(sql + " order by item_kind, mchid, item_key", args)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
