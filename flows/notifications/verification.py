"""Re-verification of the log into the warehouse: :func:`verify_log`, its parent side (which lines need
work, in batches for the workers, their results to the writer) and the parent's reading of the log (the
day files in range, cut into lines hashed with SHA-256)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import mmap
import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa

from flows.notifications.checker import Batch, Checker, check_in_worker, init_worker
from flows.notifications.keys import MerchantKeys
from flows.notifications.log import REJECTED, UNROUTED, NotificationLog
from flows.notifications.rows import BatchResult, unreadable_result, write_results

LOOKUP_LINES = 65536
"""Lines hashed by the parent and looked up in the warehouse with one query."""

_MCHID_DIR = re.compile(r"^[0-9]{1,32}$")


def day_files(log: NotificationLog, start: date, end: date) -> list[tuple[str, Path]]:
    """(log_file relative to the root, path) of every day file in range, every directory of the log."""
    if not log.root.is_dir():
        return []
    names = sorted(
        p.name
        for p in log.root.iterdir()
        if p.is_dir() and (p.name in (UNROUTED, REJECTED) or _MCHID_DIR.match(p.name))
    )
    found = []
    for name in names:
        for day in log.days(name):
            path = log.path(name, day)
            if start <= day <= end and path.is_file():
                found.append((f"{name}/{path.name}", path))
    return found


def scan_lines(path: Path) -> Iterator[tuple[int, list[tuple[int, int]], list[bytes], int | None]]:
    """The file's complete lines in groups: (first line number, (offset, length) of each line without its
    ``\n``, their SHA-256 digests, and after the last group the size of a torn final line or None).

    The file is mapped read-only; its size when opened bounds the scan (lines appended meanwhile wait
    for the next run)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as data:
            sha256, find = hashlib.sha256, data.find
            line_no, position = 1, 0
            while True:
                spans: list[tuple[int, int]] = []
                digests: list[bytes] = []
                while len(spans) < LOOKUP_LINES:
                    end = find(b"\n", position)
                    if end < 0:
                        break
                    spans.append((position, end - position))
                    digests.append(sha256(data[position:end]).digest())
                    position = end + 1
                done = len(spans) < LOOKUP_LINES
                torn = size - position if done and position < size else None
                if spans or torn is not None:
                    yield line_no, spans, digests, torn
                line_no += len(spans)
                if done:
                    return


BATCH_LINES = 2048
"""Lines per worker task."""
FLUSH_LINES = 65536
"""Lines of results written per transaction."""

_INCOMPLETE = "incomplete final line (no newline): cut short"  # the reader's words (flows.notifications.log.LogScan)
_NEW_WORK = """
with c as (select i, line_no, lower(hex(sha)) as sha_hex from _notification_chunk)
select c.i, l.line_no is null as need_row, k.line_sha256 is null as need_check
from c
left join (
    select distinct line_no, line_sha256 from raw.notification_lines
    where log_file = $log_file and line_no between $first and $last and line_sha256 is not null
) l on l.line_no = c.line_no and l.line_sha256 = c.sha_hex
left join (
    select line_sha256 from raw.notification_checks where verified or not $recheck_failed
) k on k.line_sha256 = c.sha_hex
where l.line_no is null or k.line_sha256 is null
order by c.i
"""


