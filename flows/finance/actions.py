"""The workbench in a notebook: preview what an action will change, then confirm it.

Reads stay read-only (:class:`~flows.finance.marts.Warehouse`); only :meth:`Preview.confirm` writes, through
:mod:`flows.recon.workbench` — the same code as ``wxrecon exceptions`` — in one short transaction. A preview
opens the warehouse only to check and select (nothing is written); confirming writes exactly the exceptions the
preview showed (by id), or nothing if any of them changed meanwhile. Waiting for a busy warehouse is bounded
(``wait`` seconds), then :class:`~flows.finance.errors.WarehouseBusy`; a refused action is
:class:`~flows.finance.errors.ActionRefused` naming what was wrong.

::

    desk = finance.Workbench("var/warehouse.duckdb", actor="li.wei")
    preview = desk.preview_resolve(["CB0002S1"], kind="explained", note="customer paid the difference in cash")
    preview.frame            # what will change
    preview.confirm()        # writes it, with the audit rows
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from flows.finance.errors import ActionRefused, WarehouseBusy, WarehouseMissing
from flows.finance.money import fmt_yuan
from flows.finance.paths import DEFAULT_WAREHOUSE, project_path
from flows.recon import workbench
from flows.recon.workbench import RESOLUTIONS, ActionResult, Selection, WorkbenchError

__all__ = ["RESOLUTIONS", "Preview", "Workbench"]


@dataclass
class Preview:
    """What an action would change; :meth:`confirm` does it."""

    action: str
    frame: pd.DataFrame
    _confirm: Callable[[], ActionResult] = field(repr=False)
    done: ActionResult | None = None

    @property
    def count(self) -> int:
        return len(self.frame)

    def confirm(self) -> ActionResult:
        """Write the action for exactly the previewed exceptions (one transaction)."""
        if self.done is not None:
            raise ActionRefused(f"this preview was confirmed already ({self.done.count} {self.action})")
        self.done = self._confirm()
        return self.done

    def _repr_html_(self) -> str:  # shown as the table of what will change
        return f"<p>{self.action}: {self.count} exception(s)</p>" + self.frame.to_html(index=False)


@dataclass(frozen=True)
class Workbench:
    """Actions on the warehouse file for one person (``actor``, named in the audit trail)."""

    path: str | Path = DEFAULT_WAREHOUSE
    actor: str = ""
    wait: float = 30.0

    def _run(self, call: Callable[[Any], Any]) -> Any:
        from flows.warehouse import WarehouseBusy as Held
        from flows.warehouse import open_warehouse

        file = project_path(self.path)
        if not file.is_file():
            raise WarehouseMissing(f"no warehouse at {file}: run the nightly reconciliation (or the demo) first")
        try:
            con = open_warehouse(file, wait=self.wait, poll=0.2)
        except Held:
            raise WarehouseBusy(f"the nightly run is writing {file.name}; try again in a moment") from None
        try:
            return call(con)
        except WorkbenchError as exc:
            raise ActionRefused(f"{exc}; nothing was written") from None
        finally:
            con.close()

    def _ids(self, con: Any, keys: Iterable[str]) -> list[str]:
        """Exception ids for ids, id prefixes or item keys (``CB0002S1``) that name exactly one exception."""
        found = []
        for key in keys:
            rows = con.execute(
                "select exception_id from recon.exceptions where item_key = ? or notification_id = ?", [key, key]
            ).fetchall()
            found.append(rows[0][0] if len(rows) == 1 else key)
        return found

    def _preview(
        self,
        action: str,
        run: Callable[..., ActionResult],
        keys: Iterable[str] | None,
        selection: Selection | None,
        after: Callable[[dict], str],
    ) -> Preview:
        keys = list(keys or [])

        def preview(con):
            return run(con, ids=self._ids(con, keys) if keys else None, selection=selection, apply=False)

        planned: ActionResult = self._run(preview)
        frame = pd.DataFrame(
            {
                "exception_id": [r["exception_id"] for r in planned.rows],
                "对账日 day": [r["recon_date"] for r in planned.rows],
                "商户 merchant": [r["mchid"] for r in planned.rows],
                "类别 class": [r["class"] for r in planned.rows],
                "单号 key": [r["item_key"] for r in planned.rows],
                "涉及金额 at stake": [fmt_yuan(r["exposure_fen"]) for r in planned.rows],
                "现在 now": [r["work_state"] for r in planned.rows],
                "之后 after": [after(r) for r in planned.rows],
            }
        )
        ids = planned.exception_ids

        def confirm() -> ActionResult:
            return self._run(lambda con: run(con, ids=ids, selection=None, apply=True))

        return Preview(action, frame, confirm)

    def preview_resolve(
        self,
        keys: Iterable[str] | None = None,
        *,
        kind: str | None,
        note: str,
        merchants: Iterable[str] | None = None,
        classes: Iterable[str] | None = None,
        start: date | None = None,
        end: date | None = None,
        min_fen: int | None = None,
        max_fen: int | None = None,
        threshold: int = workbench.DEFAULT_THRESHOLD,
    ) -> Preview:
        """Resolve exceptions (ids or item keys, or a filter) with ``kind`` and ``note``: the preview."""
        selection = self._selection(merchants, classes, start, end, min_fen, max_fen)

        def run(con, *, ids, selection, apply):
            return workbench.resolve(
                con, kind, ids=ids, selection=selection, actor=self.actor, note=note, threshold=threshold, apply=apply
            )

        return self._preview("resolve", run, keys, selection, lambda r: f"resolved ({kind or 'as proposed'})")

    def preview_assign(
        self,
        keys: Iterable[str] | None = None,
        *,
        assignee: str,
        note: str | None = None,
        merchants: Iterable[str] | None = None,
        classes: Iterable[str] | None = None,
        start: date | None = None,
        end: date | None = None,
        min_fen: int | None = None,
        max_fen: int | None = None,
        threshold: int = workbench.DEFAULT_THRESHOLD,
    ) -> Preview:
        """Assign exceptions (ids or item keys, or a filter) to ``assignee``: the preview."""
        selection = self._selection(merchants, classes, start, end, min_fen, max_fen)

        def run(con, *, ids, selection, apply):
            return workbench.assign(
                con,
                assignee,
                ids=ids,
                selection=selection,
                actor=self.actor,
                note=note,
                threshold=threshold,
                apply=apply,
            )

        return self._preview("assign", run, keys, selection, lambda r: f"assigned to {assignee}")

    def preview_reopen(self, keys: Iterable[str], *, note: str) -> Preview:
        """Reopen manual resolutions (ids or item keys): the preview."""

        def run(con, *, ids, selection, apply):
            return workbench.reopen(con, ids=ids or [], actor=self.actor, note=note, apply=apply)

        return self._preview("reopen", run, keys, None, lambda r: "open" if not r["assignee"] else "assigned")

    @staticmethod
    def _selection(merchants, classes, start, end, min_fen, max_fen) -> Selection | None:
        try:
            selection = Selection(
                mchids=tuple([merchants] if isinstance(merchants, str) else merchants or ()),
                classes=tuple([classes] if isinstance(classes, str) else classes or ()),
                start=date.fromisoformat(str(start)) if start else None,
                end=date.fromisoformat(str(end)) if end else None,
                min_fen=min_fen,
                max_fen=max_fen,
            )
        except WorkbenchError as exc:
            raise ActionRefused(f"{exc}; nothing was written") from None
        return None if selection.is_empty() else selection
