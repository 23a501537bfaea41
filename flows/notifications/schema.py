"""The Arrow schemas of the rows for ``raw.notification_lines``, ``_checks`` and ``_sub_orders``."""

from __future__ import annotations

import pyarrow as pa

_LINES = pa.schema(
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
_CHECKS = pa.schema(
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
_SUB_ORDERS = pa.schema(
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


def _arrays(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) or [()] * len(schema)
    return pa.RecordBatch.from_arrays(
        [pa.array(column, f.type) for column, f in zip(columns, schema, strict=True)], schema=schema
    )


def _concat(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([b for b in batches if b.num_rows], schema=schema)
