"""What a workbench action selects and what it refuses: :class:`Selection` (the filter of a bulk action or a
listing), the kinds of a manual resolution, the limits, and the :class:`WorkbenchError` tree (each names what was
wrong; nothing was written)::

    WorkbenchError (ValueError)
    ├── UnknownException      an id that names no exception (or several)
    ├── AlreadyResolved       an action that needs an unresolved exception
    ├── NotManuallyResolved   reopen of what a run resolved, or of what is not resolved
    ├── UnknownResolution     not a manual resolution kind
    ├── BadNote               a note missing or too long
    ├── NothingSelected       a filter matching nothing
    └── TooManySelected       a filter matching more than the confirmation threshold
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from flows.recon.classes import CLASSES, MATCHED

AUTOMATIC_RESOLUTIONS = ("matched", "cleared")
"""How a run resolves an exception: a later bill matched it, or it is no longer reported."""

RESOLUTIONS: dict[str, str] = {
    "explained": "explained (e.g. the customer was refunded offline)",
    "written_off": "written off",
    "recovered": "recovered (短款追回): the missing money was collected",
    "refunded_to_payer": "refunded to the payer (长款退费)",
    "adjusted_locally": "adjusted locally: the merchant's record was corrected",
    "false_positive": "false positive: nothing was wrong",
    "never_paid": "never paid: WeChat Pay confirms no payment (the local record is wrong)",
    "paid_bill_pending": "paid: WeChat Pay confirms the payment; the bill will carry it",
}
"""The kinds of a manual resolution, with what each means."""

WORK_STATES = ("open", "assigned", "resolved")
NOTE_LIMIT = 500
"""The longest note (characters) an action takes."""
NAME_LIMIT = 64
"""The longest actor or assignee name."""
MIN_ID_PREFIX = 6
DEFAULT_THRESHOLD = 50
"""A selection matching more exceptions than this is refused unless the caller raises the threshold."""


class WorkbenchError(ValueError):
    """A workbench action refused: the message names what was wrong; nothing was written."""


class UnknownException(WorkbenchError):
    """An id that names no exception (or several)."""


class AlreadyResolved(WorkbenchError):
    """An action that needs an unresolved exception was given a resolved one."""


class NotManuallyResolved(WorkbenchError):
    """Reopen was given an exception that is not resolved by hand."""


class UnknownResolution(WorkbenchError):
    """A resolution kind that is not one of :data:`RESOLUTIONS`."""


class BadNote(WorkbenchError):
    """A note that is missing where one is required, or longer than :data:`NOTE_LIMIT`."""


class NothingSelected(WorkbenchError):
    """A selection that matches no exception."""


class TooManySelected(WorkbenchError):
    """A selection that matches more exceptions than the confirmation threshold."""


@dataclass(frozen=True)
class Selection:
    """Which exceptions a bulk action or a listing takes; an empty field does not filter."""

    mchids: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    start: date | None = None
    end: date | None = None
    min_fen: int | None = None
    max_fen: int | None = None
    work_states: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in CLASSES or c == MATCHED]
        if unknown:
            raise WorkbenchError(f"unknown class {', '.join(map(repr, unknown))}; classes: {', '.join(CLASSES[1:])}")
        bad = [s for s in self.work_states if s not in WORK_STATES]
        if bad:
            raise WorkbenchError(f"unknown work state {', '.join(map(repr, bad))}; states: {', '.join(WORK_STATES)}")
        if self.start and self.end and self.end < self.start:
            raise WorkbenchError(f"day range ends ({self.end}) before it starts ({self.start})")
        for name in ("min_fen", "max_fen"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise WorkbenchError(f"{name} must be a whole number of fen ≥ 0, not {value!r}")
        if self.min_fen is not None and self.max_fen is not None and self.max_fen < self.min_fen:
            raise WorkbenchError(f"amount band max_fen {self.max_fen} is below min_fen {self.min_fen}")

    def is_empty(self) -> bool:
        return self == Selection(work_states=self.work_states)

    def params(self, ids: Sequence[str] | None = None) -> dict[str, Any]:
        return {
            "ids": list(ids) if ids is not None else None,
            "mchids": list(self.mchids) or None,
            "classes": list(self.classes) or None,
            "start": self.start,
            "end": self.end,
            "min_fen": self.min_fen,
            "max_fen": self.max_fen,
            "work_states": list(self.work_states) or None,
        }

    def describe(self) -> str:
        parts = []
        if self.mchids:
            parts.append(f"merchant {', '.join(self.mchids)}")
        if self.classes:
            parts.append(f"class {', '.join(self.classes)}")
        if self.start or self.end:
            parts.append(f"days {self.start or '…'}..{self.end or '…'}")
        if self.min_fen is not None or self.max_fen is not None:
            parts.append(f"at stake {self.min_fen if self.min_fen is not None else 0}..{self.max_fen or '…'} fen")
        if self.work_states:
            parts.append(f"state {', '.join(self.work_states)}")
        return "; ".join(parts) or "every exception"
