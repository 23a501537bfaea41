"""A night's per-merchant work, in units: each unit fetches and loads the bills of a batch of merchants.

A unit is one Prefect task over a batch of merchants (``bills_batch_size``), not a task per merchant: a
small bill then costs milliseconds, spent in the one place that matters (the load), with each process
keeping its merchants' clients — parsed keys and one HTTP connection pool to WeChat Pay — for as long
as it lives (:class:`ClientCache`). Units run

* in the nightly's own process, several at a time (``concurrency``), the default; or
* as flow runs of the ``load-bills`` deployment (:func:`load_bills`, ``bills_deployment`` names it) on the
  workers of a work pool, on as many machines as there are workers, all loading into one DuckLake.

Either way each merchant's outcome is appended to ``raw.bill_fetch_log`` under the night's ``run_id``, with
the kind of problem when there was one (:mod:`flows.outcome`), and the nightly reads the outcomes back
from there (:func:`outcomes_of`): the warehouse is the one account of what loaded, wherever it ran. A
unit whose merchants' bills are not ready yet loads the others, then raises :class:`NotReadyYet` so that
Prefect tries it again later (the merchants it loaded are then skipped), until each merchant's deadline
— counted on the run's clock from that merchant's first try — has passed: then it is late.
"""

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import duckdb
import httpx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.bills import BillArchive, ingest_bill, record_bill_fetch, remove_debris, settled_merchants
from flows.clock import Clock, wall_clock
from flows.context import settings_in_use
from flows.outcome import Kind, classify
from flows.settings import MerchantConfig, Settings, load_settings
from flows.warehouse import cursor, is_conflict, open_warehouse
from wxpay import Client
from wxpay.bills import BillRequest
from wxpay.errors import BillNotReadyError

TRADE_BILL = "trade_all"
CONFLICT_RETRIES = 5
MAX_RETRY_SECONDS = 1800.0


class NotReadyYet(Exception):
    """Some merchants' bills are not ready yet: the unit is tried again later (Prefect retries it)."""

    retryable = True

    def __init__(self, mchids: Sequence[str]):
        super().__init__(f"not ready yet: {', '.join(mchids)}")
        self.mchids = list(mchids)