class VerificationRun:
    """The parent's state for one verify_log call."""

    def __init__(self, con, merchants: dict[str, MerchantKeys], recheck_failed: bool, now: datetime):
        self.merchants = merchants
        self.recheck_failed = recheck_failed
        self.now = now
        self.submitted: set[bytes] = set()  # contents sent for verification in this run
        self.results: list[BatchResult] = []
        self.pending_lines = 0
        self.clear_unreadable: set[str] = set()  # files whose old unreadable rows the next flush replaces
        self.recheck: list[bytes] = []  # failed contents verified again: their old rows go first
        # writes run in a thread on their own cursor (DuckDB works without the GIL), so reading, hashing
        # and feeding the workers go on while a flush is written
        from flows.warehouse import cursor  # the warehouse pulls in DuckDB; workers never need it

        self.wcon = cursor(con)
        self.rcon = cursor(con)  # lookups, on a cursor of our own: whatever the caller left open on con
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="notification-writer")
        self.writing: concurrent.futures.Future | None = None
        self.lines_seen = self.newly_verified = self.failed = 0
        self.unreadable = self.new_line_rows = 0

    # --- reading --------------------------------------------------------------------------------
    def batches(self, files: list[tuple[str, Path]]) -> Iterator[Batch]:
        for log_file, path in files:
            self.clear_unreadable.add(log_file)
            for first_line, spans, digests, torn in scan_lines(path):
                yield from self._group_batches(log_file, str(path), first_line, spans, digests)
                if torn is not None:  # the reader's "incomplete final line": recorded, never hashed
                    self.lines_seen += 1
                    self.collect(unreadable_result(log_file, first_line + len(spans), torn, _INCOMPLETE))

    def _group_batches(
        self, log_file: str, path: str, first_line: int, spans: list[tuple[int, int]], digests: list[bytes]
    ) -> Iterator[Batch]:
        """Look a group of lines up (one query) and batch the ones that need work."""
        if not spans:
            return
        self.lines_seen += len(spans)
        group = pa.table(
            {
                "i": pa.array(range(len(spans)), pa.int64()),
                "line_no": pa.array(range(first_line, first_line + len(spans)), pa.int64()),
                "sha": pa.array(digests, pa.binary()),
            }
        )
        self.rcon.register("_notification_chunk", group)
        try:
            work = self.rcon.execute(
                _NEW_WORK,
                {
                    "log_file": log_file,
                    "first": first_line,
                    "last": first_line + len(spans) - 1,
                    "recheck_failed": self.recheck_failed,
                },
            ).fetchall()
        finally:
            self.rcon.unregister("_notification_chunk")
        items: list[tuple[int, int, int, bytes, bool, bool]] = []
        submitted = self.submitted
        for i, need_row, need_check in work:
            digest = digests[i]
            verify = need_check and digest not in submitted
            if verify:
                submitted.add(digest)
                if self.recheck_failed:
                    self.recheck.append(digest)
            offset, length = spans[i]
            items.append((first_line + i, offset, length, digest, need_row, verify))
            if len(items) == BATCH_LINES:
                yield Batch(log_file, path, items)
                items = []
        if items:
            yield Batch(log_file, path, items)

    # --- writing --------------------------------------------------------------------------------
    def collect(self, result: BatchResult) -> None:
        self.results.append(result)
        self.pending_lines += result.lines.num_rows + result.checks.num_rows
        self.newly_verified += result.checked
        self.failed += result.failed
        self.unreadable += result.unreadable
        if self.pending_lines >= FLUSH_LINES:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        """Hand the collected rows to the writer thread (one write at a time, in order); ``final`` waits."""
        results, self.results, self.pending_lines = self.results, [], 0
        clear, self.clear_unreadable = self.clear_unreadable, set()
        recheck, self.recheck = self.recheck, []
        if results or clear or recheck:
            self.wait()
            self.writing = self.writer.submit(self._write, results, clear, recheck)
        if final:
            self.wait()

    def wait(self) -> None:
        """Wait for the write in progress; re-raises its error."""
        if self.writing is not None:
            writing, self.writing = self.writing, None
            self.new_line_rows += writing.result()

    def close(self) -> None:
        self.writer.shutdown(wait=True)
        self.wcon.close()
        self.rcon.close()

    def _write(self, results: list[BatchResult], clear: set[str], recheck: list[bytes]) -> int:
        """One transaction: replace the unreadable rows of ``clear``, drop the old checks of ``recheck``,
        insert the rows of ``results``. Runs in the writer thread on its own cursor; returns new line rows."""
        return write_results(self.wcon, self.now, results, clear, recheck)


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
    of other merchants (and records of requests to unknown paths) are findings
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
    run = VerificationRun(con, dict(merchants), recheck_failed, datetime.now(UTC))
    files = day_files(log, start, end)
    try:
        if workers == 1:
            checker = Checker(run.merchants)
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
                workers, mp_context=context, initializer=init_worker, initargs=(run.merchants,)
            ) as pool:
                pending: deque[concurrent.futures.Future] = deque()
                for batch in run.batches(files):
                    pending.append(pool.submit(check_in_worker, batch))
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
