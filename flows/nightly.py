"""The nightly pipeline as Prefect flows: ``reconcile_day`` and ``backfill``.

``reconcile_day(bill_date)`` (default: yesterday, Beijing time) runs, in order:

1. per merchant, in parallel (``settings.concurrency``): apply for the trade bill and load it while
   it downloads into the archive (:func:`flows.bills.ingest_bill`: one transaction per (merchant,
   day), committed once the SHA-1 matched); "not ready yet" is retried with backoff until the
   deadline, then the bill is reported late; other errors are retried only when WeChat Pay says a
   retry can help;
2. read the merchant's own records for the window around the day (if configured);
3. re-verify new notification-log lines;
4. reconcile the day (``flows.recon``), run the SQL data checks;
5. alert finance when the thresholds are passed, a bill is late or integrity fails;
6. leave a markdown artifact with the day's summary table.

A second run while one is in progress waits for it (``flows.warehouse.run_lock``) and then
replaces what it wrote, so nothing doubles. Every step is a plain function elsewhere; the
tasks here only wire them. ``python -m flows.nightly [YYYY-MM-DD]`` runs one day.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta

import duckdb
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.alerts import Alert, DayReport, compose, day_report, send
from flows.bills import BillArchive, IngestResult, ingest_bill, record_bill_fetch
from flows.clock import Clock, beijing_date, wall_clock, yesterday
from flows.money import fmt_yuan
from flows.notifications import MerchantKeys, NotificationLog, verify_log
from flows.recon import ReconParams, ReconResult, reconcile
from flows.settings import Settings, load_settings
from flows.sources import bill_day_window, import_local, read_local_orders, read_local_refunds
from flows.warehouse import LOAD_MEMORY_LIMIT, lowered_memory_limit, open_warehouse, run_checks, run_lock
from wxpay.bills import BillRequest
from wxpay.errors import BillError, BillNotReadyError, WxPayError
from wxpay.verifying import public_key_pem

_settings: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("wxrecon_settings", default=None)
_clock: contextvars.ContextVar[Clock] = contextvars.ContextVar("wxrecon_clock", default=wall_clock)

progress_hook: Callable[[str, int], None] | None = None
"""Set by the command line to draw progress: called with (mchid, bytes received) during downloads and
with ("step: <name>", number of the step) as the run moves from step to step."""

STEPS = ("fetch and load bills", "read local records", "verify notifications", "reconcile", "data checks", "alert")


def _step(name: str) -> None:
    hook = progress_hook
    if hook is not None:
        hook(f"step: {name}", STEPS.index(name) + 1)


@contextmanager
def using(settings: Settings, *, clock: Clock | None = None) -> Iterator[Settings]:
    """Run flows with these settings instead of reading them, and on ``clock`` instead of the wall clock
    (the demo's simulated world, tests)."""
    token = _settings.set(settings)
    clock_token = _clock.set(clock) if clock is not None else None
    try:
        yield settings
    finally:
        if clock_token is not None:
            _clock.reset(clock_token)
        _settings.reset(token)


def _settings_for(config: str | None) -> Settings:
    given = _settings.get()
    return given if given is not None and config is None else load_settings(config)


@dataclass(frozen=True)
class Late:
    mchid: str
    bill_date: date
    waited_seconds: float


@dataclass(frozen=True)
class FetchFailure:
    mchid: str
    bill_date: date
    error: str
    integrity: bool


@dataclass
class DayOutcome:
    """What a night's run found: the CLI turns it into an exit code."""

    bill_date: date
    run_id: str | None = None
    loaded: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)
    exceptions: int = 0
    pending: int = 0
    exposure_fen: int = 0
    opened: list[str] = field(default_factory=list)  # exceptions this run opened (or reopened), "class key"
    closed: list[str] = field(default_factory=list)  # exceptions this run resolved, "class key"
    alert: Alert | None = None
    alert_sent: bool = False

    @property
    def ok(self) -> bool:
        return not (self.late or self.integrity or self.exceptions)


def _retryable(task, task_run, state) -> bool:
    """Retry a task only when WeChat Pay (or the network) says another try can help."""
    try:
        state.result()
    except WxPayError as exc:
        return exc.retryable
    except Exception:  # anything else is a bug or bad data: retrying will not help
        return False
    return False


