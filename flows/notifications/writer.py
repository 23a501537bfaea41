"""One flush of results written to the raw notification tables, in one transaction."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from flows.notifications.checker import CHECKER_VERSION
from flows.notifications.result import _Result
from flows.notifications.schema import _CHECKS, _LINES, _SUB_ORDERS, _concat

_INSERT_LINES = """
insert into raw.notification_lines (log_file, line_no, line_sha256, mchid, outcome, received_at,
    claimed_notification_id, reply_status, receiver_reason, unreadable_reason, line_bytes, recorded_at)
select log_file, line_no, lower(hex(sha)), mchid, outcome, cast(received_at as timestamptz),
    claimed_notification_id, reply_status, receiver_reason, unreadable_reason, line_bytes, $recorded_at
from _notification_lines_new
"""
_INSERT_CHECKS = """
insert into raw.notification_checks (line_sha256, verified, failure, failure_detail, serial, notification_id,
    event_type, create_time, combine_appid, combine_mchid, combine_out_trade_no, combine_transaction_id,
    sub_order_count, checker_version, checked_at)
select lower(hex(sha)), verified, failure, failure_detail, serial, notification_id,
    event_type, cast(create_time as timestamptz), combine_appid, combine_mchid, combine_out_trade_no,
    combine_transaction_id, sub_order_count, $checker_version, $checked_at
from _notification_checks_new
"""
_INSERT_SUB_ORDERS = """
insert into raw.notification_sub_orders (line_sha256, sub_order_no, mchid, out_trade_no, transaction_id,
    trade_state, total_amount_fen, payer_amount_fen, currency, success_time, attach)
select lower(hex(sha)), sub_order_no, mchid, out_trade_no, transaction_id,
    trade_state, total_amount_fen, payer_amount_fen, currency, cast(success_time as timestamptz), attach
from _notification_sub_orders_new
"""


def write_results(con, now: datetime, results: list[_Result], clear: set[str], recheck: list[bytes]) -> int:
    """One transaction on ``con``: replace the unreadable rows of the files ``clear``, drop the old checks of
    ``recheck``, insert the rows of ``results`` (recorded / checked at ``now``). Returns new line rows."""
    lines = _concat(
        [r.lines.append_column("log_file", pa.repeat(r.log_file, r.lines.num_rows)) for r in results],
        _LINES.append(pa.field("log_file", pa.string())),
    )
    checks = _concat([r.checks for r in results], _CHECKS)
    sub_orders = _concat([r.sub_orders for r in results], _SUB_ORDERS)
    con.execute("begin transaction")
    try:
        for log_file in sorted(clear):
            con.execute("delete from raw.notification_lines where log_file = ? and line_sha256 is null", [log_file])
        if recheck:
            con.register("_notification_recheck", pa.table({"sha": pa.array(recheck, pa.binary())}))
            try:
                for table in ("raw.notification_sub_orders", "raw.notification_checks"):
                    con.execute(
                        f"delete from {table} where line_sha256 in"  # noqa: S608 - fixed table names
                        " (select lower(hex(sha)) from _notification_recheck)"
                    )
            finally:
                con.unregister("_notification_recheck")
        for name, table, sql, params in (
            ("_notification_lines_new", lines, _INSERT_LINES, {"recorded_at": now}),
            (
                "_notification_checks_new",
                checks,
                _INSERT_CHECKS,
                {"checked_at": now, "checker_version": CHECKER_VERSION},
            ),
            ("_notification_sub_orders_new", sub_orders, _INSERT_SUB_ORDERS, {}),
        ):
            if table.num_rows:
                con.register(name, table)
                try:
                    con.execute(sql, params)
                finally:
                    con.unregister(name)
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")
    return lines.num_rows - lines["sha"].null_count
