"""What a reconciled item can be: its class (every class but ``matched`` is an exception)."""

from __future__ import annotations

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

QUERYABLE = ("missing_in_bill", "pending", "status_mismatch", "combine_partial", "notification_missing")
"""The classes where WeChat Pay's view of the combine order decides the truth: 补单 asks it (flows.recon.query)."""
