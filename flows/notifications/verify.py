"""The entry point: :func:`verify_log` runs one re-verification, in-process or with a pool of worker processes."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from flows.notifications.checker import _check_in_worker, _Checker, _init_worker
from flows.notifications.keys import MerchantKeys
from flows.notifications.run import _Run
from flows.notifications.scan import _files
from flows.notifylog import NotificationLog

__all__ = ["VerifyStats", "verify_log"]

IN_FLIGHT = 4
"""Tasks queued per worker, so that the workers stay busy while the parent writes a flush."""


@dataclass(frozen=True)
class VerifyStats:
    """What one :func:`verify_log` run did."""

    files: int
    lines_seen: int
    """Every line of the files read, readable or not."""
    already_known: int
    """Readable lines whose content was verified before (an earlier run, or earlier in this run)."""
    newly_verified: int
    """Distinct line contents verified in this run (passed or failed)."""
    failed: int
    """Of ``newly_verified``, those that failed (``verified = false``)."""
    unreadable: int
    """Lines the log reader cannot read (recorded as ``unreadable`` rows)."""
    new_line_rows: int
    """Rows added to ``raw.notification_lines`` (readable lines not recorded before)."""
    seconds: float
    workers: int

    @property
    def lines_per_second(self) -> float:
        return self.lines_seen / self.seconds if self.seconds else 0.0

    @property
    def verified_per_second(self) -> float:
        return self.newly_verified / self.seconds if self.seconds else 0.0


def verify_log(
    con,
    log: NotificationLog,
    merchants: Mapping[str, MerchantKeys],
    *,
    start: date,
    end: date,
    workers: int = 2,
    recheck_failed: bool = False,
) -> VerifyStats:
    """Re-verify the log lines of the Beijing days ``start``..``end`` (inclusive) into the warehouse.

    ``con`` is a warehouse connection (:func:`flows.warehouse.connect`); pending migrations are
    applied first. ``merchants`` maps each receiving mchid to its :class:`MerchantKeys`; lines
    of other merchants (and ``_unrouted`` lines of unknown ones) are findings
    (``UnknownMerchantError``). See the package docstring for what is recorded.
    """
    from flows.warehouse import migrate  # the warehouse pulls in DuckDB; workers never need it

    started = time.perf_counter()
    if workers < 1:
        raise ValueError("workers must be at least 1")
    for mchid, keys in merchants.items():
        if not isinstance(keys, MerchantKeys):
            raise TypeError(f"merchants[{mchid!r}] must be MerchantKeys, got {type(keys).__name__}")
    migrate(con)
    run = _Run(con, dict(merchants), recheck_failed, datetime.now(UTC))
    files = _files(log, start, end)
    try:
        if workers == 1:
            checker = _Checker(run.merchants)
            for batch in run.batches(files):
                run.collect(checker.check(batch))
        else:
            # forkserver: workers fork from a clean single-threaded server (never from this process, whose
            # DuckDB threads make fork unsafe), with this package preloaded there once per process
            context = multiprocessing.get_context("forkserver")
            # pyarrow imports pandas, when installed, on its first conversion: load it once in the server
            # rather than ~0.3 s in every worker
            extra = ["pandas"] if importlib.util.find_spec("pandas") else []
            context.set_forkserver_preload(["flows.notifications", *extra])
            with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=(run.merchants,)
            ) as pool:
                pending: deque[concurrent.futures.Future] = deque()
                for batch in run.batches(files):
                    pending.append(pool.submit(_check_in_worker, batch))
                    while len(pending) > IN_FLIGHT * workers:
                        run.collect(pending.popleft().result())
                while pending:
                    run.collect(pending.popleft().result())
        run.flush(final=True)
    finally:
        run.close()
    return VerifyStats(
        files=len(files),
        lines_seen=run.lines_seen,
        already_known=run.lines_seen - run.unreadable - run.newly_verified,
        newly_verified=run.newly_verified,
        failed=run.failed,
        unreadable=run.unreadable,
        new_line_rows=run.new_line_rows,
        seconds=round(time.perf_counter() - started, 3),
        workers=workers,
    )
