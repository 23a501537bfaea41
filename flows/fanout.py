"""A night's per-merchant work, in units: each unit fetches and loads the bills of a batch of merchants.

A unit is one Prefect task over a batch of merchants (``bills_batch_size``), not a task per merchant, and a
small bill costs milliseconds: each process keeps its merchants' clients — parsed keys and one HTTP
connection pool to WeChat Pay — for as long as it lives (:class:`ClientCache`), and a unit fetches its
merchants' bills into the archive and loads the small ones together, up to ``bills_per_transaction`` in one
transaction (:func:`flows.bills.load_fetched`: each merchant-day in it whole or absent). Units run

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from typing import Any

import duckdb
import httpx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.bills import (
    BatchRefused,
    BillArchive,
    Fetched,
    IngestResult,
    batchable,
    fetch_to_archive,
    ingest_bill,
    load_archived,
    load_fetched,
    record_bill_fetch,
    reload_doubled,
    remove_debris,
    settled_merchants,
)
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
    """Fetch and load each merchant's trade bill of ``bill_date``, recording every outcome; return the merchants
    whose bill is not ready yet and whose deadline has not passed.

    One merchant: its bill loads while it downloads (:func:`flows.bills.ingest_bill`). Several: each bill is
    fetched into the archive first; the small ones then load together, ``bills_per_transaction`` at a time, in
    one transaction (:func:`flows.bills.load_fetched`), a large one alone once it is in the archive; if a batch
    is refused (a bill that is not clean), its bills load one by one, where each error names file, line and
    field."""
    unit = _Unit(con, settings, bill_date, run_id, now)
    settled = set() if refetch else settled_merchants(con, TRADE_BILL, bill_date)
    todo = [mchid for mchid in mchids if mchid not in settled]
    small: list[Fetched] = []
    for mchid in todo:
        merchant = settings.merchant(mchid)
        if len(todo) == 1:
            unit.logged(unit.attempt(mchid, partial(_ingest, con, settings, merchant, unit.archive, bill_date, run_id)))
            continue
        fetched = unit.attempt(mchid, partial(_fetch, settings, merchant, unit.archive, bill_date))
        if fetched is not None and batchable(fetched):
            small.append(fetched)
        elif fetched is not None:
            unit.logged(unit.attempt(mchid, partial(unit.load_alone, fetched)))
        if len(small) >= settings.bills_per_transaction:  # committed as it goes: a unit that dies loses little
            unit.load_together(small)
            small = []
    if small:
        unit.load_together(small)
    return unit.waiting


class _Unit:
    """The merchants of one unit: each one's work attempted, what went wrong recorded."""

    def __init__(self, con, settings: Settings, bill_date: date, run_id: str, now: Clock):
        self.con, self.settings, self.bill_date, self.run_id, self.now = con, settings, bill_date, run_id, now
        self.archive = BillArchive(settings.archive_root)
        self.waiting: list[str] = []
        self.logger = get_run_logger()

    def attempt(self, mchid: str, work: Callable[[], Any]) -> Any:
        """``work()`` for one merchant: its result, or ``None`` with what went wrong recorded (and the merchant
        added to :attr:`waiting` when its bill is not ready yet and its deadline has not passed)."""
        con, bill_date, run_id = self.con, self.bill_date, self.run_id
        with _first_lock:
            first_try = _first_tries.setdefault((mchid, bill_date, run_id), self.now())
        try:
            return work()
        except BillNotReadyError as exc:
            waited = (self.now() - first_try).total_seconds()
            late = waited >= self.settings.bill_ready_deadline.total_seconds()
            detail = f"not ready after {waited:.0f} s" if late else f"{exc}"
            late_kind = Kind.LATE.value
            record_bill_fetch(con, mchid, TRADE_BILL, bill_date, "not_ready", detail=detail, run_id=run_id,
                              problem=late_kind)  # fmt: skip
            if late:
                self.logger.warning("bill of %s for %s %s: late", mchid, bill_date, detail)
            else:
                self.waiting.append(mchid)
        except Exception as exc:
            self.failed(mchid, exc)
        return None

    def failed(self, mchid: str, exc: Exception) -> None:
        """Record and log that ``exc`` stopped ``mchid``'s bill, with the kind of problem it is."""
        kind = classify(exc)
        detail = f"{type(exc).__name__}: {exc}"[:1000]
        record_bill_fetch(self.con, mchid, TRADE_BILL, self.bill_date, "failed", detail=detail, run_id=self.run_id,
                          problem=kind.value)  # fmt: skip
        self.logger.error("bill of %s for %s: %s (%s)", mchid, self.bill_date, detail, kind.value)

    def logged(self, result: IngestResult | None) -> None:
        if result is not None and result.load is not None:
            load = result.load
            self.logger.info(
                "bill of %s for %s: %d rows loaded (%s path, %.2f s), sha1 %s",
                *(result.mchid, result.bill_date, load.row_count, load.loader, load.seconds, load.archive_sha1),
            )

    def load_alone(self, fetched: Fetched) -> IngestResult:
        load = partial(load_archived, self.con, self.archive, fetched, memory_limit=None, run_id=self.run_id)
        return _undoubled(self.con, self.archive, _conflicts_retried(fetched.mchid, load))

    def load_together(self, small: list[Fetched]) -> None:
        """The small bills in one transaction; one by one if the batch is refused."""
        started = time.perf_counter()
        try:
            batch = partial(load_fetched, self.con, self.archive, small, run_id=self.run_id)
            results = _conflicts_retried(f"{len(small)} merchants", batch)
        except BatchRefused as exc:
            self.logger.info("%d bills could not load together (%s): loading them one by one", len(small), exc)
            for fetched in small:
                self.logged(self.attempt(fetched.mchid, partial(self.load_alone, fetched)))
            return
        except Exception as exc:  # the warehouse or its disk: each merchant's outcome says so
            for fetched in small:
                self.failed(fetched.mchid, exc)
            return
        loaded = [r.load for r in results if r.load is not None]
        self.logger.info(
            "bills of %d merchants for %s: %d rows loaded in one transaction (%d days without trades), %.2f s",
            *(len(results), self.bill_date, sum(load.row_count for load in loaded), len(results) - len(loaded)),
            time.perf_counter() - started,
        )


