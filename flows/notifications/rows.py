"""The rows re-verification writes: Arrow schemas of ``raw.notification_lines``, ``_checks`` and
``_sub_orders``, a batch's rows, and one flush of them into the warehouse in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

CHECKER_VERSION = 1
"""Recorded with every check: what a later, stricter checker can select to verify again."""

LINES_SCHEMA = pa.schema(
    [
        ("line_no", pa.int64()),
        ("sha", pa.binary()),
        ("mchid", pa.string()),
        ("outcome", pa.string()),
        ("received_at", pa.string()),
        ("claimed_notification_id", pa.string()),
        ("reply_status", pa.int64()),
        ("receiver_reason", pa.string()),
        ("unreadable_reason", pa.string()),
        ("line_bytes", pa.int64()),
    ]
)
CHECKS_SCHEMA = pa.schema(
    [
        ("sha", pa.binary()),
        ("verified", pa.bool_()),
        ("failure", pa.string()),
        ("failure_detail", pa.string()),
        ("serial", pa.string()),
        ("notification_id", pa.string()),
        ("event_type", pa.string()),
        ("create_time", pa.string()),
        ("combine_appid", pa.string()),
        ("combine_mchid", pa.string()),
        ("combine_out_trade_no", pa.string()),
        ("combine_transaction_id", pa.string()),
        ("sub_order_count", pa.int64()),
    ]
)
SUB_ORDERS_SCHEMA = pa.schema(
    [
        ("sha", pa.binary()),
        ("sub_order_no", pa.int64()),
        ("mchid", pa.string()),
        ("out_trade_no", pa.string()),
        ("transaction_id", pa.string()),
        ("trade_state", pa.string()),
        ("total_amount_fen", pa.int64()),
        ("payer_amount_fen", pa.int64()),
        ("currency", pa.string()),
        ("success_time", pa.string()),
        ("attach", pa.string()),
    ]
)


def record_batch(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) or [()] * len(schema)
    return pa.RecordBatch.from_arrays(
        [pa.array(column, f.type) for column, f in zip(columns, schema, strict=True)], schema=schema
    )


def concat_batches(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([b for b in batches if b.num_rows], schema=schema)


@dataclass
class BatchResult:
    log_file: str
    lines: pa.RecordBatch
    checks: pa.RecordBatch
    sub_orders: pa.RecordBatch
    checked: int
    failed: int
    unreadable: int


def unreadable_row(line_no: int, size: int, reason: str) -> tuple:
    return (line_no, None, None, "unreadable", None, None, None, None, reason, size)


class BatchRows:
    """The rows of one batch (tuples in schema order), turned into Arrow at the end."""

    def __init__(self) -> None:
        self.lines: list[tuple] = []
        self.checks: list[tuple] = []
        self.sub_orders: list[tuple] = []
        self.failed = self.unreadable = 0

    def result(self, log_file: str) -> BatchResult:
        return BatchResult(
            log_file,
            record_batch(self.lines, LINES_SCHEMA),
            record_batch(self.checks, CHECKS_SCHEMA),
            record_batch(self.sub_orders, SUB_ORDERS_SCHEMA),
            len(self.checks),
            self.failed,
            self.unreadable,
        )


def unreadable_result(log_file: str, line_no: int, size: int, reason: str) -> BatchResult:
    rows = BatchRows()
    rows.lines.append(unreadable_row(line_no, size, reason))
    rows.unreadable = 1
    return rows.result(log_file)


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


def write_results(con, now: datetime, results: list[BatchResult], clear: set[str], recheck: list[bytes]) -> int:
    """One transaction on ``con``: replace the unreadable rows of the files ``clear``, drop the old checks of
    ``recheck``, insert the rows of ``results`` (recorded / checked at ``now``). Returns new line rows."""
    lines = concat_batches(
        [r.lines.append_column("log_file", pa.repeat(r.log_file, r.lines.num_rows)) for r in results],
        LINES_SCHEMA.append(pa.field("log_file", pa.string())),
    )
    checks = concat_batches([r.checks for r in results], CHECKS_SCHEMA)
    sub_orders = concat_batches([r.sub_orders for r in results], SUB_ORDERS_SCHEMA)
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
