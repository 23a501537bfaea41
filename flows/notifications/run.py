"""The parent's side of one run: which lines need work, in batches for the workers, their results to the writer."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from flows.notifications.batch import _Batch
from flows.notifications.keys import MerchantKeys
from flows.notifications.result import _Result, _unreadable_result
from flows.notifications.scan import _scan
from flows.notifications.writer import write_results

BATCH_LINES = 2048
"""Lines per worker task."""
FLUSH_LINES = 65536
"""Lines of results written per transaction."""

_INCOMPLETE = "incomplete final line (no newline): cut short"  # the reader's words (flows.notifylog.LogScan)
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


class _Run:
    """The parent's state for one verify_log call."""

    def __init__(self, con, merchants: dict[str, MerchantKeys], recheck_failed: bool, now: datetime):
        self.merchants = merchants
        self.recheck_failed = recheck_failed
        self.now = now
        self.submitted: set[bytes] = set()  # contents sent for verification in this run
        self.results: list[_Result] = []
        self.pending_lines = 0
        self.clear_unreadable: set[str] = set()  # files whose old unreadable rows the next flush replaces
        self.recheck: list[bytes] = []  # failed contents verified again: their old rows go first
        # writes run in a thread on their own cursor (DuckDB works without the GIL), so reading, hashing
        # and feeding the workers go on while a flush is written
        self.wcon = con.cursor()
        self.rcon = con.cursor()  # lookups, on a cursor of our own: whatever the caller left open on con
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="notification-writer")
        self.writing: concurrent.futures.Future | None = None
        self.lines_seen = self.newly_verified = self.failed = 0
        self.unreadable = self.new_line_rows = 0

    # --- reading --------------------------------------------------------------------------------
    def batches(self, files: list[tuple[str, Path]]) -> Iterator[_Batch]:
        for log_file, path in files:
            self.clear_unreadable.add(log_file)
            for first_line, spans, digests, torn in _scan(path):
                yield from self._group_batches(log_file, str(path), first_line, spans, digests)
                if torn is not None:  # the reader's "incomplete final line": recorded, never hashed
                    self.lines_seen += 1
                    self.collect(_unreadable_result(log_file, first_line + len(spans), torn, _INCOMPLETE))

    def _group_batches(
        self, log_file: str, path: str, first_line: int, spans: list[tuple[int, int]], digests: list[bytes]
    ) -> Iterator[_Batch]:
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
                yield _Batch(log_file, path, items)
                items = []
        if items:
            yield _Batch(log_file, path, items)

    # --- writing --------------------------------------------------------------------------------
    def collect(self, result: _Result) -> None:
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

    def _write(self, results: list[_Result], clear: set[str], recheck: list[bytes]) -> int:
        """One transaction: replace the unreadable rows of ``clear``, drop the old checks of ``recheck``,
        insert the rows of ``results``. Runs in the writer thread on its own cursor; returns new line rows."""
        return write_results(self.wcon, self.now, results, clear, recheck)
