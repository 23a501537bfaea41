"""The merchant's own records of its combine orders: what a shop's database holds about a day of business.

One row per **sub order** (:data:`ORDER_FIELDS`) and one per refund (:data:`REFUND_FIELDS`), in the shape the
reconciliation reads as local records (``flows/sources/canonical.py``: ``LOCAL_ORDER_SCHEMA`` and
``LOCAL_REFUND_SCHEMA``; a test keeps the two the same). The shop writes down what it asked WeChat Pay for
and what the API answered: created (``NOTPAY``), paid (``SUCCESS`` with ``paid_at`` and ``transaction_id``,
as the query answered), ``CLOSED``, ``REFUND``. :meth:`MerchantBook.to_json` gives the rows with RFC 3339
times (the admin call's answer), :meth:`MerchantBook.from_json` reads them back, and
:meth:`MerchantBook.write_parquet` writes the two files the nightly reads (pyarrow is imported only then).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wxpay.models import CombineNativeRequest, CombineOrder, format_rfc3339

if TYPE_CHECKING:
    import pyarrow as pa

    from wxpay.sim.state import SimRefund

__all__ = ["ORDER_FIELDS", "REFUND_FIELDS", "MerchantBook", "order_schema", "refund_schema"]

ORDER_FIELDS = (
    "combine_out_trade_no",
    "out_trade_no",
    "mchid",
    "amount_fen",
    "status",
    "created_at",
    "paid_at",
    "transaction_id",
    "attach",
    "description",
)
REFUND_FIELDS = ("out_refund_no", "out_trade_no", "mchid", "amount_fen", "status", "created_at", "succeeded_at")
_TIMES = {"created_at", "paid_at", "succeeded_at"}


@dataclass
class MerchantBook:
    """A shop's records: sub orders keyed by (mchid, out_trade_no), in the order they were created; refunds."""

    orders: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def created(self, request: CombineNativeRequest, at: datetime) -> None:
        """The shop asked WeChat Pay for a combine order at ``at``: one NOTPAY row per sub order."""
        with self.lock:
            for sub in request.sub_orders:
                self.orders[(sub.mchid, sub.out_trade_no)] = {
                    "combine_out_trade_no": request.combine_out_trade_no,
                    "out_trade_no": sub.out_trade_no,
                    "mchid": sub.mchid,
                    "amount_fen": sub.amount.total_amount,
                    "status": "NOTPAY",
                    "created_at": at,
                    "paid_at": None,
                    "transaction_id": None,
                    "attach": sub.attach,
                    "description": sub.description,
                }

    def paid(self, order: CombineOrder) -> None:
        """What the query (or a callback) said: each SUCCESS sub order with its time and transaction id."""
        with self.lock:
            for sub in order.sub_orders:
                row = self.orders.get((sub.mchid, sub.out_trade_no))
                if row is not None and sub.trade_state == "SUCCESS":
                    row.update(status="SUCCESS", paid_at=sub.success_time, transaction_id=sub.transaction_id)

    def closed(self, request: CombineNativeRequest) -> None:
        with self.lock:
            for sub in request.sub_orders:
                self.orders[(sub.mchid, sub.out_trade_no)]["status"] = "CLOSED"

    def refunded(self, refund: SimRefund, at: datetime) -> None:
        """A refund the shop asked for at ``at`` on one paid sub order."""
        with self.lock:
            self.orders[(refund.mchid, refund.out_trade_no)]["status"] = "REFUND"
            self.refunds.append(
                {
                    "out_refund_no": refund.out_refund_no,
                    "out_trade_no": refund.out_trade_no,
                    "mchid": refund.mchid,
                    "amount_fen": refund.amount,
                    "status": refund.status,
                    "created_at": at,
                    "succeeded_at": refund.succeeded_at,
                }
            )

    def order_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(row) for row in self.orders.values()]

    def refund_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(row) for row in self.refunds]

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        """``{"orders": [...], "refunds": [...]}`` with times as RFC 3339 text (Beijing), nulls as null."""
        return {"orders": [_text(r) for r in self.order_rows()], "refunds": [_text(r) for r in self.refund_rows()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MerchantBook:
        """The book :meth:`to_json` wrote (exactly the fields of :data:`ORDER_FIELDS` / :data:`REFUND_FIELDS`)."""
        book = cls()
        for row in data["orders"]:
            parsed = _parsed(row, ORDER_FIELDS)
            book.orders[(parsed["mchid"], parsed["out_trade_no"])] = parsed
        book.refunds = [_parsed(row, REFUND_FIELDS) for row in data["refunds"]]
        return book

    def write_parquet(self, folder: str | Path) -> tuple[Path, Path]:
        """``folder/orders.parquet`` and ``folder/refunds.parquet``: the merchant's database, exported."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        paths = target / "orders.parquet", target / "refunds.parquet"
        pq.write_table(pa.Table.from_pylist(self.order_rows(), schema=order_schema()), paths[0])
        pq.write_table(pa.Table.from_pylist(self.refund_rows(), schema=refund_schema()), paths[1])
        return paths


def order_schema() -> pa.Schema:
    """The Arrow schema of a sub-order row (the reconciliation's ``LOCAL_ORDER_SCHEMA``)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    text, nullable = pa.string(), {"paid_at", "transaction_id", "attach", "description"}
    types = {"amount_fen": pa.int64(), "created_at": ts, "paid_at": ts}
    return pa.schema([pa.field(n, types.get(n, text), nullable=n in nullable) for n in ORDER_FIELDS])


def refund_schema() -> pa.Schema:
    """The Arrow schema of a refund row (the reconciliation's ``LOCAL_REFUND_SCHEMA``)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    types = {"amount_fen": pa.int64(), "created_at": ts, "succeeded_at": ts}
    nullable = {"mchid", "succeeded_at"}
    return pa.schema([pa.field(n, types.get(n, pa.string()), nullable=n in nullable) for n in REFUND_FIELDS])


def _text(row: dict[str, Any]) -> dict[str, Any]:
    return {k: format_rfc3339(v) if k in _TIMES and v is not None else v for k, v in row.items()}


def _parsed(row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    if set(row) != set(fields):
        raise ValueError(f"a record needs exactly the fields {', '.join(fields)}; got {', '.join(sorted(row))}")
    return {k: datetime.fromisoformat(row[k]) if k in _TIMES and row[k] is not None else row[k] for k in fields}
