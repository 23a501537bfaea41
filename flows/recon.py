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
   unions the kinds), ``recon.exceptions``
   is updated (opened / reclassified / resolved / reopened, each an ``exception_events`` row);
4. ``sql/marts`` (views) are what notebooks, reports and alerts read.

Re-running a day gives the same items; exceptions keep their first-seen time and age.
Money is integer fen throughout; ``tolerance_fen`` (default 0) allows a difference in amount
comparisons, ``fee_tolerance_fen`` (default 0) in the fee check.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from flows.notifylog import UNROUTED
from flows.warehouse import SQL_DIR, _ordered, _transaction, run_models

PENDING_DAYS = 2
MAX_LOOKBACK_DAYS = 31  # a pending item older than this is not re-evaluated any more

MATCHED = "matched"
PENDING = "pending"
CLASSES = (
    "matched",
    "amount_mismatch",
    "missing_in_bill",
    "missing_locally",
    "status_mismatch",
    "transaction_mismatch",
    "duplicate_in_bill",
    "combine_partial",
    "pending",
    "notification_missing",
    "notification_unverified",
    "notification_amount_mismatch",
    "notification_duplicate",
    "fee_mismatch",
    "refund_missing_locally",
    "refund_amount_mismatch",
    "refund_missing_in_bill",
)
"""Every class an item can have; everything but ``matched`` is an exception (``pending`` is a waiting one)."""