def _fetch(settings: Settings, merchant: MerchantConfig, archive: BillArchive, bill_date: date) -> Fetched:
    client = CLIENTS.client(merchant, settings.api_base_url)
    return fetch_to_archive(client, archive, BillRequest.trade(bill_date), url_lifetime=settings.bill_url_lifetime)


def _ingest(con, settings: Settings, merchant: MerchantConfig, archive: BillArchive, bill_date: date, run_id: str):
    """One merchant-day, loaded while it downloads (the limit of the load's memory is the warehouse opener's)."""
    client = CLIENTS.client(merchant, settings.api_base_url)
    request = BillRequest.trade(bill_date)
    limits = {"url_lifetime": settings.bill_url_lifetime, "memory_limit": None, "run_id": run_id}
    return _undoubled(
        con, archive, _conflicts_retried(merchant.mchid, partial(ingest_bill, con, client, archive, request, **limits))
    )


def _undoubled(con, archive: BillArchive, result: IngestResult) -> IngestResult:
    """``result``, after its day was loaded again if a concurrent load doubled it (a DuckLake only)."""
    if result.archived is not None:
        reload_doubled(con, archive, [result.archived])
    return result


def _conflicts_retried(what: str, load: Callable[[], Any]) -> Any:
    """``load()``, tried again when a DuckLake commit lost a race with another writer of its tables."""
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            return load()
        except duckdb.Error as exc:
            if not is_conflict(exc) or attempt == CONFLICT_RETRIES:
                raise
            get_run_logger().info("bills of %s: a concurrent commit won; loading again (%d)", what, attempt + 1)
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
