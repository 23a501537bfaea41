"""Re-verify the notification log into the warehouse: every line verified once, by its content hash.

:func:`verify_log` reads the day files of a :class:`~flows.notifylog.NotificationLog` (every
merchant directory and ``_unrouted``) and, for each line, records where it is
(``raw.notification_lines``); each distinct line content (SHA-256 of the line's bytes without
its ``\\n``) is re-verified once and the result kept (``raw.notification_checks``, plus
``raw.notification_sub_orders`` for the sub orders of a verified notification). Tables:
``sql/migrations/050_notifications.sql``.

Re-verifying a line is what the receiver did, judged again from the line alone:
:func:`wxpay.notify.open_notification` (signature, with the ±300 s window evaluated at the line's
``received_at``; algorithm; AEAD decryption with the merchant's APIv3 key), the receiver's
combine_mchid check, then a strict reading of the decrypted payload (amounts must be JSON
integers of fen, times RFC 3339, ...). A line that fails is ``verified = false`` with the
exception class and message: a finding, never a drop. So is a line of a merchant we hold no
keys for (``UnknownMerchantError``), a rejected-413 line whose body was not kept
(``PayloadTooLargeError``), and a line the log reader cannot read (an ``unreadable`` row in
``raw.notification_lines`` with a NULL hash; those are re-derived on every run).

Incremental: a line content whose hash is in ``raw.notification_checks`` is not verified again,
and a line occurrence already in ``raw.notification_lines`` (same file, line number and hash) is
not recorded again, so a re-run over the same files writes nothing and a line appended later is
the only one verified next time. ``recheck_failed=True`` verifies failed contents again (after
adding a key that was missing, say).

Speed (``bench/notifications.py``): the parent maps each file, hashes its lines and asks DuckDB
which are new (one query per 65,536 lines); worker processes (``workers``, default 2, from a
forkserver; 1 runs in-process) take batches of 2,048 line positions, read the bytes themselves,
check them against the parent's hashes (:class:`LogChangedError` otherwise), verify, decrypt and
read the payloads with verifiers built once per process from picklable :class:`MerchantKeys`,
and return Arrow batches; a writer thread inserts them in bulk, one transaction per flush,
while the parent keeps the workers fed. Per line, the time goes to
:func:`~wxpay.notify.open_notification` (about two thirds: the RSA verification itself about a
third), JSON, the strict payload reading and DuckDB's compressed writes; the benchmark prints it.
"""

from __future__ import annotations

import concurrent.futures
import gc
import hashlib
import importlib.util
import json
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
from typing import Any

import pyarrow as pa

from flows.notifylog import OUTCOMES, UNROUTED, LogEntry, NotificationLog
from wxpay.errors import (
    ConfigurationError,
    DecryptionError,
    MalformedNotificationError,
    UnsupportedAlgorithmError,
    WxPayError,
)
from wxpay.notify import open_notification
from wxpay.verifying import MAX_CLOCK_SKEW, Verifier, load_public_key

try:  # optional: ~2x faster JSON; results are identical without it (see _loads)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = ["CHECKER_VERSION", "LogChangedError", "MerchantKeys", "VerifyStats", "verify_log"]

CHECKER_VERSION = 1
"""Recorded with every check: what a later, stricter checker can select to verify again."""
BATCH_LINES = 2048
"""Lines per worker task."""
LOOKUP_LINES = 65536
"""Lines hashed by the parent and looked up in the warehouse with one query."""
FLUSH_LINES = 65536
"""Lines of results written per transaction."""
IN_FLIGHT = 4
"""Tasks queued per worker, so that the workers stay busy while the parent writes a flush."""

_MCHID_DIR = re.compile(r"^[0-9]{1,32}$")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
_RECEIVED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00")  # as the log writes it
_BIGINT = 1 << 63
_INCOMPLETE = "incomplete final line (no newline): cut short"  # the reader's words (flows.notifylog.LogScan)


