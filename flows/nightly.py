"""The nightly pipeline as Prefect flows: ``reconcile_day`` and ``backfill``.

``reconcile_day(bill_date)`` (default: yesterday, Beijing time, by the run's clock) refuses a day that
is not over yet, then runs, in order:

1. the merchants in units (:mod:`flows.fanout`; ``settings.concurrency`` at a time, or on a work pool's
   workers): apply for each trade bill, download it verified into the archive and load it, the small
   bills of a unit together (:func:`flows.bills.load_fetched`), each (merchant, day) whole or absent,
   committed once its SHA-1 and summary matched. "Not ready yet" is a Prefect task retry with backoff
   (``bill_retry_seconds``, doubling, at most 30 min apart), visible in the UI and holding no
   thread of ours, until the merchant's own deadline (``bill_ready_deadline_hours`` from when its
   work started), then the bill is late. Other errors are retried only when WeChat Pay says a
   retry can help. A merchant whose bill an earlier run of the day loaded is left alone (``refetch``
   fetches it again), so a later run picks up only the late ones;
2. read the merchant's own records for the window around the day (if configured);
3. re-verify new notification-log lines;
4. reconcile the day (``flows.recon``); ask WeChat Pay about the exceptions of ``settings.query_classes`` (补单,
   :mod:`flows.recon.query`: evidence and proposals for finance); run the SQL data checks;
5. alert: when the thresholds are passed or the run had a problem (:mod:`flows.outcome` names the
   kinds), with the problem first in the title; a route that fails is retried;
6. leave a markdown artifact with the day's summary table.

The flow run ends ``Failed`` when a merchant's bill could not be had for any reason but lateness, or
the alert could not be delivered; ``Completed`` named ``Late`` when bills are only late; plain
``Completed`` otherwise. Every step logs its counts to the run. A second run while one is in progress
waits for it (``flows.warehouse.run_lock``) and then replaces what it wrote, so nothing doubles.
Every step is a plain function elsewhere; the tasks here only wire them. Callers that want the
:class:`~flows.outcome.DayOutcome` whatever the state use :func:`run_day`.
``python -m flows.nightly [YYYY-MM-DD]`` runs one day.

(No ``from __future__ import annotations`` here: Prefect builds the flows' parameter models from
these annotations when a worker loads the flow in a fresh process.)
"""

import sys
import uuid
from collections.abc import Callable
from datetime import date, timedelta

import duckdb
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.alerts import Alert, AlertNotDelivered, DayReport, backlog_line, compose, day_report, send
from flows.bills import remove_debris, settled_merchants
from flows.clock import Clock, beijing_date
from flows.context import run_clock, settings_for, using
from flows.fanout import (
    TRADE_BILL,
    batches,
    bills_task,
    not_ready_delays,
    outcomes_of,
    retry_delays,
    run_on_workers,
)
from flows.money import fmt_yuan
from flows.notifications import MerchantKeys, NotificationLog, verify_log
from flows.outcome import ADVICE, DayOutcome, Kind, Problem
from flows.recon import ReconParams, ReconResult, reconcile
from flows.settings import Settings
from flows.sources import LocalSourceError, bill_day_window, import_local, read_local_orders, read_local_refunds
from flows.warehouse import LOAD_MEMORY_LIMIT, lowered_memory_limit, open_warehouse, run_checks, run_lock
from wxpay.errors import WxPayError
from wxpay.verifying import public_key_pem

__all__ = ["BillDateError", "backfill", "not_ready_delays", "reconcile_day", "run_clock", "run_day", "using"]

progress_hook: Callable[[str, int, int], None] | None = None
"""Set by the command line to draw progress: called with ("step: <name>", k, len(STEPS)) as the run moves
from step to step, with ("merchants", done, total) as merchants' bills are settled, and with ("day", k, n)
as a backfill moves from day to day."""

STEPS = ("fetch and load bills", "read local records", "verify notifications", "reconcile", "data checks", "alert")


