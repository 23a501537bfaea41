"""补单: ask WeChat Pay what really happened to the combine order behind an exception.

For the classes where WeChat Pay's view decides the truth (:data:`~flows.recon.classes.QUERYABLE`:
``missing_in_bill``, ``pending``, ``status_mismatch``, ``combine_partial``, ``notification_missing``), the
combine order is queried through :mod:`wxpay` (``client.combine.query``, as the combine initiator), once per
combine order, at most ``per_second`` queries a second. An answer WeChat Pay says is worth retrying (429
``FREQUENCY_LIMITED``, 5xx, a transport failure: ``WxPayError.retryable``) is asked again after
``retry_seconds``, doubling, at most ``retries`` times; every retry is counted in the report. The answer —
trade state, transaction ids, success times, amounts in fen — is attached to each exception as a ``queried``
audit row (:func:`flows.recon.workbench.record_query`) with the resolution it proves, if it proves one:

================================  =====================  ==========================================
class                              WeChat Pay says        proposal
================================  =====================  ==========================================
missing_in_bill, pending           SUCCESS                ``paid_bill_pending`` (paid; the bill will carry it)
missing_in_bill, pending           CLOSED, NOTPAY, …      ``never_paid`` (the local record is wrong)
status_mismatch, combine_partial   every sub order paid   ``adjusted_locally`` (mark the local record paid)
notification_missing               SUCCESS                ``explained`` (paid; the callback never arrived)
================================  =====================  ==========================================

Nothing is resolved here: finance confirms a proposal (``wxrecon exceptions resolve ID --note …`` without a
kind takes it). The nightly runs this for ``settings.query_classes`` after the reconciliation; ``wxrecon
exceptions query`` runs it on demand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from flows.clock import Clock
from flows.recon import workbench
from flows.recon.classes import QUERYABLE
from flows.recon.workbench import Selection
from wxpay import Client
from wxpay.errors import OrderNotFoundError, WxPayError
from wxpay.models import CombineOrder

UNPAID = ("CLOSED", "NOTPAY", "PAYERROR", "REVOKED", "NOT_FOUND")


@dataclass
class Queried:
    """One combine order asked about: the answer, the exceptions it was attached to, what it proposes."""

    combine_out_trade_no: str
    exception_ids: list[str]
    evidence: dict[str, Any] | None = None
    proposals: dict[str, str | None] = field(default_factory=dict)  # exception_id -> proposal
    retries: list[str] = field(default_factory=list)  # each retried answer: "429 FREQUENCY_LIMITED"
    error: str | None = None  # the last error when the retries ran out


@dataclass
class QueryReport:
    """What a 补单 pass asked and found."""

    queried: list[Queried] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why an exception could not be asked about

    @property
    def retried(self) -> int:
        return sum(len(q.retries) for q in self.queried)

    @property
    def failed(self) -> list[Queried]:
        return [q for q in self.queried if q.error]

    @property
    def proposed(self) -> int:
        return sum(1 for q in self.queried for p in q.proposals.values() if p)


def evidence_of(order: CombineOrder) -> dict[str, Any]:
    """WeChat Pay's answer as evidence: states, ids, times, amounts in fen (no payer data)."""
    return {
        "combine_out_trade_no": order.combine_out_trade_no,
        "combine_mchid": order.combine_mchid,
        "trade_state": order.trade_state,
        "combine_transaction_id": order.combine_transaction_id,
        "sub_orders": [
            {
                "mchid": sub.mchid,
                "out_trade_no": sub.out_trade_no,
                "trade_state": sub.trade_state,
                "transaction_id": sub.transaction_id,
                "success_time": sub.success_time.isoformat() if sub.success_time else None,
                "total_amount_fen": sub.amount.total_amount,
                "payer_amount_fen": sub.amount.payer_amount,
            }
            for sub in order.sub_orders
        ],
    }


def propose(row: dict[str, Any], evidence: dict[str, Any]) -> tuple[str | None, str]:
    """The resolution WeChat Pay's answer proves for an exception (or ``None``), and why, in words."""
    subs = evidence.get("sub_orders") or []
    own = [s for s in subs if s["out_trade_no"] == row.get("out_trade_no")] if row.get("out_trade_no") else subs
    states = {s["trade_state"] for s in own} or {evidence.get("trade_state") or "NOT_FOUND"}
    said = "/".join(sorted(states))
    cls = row["class"]
    if cls in ("missing_in_bill", "pending"):
        if states == {"SUCCESS"}:
            ids = ", ".join(s["transaction_id"] or "?" for s in own)
            return "paid_bill_pending", f"WeChat Pay says SUCCESS (transaction {ids}): paid, bill pending"
        if states <= set(UNPAID):
            return "never_paid", f"WeChat Pay says {said}: never paid"
    if cls in ("status_mismatch", "combine_partial") and states == {"SUCCESS"}:
        return "adjusted_locally", "WeChat Pay says SUCCESS for every sub order: mark the local record paid"
    if cls == "notification_missing" and states == {"SUCCESS"}:
        return "explained", "WeChat Pay says SUCCESS: paid; the payment notification never arrived"
    return None, f"WeChat Pay says {said}: nothing proven"


class _Throttle:
    def __init__(self, per_second: float, sleep: Callable[[float], None]):
        self.interval, self.sleep, self.last = 1.0 / per_second, sleep, None

    def wait(self) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval:
            self.sleep(self.interval - (now - self.last))
        self.last = time.monotonic()