@dataclass(frozen=True, repr=False)
class MerchantKeys:
    """What re-verifying one merchant's callbacks takes, in a form that crosses process boundaries.

    ``public_keys`` maps each ``Wechatpay-Serial`` that may appear in the log — the WeChat Pay
    public-key id (``PUB_KEY_ID_...``) and/or platform-certificate serials, including rotated-out
    ones — to its PEM (public key or certificate). ``api_v3_key`` decrypts the resources.
    Verifiers are built from these once per worker process (key objects do not pickle).
    """

    api_v3_key: bytes | str
    public_keys: Mapping[str, bytes | str]
    max_skew: int = MAX_CLOCK_SKEW

    def __post_init__(self) -> None:
        key = self.api_v3_key.encode("utf-8") if isinstance(self.api_v3_key, str) else bytes(self.api_v3_key)
        if len(key) != 32:
            raise ConfigurationError(f"the APIv3 key must be 32 bytes, got {len(key)}")
        if not self.public_keys:
            raise ConfigurationError("MerchantKeys needs at least one WeChat Pay public key or certificate")
        keys = {str(serial): pem for serial, pem in self.public_keys.items()}
        for pem in keys.values():
            load_public_key(pem)  # ConfigurationError now, not in a worker
        object.__setattr__(self, "public_keys", keys)

    @classmethod
    def from_public_key(cls, key_id: str, pem: bytes | str, api_v3_key: bytes | str) -> MerchantKeys:
        """Public-key mode: one ``PUB_KEY_ID_...`` and its PEM."""
        return cls(api_v3_key, {key_id: pem})

    def verifier(self, clock) -> Verifier:
        return Verifier(self.public_keys, clock=clock, max_skew=self.max_skew)

    def __repr__(self) -> str:
        return f"MerchantKeys(serials={sorted(self.public_keys)!r}, api_v3_key='***')"


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
    (``UnknownMerchantError``). See the module docstring for what is recorded.
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
            # DuckDB threads make fork unsafe), with this module preloaded there once per process
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


# --- the parent: read, hash, look up, write ----------------------------------------------------


def _files(log: NotificationLog, start: date, end: date) -> list[tuple[str, Path]]:
    """(log_file relative to the root, path) of every day file in range, every directory of the log."""
    if not log.root.is_dir():
        return []
    names = sorted(
        p.name for p in log.root.iterdir() if p.is_dir() and (p.name == UNROUTED or _MCHID_DIR.match(p.name))
    )
    found = []
    for name in names:
        for day in log.days(name):
            path = log.path(name, day)
            if start <= day <= end and path.is_file():
                found.append((f"{name}/{path.name}", path))
    return found


@dataclass
class _Batch:
    """Lines of one file for a worker: (line_no, byte offset, length, sha256 digest, record the occurrence,
    verify the content). The worker reads the bytes from ``path`` itself and checks them against the
    digest the parent looked up (the bytes verified are the bytes hashed; nothing large is pickled)."""

    log_file: str
    path: str
    items: list[tuple[int, int, int, bytes, bool, bool]]


class LogChangedError(RuntimeError):
    """A log line changed between being hashed and being verified (log files are append-only)."""


@dataclass
class _Result:
    log_file: str
    lines: pa.RecordBatch
    checks: pa.RecordBatch
    sub_orders: pa.RecordBatch
    checked: int
    failed: int
    unreadable: int


_LINES = pa.schema(
    [
        ("line_no", pa.int64()),
        ("sha", pa.binary()),
        ("mchid", pa.string()),
        ("outcome", pa.string()),
        ("received_at", pa.string()),
        ("claimed_notification_id", pa.string()),
        ("reply_status", pa.int64()),
        ("receiver_reason", pa.string()),
        ("unreadable_reason", pa.string()),
        ("line_bytes", pa.int64()),
    ]
)
_CHECKS = pa.schema(
    [
        ("sha", pa.binary()),
        ("verified", pa.bool_()),
        ("failure", pa.string()),
        ("failure_detail", pa.string()),
        ("serial", pa.string()),
        ("notification_id", pa.string()),
        ("event_type", pa.string()),
        ("create_time", pa.string()),
        ("combine_appid", pa.string()),
        ("combine_mchid", pa.string()),
        ("combine_out_trade_no", pa.string()),
        ("combine_transaction_id", pa.string()),
        ("sub_order_count", pa.int64()),
    ]
)
_SUB_ORDERS = pa.schema(
    [
        ("sha", pa.binary()),
        ("sub_order_no", pa.int64()),
        ("mchid", pa.string()),
        ("out_trade_no", pa.string()),
        ("transaction_id", pa.string()),
        ("trade_state", pa.string()),
        ("total_amount_fen", pa.int64()),
        ("payer_amount_fen", pa.int64()),
        ("currency", pa.string()),
        ("success_time", pa.string()),
        ("attach", pa.string()),
    ]
)