class ClientCache:
    """This process's clients to WeChat Pay, one per merchant, sharing one connection pool: a merchant's key
    is parsed and checked once per process, and connections are reused from merchant to merchant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple, Client] = {}
        self._transport: httpx.HTTPTransport | None = None

    def client(self, merchant: MerchantConfig, base_url: str) -> Client:
        key = (merchant, base_url)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                if self._transport is None:
                    self._transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=64))
                found = self._clients[key] = merchant.client(base_url, transport=self._transport)
            return found


CLIENTS = ClientCache()
_first_tries: dict[tuple[str, date, str], datetime] = {}  # (mchid, day, run_id) -> the merchant's first try
_first_lock = threading.Lock()


def load_batch(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    mchids: Sequence[str],
    bill_date: date,
    *,
    run_id: str,
    now: Clock = wall_clock,
    refetch: bool = False,
) -> list[str]:
    """Fetch and load each merchant's trade bill of ``bill_date`` (one transaction per merchant-day), recording
    every outcome; return the merchants whose bill is not ready yet and whose deadline has not passed."""
    logger = get_run_logger()
    archive = BillArchive(settings.archive_root)
    settled = set() if refetch else settled_merchants(con, TRADE_BILL, bill_date)
    waiting = []
    for mchid in mchids:
        if mchid in settled:
            continue
        merchant = settings.merchant(mchid)
        with _first_lock:
            first_try = _first_tries.setdefault((mchid, bill_date, run_id), now())
        try:
            result = _ingest(con, settings, merchant, archive, bill_date, run_id)
        except BillNotReadyError as exc:
            waited = (now() - first_try).total_seconds()
            late = waited >= settings.bill_ready_deadline.total_seconds()
            detail = f"not ready after {waited:.0f} s" if late else f"{exc}"
            record_bill_fetch(
                con, mchid, TRADE_BILL, bill_date, "not_ready", detail=detail, run_id=run_id, problem=Kind.LATE.value
            )
            if late:
                logger.warning("bill of %s for %s %s: late", mchid, bill_date, detail)
            else:
                waiting.append(mchid)
            continue
        except Exception as exc:
            kind = classify(exc)
            detail = f"{type(exc).__name__}: {exc}"[:1000]
            record_bill_fetch(
                con, mchid, TRADE_BILL, bill_date, "failed", detail=detail, run_id=run_id, problem=kind.value
            )
            logger.error("bill of %s for %s: %s (%s)", mchid, bill_date, detail, kind.value)
            continue
        if result.load is not None:
            logger.info(
                "bill of %s for %s: %d rows loaded (%s path, %.2f s), sha1 %s",
                mchid,
                bill_date,
                result.load.row_count,
                result.load.loader,
                result.load.seconds,
                result.load.archive_sha1,
            )
    return waiting


def _ingest(con, settings: Settings, merchant: MerchantConfig, archive: BillArchive, bill_date: date, run_id: str):
    """One merchant-day, tried again when a DuckLake commit lost a race with another writer of its tables."""
    client = CLIENTS.client(merchant, settings.api_base_url)
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            return ingest_bill(
                con,
                client,
                archive,
                BillRequest.trade(bill_date),
                url_lifetime=settings.bill_url_lifetime,
                memory_limit=None,  # whoever opened the warehouse holds the load limit
                run_id=run_id,
            )
        except duckdb.Error as exc:
            if not is_conflict(exc) or attempt == CONFLICT_RETRIES:
                raise
            get_run_logger().info(
                "bill of %s: a concurrent commit won; loading again (%d)", merchant.mchid, attempt + 1
            )
    raise AssertionError("unreachable")


def _retry_not_ready(task, task_run, state) -> bool:
    try:
        state.result()
    except NotReadyYet:
        return True
    except Exception:
        return False
    return False


@task(name="load bills", retry_condition_fn=_retry_not_ready, cache_policy=NO_CACHE)
def bills_task(
    con: duckdb.DuckDBPyConnection,
    config: str | None,
    mchids: list[str],
    bill_date: date,
    run_id: str,
    refetch: bool = False,
    now: Clock = wall_clock,
) -> int:
    """A unit: the bills of ``mchids``; raises :class:`NotReadyYet` for Prefect to try the waiting ones later."""
    settings = current_settings(config)
    with cursor(con) as own:
        waiting = load_batch(own, settings, mchids, bill_date, run_id=run_id, now=now, refetch=refetch)
    if waiting:
        raise NotReadyYet(waiting)
    return len(mchids)


_settings_cache: dict[tuple[str | None, str | None], Settings] = {}


def current_settings(config: str | None) -> Settings:
    """The settings of this process: those the nightly runs with (in-process units), else read once."""
    given = settings_in_use()
    if given is not None and config is None:
        return given
    key = (config, os.environ.get("WXRECON_CONFIG"))
    if key not in _settings_cache:
        _settings_cache[key] = load_settings(config)
    return _settings_cache[key]


def not_ready_delays(first: float, deadline: float, cap: float = MAX_RETRY_SECONDS) -> list[float]:
    """The waits between "not ready yet" answers: ``first``, doubling, at most ``cap``, until they cover
    ``deadline`` seconds (one more try at the end)."""
    delays: list[float] = []
    wait = first
    while sum(delays) < deadline:
        delays.append(min(wait, cap))
        wait *= 2
    return delays or [first]


def retry_delays(settings: Settings) -> list[float]:
    """Prefect's waits between tries of a unit whose bills are not ready (doubling, at most 30 min)."""
    return not_ready_delays(settings.bill_retry_seconds, settings.bill_ready_deadline.total_seconds())


