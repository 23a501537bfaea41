"""The merchant's records into the warehouse: a fresh read replaces its window of ``raw.local_*``."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from flows.warehouse import transaction


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
    that the source no longer has disappears; records outside it are left alone. ``imported_at``
    is an audit stamp (wall clock).
    """
    now = datetime.now(UTC)
    counts = [0, 0]
    with transaction(con):
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