_INSERT_LINES = """
insert into raw.notification_lines (log_file, line_no, line_sha256, mchid, outcome, received_at,
    claimed_notification_id, reply_status, receiver_reason, unreadable_reason, line_bytes, recorded_at)
select log_file, line_no, lower(hex(sha)), mchid, outcome, cast(received_at as timestamptz),
    claimed_notification_id, reply_status, receiver_reason, unreadable_reason, line_bytes, $recorded_at
from _notification_lines_new
"""
_INSERT_CHECKS = """
insert into raw.notification_checks (line_sha256, verified, failure, failure_detail, serial, notification_id,
    event_type, create_time, combine_appid, combine_mchid, combine_out_trade_no, combine_transaction_id,
    sub_order_count, checker_version, checked_at)
select lower(hex(sha)), verified, failure, failure_detail, serial, notification_id,
    event_type, cast(create_time as timestamptz), combine_appid, combine_mchid, combine_out_trade_no,
    combine_transaction_id, sub_order_count, $checker_version, $checked_at
from _notification_checks_new
"""
_INSERT_SUB_ORDERS = """
insert into raw.notification_sub_orders (line_sha256, sub_order_no, mchid, out_trade_no, transaction_id,
    trade_state, total_amount_fen, payer_amount_fen, currency, success_time, attach)
select lower(hex(sha)), sub_order_no, mchid, out_trade_no, transaction_id,
    trade_state, total_amount_fen, payer_amount_fen, currency, cast(success_time as timestamptz), attach
from _notification_sub_orders_new
"""
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
        lines = _concat(
            [r.lines.append_column("log_file", pa.repeat(r.log_file, r.lines.num_rows)) for r in results],
            _LINES.append(pa.field("log_file", pa.string())),
        )
        checks = _concat([r.checks for r in results], _CHECKS)
        sub_orders = _concat([r.sub_orders for r in results], _SUB_ORDERS)
        con = self.wcon
        con.execute("begin transaction")
        try:
            for log_file in sorted(clear):
                con.execute("delete from raw.notification_lines where log_file = ? and line_sha256 is null", [log_file])
            if recheck:
                con.register("_notification_recheck", pa.table({"sha": pa.array(recheck, pa.binary())}))
                try:
                    for table in ("raw.notification_sub_orders", "raw.notification_checks"):
                        con.execute(
                            f"delete from {table} where line_sha256 in"  # noqa: S608 - fixed table names
                            " (select lower(hex(sha)) from _notification_recheck)"
                        )
                finally:
                    con.unregister("_notification_recheck")
            for name, table, sql, params in (
                ("_notification_lines_new", lines, _INSERT_LINES, {"recorded_at": self.now}),
                (
                    "_notification_checks_new",
                    checks,
                    _INSERT_CHECKS,
                    {"checked_at": self.now, "checker_version": CHECKER_VERSION},
                ),
                ("_notification_sub_orders_new", sub_orders, _INSERT_SUB_ORDERS, {}),
            ):
                if table.num_rows:
                    con.register(name, table)
                    try:
                        con.execute(sql, params)
                    finally:
                        con.unregister(name)
        except BaseException:
            con.execute("rollback")
            raise
        con.execute("commit")
        return lines.num_rows - lines["sha"].null_count


