"""The reconciliation: bills × the merchant's records × notification logs, classified in DuckDB.

``engine`` runs one reconciliation (the SQL of ``sql/staging``, ``sql/intermediate``, ``sql/recon`` and
``sql/marts``, in that order); ``run`` holds its parameters and what it found; ``classes`` says what an
item can be.
"""

from __future__ import annotations

from flows.recon.classes import CLASSES, MATCHED, PENDING
from flows.recon.engine import EXCEPTION_STEPS, item_rows, reconcile
from flows.recon.run import PENDING_DAYS, ClassCount, ExceptionChange, ReconParams, ReconResult

__all__ = [
    "CLASSES",
    "EXCEPTION_STEPS",
    "MATCHED",
    "PENDING",
    "PENDING_DAYS",
    "ClassCount",
    "ExceptionChange",
    "ReconParams",
    "ReconResult",
    "item_rows",
    "reconcile",
]
