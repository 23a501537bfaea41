"""One reconciliation run: its parameters and what it found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from flows.recon.classes import MATCHED

PENDING_DAYS = 2
MAX_LOOKBACK_DAYS = 31  # a pending item older than this is not re-evaluated any more


@dataclass(frozen=True)
class ReconParams:
    as_of: date
    merchants: Sequence[str]
    pending_days: int = PENDING_DAYS
    tolerance_fen: int = 0
    fee_tolerance_fen: int = 0
    local_refunds: bool = False
    check_notifications: bool = True  # expect a notification per paid combine order (some merchant receives them)

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
