"""The exception workbench: finance assigns, resolves and reopens exceptions; every action is recorded.

An action selects exceptions by id (a unique prefix of at least :data:`MIN_ID_PREFIX` characters will do) or
by a :class:`Selection` (merchants, classes, a range of bill days, a band of money at stake), checks every
input first, and then, in **one transaction**, appends one row per exception to ``recon.exception_actions``
(who, when, the exception's class and amounts at the time, the note) and changes ``recon.exceptions``
(``sql/workbench/``). A bad input — an unknown or already-resolved id, an unknown resolution kind, a note
over :data:`NOTE_LIMIT` characters, a selection matching nothing or more than the confirmation threshold —
raises a :class:`WorkbenchError` naming what was wrong, and nothing is written.

Actions never block the nightly run: each opens the warehouse for one short transaction (:func:`open_for_action`
retries while a run holds the file, for ``action_wait_seconds``, then raises
:class:`~flows.warehouse.WarehouseBusy`: the command line's exit 5), and a run that starts meanwhile waits at
most that long for it. A manual resolution stays resolved while later runs report the same class and amounts;
a run that reports anything else reopens it with a ``reopened_by_data`` audit row and a ``reopened`` event
(``sql/recon/actions_reopened.sql``).

What may be selected and every refusal are in :mod:`flows.recon.selection` (re-exported here).
Business time (the action's Beijing day) comes from the clock the caller gives (:func:`flows.context.run_clock`
by default); ``acted_at`` is the same instant, kept as the audit stamp.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from flows.clock import Clock, beijing_date
from flows.recon.selection import (
    AUTOMATIC_RESOLUTIONS,
    DEFAULT_THRESHOLD,
    MIN_ID_PREFIX,
    NAME_LIMIT,
    NOTE_LIMIT,
    RESOLUTIONS,
    WORK_STATES,
    AlreadyResolved,
    BadNote,
    NothingSelected,
    NotManuallyResolved,
    Selection,
    TooManySelected,
    UnknownException,
    UnknownResolution,
    WorkbenchError,
)
from flows.warehouse import SQL_DIR, Lake, is_conflict, is_lake, open_warehouse, run_statement, transaction
from flows.warehouse.models import sql_text

__all__ = [
    "AUTOMATIC_RESOLUTIONS",
    "DEFAULT_THRESHOLD",
    "MIN_ID_PREFIX",
    "NAME_LIMIT",
    "NOTE_LIMIT",
    "RESOLUTIONS",
    "WORK_STATES",
    "ActionResult",
    "AlreadyResolved",
    "BadNote",
    "NotManuallyResolved",
    "NothingSelected",
    "Selection",
    "TooManySelected",
    "UnknownException",
    "UnknownResolution",
    "WorkbenchError",
    "assign",
    "check_resolution",
    "history",
    "open_for_action",
    "proposed",
    "record_query",
    "reopen",
    "resolve",
    "resolve_ids",
    "resolve_with_settings",
    "select",
]


@dataclass
class ActionResult:
    """What an action did (or, as a preview, would do)."""

    action: str
    batch_id: str
    rows: list[dict] = field(default_factory=list)  # the exceptions, as selected before the action
    applied: bool = False

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def exception_ids(self) -> list[str]:
        return [r["exception_id"] for r in self.rows]


# --- reading ---------------------------------------------------------------------------------------


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def select(
    con: duckdb.DuckDBPyConnection, selection: Selection | None = None, ids: Sequence[str] | None = None
) -> list[dict]:
    """The exceptions ``ids`` or ``selection`` name (``sql/workbench/selected.sql``), oldest day first."""
    selection = selection or Selection()
    text = sql_text(SQL_DIR / "workbench" / "selected.sql")
    return _rows(con.execute(text, selection.params(ids)))


def resolve_ids(con: duckdb.DuckDBPyConnection, ids: Iterable[str]) -> list[str]:
    """Full exception ids for ids or unique prefixes; :class:`UnknownException` names every one that is not."""
    found, problems = [], []
    for given in dict.fromkeys(i.strip().lower() for i in ids):
        if len(given) < MIN_ID_PREFIX or not all(c in "0123456789abcdef" for c in given):
            problems.append(f"{given!r} (an exception id is hex, at least {MIN_ID_PREFIX} characters)")
            continue
        matches = [
            r[0]
            for r in con.execute(
                "select exception_id from recon.exceptions where starts_with(exception_id, ?) order by 1 limit 2",
                [given],
            ).fetchall()
        ]
        if not matches:
            problems.append(f"{given} (no such exception)")
        elif len(matches) > 1:
            problems.append(f"{given} (names more than one exception: give more characters)")
        else:
            found.append(matches[0])
    if problems:
        raise UnknownException("unknown exception id: " + "; ".join(problems))
    if not found:
        raise UnknownException("no exception id given")
    return found


def history(con: duckdb.DuckDBPyConnection, exception_id: str) -> list[dict]:
    """The audit rows of one exception, oldest first."""
    return _rows(
        con.execute(
            "select * from recon.exception_actions where exception_id = ? order by acted_at, action_id",
            [exception_id],
        )
    )


# --- checks ----------------------------------------------------------------------------------------


def _name(value: str | None, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise WorkbenchError(f"{what} is empty: say who")
    if len(text) > NAME_LIMIT or any(ord(c) < 32 for c in text):
        raise WorkbenchError(f"{what} {text[:20]!r}… is not a name (at most {NAME_LIMIT} printable characters)")
    return text


def _note(note: str | None, *, required: bool) -> str | None:
    text = (note or "").strip()
    if not text:
        if required:
            raise BadNote("a note is required: say why (it is kept in the audit trail)")
        return None
    if len(text) > NOTE_LIMIT:
        raise BadNote(f"the note has {len(text)} characters; at most {NOTE_LIMIT}")
    return text


def check_resolution(kind: str | None) -> str:
    """``kind`` if it is a manual resolution kind, else :class:`UnknownResolution` listing them."""
    if kind in AUTOMATIC_RESOLUTIONS:
        raise UnknownResolution(f"resolution {kind!r} is given by runs only; by hand: {', '.join(RESOLUTIONS)}")
    if kind not in RESOLUTIONS:
        raise UnknownResolution(f"unknown resolution kind {kind!r}; kinds: {', '.join(RESOLUTIONS)}")
    return kind


def _targets(
    con: duckdb.DuckDBPyConnection,
    ids: Sequence[str] | None,
    selection: Selection | None,
    threshold: int,
    default_states: tuple[str, ...],
) -> list[dict]:
    if ids and selection is not None and not selection.is_empty():
        raise WorkbenchError("give exception ids or a filter, not both")
    if ids:
        return select(con, ids=resolve_ids(con, ids))
    if selection is None or selection.is_empty():
        raise WorkbenchError("no exception ids and no filter: name the exceptions (a bulk action needs a filter)")
    if not selection.work_states:
        selection = dataclasses.replace(selection, work_states=default_states)
    rows = select(con, selection)
    if not rows:
        raise NothingSelected(f"the filter ({selection.describe()}) matches no exception")
    if len(rows) > threshold:
        raise TooManySelected(
            f"the filter ({selection.describe()}) matches {len(rows)} exceptions, more than the confirmation"
            f" threshold of {threshold}: narrow it, or confirm by raising the threshold to {len(rows)}"
        )
    return rows


def _unresolved(rows: list[dict], action: str) -> None:
    done = [r for r in rows if r["work_state"] == "resolved"]
    if done:
        listed = ", ".join(
            f"{r['exception_id'][:12]} ({r['resolution']} by {r['resolved_by'] or 'run ' + str(r['resolved_run'])[:8]})"
            for r in done[:10]
        )
        raise AlreadyResolved(f"cannot {action}: already resolved: {listed}")


# --- actions ---------------------------------------------------------------------------------------


def _now(clock: Clock | None) -> datetime:
    if clock is None:
        from flows.context import run_clock

        clock = run_clock()
    moment = clock()
    if moment.tzinfo is None:
        raise ValueError(f"the action clock gave {moment!r} without a time zone")
    return moment


def _apply(
    con: duckdb.DuckDBPyConnection,
    action: str,
    prepare: Callable[[duckdb.DuckDBPyConnection], tuple[list[dict], dict[str, Any], str | None]],
    *,
    actor: str,
    clock: Clock | None,
    apply: bool,
) -> ActionResult:
    """Check and write one action in one transaction (a DuckLake commit that lost a race is tried again)."""
    actor = _name(actor, "actor")
    moment = _now(clock)
    for attempt in range(3):
        batch_id = uuid.uuid4().hex
        try:
            with transaction(con):
                rows, params, statement = prepare(con)
                result = ActionResult(action, batch_id, rows)
                if not apply:
                    return result
                bound = {
                    "ids": result.exception_ids,
                    "batch_id": batch_id,
                    "action": action,
                    "actor": actor,
                    "acted_at": moment,
                    "business_date": beijing_date(moment),
                    "to_state": None,
                    "assignee": None,
                    "resolution": None,
                    "note": None,
                    "evidence": None,
                    **params,
                }
                run_statement(con, SQL_DIR / "workbench" / "action_logged.sql", bound)
                if statement:
                    run_statement(con, SQL_DIR / "workbench" / statement, bound)
            result.applied = True
            return result
        except duckdb.Error as exc:
            if not (is_lake(con) and is_conflict(exc)) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def assign(
    con: duckdb.DuckDBPyConnection,
    assignee: str,
    *,
    ids: Sequence[str] | None = None,
    selection: Selection | None = None,
    actor: str,
    note: str | None = None,
    threshold: int = DEFAULT_THRESHOLD,
    clock: Clock | None = None,
    apply: bool = True,
) -> ActionResult:
    """Give unresolved exceptions to ``assignee`` (work state assigned); ``apply=False`` previews."""
    assignee = _name(assignee, "assignee")
    text = _note(note, required=False)

    def prepare(con):
        rows = _targets(con, ids, selection, threshold, ("open", "assigned"))
        _unresolved(rows, "assign")
        return rows, {"to_state": "assigned", "assignee": assignee, "note": text}, "assigned.sql"

    return _apply(con, "assigned", prepare, actor=actor, clock=clock, apply=apply)


def resolve(
    con: duckdb.DuckDBPyConnection,
    kind: str | None,
    *,
    ids: Sequence[str] | None = None,
    selection: Selection | None = None,
    actor: str,
    note: str | None,
    threshold: int = DEFAULT_THRESHOLD,
    clock: Clock | None = None,
    apply: bool = True,
) -> ActionResult:
    """Resolve unresolved exceptions by hand with ``kind`` (:data:`RESOLUTIONS`) and a note; ``kind=None`` takes
    the resolution each one's newest 补单 query proposed (every one must have a proposal)."""
    if kind is not None:
        check_resolution(kind)
    text = _note(note, required=True)

    def prepare(con):
        rows = _targets(con, ids, selection, threshold, ("open", "assigned"))
        _unresolved(rows, "resolve")
        if kind is None:
            proposals = proposed(con, [r["exception_id"] for r in rows])
            missing = [r["exception_id"][:12] for r in rows if r["exception_id"] not in proposals]
            if missing:
                raise UnknownResolution(
                    f"no resolution kind given and no 补单 proposal for {', '.join(missing[:10])}:"
                    f" give a kind ({', '.join(RESOLUTIONS)})"
                )
            kinds = {proposals[r["exception_id"]] for r in rows}
            if len(kinds) > 1:
                raise UnknownResolution(
                    f"the selected exceptions have different proposals ({', '.join(sorted(kinds))}):"
                    " resolve them separately or give a kind"
                )
            chosen = kinds.pop()
        else:
            chosen = kind
        return rows, {"to_state": "resolved", "resolution": chosen, "note": text}, "resolved.sql"

    return _apply(con, "resolved", prepare, actor=actor, clock=clock, apply=apply)