@dataclass(frozen=True)
class ReconParams:
    as_of: date
    merchants: Sequence[str]
    pending_days: int = PENDING_DAYS
    tolerance_fen: int = 0
    fee_tolerance_fen: int = 0
    local_refunds: bool = False

    def __post_init__(self):
        if not self.merchants:
            raise ValueError("a reconciliation run needs at least one merchant")
        for value, name in (
            (self.pending_days, "pending_days"),
            (self.tolerance_fen, "tolerance_fen"),
            (self.fee_tolerance_fen, "fee_tolerance_fen"),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class ClassCount:
    item_kind: str
    cls: str
    count: int
    bill_fen: int
    local_fen: int


@dataclass(frozen=True)
class ExceptionChange:
    event: str
    item_kind: str
    mchid: str
    item_key: str
    from_class: str | None
    to_class: str | None


@dataclass(frozen=True)
class ReconResult:
    run_id: str
    as_of: date
    window_start: date
    merchants: tuple[str, ...]
    counts: list[ClassCount] = field(default_factory=list)
    changes: list[ExceptionChange] = field(default_factory=list)
    open_exceptions: int = 0
    pending: int = 0

    @property
    def exceptions(self) -> int:
        """Items of the as-of day that are not matched (pending included)."""
        return sum(c.count for c in self.counts if c.cls != MATCHED)

    def classes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.counts:
            out[c.cls] = out.get(c.cls, 0) + c.count
        return out


# --- layers ---------------------------------------------------------------------------------


def build_tables(con: duckdb.DuckDBPyConnection, layer: str, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """``create or replace table <layer>.<stem> as <file>`` for each model, in dependency order."""
    names = []
    for file in _ordered(sql_dir / layer, layer):
        con.execute(f"create or replace table {layer}.{file.stem} as\n{file.read_text()}")
        names.append(f"{layer}.{file.stem}")
    return names


# --- inputs ---------------------------------------------------------------------------------


def import_local(
    con: duckdb.DuckDBPyConnection,
    orders: pa.Table | None,
    refunds: pa.Table | None,
    *,
    start: datetime,
    end: datetime,
    source_label: str,
) -> tuple[int, int]:
    """Replace the window [start, end) of ``raw.local_orders`` / ``raw.local_refunds`` with a fresh read.

    The tables come from :mod:`flows.sources` (its canonical shapes). A record inside the window
    that the source no longer has disappears; records outside it are left alone.
    """
    now = datetime.now(UTC)
    counts = [0, 0]
    with _transaction(con):
        if orders is not None:
            con.register("incoming_orders", orders)
            con.execute(
                "delete from raw.local_orders where (created_at >= ? and created_at < ?)"
                " or (paid_at >= ? and paid_at < ?)"
                " or (mchid, out_trade_no) in (select (mchid, out_trade_no) from incoming_orders)",
                [start, end, start, end],
            )
            con.execute(
                "insert into raw.local_orders (mchid, out_trade_no, combine_out_trade_no, amount_fen, status,"
                " created_at, paid_at, transaction_id, attach, description, source_label, imported_at)"
                " select mchid, out_trade_no, combine_out_trade_no, amount_fen, status, created_at, paid_at,"
                " transaction_id, attach, description, ?, ? from incoming_orders",
                [source_label, now],
            )
            counts[0] = orders.num_rows
            con.unregister("incoming_orders")
        if refunds is not None:
            con.register("incoming_refunds", refunds)
            con.execute(
                "delete from raw.local_refunds where (created_at >= ? and created_at < ?)"
                " or (succeeded_at >= ? and succeeded_at < ?)"
                " or (out_trade_no, out_refund_no) in (select (out_trade_no, out_refund_no) from incoming_refunds)",
                [start, end, start, end],
            )
            con.execute(
                "insert into raw.local_refunds (out_refund_no, out_trade_no, mchid, amount_fen, status, created_at,"
                " succeeded_at, source_label, imported_at) select out_refund_no, out_trade_no, mchid, amount_fen,"
                " status, created_at, succeeded_at, ?, ? from incoming_refunds",
                [source_label, now],
            )
            counts[1] = refunds.num_rows
            con.unregister("incoming_refunds")
    return counts[0], counts[1]


# --- the run --------------------------------------------------------------------------------


def _window_start(con: duckdb.DuckDBPyConnection, params: ReconParams) -> date:
    start = params.as_of - timedelta(days=params.pending_days)
    oldest = con.execute(
        "select min(recon_date) from recon.exceptions where state = 'pending' and list_contains(?, mchid)"
        " and recon_date >= ?",
        [list(params.merchants), params.as_of - timedelta(days=MAX_LOOKBACK_DAYS)],
    ).fetchone()[0]
    return min(start, oldest) if oldest else start


# How a resolved exception ended: found agreeing by this run (its sub order, refund or combine order is
# matched now), or simply no longer reported.
_RESOLUTION = (
    "case"
    " when e.item_kind = 'payment' and exists (select 1 from intermediate.int_sub_orders s"
    " where s.mchid = e.mchid and s.out_trade_no = e.item_key and s.class = 'matched') then 'matched'"
    " when e.item_kind = 'refund' and exists (select 1 from intermediate.int_refund_items r"
    " where r.mchid = e.mchid and r.item_key = e.item_key and r.class = 'matched') then 'matched'"
    " when e.item_kind = 'notification' and exists (select 1 from intermediate.int_notification_checks n"
    " where n.combine_key = e.item_key and n.missing_subs = 0 and n.differing_subs = 0) then 'matched'"
    " else 'cleared' end"
)

_EXCEPTION_COLUMNS = (
    "combine_out_trade_no, out_trade_no, out_refund_no, transaction_id, bill_fen, local_fen, notified_fen, diff_fen,"
    " bill_fee_millifen, expected_fee_millifen, copies, bill_date, bill_archive_sha1, bill_line_no, notification_id,"
    " notification_log_file, notification_line_no, local_key, detail"
)


def reconcile(con: duckdb.DuckDBPyConnection, params: ReconParams, *, sql_dir: Path = SQL_DIR) -> ReconResult:
    """Reconcile ``params.as_of`` for ``params.merchants``; see the module docstring."""
    run_id = uuid.uuid4().hex
    started = datetime.now(UTC)
    # callbacks to an unknown merchant's path are logged under "_unrouted"; every run reports them
    merchants = sorted(set(params.merchants) | {UNROUTED})
    window_start = _window_start(con, params)
    with _transaction(con):
        con.execute("delete from recon.params")
        con.execute("delete from recon.run_merchants")
        con.execute(
            "insert into recon.params values (?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                params.as_of,
                window_start,
                params.pending_days,
                params.tolerance_fen,
                params.fee_tolerance_fen,
                params.local_refunds,
            ],
        )
        con.executemany("insert into recon.run_merchants values (?)", [[m] for m in merchants])
        con.execute(
            "insert into recon.runs (run_id, as_of_date, window_start, merchants, pending_days, tolerance_fen,"
            " fee_tolerance_fen, local_refunds, started_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ],
        )
    run_models(con, "staging", sql_dir=sql_dir)
    # a run's intermediate tables are scratch: an in-memory database (spilling under memory_limit), never
    # written into the warehouse file
    con.execute("attach if not exists ':memory:' as intermediate")
    build_tables(con, "intermediate", sql_dir=sql_dir)
    now = datetime.now(UTC)
    with _transaction(con):
        for table in ("recon.items", "recon.daily_totals"):
            con.execute(
                f"delete from {table} where list_contains(?, mchid) and recon_date between ? and ?",
                [merchants, window_start, params.as_of],
            )
        items = (sql_dir / "recon" / "items.sql").read_text()
        con.execute(f"insert into recon.items select *, ? as run_id from (\n{items}\n)", [run_id])
        con.execute(
            "insert into recon.daily_totals select recon_date, mchid, item_kind, items, bill_fen, local_fen, ?"
            " from intermediate.int_daily_totals",
            [run_id],
        )
        _update_exceptions(con, run_id, now, merchants, window_start, params.as_of)
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


def _update_exceptions(
    con: duckdb.DuckDBPyConnection, run_id: str, now: datetime, merchants: list[str], start: date, end: date
) -> None:
    con.execute(
        "create or replace temp table current_exceptions as select md5(item_kind || '|' || mchid || '|' || item_key)"
        f" as exception_id, item_kind, mchid, item_key, class, state, recon_date, {_EXCEPTION_COLUMNS}"
        " from recon.items where run_id = ? and state <> 'matched'",
        [run_id],
    )
    # events first: they need the state before this run
    con.execute(
        "insert into recon.exception_events select ?, ?, c.exception_id,"
        " case when e.exception_id is null then 'opened' when e.state = 'resolved' then 'reopened'"
        " else 'reclassified' end, e.class, c.class, e.state, c.state"
        " from current_exceptions c left join recon.exceptions e on c.exception_id = e.exception_id"
        " where e.exception_id is null or e.state = 'resolved' or e.class <> c.class or e.state <> c.state",
        [run_id, now],
    )
    stale = (
        "from recon.exceptions e where e.state in ('open', 'pending') and list_contains(?, e.mchid)"
        " and e.recon_date between ? and ? and e.exception_id not in (select exception_id from current_exceptions)"
    )
    con.execute(
        f"insert into recon.exception_events select ?, ?, e.exception_id, 'resolved', e.class, null, e.state,"
        f" 'resolved' {stale}",
        [run_id, now, merchants, start, end],
    )
    con.execute(
        "update recon.exceptions as e set state = 'resolved', resolved_run = ?, resolved_at = ?,"
        f" resolution = {_RESOLUTION}"
        " where e.state in ('open', 'pending') and list_contains(?, e.mchid) and e.recon_date between ? and ?"
        " and e.exception_id not in (select exception_id from current_exceptions)",
        [run_id, now, merchants, start, end],
    )
    updates = ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _EXCEPTION_COLUMNS.split(","))
    con.execute(
        "insert into recon.exceptions (exception_id, item_kind, mchid, item_key, class, state, recon_date,"
        f" first_seen_run, first_seen_at, last_seen_run, last_seen_at, {_EXCEPTION_COLUMNS})"
        f" select exception_id, item_kind, mchid, item_key, class, state, recon_date, ?, ?, ?, ?, {_EXCEPTION_COLUMNS}"
        " from current_exceptions on conflict (exception_id) do update set class = excluded.class,"
        " state = excluded.state, recon_date = excluded.recon_date, last_seen_run = excluded.last_seen_run,"
        f" last_seen_at = excluded.last_seen_at, resolved_run = null, resolved_at = null, resolution = null, {updates}",
        [run_id, now, run_id, now],
    )
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
