"""What the finance helper raises: one root, shown in a notebook as one line.

::

    FinanceError
    ├── WarehouseBusy        the nightly run holds the warehouse for writing
    ├── WarehouseMissing     no warehouse file at the given path
    ├── MartNotAllowed       (also a ValueError) not a documented mart, column or class
    ├── MartNotBuilt         a documented mart this warehouse has not built yet
    ├── EvidenceNotFound     an archive file or log line not where the warehouse says
    └── ActionRefused        (also a ValueError) a workbench action refused: nothing was written
"""

from __future__ import annotations

__all__ = [
    "ActionRefused",
    "EvidenceNotFound",
    "FinanceError",
    "MartNotAllowed",
    "MartNotBuilt",
    "WarehouseBusy",
    "WarehouseMissing",
]


class FinanceError(Exception):
    """Root of what ``flows.finance`` raises. In a notebook it shows as one line, without a stack trace."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook: finance staff see the message only
        return [f"{type(self).__name__}: {self}"]


class WarehouseBusy(FinanceError):
    """The nightly run holds the warehouse for writing."""


class WarehouseMissing(FinanceError):
    """No warehouse file at the given path."""


class MartNotAllowed(FinanceError, ValueError):
    """A relation, column or class that is not part of the documented marts."""


class MartNotBuilt(FinanceError):
    """The mart is documented but this warehouse has not built it yet (it appears with the next run)."""


class EvidenceNotFound(FinanceError):
    """An archive file or log line that is not where the warehouse says it is."""


class ActionRefused(FinanceError, ValueError):
    """A workbench action refused (unknown or resolved id, unknown kind, note too long, filter too wide)."""