def ask(
    client: Client,
    combine_out_trade_no: str,
    *,
    retries: int,
    retry_seconds: float,
    throttle: _Throttle,
    sleep: Callable[[float], None],
    tried: list[str],
) -> dict[str, Any]:
    """Query one combine order, retrying what WeChat Pay says may be retried; the answer as evidence."""
    for attempt in range(retries + 1):
        throttle.wait()
        try:
            return evidence_of(client.combine.query(combine_out_trade_no))
        except OrderNotFoundError:
            return {"combine_out_trade_no": combine_out_trade_no, "trade_state": "NOT_FOUND", "sub_orders": []}
        except WxPayError as exc:
            if not exc.retryable or attempt == retries:
                raise
            tried.append(f"{getattr(exc, 'status', '') or ''} {getattr(exc, 'code', '') or type(exc).__name__}".strip())
            sleep(retry_seconds * 2**attempt)
    raise AssertionError("unreachable")


def _combine_key(row: dict[str, Any]) -> str | None:
    if row.get("combine_out_trade_no"):
        return row["combine_out_trade_no"]
    if row["item_kind"] in ("combine", "notification"):
        return row["item_key"]
    return None


def query_exceptions(
    con: duckdb.DuckDBPyConnection,
    client_for: Callable[[dict[str, Any]], Client],
    *,
    ids: Sequence[str] | None = None,
    selection: Selection | None = None,
    classes: Sequence[str] = QUERYABLE,
    actor: str,
    max_orders: int = 100,
    per_second: float = 5.0,
    retries: int = 3,
    retry_seconds: float = 1.0,
    only_unproposed: bool = False,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> QueryReport:
    """Ask WeChat Pay about the unresolved exceptions ``ids`` (or ``selection``) of ``classes``; attach each
    answer with its proposal. ``client_for(row)`` gives the client of the combine order's initiator."""
    report = QueryReport()
    if ids:
        rows = workbench.select(con, ids=workbench.resolve_ids(con, ids))
        wrong = [r for r in rows if r["class"] not in QUERYABLE]
        if wrong:
            listed = ", ".join(f"{r['exception_id'][:12]} ({r['class']})" for r in wrong)
            raise workbench.WorkbenchError(
                f"补单 cannot settle {listed}: WeChat Pay's view decides only {', '.join(QUERYABLE)}"
            )
        done = [r for r in rows if r["work_state"] == "resolved"]
        if done:
            raise workbench.AlreadyResolved(
                "cannot query: already resolved: " + ", ".join(r["exception_id"][:12] for r in done)
            )
    else:
        base = selection or Selection()
        rows = [r for r in workbench.select(con, base) if r["class"] in classes and r["work_state"] != "resolved"]
    if only_unproposed and rows:
        have = workbench.proposed(con, [r["exception_id"] for r in rows])
        rows = [r for r in rows if r["exception_id"] not in have]
    orders: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = _combine_key(row)
        if key is None:
            what = f"{row['exception_id'][:12]} {row['class']} {row['item_key']}"
            report.skipped.append(f"{what}: no combine order number")
            continue
        orders.setdefault(key, []).append(row)
    throttle = _Throttle(per_second, sleep)
    for number, group in list(orders.items())[:max_orders]:
        queried = Queried(number, [r["exception_id"] for r in group])
        report.queried.append(queried)
        try:
            with client_for(group[0]) as client:
                queried.evidence = ask(
                    client,
                    number,
                    retries=retries,
                    retry_seconds=retry_seconds,
                    throttle=throttle,
                    sleep=sleep,
                    tried=queried.retries,
                )
        except WxPayError as exc:
            queried.error = f"{type(exc).__name__}: {exc}"
            continue
        queried.evidence["retried"] = list(queried.retries)
        for row in group:
            proposal, reason = propose(row, queried.evidence)
            queried.proposals[row["exception_id"]] = proposal
            workbench.record_query(
                con, row["exception_id"], queried.evidence, proposal, actor=actor, note=reason, clock=clock
            )
    for number in list(orders)[max_orders:]:
        report.skipped.append(f"{number}: over the limit of {max_orders} combine orders a pass")
    return report


def client_for_settings(settings: Any) -> Callable[[dict[str, Any]], Client]:
    """The client a combine order is queried with: its initiator's (a merchant that receives notifications),
    else the exception's own merchant."""
    initiators = [m for m in settings.merchants if m.receives_notifications]

    def client_for(row: dict[str, Any]) -> Client:
        merchant = initiators[0] if initiators else settings.merchant(row["mchid"])
        return merchant.client(settings.api_base_url)

    return client_for


def query_for_settings(
    con: duckdb.DuckDBPyConnection,
    settings: Any,
    *,
    ids: Sequence[str] | None = None,
    selection: Selection | None = None,
    classes: Sequence[str] | None = None,
    actor: str,
    only_unproposed: bool = False,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> QueryReport:
    """:func:`query_exceptions` with the settings' clients, rate and retries (the CLI and the nightly)."""
    return query_exceptions(
        con,
        client_for_settings(settings),
        ids=ids,
        selection=selection,
        classes=classes or QUERYABLE,
        actor=actor,
        max_orders=settings.query_max_orders,
        per_second=settings.query_per_second,
        retries=settings.query_retries,
        retry_seconds=settings.query_retry_seconds,
        only_unproposed=only_unproposed,
        clock=clock,
        sleep=sleep,
    )