def reopen(
    con: duckdb.DuckDBPyConnection,
    *,
    ids: Sequence[str],
    actor: str,
    note: str | None,
    clock: Clock | None = None,
    apply: bool = True,
) -> ActionResult:
    """Reopen manual resolutions (by id only); one resolved by a run is reopened by a run, when its data changes."""
    text = _note(note, required=True)
    if not ids:
        raise WorkbenchError("reopen takes exception ids")

    def prepare(con):
        rows = select(con, ids=resolve_ids(con, ids))
        wrong = [r for r in rows if r["work_state"] != "resolved" or r["resolved_by"] is None]
        if wrong:
            listed = ", ".join(
                f"{r['exception_id'][:12]} ("
                + ("not resolved" if r["work_state"] != "resolved" else f"resolved {r['resolution']} by a run")
                + ")"
                for r in wrong[:10]
            )
            raise NotManuallyResolved(f"cannot reopen: {listed}; only a manual resolution is reopened by hand")
        return rows, {"note": text}, "reopened.sql"

    return _apply(con, "reopened", prepare, actor=actor, clock=clock, apply=apply)


def record_query(
    con: duckdb.DuckDBPyConnection,
    exception_id: str,
    evidence: dict[str, Any],
    proposal: str | None,
    *,
    actor: str,
    note: str | None = None,
    clock: Clock | None = None,
) -> ActionResult:
    """Append a ``queried`` audit row: WeChat Pay's answer as evidence and the resolution it proposes (if any).
    The exception itself does not change: finance confirms the proposal with :func:`resolve`."""
    if proposal is not None:
        check_resolution(proposal)
    text = _note(note, required=False)

    def prepare(con):
        rows = select(con, ids=[exception_id])
        if not rows:
            raise UnknownException(f"unknown exception id: {exception_id}")
        params = {"resolution": proposal, "note": text, "evidence": json.dumps(evidence, ensure_ascii=False)}
        return rows, params, None

    return _apply(con, "queried", prepare, actor=actor, clock=clock, apply=True)