def _concat(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([b for b in batches if b.num_rows], schema=schema)


def _scan(path: Path) -> Iterator[tuple[int, list[tuple[int, int]], list[bytes], int | None]]:
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


def _unreadable_result(log_file: str, line_no: int, size: int, reason: str) -> _Result:
    rows = _Rows()
    rows.lines.append(_unreadable_row(line_no, size, reason))
    rows.unreadable = 1
    return rows.result(log_file)


# --- the workers: parse, verify, decrypt, read the payload -------------------------------------

_CHECKER: _Checker | None = None


def _init_worker(merchants: dict[str, MerchantKeys]) -> None:
    global _CHECKER  # one checker per worker process, built once
    _CHECKER = _Checker(merchants)
    gc.freeze()  # the modules and keys loaded so far are never garbage: keep them out of every collection


def _check_in_worker(batch: _Batch) -> _Result:
    assert _CHECKER is not None, "worker not initialised"
    return _CHECKER.check(batch)


class _Failure(Exception):
    """A line that does not verify: the exception class name and message to record.

    ``signed``: the signature had verified (the envelope is authentic, so its id is recorded)."""

    def __init__(self, failure: str, detail: str, *, signed: bool = False):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        self.signed = signed


def _after_signature(exc: WxPayError) -> bool:
    """Whether open_notification failed after the signature verified (envelope, algorithm, decryption)."""
    if isinstance(exc, UnsupportedAlgorithmError):
        return str(exc).startswith("resource algorithm")
    return isinstance(exc, DecryptionError | MalformedNotificationError)


def _claimed_envelope(body: bytes) -> tuple:
    """notification_id, event_type, create_time of a signed body that could not be opened (failure path)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return (None, None, None)
    if type(obj) is not dict:
        return (None, None, None)
    texts = [obj.get(k) if type(obj.get(k)) is str else None for k in ("id", "event_type", "create_time")]
    try:
        if texts[2] is not None and not (_RFC3339.fullmatch(texts[2]) and datetime.fromisoformat(texts[2])):
            texts[2] = None
    except ValueError:
        texts[2] = None
    return tuple(texts)


def _unreadable_row(line_no: int, size: int, reason: str) -> tuple:
    return (line_no, None, None, "unreadable", None, None, None, None, reason, size)


def _arrays(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) or [()] * len(schema)
    return pa.RecordBatch.from_arrays(
        [pa.array(column, f.type) for column, f in zip(columns, schema, strict=True)], schema=schema
    )


class _Rows:
    """The rows of one batch (tuples in schema order), turned into Arrow at the end."""

    def __init__(self) -> None:
        self.lines: list[tuple] = []
        self.checks: list[tuple] = []
        self.sub_orders: list[tuple] = []
        self.failed = self.unreadable = 0

    def result(self, log_file: str) -> _Result:
        return _Result(
            log_file,
            _arrays(self.lines, _LINES),
            _arrays(self.checks, _CHECKS),
            _arrays(self.sub_orders, _SUB_ORDERS),
            len(self.checks),
            self.failed,
            self.unreadable,
        )


class _Checker:
    """Verifiers built once per process; the verifiers' clock reads the line being checked."""

    def __init__(self, merchants: Mapping[str, MerchantKeys]):
        self.now = 0.0
        self.merchants = {mchid: (keys.verifier(self._clock), keys.api_v3_key) for mchid, keys in merchants.items()}

    def _clock(self) -> float:
        return self.now

    def check(self, batch: _Batch) -> _Result:
        rows = _Rows()
        lines, checks = rows.lines, rows.checks
        for (line_no, _offset, _length, sha, need_row, verify), raw in zip(
            batch.items, _read_lines(batch), strict=True
        ):
            entry = _read_line(raw)
            if type(entry) is str:
                lines.append(_unreadable_row(line_no, len(raw), entry))
                rows.unreadable += 1
                continue
            received_at, text, mchid, outcome, reason, claimed, headers, body, status = entry
            if need_row:
                lines.append((line_no, sha, mchid, outcome, text, claimed, status, reason, None, len(raw)))
            if not verify:
                continue
            opened = None
            try:
                merchant = self.merchants.get(mchid)
                if merchant is None:
                    raise _Failure("UnknownMerchantError", f"no keys configured for merchant {mchid!r}")
                if body is None:
                    raise _Failure("PayloadTooLargeError", "the receiver did not keep the body (over its size limit)")
                self.now = received_at.timestamp()  # the signature window is judged at arrival
                try:
                    opened = open_notification(headers, body, verifier=merchant[0], api_v3_key=merchant[1])
                except WxPayError as exc:
                    raise _Failure(type(exc).__name__, str(exc), signed=_after_signature(exc)) from None
                order, subs = _read_payload(opened.id, opened.plaintext)
                if order["combine_mchid"] != mchid:
                    raise _Failure(
                        "MalformedNotificationError",
                        f"notification {opened.id} is for combine_mchid {order['combine_mchid']}, not {mchid}",
                    )
            except _Failure as failed:
                serial = next((v for k, v in headers.items() if k.lower() == "wechatpay-serial"), None)
                envelope = _envelope_row(opened) if opened is not None or not failed.signed else _claimed_envelope(body)
                checks.append((sha, False, failed.failure, failed.detail, serial, *envelope, *_NO_ORDER))
                rows.failed += 1
                continue
            checks.append(
                (
                    sha,
                    True,
                    None,
                    None,
                    opened.signed.serial,
                    *_envelope_row(opened),
                    order["combine_appid"],
                    order["combine_mchid"],
                    order["combine_out_trade_no"],
                    order.get("combine_transaction_id"),
                    len(subs),
                )
            )
            rows.sub_orders += [(sha, number, *sub) for number, sub in enumerate(subs, start=1)]
        return rows.result(batch.log_file)


_NO_ORDER = (None, None, None, None, None)
_SPARSE = 4  # read lines one by one when the batch's span is this many times their bytes (incremental runs)


def _read_lines(batch: _Batch) -> list[bytes]:
    """The batch's lines as bytes, read from its file, each checked against the digest the parent hashed."""
    items = batch.items
    first, last = items[0], items[-1]
    start, stop = first[1], last[1] + last[2]
    fd = os.open(batch.path, os.O_RDONLY)
    try:
        if stop - start <= _SPARSE * sum(item[2] for item in items):
            block = os.pread(fd, stop - start, start)
            lines = [block[offset - start : offset - start + length] for _, offset, length, *_ in items]
        else:
            lines = [os.pread(fd, length, offset) for _, offset, length, *_ in items]
    finally:
        os.close(fd)
    sha256 = hashlib.sha256
    for (line_no, _, _, digest, _, _), line in zip(items, lines, strict=True):
        if sha256(line).digest() != digest:
            raise LogChangedError(f"{batch.log_file}:{line_no} changed while it was being verified; run again")
    return lines


def _envelope_row(opened) -> tuple:
    """notification_id, event_type, create_time (RFC 3339 text) of an opened notification, or NULLs."""
    if opened is None:
        return (None, None, None)
    raw = opened.envelope.get("create_time")
    return (opened.id, opened.event_type, raw if type(raw) is str else opened.create_time.isoformat())


def _loads(data: bytes | str) -> Any:
    """``json.loads``, faster with orjson where orjson agrees (it refuses what it would read differently)."""
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(data)


_is_str = str.__instancecheck__


def _read_line(raw: bytes) -> tuple | str:
    """The fields of a log line as the log reader reads it, or the reader's reason it is unreadable.

    The checks of :meth:`LogEntry.from_json`, inline; anything they do not pass plainly is
    handed to ``LogEntry.from_json`` itself, so readable/unreadable is exactly the reader's.
    Returns (received_at, its RFC 3339 text, mchid, outcome, reason, notification_id, headers,
    body bytes or None, reply_status).
    """
    try:
        obj = _loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if type(obj) is dict and len(obj) == 9:
        try:
            version, text, mchid, outcome = obj["v"], obj["received_at"], obj["mchid"], obj["outcome"]
            reason, claimed, headers = obj["reason"], obj["notification_id"], obj["headers"]
            body, status = obj["body"], obj["reply_status"]
        except KeyError:
            pass
        else:
            if (
                version == 1
                and outcome in OUTCOMES
                and type(text) is str
                and type(mchid) is str
                and type(status) is int
                and type(body) is str
                and (reason is None or type(reason) is str)
                and (claimed is None or type(claimed) is str)
                and type(headers) is dict
                and all(map(_is_str, headers.values()))
                and _RECEIVED_AT.fullmatch(text)
            ):
                try:
                    return (
                        datetime.fromisoformat(text),
                        text,
                        mchid,
                        outcome,
                        reason,
                        claimed,
                        headers,
                        body.encode("utf-8"),
                        status,
                    )
                except ValueError:
                    pass
    try:  # the reader's own verdict, for everything else (body_b64, a null body, odd but valid, broken)
        entry = LogEntry.from_json(json.loads(raw))
    except (ValueError, RecursionError) as exc:
        return f"unreadable line: {exc}"
    return (
        entry.received_at,
        entry.received_at.isoformat(),
        entry.mchid,
        entry.outcome,
        entry.reason,
        entry.notification_id,
        dict(entry.headers),
        entry.body_bytes,
        entry.reply_status,
    )


def _read_payload(notification_id: str, plaintext: bytes) -> tuple[dict, list[tuple]]:
    """The combine order of a decrypted payload, read strictly: the order object and one row per sub
    order (mchid, out_trade_no, transaction_id, trade_state, total and payer amount in fen, currency,
    success_time text, attach; no payer identifiers). Raises _Failure naming the first bad field."""
    try:
        order = _loads(plaintext)
    except (ValueError, RecursionError):
        raise _Failure(
            "MalformedNotificationError", f"notification {notification_id}: decrypted payload is not JSON"
        ) from None
    rows: list[tuple] = []
    try:  # the plain shape, checked inline; anything else is explained field by field below
        subs = order["sub_orders"]
        ctid = order.get("combine_transaction_id")
        ok = (
            type(order["combine_appid"]) is str
            and type(order["combine_mchid"]) is str
            and type(order["combine_out_trade_no"]) is str
            and (ctid is None or type(ctid) is str)
            and type(subs) is list
            and len(subs) > 0
        )
        for sub in subs if ok else ():
            amount = sub["amount"]
            total, payer, currency = amount["total_amount"], amount.get("payer_amount"), amount.get("currency")
            mchid, number, state = sub["mchid"], sub["out_trade_no"], sub["trade_state"]
            tid, paid, attach = sub.get("transaction_id"), sub.get("success_time"), sub.get("attach")
            if not (
                type(mchid) is str
                and type(number) is str
                and type(state) is str
                and type(total) is int
                and -_BIGINT <= total < _BIGINT
                and (payer is None or (type(payer) is int and -_BIGINT <= payer < _BIGINT))
                and (currency is None or type(currency) is str)
                and (tid is None or type(tid) is str)
                and (attach is None or type(attach) is str)
                and (paid is None or (type(paid) is str and _RFC3339.fullmatch(paid) and datetime.fromisoformat(paid)))
            ):
                ok = False
                break
            rows.append((mchid, number, tid, state, total, payer, currency, paid, attach))
    except (KeyError, TypeError, AttributeError, ValueError):
        ok = False
    if not ok:
        _explain_payload(f"notification {notification_id}: decrypted payload", order)
        raise _Failure("MalformedNotificationError", f"notification {notification_id}: decrypted payload is invalid")
    return order, rows


def _text(value: Any, where: str, *, optional: bool = False) -> None:
    if not (type(value) is str or (optional and value is None)):
        raise _Failure("MalformedNotificationError", f"{where} must be a string{' or absent' if optional else ''}")


def _fen(value: Any, where: str, *, optional: bool = False) -> None:
    if not ((type(value) is int and -_BIGINT <= value < _BIGINT) or (optional and value is None)):
        raise _Failure("MalformedNotificationError", f"{where} must be a whole number of fen (a JSON integer)")


def _time(value: Any, where: str) -> None:
    if value is None:
        return
    if type(value) is str and _RFC3339.fullmatch(value):
        try:
            datetime.fromisoformat(value)
            return
        except ValueError:
            pass
    raise _Failure("MalformedNotificationError", f"{where} must be an RFC 3339 time or absent")


def _explain_payload(where: str, order: Any) -> None:
    """Raise _Failure naming the first field of ``order`` that is not as documented (the slow path)."""
    if type(order) is not dict:
        raise _Failure("MalformedNotificationError", f"{where} is not a JSON object")
    for name in ("combine_appid", "combine_mchid", "combine_out_trade_no"):
        _text(order.get(name), f"{where}: {name}")
    _text(order.get("combine_transaction_id"), f"{where}: combine_transaction_id", optional=True)
    subs = order.get("sub_orders")
    if type(subs) is not list or not subs:
        raise _Failure("MalformedNotificationError", f"{where}: sub_orders must be a non-empty list")
    for i, sub in enumerate(subs):
        at = f"{where}: sub_orders[{i}]"
        if type(sub) is not dict:
            raise _Failure("MalformedNotificationError", f"{at} is not an object")
        amount = sub.get("amount")
        if type(amount) is not dict:
            raise _Failure("MalformedNotificationError", f"{at}.amount is not an object")
        _text(sub.get("mchid"), f"{at}.mchid")
        _text(sub.get("out_trade_no"), f"{at}.out_trade_no")
        _text(sub.get("transaction_id"), f"{at}.transaction_id", optional=True)
        _text(sub.get("trade_state"), f"{at}.trade_state")
        _fen(amount.get("total_amount"), f"{at}.amount.total_amount")
        _fen(amount.get("payer_amount"), f"{at}.amount.payer_amount", optional=True)
        _text(amount.get("currency"), f"{at}.amount.currency", optional=True)
        _time(sub.get("success_time"), f"{at}.success_time")
        _text(sub.get("attach"), f"{at}.attach", optional=True)