class BillDateError(ValueError):
    """A bill day that is not over yet in Beijing: WeChat Pay publishes a day's bill after 10:00 the next day."""


def _progress(event: str, done: int, total: int) -> None:
    hook = progress_hook
    if hook is not None:
        hook(event, done, total)


def _step(name: str) -> None:
    _progress(f"step: {name}", STEPS.index(name) + 1, len(STEPS))


def check_bill_date(bill_date: date, today: date) -> None:
    """Refuse a day that is today or later (Beijing): nothing about it can be reconciled yet."""
    if bill_date >= today:
        raise BillDateError(
            f"bill_date {bill_date} is not over yet in Beijing (today is {today}): WeChat Pay publishes a day's"
            " bill after 10:00 the next day"
        )


def _worth_retrying(task, task_run, state) -> bool:
    """A source error (a bad value, a duplicate key, a suspicious export) is the same on every try: not retried."""
    return not isinstance(state.result(raise_on_failure=False), LocalSourceError)


@task(
    name="read local records",
    retries=2,
    retry_delay_seconds=30,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def local_task(con: duckdb.DuckDBPyConnection, settings: Settings, bill_date: date) -> tuple[int, int]:
    days = settings.local_window_days
    start, end = bill_day_window(bill_date - timedelta(days=days), 2 * days + 1)
    orders = read_local_orders(settings.local_orders, start, end) if settings.local_orders else None
    refunds = read_local_refunds(settings.local_refunds, start, end) if settings.local_refunds else None
    label = settings.local_orders.label if settings.local_orders else "none"
    export = settings.local_orders is not None and settings.local_orders.kind in ("csv", "parquet")
    counts = import_local(
        con,
        orders,
        refunds,
        start=start,
        end=end,
        source_label=label,
        min_ratio=settings.local_min_ratio,
        require_rows=export,
    )
    get_run_logger().info(
        "read %d sub orders and %d refunds from %s for [%s, %s)", *counts, label, start.isoformat(), end.isoformat()
    )
    return counts


def notification_keys(settings: Settings) -> dict[str, MerchantKeys]:
    """What re-verifying each receiving merchant's callbacks takes (certificates are downloaded)."""
    keys = {}
    for merchant in settings.merchants:
        if not merchant.receives_notifications:
            continue
        public = merchant.public_keys()
        if merchant.platform_certificates:
            with merchant.client(settings.api_base_url) as client:
                client.refresh_certificates()
                for serial, key in client.verifier.public_keys().items():
                    public.setdefault(serial, public_key_pem(key))
        keys[merchant.mchid] = MerchantKeys(merchant.api_v3_key_value(), public)
    return keys


@task(name="verify notifications", cache_policy=NO_CACHE)
def notifications_task(con: duckdb.DuckDBPyConnection, settings: Settings, bill_date: date, today: date) -> int:
    """Re-verify the log from before the pending window up to the run's ``today`` (Beijing)."""
    logger = get_run_logger()
    keys = notification_keys(settings)
    if not keys:
        logger.info("no merchant receives notifications: nothing to re-verify")
        return 0
    log = NotificationLog(settings.notification_root)
    start = bill_date - timedelta(days=settings.pending_days + 1)
    end = max(bill_date + timedelta(days=1), today)
    stats = verify_log(con, log, keys, start=start, end=end, workers=2)
    logger.info(
        "notification log %s..%s: %d lines in %d files, %d newly verified (%d failed), %d unreadable",
        start,
        end,
        stats.lines_seen,
        stats.files,
        stats.newly_verified,
        stats.failed,
        stats.unreadable,
    )
    return stats.newly_verified


@task(name="reconcile", cache_policy=NO_CACHE)
def recon_task(con: duckdb.DuckDBPyConnection, settings: Settings, bill_date: date) -> ReconResult:
    params = ReconParams(
        as_of=bill_date,
        merchants=settings.mchids,
        pending_days=settings.pending_days,
        tolerance_fen=settings.tolerance_fen,
        fee_tolerance_fen=settings.fee_tolerance_fen,
        local_refunds=settings.local_refunds is not None,
        check_notifications=any(m.receives_notifications for m in settings.merchants),
    )
    result = reconcile(con, params)
    classes = result.classes()
    opened = sum(1 for c in result.changes if c.event in ("opened", "reopened"))
    closed = sum(1 for c in result.changes if c.event == "resolved")
    get_run_logger().info(
        "reconciled %s (window from %s) for %d merchants: %d matched, %d exceptions of which %d pending;"
        " %d opened, %d closed since the previous run",
        bill_date,
        result.window_start,
        len(settings.mchids),
        classes.get("matched", 0),
        result.exceptions,
        classes.get("pending", 0),
        opened,
        closed,
    )
    return result


@task(name="query WeChat Pay", cache_policy=NO_CACHE)
def query_task(con: duckdb.DuckDBPyConnection, settings: Settings, now: Clock) -> int:
    """补单 after the reconciliation: ask WeChat Pay about the unresolved exceptions of ``settings.query_classes``
    that no query has proposed a resolution for yet; the answers become evidence and proposals
    (:mod:`flows.recon.query`). A failure here is logged: it never fails the night."""
    from flows.recon.query import query_for_settings
    from flows.recon.workbench import Selection

    logger = get_run_logger()
    try:
        report = query_for_settings(
            con,
            settings,
            selection=Selection(mchids=tuple(settings.mchids)),
            classes=settings.query_classes,
            actor="wxrecon",
            only_unproposed=True,
            clock=now,
        )
    except (WxPayError, duckdb.Error, ValueError, KeyError, OSError) as exc:  # the night's figures stand without it
        logger.warning("补单 skipped: %s: %s", type(exc).__name__, exc)
        return 0
    logger.info(
        "补单: asked WeChat Pay about %d combine orders: %d proposals, %d retried answers, %d failed, %d skipped",
        len(report.queried),
        report.proposed,
        report.retried,
        len(report.failed),
        len(report.skipped),
    )
    for failed in report.failed:
        logger.warning("补单 %s: %s", failed.combine_out_trade_no, failed.error)
    return report.proposed


@task(name="data checks", cache_policy=NO_CACHE)
def checks_task(con: duckdb.DuckDBPyConnection) -> list[str]:
    results = run_checks(con)
    failed = [f"data check {name} found {len(rows)} bad row(s)" for name, rows in results.items() if rows]
    get_run_logger().info("data checks: %d of %d pass", len(results) - len(failed), len(results))
    return failed


@task(name="alert", retry_condition_fn=lambda task, run, state: True, cache_policy=NO_CACHE)
def alert_task(settings: Settings, alert: Alert) -> list[str]:
    routes = send(alert, settings.alerts)
    get_run_logger().info("alert (%s) sent to %s: %s", alert.severity, ", ".join(routes) or "no route", alert.title)
    return routes


def summary_markdown(report: DayReport, outcome: DayOutcome) -> str:
    lines = [
        f"# WeChat Pay reconciliation {report.as_of}",
        "",
    ]
    if outcome.problems:
        lines += [f"**{outcome.headline()}** — the day is incomplete.", ""]
    lines += [
        f"Merchants {', '.join(report.merchants)}: {report.matched} matched, {report.pending} pending, "
        f"{report.exceptions} exceptions ({fmt_yuan(report.exposure_fen)} at stake).",
        "",
        "| merchant | class | items | at stake |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {c.mchid} | {c.cls} | {c.items} | {fmt_yuan(c.exposure_fen)} |" for c in report.classes]
    lines += ["", backlog_line(report.backlog)]
    if outcome.opened or outcome.closed:
        lines += ["", f"Since the previous run: {len(outcome.opened)} opened, {len(outcome.closed)} closed."]
        lines += [f"- opened {item}" for item in outcome.opened[:20]]
        lines += [f"- closed {item}" for item in outcome.closed[:20]]
    for kind in Kind:
        found = outcome.of(kind)
        if found:
            lines += ["", f"**{kind.value.upper()}** — {ADVICE[kind]}", *(f"- {p}" for p in found)]
    if outcome.removed:
        lines += ["", f"Removed {len(outcome.removed)} file(s) a crashed run had left:"]
        lines += [f"- `{path}`" for path in outcome.removed[:20]]
    return "\n".join(lines)


def final_state(outcome: DayOutcome) -> State:
    """The flow run's state for an outcome (module docstring), carrying the outcome as its result."""
    if outcome.failing:
        return Failed(message=f"{outcome.bill_date}: {outcome.headline()}", data=outcome)
    if outcome.late:
        return Completed(name="Late", message=f"{outcome.bill_date}: {outcome.headline()}", data=outcome)
    return Completed(message=f"{outcome.bill_date}: {outcome.exceptions} exceptions", data=outcome)


def _fetch_and_load(
    con, settings: Settings, config: str | None, bill_date: date, refetch: bool, now: Clock, outcome: DayOutcome
) -> None:
    """The night's merchants in units (:mod:`flows.fanout`): in this process, or on the workers of
    ``bills_deployment``; each merchant's outcome read back from the warehouse afterwards."""
    logger = get_run_logger()
    run_id = uuid.uuid4().hex
    outcome.kept = [] if refetch else sorted(settled_merchants(con, TRADE_BILL, bill_date) & set(settings.mchids))
    todo = [m for m in settings.mchids if m not in outcome.kept]
    if outcome.kept:
        logger.info("%d merchants' bills were loaded by an earlier run of %s: kept", len(outcome.kept), bill_date)
    total = len(settings.mchids)
    done = len(outcome.kept)
    _progress("merchants", done, total)
    units = batches(todo, settings.bills_batch_size)
    if settings.bills_deployment and units:
        for batch in run_on_workers(settings, units, bill_date, run_id, refetch):
            done += len(batch)
            _progress("merchants", done, total)
    elif units:
        delays = retry_delays(settings)
        unit = bills_task.with_options(retries=len(delays), retry_delay_seconds=delays)
        with lowered_memory_limit(con, LOAD_MEMORY_LIMIT):
            for start in range(0, len(units), settings.concurrency):  # at most `concurrency` units at a time
                wave = units[start : start + settings.concurrency]
                futures = [unit.submit(con, config, batch, bill_date, run_id, refetch, now) for batch in wave]
                for batch, future in zip(wave, futures, strict=True):
                    future.wait()
                    done += len(batch)
                    _progress("merchants", done, total)
    for found in outcomes_of(con, bill_date, run_id, todo):
        if found.outcome == "loaded":
            outcome.loaded.append(found.mchid)
        elif found.outcome == "no_statement":
            outcome.empty.append(found.mchid)
        else:
            detail = found.detail or "nothing was recorded for it: the unit that had it stopped (see its log)"
            text = f"bill of {found.mchid} for {bill_date}: {detail}"
            outcome.problems.append(Problem(found.problem or Kind.FAILED, text, found.mchid))
    logger.info(
        "bills of %s: %d loaded, %d without trades, %d kept, %d with problems, in %d unit(s)%s",
        bill_date,
        len(outcome.loaded),
        len(outcome.empty),
        len(outcome.kept),
        len([p for p in outcome.problems if p.mchid]),
        len(units),
        f" on {settings.bills_deployment}" if settings.bills_deployment else "",
    )


@flow(name="reconcile-day", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def reconcile_day(bill_date: date | None = None, config: str | None = None, refetch: bool = False) -> State:
    """Reconcile one Beijing day (default: yesterday) for every configured merchant."""
    settings = settings_for(config)
    now = run_clock()
    today = beijing_date(now())  # the run's day: every business decision below reads the run's clock
    bill_date = bill_date or today - timedelta(days=1)
    check_bill_date(bill_date, today)
    outcome = DayOutcome(bill_date)
    logger = get_run_logger()
    with run_lock(settings.warehouse_path):
        debris = remove_debris(archive_root=settings.archive_root)  # what a crashed run left (flows.bills.debris)
        outcome.removed = [str(path) for path in debris.files]
        if debris:
            logger.warning("%s: %s", debris, ", ".join(outcome.removed[:20]))
        con = open_warehouse(
            settings.warehouse_target, memory_limit=settings.memory_limit, wait=settings.warehouse_wait_seconds
        )
        try:
            _step("fetch and load bills")
            _fetch_and_load(con, settings, config, bill_date, refetch, now, outcome)
            _step("read local records")
            if settings.local_orders:
                local_task(con, settings, bill_date)
            _step("verify notifications")
            notifications_task(con, settings, bill_date, today)
            _step("reconcile")
            result = recon_task(con, settings, bill_date)
            if settings.query_classes:
                query_task(con, settings, now)
            _step("data checks")
            outcome.problems += [Problem(Kind.INTEGRITY, text) for text in checks_task(con)]
            report = day_report(con, bill_date, settings.mchids, top=settings.alerts.top_items)
        finally:
            con.close()
    outcome.run_id = result.run_id
    outcome.classes = result.classes()
    outcome.exceptions, outcome.pending, outcome.exposure_fen = report.exceptions, report.pending, report.exposure_fen
    outcome.snapshot = report.snapshot
    outcome.opened = [f"{c.to_class} {c.item_key}" for c in result.changes if c.event in ("opened", "reopened")]
    outcome.closed = [f"{c.from_class} {c.item_key}" for c in result.changes if c.event == "resolved"]
    _step("alert")
    outcome.alert = compose(report, settings.alerts, problems=outcome.problems)
    if outcome.alert is not None and settings.alerts.urls:
        alerting = alert_task.with_options(
            retries=settings.alerts.retries, retry_delay_seconds=settings.alerts.retry_seconds
        )
        sent = alerting(settings, outcome.alert, return_state=True)
        if sent.is_completed():
            outcome.alert_sent = True
        else:
            error = sent.result(raise_on_failure=False)
            text = f"{type(error).__name__}: {error}" if isinstance(error, AlertNotDelivered) else repr(error)
            outcome.problems.append(Problem(Kind.ALERT, text))
            logger.error("alert not delivered after %d tries: %s", settings.alerts.retries + 1, text)
    create_markdown_artifact(
        markdown=summary_markdown(report, outcome),
        key=f"recon-{bill_date.isoformat()}",
        description=f"WeChat Pay reconciliation of {bill_date}",
    )
    logger.info(
        "%s: %d exceptions, %d pending, %s at stake%s",
        bill_date,
        outcome.exceptions,
        outcome.pending,
        fmt_yuan(outcome.exposure_fen),
        f"; {outcome.headline()}" if outcome.problems else "",
    )
    return final_state(outcome)


def outcome_of(state: State) -> DayOutcome:
    """The :class:`DayOutcome` a finished ``reconcile_day`` run carries; the run's own error if it crashed."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


def run_day(bill_date: date | None = None, config: str | None = None, *, refetch: bool = False) -> DayOutcome:
    """Run :func:`reconcile_day` and return its outcome whatever its final state (the CLI, the demo, tests)."""
    return outcome_of(reconcile_day(bill_date, config, refetch, return_state=True))


@flow(name="backfill")
def backfill(start: date, end: date, config: str | None = None, refetch: bool = False) -> list[DayOutcome]:
    """Reconcile every day from ``start`` to ``end`` (inclusive) in date order; re-running is harmless."""
    if end < start:
        raise BillDateError(f"backfill end {end} is before start {start}")
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    check_bill_date(days[-1], beijing_date(run_clock()()))
    outcomes = []
    for k, day in enumerate(days, start=1):
        _progress("day", k, len(days))
        outcomes.append(run_day(day, config, refetch=refetch))
    return outcomes


if __name__ == "__main__":
    print(run_day(date.fromisoformat(sys.argv[1]) if len(sys.argv) > 1 else None))