def proposed(con: duckdb.DuckDBPyConnection, ids: Sequence[str]) -> dict[str, str]:
    """The resolution each exception's newest 补单 query proposed (exceptions without a proposal left out)."""
    rows = con.execute(
        "select exception_id, arg_max(resolution, acted_at) from recon.exception_actions"
        " where action = 'queried' and list_contains(?, exception_id) group by exception_id",
        [list(ids)],
    ).fetchall()
    return {i: p for i, p in rows if p is not None}


# --- the warehouse, for one action -----------------------------------------------------------------


def open_for_action(target: Path | Lake, *, wait: float) -> duckdb.DuckDBPyConnection:
    """The warehouse opened writable for one action, waiting at most ``wait`` seconds while a run or a reader
    holds it (then :class:`~flows.warehouse.WarehouseBusy`)."""
    return open_warehouse(target, wait=wait, poll=0.2)


def resolve_with_settings(
    settings: Any,
    ids: Sequence[str] | None,
    *,
    kind: str | None,
    note: str | None,
    selection: Selection | None = None,
    actor: str,
    limit: int | None = None,
    dry_run: bool = False,
) -> ActionResult:
    """What ``wxrecon exceptions resolve`` does with its settings (the demo runs it too): open the warehouse for
    the action (waiting ``action_wait_seconds``), resolve, close."""
    con = open_for_action(settings.warehouse_target, wait=settings.action_wait_seconds)
    try:
        return resolve(
            con,
            kind,
            ids=ids,
            selection=selection,
            actor=actor,
            note=note,
            threshold=limit or settings.action_threshold,
            apply=not dry_run,
        )
    finally:
        con.close()