@task(
    name="fetch and load bill",
    retries=3,
    retry_delay_seconds=[10, 60, 300],
    retry_condition_fn=_retryable,
    cache_policy=NO_CACHE,
)
def bill_task(
    con: duckdb.DuckDBPyConnection, settings: Settings, mchid: str, bill_date: date, gate: threading.Semaphore
) -> IngestResult | Late:
    """Apply for one merchant's trade bill and load it while it downloads into the archive (one transaction
    for the day, committed once the SHA-1 matched); wait out "not ready yet". A bill that fails to load is
    recorded as ``failed`` in ``raw.bill_fetches`` and raised."""
    logger = get_run_logger()
    merchant = settings.merchant(mchid)
    archive = BillArchive(settings.archive_root)
    started = time.monotonic()
    wait = settings.bill_retry_seconds
    hook = progress_hook
    on_progress = (lambda received: hook(mchid, received)) if hook else None
    with gate, merchant.client(settings.api_base_url) as client, con.cursor() as cursor:
        while True:
            try:
                result = ingest_bill(
                    cursor,
                    client,
                    archive,
                    BillRequest.trade(bill_date),
                    url_lifetime=settings.bill_url_lifetime,
                    on_progress=on_progress,
                    memory_limit=None,  # the flow holds the load limit for the whole step
                )
            except BillNotReadyError:
                waited = time.monotonic() - started
                remaining = settings.bill_ready_deadline.total_seconds() - waited
                if remaining <= 0:
                    logger.warning("bill of %s for %s not ready after %.0f s: late", mchid, bill_date, waited)
                    return Late(mchid, bill_date, waited)
                logger.info("bill of %s for %s not ready yet; trying again in %.0f s", mchid, bill_date, wait)
                time.sleep(min(wait, remaining))
                wait = min(wait * 2, 1800.0)
                continue
            except BillError as exc:
                record_bill_fetch(cursor, mchid, "trade_all", bill_date, "failed", detail=str(exc)[:500])
                raise
            logger.info("bill of %s for %s: %s", mchid, bill_date, result.outcome)
            return result


@task(name="read local records", retries=2, retry_delay_seconds=30, cache_policy=NO_CACHE)
def local_task(con: duckdb.DuckDBPyConnection, settings: Settings, bill_date: date) -> tuple[int, int]:
    days = settings.local_window_days
    start, end = bill_day_window(bill_date - timedelta(days=days), 2 * days + 1)
    orders = read_local_orders(settings.local_orders, start, end) if settings.local_orders else None
    refunds = read_local_refunds(settings.local_refunds, start, end) if settings.local_refunds else None
    return import_local(
        con,
        orders,
        refunds,
        start=start,
        end=end,
        source_label=settings.local_orders.label if settings.local_orders else "none",
    )


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
    keys = notification_keys(settings)
    if not keys:
        return 0
    log = NotificationLog(settings.notification_root)
    start = bill_date - timedelta(days=settings.pending_days + 1)
    end = max(bill_date + timedelta(days=1), today)
    return verify_log(con, log, keys, start=start, end=end, workers=2).newly_verified


@task(name="reconcile", cache_policy=NO_CACHE)
def recon_task(con: duckdb.DuckDBPyConnection, settings: Settings, bill_date: date) -> ReconResult:
    params = ReconParams(
        as_of=bill_date,
        merchants=settings.mchids,
        pending_days=settings.pending_days,
        tolerance_fen=settings.tolerance_fen,
        fee_tolerance_fen=settings.fee_tolerance_fen,
        local_refunds=settings.local_refunds is not None,
    )
    return reconcile(con, params)