@flow(name="load-bills", log_prints=True)
def load_bills(
    bill_date: date, mchids: list[str], run_id: str, refetch: bool = False, config: str | None = None
) -> int:
    """A unit on a worker: the bills of ``mchids`` for ``bill_date`` into the warehouse (a DuckLake, shared
    with the other workers), each merchant's outcome recorded under ``run_id`` for the nightly to read."""
    settings = current_settings(config)
    debris = remove_debris(archive_root=settings.archive_root)  # what a crashed unit on this worker left
    if debris:
        get_run_logger().warning("%s: %s", debris, ", ".join(str(path) for path in debris.files[:20]))
    con = open_warehouse(settings.warehouse_target, memory_limit=settings.memory_limit)
    try:
        unit = bills_task.with_options(retries=len(retry_delays(settings)), retry_delay_seconds=retry_delays(settings))
        return unit(con, config, mchids, bill_date, run_id, refetch)
    finally:
        con.close()


@dataclass(frozen=True)
class MerchantOutcome:
    """What the night's units recorded for one merchant (the latest attempt of the run)."""

    mchid: str
    outcome: str  # loaded | no_statement | not_ready | failed | missing (nothing recorded by this run)
    problem: Kind | None
    detail: str | None


def outcomes_of(
    con: duckdb.DuckDBPyConnection, bill_date: date, run_id: str, mchids: Sequence[str]
) -> list[MerchantOutcome]:
    """Each merchant's outcome in this run, read back from ``raw.bill_fetch_log``."""
    rows = con.execute(
        "select mchid, outcome, problem, detail from raw.bill_fetch_log"
        " where bill_type = ? and bill_date = ? and run_id = ?"
        " qualify row_number() over (partition by mchid order by fetched_at desc) = 1",
        [TRADE_BILL, bill_date, run_id],
    ).fetchall()
    found = {mchid: (outcome, problem, detail) for mchid, outcome, problem, detail in rows}
    result = []
    for mchid in mchids:
        outcome, problem, detail = found.get(mchid, ("missing", Kind.FAILED.value, None))
        result.append(MerchantOutcome(mchid, outcome, Kind(problem) if problem else None, detail))
    return result


def batches(mchids: Sequence[str], size: int) -> list[list[str]]:
    return [list(mchids[i : i + size]) for i in range(0, len(mchids), size)]


def run_on_workers(
    settings: Settings, units: list[list[str]], bill_date: date, run_id: str, refetch: bool, poll: float = 2.0
) -> Iterator[list[str]]:
    """Each unit a flow run of ``bills_deployment`` on the work pool's workers, all at once; yield each unit
    as its flow run ends. A unit still Running after ``bill_ready_deadline`` (its bills' wait) plus
    ``bills_unit_timeout`` (its work) has lost its worker or hangs: its flow run is marked Crashed and
    given up, its merchants — nothing recorded for them — are reported as failed, and a re-run loads them.
    (Prefect's own zombie detection, flow-run heartbeats and an automation, can mark it Crashed sooner.)"""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    logger = get_run_logger()
    limit = settings.bill_ready_deadline.total_seconds() + settings.bills_unit_timeout
    started = {}
    for batch in units:
        parameters = {"bill_date": bill_date.isoformat(), "mchids": batch, "run_id": run_id, "refetch": refetch}
        started[run_deployment(settings.bills_deployment, parameters=parameters, timeout=0).id] = batch
    running_since: dict = {}  # flow run id -> (its Running state's id, when this process first saw it)
    pending = dict(started)
    with get_client(sync_client=True) as client:
        while pending:
            for flow_run_id, batch in list(pending.items()):
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_final():
                    if not state.is_completed():
                        logger.error("unit of %d merchants ended %s: %s", len(batch), state.name, state.message)
                    del pending[flow_run_id]
                    yield batch
                    continue
                if state is None or not state.is_running():
                    running_since.pop(flow_run_id, None)
                    continue
                seen = running_since.get(flow_run_id)
                if seen is None or seen[0] != state.id:
                    running_since[flow_run_id] = seen = (state.id, time.monotonic())
                if time.monotonic() - seen[1] > limit:
                    message = (
                        f"still running after {limit:.0f} s (bill_ready_deadline + bills_unit_timeout):"
                        " its worker died or hangs; the nightly gave up on it"
                    )
                    client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
                    logger.error("unit of %d merchants (flow run %s): %s", len(batch), flow_run_id, message)
                    del pending[flow_run_id]
                    yield batch
            if pending:
                time.sleep(poll)
