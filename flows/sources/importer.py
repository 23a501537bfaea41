"""The merchant's records into the warehouse: a fresh read replaces its window of ``raw.local_*``.

Unless it looks like a broken export: a read of no records at all (when ``require_rows``: a file export
of the window is never empty), or of fewer than ``min_ratio`` of the records the warehouse holds for the
same window from earlier reads (records do not vanish from a merchant's books), stops with
:class:`~flows.sources.canonical.SuspiciousSourceError` naming the source, before anything is replaced.
"""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from flows.sources.canonical import SuspiciousSourceError
from flows.warehouse import transaction

_WINDOWS = {
    "raw.local_orders": "(created_at >= ? and created_at < ?) or (paid_at >= ? and paid_at < ?)",
    "raw.local_refunds": "(created_at >= ? and created_at < ?) or (succeeded_at >= ? and succeeded_at < ?)",
}


def _check_not_suspicious(
    con, table: str, incoming: pa.Table, start: datetime, end: datetime, label: str, min_ratio: float, require: bool
) -> None:
    held = con.execute(f"select count(*) from {table} where {_WINDOWS[table]}", [start, end, start, end]).fetchone()[0]  # noqa: S608
    window = f"[{start.isoformat()}, {end.isoformat()})"
    if incoming.num_rows == 0 and (require or held):
        raise SuspiciousSourceError(
            f"{label} gave no records for {window} (the warehouse holds {held} from earlier reads): an empty"
            f" export? Nothing was replaced in {table}; check the export and run the day again"
        )
    if held and incoming.num_rows < min_ratio * held:
        raise SuspiciousSourceError(
            f"{label} gave {incoming.num_rows} records for {window}, fewer than local_min_ratio={min_ratio:g} of"
            f" the {held} the warehouse holds from earlier reads: a cut-off export? Nothing was replaced in {table};"
            " check the export (or lower local_min_ratio if records really were deleted) and run the day again"
        )


def import_local(
    con: duckdb.DuckDBPyConnection,
    orders: pa.Table | None,
    refunds: pa.Table | None,
    *,
    start: datetime,
    end: datetime,
    source_label: str,
    min_ratio: float = 0.0,
    require_rows: bool = False,
) -> tuple[int, int]:
    """Replace the window [start, end) of ``raw.local_orders`` / ``raw.local_refunds`` with a fresh read.

    The tables come from :mod:`flows.sources` (its canonical shapes). A record inside the window
    that the source no longer has disappears; records outside it are left alone. ``imported_at``
    is an audit stamp (wall clock). ``min_ratio`` and ``require_rows`` (orders only): the module docstring.
    """
    now = datetime.now(UTC)
    counts = [0, 0]
    if orders is not None:
        _check_not_suspicious(con, "raw.local_orders", orders, start, end, source_label, min_ratio, require_rows)
    if refunds is not None:
        _check_not_suspicious(con, "raw.local_refunds", refunds, start, end, source_label, min_ratio, False)
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