@task(name="data checks", cache_policy=NO_CACHE)
def checks_task(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [f"data check {name} found {len(rows)} bad row(s)" for name, rows in run_checks(con).items() if rows]


@task(name="alert", retries=2, retry_delay_seconds=30, cache_policy=NO_CACHE)
def alert_task(settings: Settings, alert: Alert) -> bool:
    return send(alert, settings.alerts)


def summary_markdown(report: DayReport, outcome: DayOutcome) -> str:
    lines = [
        f"# WeChat Pay reconciliation {report.as_of}",
        "",
        f"Merchants {', '.join(report.merchants)}: {report.matched} matched, {report.pending} pending, "
        f"{report.exceptions} exceptions ({fmt_yuan(report.exposure_fen)} at stake).",
        "",
        "| merchant | class | items | at stake |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {c.mchid} | {c.cls} | {c.items} | {fmt_yuan(c.exposure_fen)} |" for c in report.classes]
    if outcome.opened or outcome.closed:
        lines += ["", f"Since the previous run: {len(outcome.opened)} opened, {len(outcome.closed)} closed."]
        lines += [f"- opened {item}" for item in outcome.opened[:20]]
        lines += [f"- closed {item}" for item in outcome.closed[:20]]
    for label, problems in (("Late bills", outcome.late), ("Integrity", outcome.integrity)):
        if problems:
            lines += ["", f"**{label}**", *(f"- {p}" for p in problems)]
    return "\n".join(lines)


@flow(name="reconcile-day", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def reconcile_day(bill_date: date | None = None, config: str | None = None) -> DayOutcome:
    """Reconcile one Beijing day (default: yesterday) for every configured merchant."""
    settings = _settings_for(config)
    started = _clock.get()()  # the run's moment: every business decision below reads it, not the wall clock
    bill_date = bill_date or yesterday(lambda: started)
    outcome = DayOutcome(bill_date)
    logger = get_run_logger()
    with run_lock(settings.warehouse_path):
        con = open_warehouse(settings.warehouse_path, memory_limit=settings.memory_limit)
        try:
            _step("fetch and load bills")
            gate = threading.BoundedSemaphore(settings.concurrency)
            with lowered_memory_limit(con, LOAD_MEMORY_LIMIT):
                futures = bill_task.map(
                    unmapped(con), unmapped(settings), settings.mchids, unmapped(bill_date), unmapped(gate)
                )
                for mchid, future in zip(settings.mchids, futures, strict=True):
                    state = future.wait() or future.state
                    if state.is_completed():
                        result = future.result()
                        if isinstance(result, Late):
                            outcome.late.append(
                                f"bill of {mchid} for {bill_date} not ready after {result.waited_seconds:.0f} s"
                            )
                        else:
                            (outcome.loaded if result.outcome == "loaded" else outcome.empty).append(mchid)
                    else:
                        error = future.result(raise_on_failure=False)
                        integrity = isinstance(error, BillError)
                        verb = "loaded" if integrity else "fetched"
                        text = f"bill of {mchid} for {bill_date} could not be {verb}: {type(error).__name__}: {error}"
                        (outcome.integrity if integrity else outcome.late).append(text)
                        logger.error(text)
            _step("read local records")
            if settings.local_orders:
                local_task(con, settings, bill_date)
            _step("verify notifications")
            notifications_task(con, settings, bill_date, beijing_date(started))
            _step("reconcile")
            result = recon_task(con, settings, bill_date)
            _step("data checks")
            outcome.integrity += checks_task(con)
            report = day_report(con, bill_date, settings.mchids, top=settings.alerts.top_items)
        finally:
            con.close()
    outcome.run_id = result.run_id
    outcome.classes = result.classes()
    outcome.exceptions, outcome.pending, outcome.exposure_fen = report.exceptions, report.pending, report.exposure_fen
    outcome.opened = [f"{c.to_class} {c.item_key}" for c in result.changes if c.event in ("opened", "reopened")]
    outcome.closed = [f"{c.from_class} {c.item_key}" for c in result.changes if c.event == "resolved"]
    _step("alert")
    outcome.alert = compose(report, settings.alerts, integrity=outcome.integrity, late=outcome.late)
    if outcome.alert is not None:
        outcome.alert_sent = alert_task(settings, outcome.alert)
    create_markdown_artifact(
        markdown=summary_markdown(report, outcome),
        key=f"recon-{bill_date.isoformat()}",
        description=f"WeChat Pay reconciliation of {bill_date}",
    )
    logger.info(
        "%s: %d exceptions, %d pending, %s at stake",
        bill_date,
        outcome.exceptions,
        outcome.pending,
        fmt_yuan(outcome.exposure_fen),
    )
    return outcome


@flow(name="backfill")
def backfill(start: date, end: date, config: str | None = None) -> list[DayOutcome]:
    """Reconcile every day from ``start`` to ``end`` (inclusive) in date order; re-running is harmless."""
    if end < start:
        raise ValueError(f"backfill end {end} is before start {start}")
    outcomes = []
    day = start
    while day <= end:
        outcomes.append(reconcile_day(day, config))
        day += timedelta(days=1)
    return outcomes


if __name__ == "__main__":
    reconcile_day(date.fromisoformat(sys.argv[1]) if len(sys.argv) > 1 else None)
