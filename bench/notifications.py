"""Benchmark: re-verifying the notification log (flows.notifications.verify_log) against the RSA floor.

    .venv/bin/python bench/notifications.py [--lines 200000] [--seed 7] [--days 2] [--runs 3] [--profile]

Builds N distinct signed + encrypted combine payment callbacks as the receiver logs them (one
accepted line each, 2–3 sub orders, over ``--days`` day files) with both cores, and caches the
log under ``var/bench/notifications/n<N>-s<seed>/`` (signing costs ~1 ms a line, so it is made
once and reused). Then, interleaved, ``--runs`` times:

* the floor: bare ``public_key.verify`` over the same N messages, in 1 process and in 2
  processes (timed from a common start barrier, process start-up excluded);
* ``verify_log`` on a fresh DuckDB file with workers=1 and workers=2, and a second, incremental
  ``verify_log`` over the same files (nothing new: should be near-instant).

Prints machine facts, medians (min–max) of seconds and lines/s, each verify_log as a % of the
floor with the same number of cores, peak RSS of the parent and of the worker processes, and
(``--profile``) where a line's time goes. Correctness gates (a run that fails one is not a
result): every line verified, none failed or unreadable, the sub-order rows and their fen sum
equal to what the generator made, the incremental run verifies and records nothing, and the
workers=1 and workers=2 tables are identical.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pickle
import platform
import random
import shutil
import statistics
import sys
import threading
import time
from datetime import UTC as BEIJING_UTC
from datetime import date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MCHID = "1900000100"
PARTICIPANTS = ("1900000101", "1900000102", "1900000103")
APPID = "wxd678efh567hg6787"
FIRST_DAY = date(2026, 11, 20)
PART_LINES = 5000


# --- generating the log ---------------------------------------------------------------------


def _keys(cache: Path, seed: int) -> dict:
    path = cache / "keys.json"
    if path.exists():
        return json.loads(path.read_text())
    from wxpay.sim.keys import new_merchant, private_pem, public_pem

    merchant = new_merchant(MCHID, APPID, rng=random.Random(seed))
    key = merchant.platform_keys[0].key
    keys = {
        "api_v3_key": merchant.api_v3_key,
        "key_id": merchant.public_key_id,
        "public_pem": public_pem(key).decode(),
        "private_pem": private_pem(key).decode(),
    }
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys))
    return keys


def _make_part(args: tuple) -> tuple[int, list[tuple[str, bytes]], int, int]:
    """Lines first..first+count-1: (day file name, line bytes) each, and the sub-order count and fen sum."""
    first, count, total, days, seed, keys = args
    from flows.notifications import LogEntry
    from wxpay.models import BEIJING, format_rfc3339
    from wxpay.signing import SCHEME, load_private_key, response_message, sign
    from wxpay.sim.notifier import envelope

    private = load_private_key(keys["private_pem"])
    rng = random.Random(seed * 1_000_003 + first)
    lines, subs, fen = [], 0, 0
    per_day = -(-total // days)
    for i in range(first, first + count):
        day, k = divmod(i, per_day)
        received_at = datetime.combine(FIRST_DAY + timedelta(days=day), datetime.min.time(), BEIJING) + timedelta(
            seconds=10 + k * (86_000 / per_day), milliseconds=rng.randrange(1000)
        )
        paid = received_at - timedelta(seconds=rng.randrange(2, 30))
        number = f"C{paid:%Y%m%d}{i:09d}"
        orders = []
        for s, mchid in enumerate(PARTICIPANTS[: 2 + i % 2], start=1):
            amount = rng.randrange(1, 500_000)
            subs, fen = subs + 1, fen + amount
            orders.append(
                {
                    "mchid": mchid,
                    "trade_type": "NATIVE",
                    "trade_state": "SUCCESS",
                    "attach": f"cmb={number}",
                    "out_trade_no": f"{number}S{s}",
                    "amount": {
                        "total_amount": amount,
                        "currency": "CNY",
                        "payer_amount": amount,
                        "payer_currency": "CNY",
                    },
                    "bank_type": "OTHERS",
                    "transaction_id": f"42000{rng.randrange(10**22):022d}",
                    "success_time": format_rfc3339(paid),
                }
            )
        payload = {
            "combine_appid": APPID,
            "combine_mchid": MCHID,
            "combine_out_trade_no": number,
            "sub_orders": orders,
            "combine_payer_info": {
                "openid": "o" + "".join(rng.choice("abcdefghijkABCDEFGHIJK0123456789_-") for _ in range(27))
            },
        }
        hexid = f"{rng.getrandbits(128):032x}"
        nid = f"{hexid[:8]}-{hexid[8:12]}-{hexid[12:16]}-{hexid[16:20]}-{hexid[20:]}"
        nonce = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
        body = envelope(payload, keys["api_v3_key"], notification_id=nid, create_time=paid, nonce=nonce)
        timestamp = str(int(received_at.timestamp()) - rng.randrange(3))
        header_nonce = f"{rng.getrandbits(128):032X}"
        headers = {
            "request-id": f"08F5B8C2B506102C18FDDFEEA30620BE821E28EDC{rng.randrange(10**6):06d}-0",
            "wechatpay-nonce": header_nonce,
            "wechatpay-serial": keys["key_id"],
            "wechatpay-signature": sign(private, response_message(timestamp, header_nonce, body)),
            "wechatpay-signature-type": SCHEME,
            "wechatpay-timestamp": timestamp,
        }
        entry = LogEntry(received_at, MCHID, "accepted", None, nid, headers, body, 204)
        lines.append((f"{entry.day.isoformat()}.jsonl", entry.to_line()))
    return first, lines, subs, fen


def build_log(cache: Path, lines: int, days: int, seed: int) -> dict:
    """The cached log (made now if missing): its root, keys and expected totals."""
    done = cache / "complete.json"
    if done.exists():
        return json.loads(done.read_text())
    keys = _keys(cache, seed)
    root = cache / "log"
    shutil.rmtree(root, ignore_errors=True)
    (root / MCHID).mkdir(parents=True)
    started = time.perf_counter()
    tasks = [(f, min(PART_LINES, lines - f), lines, days, seed, keys) for f in range(0, lines, PART_LINES)]
    parts: dict[int, list] = {}
    subs = fen = 0
    handles: dict[str, object] = {}
    following = 0
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        for first, part, n_subs, n_fen in pool.map(_make_part, tasks):
            parts[first] = part
            subs, fen = subs + n_subs, fen + n_fen
            while following in parts:  # write in order
                for name, line in parts.pop(following):
                    if name not in handles:
                        handles[name] = (root / MCHID / name).open("wb")
                    handles[name].write(line)
                following += PART_LINES
            made = min(following, lines)
            print(f"  generated {made:,}/{lines:,} lines ({time.perf_counter() - started:.0f} s)", end="\r", flush=True)
    for handle in handles.values():
        handle.close()
    print()
    info = {
        "root": str(root),
        "lines": lines,
        "days": days,
        "files": len(handles),
        "sub_orders": subs,
        "fen": fen,
        "bytes": sum(p.stat().st_size for p in (root / MCHID).glob("*.jsonl")),
        "keys": keys,
        "generated_seconds": round(time.perf_counter() - started, 1),
    }
    done.write_text(json.dumps(info))
    return info


# --- the floor ------------------------------------------------------------------------------


def floor_inputs(cache: Path, info: dict) -> list[Path]:
    """(message, raw signature) of every line, in two halves (pickled once, reused)."""
    halves = [cache / "floor-0.pkl", cache / "floor-1.pkl"]
    if all(p.exists() for p in halves):
        return halves
    import base64

    from wxpay.signing import response_message

    pairs = []
    for path in sorted((Path(info["root"]) / MCHID).glob("*.jsonl")):
        with path.open("rb") as handle:
            for raw in handle:
                obj = json.loads(raw)
                h = obj["headers"]
                message = response_message(h["wechatpay-timestamp"], h["wechatpay-nonce"], obj["body"].encode())
                pairs.append((message, base64.b64decode(h["wechatpay-signature"])))
    middle = len(pairs) // 2
    for path, part in zip(halves, (pairs[:middle], pairs[middle:]), strict=True):
        path.write_bytes(pickle.dumps(part, protocol=5))
    return halves


def _floor_child(paths: list[str], pem: str, barrier, results) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from wxpay.verifying import load_public_key

    key = load_public_key(pem)
    pairs = [pair for path in paths for pair in pickle.loads(Path(path).read_bytes())]  # noqa: S301 - our cache
    pad, digest = padding.PKCS1v15(), hashes.SHA256()
    barrier.wait()
    started = time.perf_counter()
    for message, signature in pairs:
        key.verify(signature, message, pad, digest)
    results.put((len(pairs), time.perf_counter() - started))


def measure_floor(halves: list[Path], pem: str, processes: int) -> tuple[float, int]:
    """Seconds from the common start to the last process done, and messages verified."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    results = context.Queue()
    shares = [[str(p) for p in halves]] if processes == 1 else [[str(p)] for p in halves]
    children = [context.Process(target=_floor_child, args=(s, pem, barrier, results)) for s in shares]
    for child in children:
        child.start()
    barrier.wait()
    started = time.perf_counter()
    done = [results.get() for _ in children]
    seconds = time.perf_counter() - started
    for child in children:
        child.join()
    return seconds, sum(n for n, _ in done)


# --- verify_log -----------------------------------------------------------------------------


class PeakRss:
    """Peak resident memory (VmHWM) of this process and, sampled, of every descendant."""

    def __init__(self) -> None:
        self.children: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.25):  # VmHWM is a high-water mark: sampling rarely loses nothing but the end
            for pid in _descendants(me):
                peak = _status_kb(pid, "VmHWM")
                if peak:
                    self.children[pid] = max(self.children.get(pid, 0), peak)

    @staticmethod
    def parent_mb() -> float:
        return (_status_kb(os.getpid(), "VmHWM") or 0) / 1024


def _descendants(root: int) -> list[int]:
    """Children, grandchildren... (the pool workers are the forkserver's children), from /proc/*/task/*/children."""
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


FINGERPRINT = """
select
  (select count(*) || '|' || coalesce(sum(hash(log_file, line_no, line_sha256, mchid, outcome, received_at,
      claimed_notification_id, reply_status, receiver_reason, unreadable_reason, line_bytes)), 0)
   from raw.notification_lines),
  (select count(*) || '|' || coalesce(sum(hash(line_sha256, verified, failure, failure_detail, serial, notification_id,
      event_type, create_time, combine_appid, combine_mchid, combine_out_trade_no, combine_transaction_id,
      sub_order_count)), 0) from raw.notification_checks),
  (select count(*) || '|' || coalesce(sum(total_amount_fen), 0) || '|' || coalesce(sum(hash(line_sha256,
      sub_order_no, mchid, out_trade_no, transaction_id, trade_state, total_amount_fen, payer_amount_fen, currency,
      success_time, attach)), 0) from raw.notification_sub_orders)
"""


def run_verify(info: dict, db: Path, workers: int, *, again: bool = False) -> dict:
    from flows.notifications import MerchantKeys, NotificationLog, verify_log
    from flows.warehouse import connect

    keys = info["keys"]
    merchants = {MCHID: MerchantKeys.from_public_key(keys["key_id"], keys["public_pem"], keys["api_v3_key"])}
    log = NotificationLog(info["root"])
    end = FIRST_DAY + timedelta(days=info["days"] - 1)
    for leftover in (db, Path(f"{db}.wal")):
        leftover.unlink(missing_ok=True)
    con = connect(db)
    try:
        first = verify_log(con, log, merchants, start=FIRST_DAY, end=end, workers=workers)
        second = verify_log(con, log, merchants, start=FIRST_DAY, end=end, workers=workers) if again else None
        con.execute("checkpoint")
        fingerprint = con.execute(FINGERPRINT).fetchone()
    finally:
        con.close()
    return {"first": first, "second": second, "fingerprint": fingerprint, "db_mb": db.stat().st_size / 1e6}


def gate(info: dict, result: dict, label: str) -> None:
    stats, second = result["first"], result["second"]
    n = info["lines"]
    problems = []
    if (stats.newly_verified, stats.failed, stats.unreadable, stats.new_line_rows) != (n, 0, 0, n):
        problems.append(f"first run: {stats}")
    subs, fen = result["fingerprint"][2].split("|")[:2]
    if (int(subs), int(fen)) != (info["sub_orders"], info["fen"]):
        problems.append(f"sub orders {subs} / {fen} fen, generator made {info['sub_orders']} / {info['fen']}")
    if second is not None and (second.newly_verified, second.new_line_rows, second.already_known) != (0, 0, n):
        problems.append(f"incremental run: {second}")
    if problems:
        raise SystemExit(f"CORRECTNESS GATE FAILED ({label}): " + "; ".join(problems))


# --- where the time goes --------------------------------------------------------------------


def _roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))  # noqa: S301 - our own objects


def breakdown(info: dict, cache: Path, sample: int = 8192, repeats: int = 5) -> list[tuple[str, float]]:
    """CPU µs per line of each step, in this process, on the first ``sample`` lines (best of ``repeats``)."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from flows.notifications import MerchantKeys, checker, lines, verification
    from flows.warehouse import connect, migrate
    from wxpay import aead, notify
    from wxpay.signing import response_message
    from wxpay.verifying import SignedHeaders, load_public_key

    keys = info["keys"]
    merchant = MerchantKeys.from_public_key(keys["key_id"], keys["public_pem"], keys["api_v3_key"])
    path = sorted((Path(info["root"]) / MCHID).glob("*.jsonl"))[0]
    [(first, spans, digests, _)] = [group for group in verification.scan_lines(path)][:1]
    spans, digests = spans[:sample], digests[:sample]
    batches = [
        checker.Batch(
            f"{MCHID}/{path.name}",
            str(path),
            [
                (first + i, *spans[i], digests[i], True, True)
                for i in range(j, min(j + verification.BATCH_LINES, len(spans)))
            ],
        )
        for j in range(0, len(spans), verification.BATCH_LINES)
    ]
    raws = [line for batch in batches for line in checker.read_batch_lines(batch)]
    parsed = [lines.read_line(r) for r in raws]
    checker = checker.Checker({MCHID: merchant})
    verifier, api_key = checker.merchants[MCHID]
    public = load_public_key(keys["public_pem"])
    pad, digest = padding.PKCS1v15(), hashes.SHA256()
    signed = [
        (
            response_message(e[6]["wechatpay-timestamp"], e[6]["wechatpay-nonce"], e[7]),
            base64.b64decode(e[6]["wechatpay-signature"]),
        )
        for e in parsed
    ]
    opened = []
    for e in parsed:
        checker.now = e[0].timestamp()
        opened.append(notify.open_notification(e[6], e[7], verifier=verifier, api_v3_key=api_key))
    results = [checker.check(b) for b in batches]
    per_file = sum(len(group[1]) for group in verification.scan_lines(path))

    def each(fn, items) -> None:
        """Call ``fn`` on every item, dropping the results as they come as a worker does (keeping them all
        would make the garbage collector's passes over them dominate the measurement)."""
        for item in items:
            fn(item)

    def cpu(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.process_time()
            fn()
            best = min(best, time.process_time() - started)
        return best / len(raws) * 1e6

    def verify_all():
        for e in parsed:
            checker.now = e[0].timestamp()
            verifier.verify(e[6], e[7])

    def open_all():
        for e in parsed:
            checker.now = e[0].timestamp()
            notify.open_notification(e[6], e[7], verifier=verifier, api_v3_key=api_key)

    def write_all():
        db = cache / "breakdown.duckdb"
        db.unlink(missing_ok=True)
        con = connect(db)
        migrate(con)
        run = verification.VerificationRun(con, {}, False, datetime.now(BEIJING_UTC))
        try:
            started = time.process_time()
            run._write(results, set(), [])
            con.execute("checkpoint")
            return time.process_time() - started
        finally:
            run.close()
            con.close()
            db.unlink(missing_ok=True)

    def resources():
        for o in opened:
            r = o.envelope["resource"]
            aead.decrypt(api_key, r["nonce"], r["ciphertext"], r["associated_data"])

    steps = [
        (
            "parent: map the file, find lines, sha256 each",
            cpu(lambda: list(verification.scan_lines(path))) * len(raws) / per_file,
        ),
        ("worker: pread the batch + re-hash each line", cpu(lambda: each(checker.read_batch_lines, batches))),
        ("read the log line (JSON + the reader's checks)", cpu(lambda: each(lambda r: lines.read_line(r), raws))),
        (
            "bare public_key.verify (the floor)",
            cpu(lambda: each(lambda ms: public.verify(ms[1], ms[0], pad, digest), signed)),
        ),
        ("Verifier.verify (headers, window, RSA)", cpu(verify_all)),
        ("  SignedHeaders.from_headers alone", cpu(lambda: each(lambda e: SignedHeaders.from_headers(e[6]), parsed))),
        ("open_notification (verify + envelope + decrypt)", cpu(open_all)),
        (
            "  envelope: JSON + checks (_envelope_fast)",
            cpu(lambda: each(lambda e: notify._envelope_fast(e[7]), parsed)),
        ),
        ("  aead.decrypt", cpu(resources)),
        (
            "read the decrypted payload (JSON + strict checks)",
            cpu(lambda: each(lambda o: lines.read_payload(o.id, o.plaintext), opened)),
        ),
        ("worker task, all of it (_Checker.check incl. Arrow)", cpu(lambda: each(lambda b: checker.check(b), batches))),
        (
            "pickle + unpickle a task and its result",
            cpu(lambda: each(_roundtrip, zip(batches, results, strict=True))),
        ),
        ("DuckDB: insert the rows + checkpoint (CPU of this thread)", write_all() / len(raws) * 1e6),
    ]
    del hashlib
    return steps


# --- main -----------------------------------------------------------------------------------


def machine() -> list[str]:
    import cryptography
    import duckdb
    import pyarrow
    from cryptography.hazmat.backends.openssl.backend import backend

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem = _status_kb(os.getpid(), "VmRSS")
    total = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    try:
        import orjson as orjson_module

        orjson = getattr(orjson_module, "__version__", "installed")
    except ImportError:
        orjson = "not installed"
    del mem
    return [
        f"machine: {platform.node()}  nproc={os.cpu_count()}  {cpu}  RAM {total / 1024**2:.1f} GiB",
        f"python {platform.python_version()}  cryptography {cryptography.__version__}"
        f" ({backend.openssl_version_text()})  duckdb {duckdb.__version__}  pyarrow {pyarrow.__version__}"
        f"  orjson {orjson}",
    ]


def _fmt(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print where a line's time goes")
    args = parser.parse_args()

    cache = REPO / "var" / "bench" / "notifications" / f"n{args.lines}-d{args.days}-s{args.seed}"
    print("\n".join(machine()))
    info = build_log(cache, args.lines, args.days, args.seed)
    print(
        f"log: {info['lines']:,} lines in {info['files']} day files, {info['bytes'] / 1e6:.0f} MB,"
        f" {info['sub_orders']:,} sub orders (cached in {cache.relative_to(REPO)}; generated in"
        f" {info['generated_seconds']} s)"
    )
    halves = floor_inputs(cache, info)
    for path in sorted((Path(info["root"]) / MCHID).glob("*.jsonl")):
        path.read_bytes()  # warm the page cache once

    n = info["lines"]
    floor1, floor2, w1, w2, inc, cold = [], [], [], [], [], []
    fingerprints, rss_children, db_mb = set(), [], []
    with PeakRss() as peaks:
        for r in range(args.runs):
            seconds, count = measure_floor(halves, info["keys"]["public_pem"], 1)
            assert count == n
            floor1.append(seconds)
            seconds, count = measure_floor(halves, info["keys"]["public_pem"], 2)
            assert count == n
            floor2.append(seconds)
            before = dict(peaks.children)
            one = run_verify(info, cache / "bench-w1.duckdb", 1)
            gate(info, one, f"workers=1 run {r + 1}")
            w1.append(one["first"].seconds)
            two = run_verify(info, cache / "bench-w2.duckdb", 2, again=True)
            gate(info, two, f"workers=2 run {r + 1}")
            (cold if r == 0 else w2).append(two["first"].seconds)
            inc.append(two["second"].seconds)
            fingerprints |= {one["fingerprint"], two["fingerprint"]}
            db_mb.append(two["db_mb"])
            rss_children += [kb for pid, kb in peaks.children.items() if pid not in before]
            print(
                f"  run {r + 1}: floor 1p {floor1[-1]:.2f} s, 2p {floor2[-1]:.2f} s; verify_log w1 {w1[-1]:.2f} s,"
                f" w2 {two['first'].seconds:.2f} s{' (cold: starts the forkserver)' if r == 0 else ''},"
                f" incremental {inc[-1]:.2f} s",
                flush=True,
            )
    if len(fingerprints) != 1:
        raise SystemExit(f"CORRECTNESS GATE FAILED: workers=1 and workers=2 tables differ: {fingerprints}")
    warm = w2 or cold
    f1 = [n / s for s in floor1]
    f2 = [n / s for s in floor2]
    print()
    print(f"N = {n:,} lines, {args.runs} interleaved runs; median (min–max)")
    print(f"| {'variant':44} | {'seconds':22} | {'lines/s':26} | {'% of floor (same cores)':24} |")
    print(f"|{'-' * 46}|{'-' * 24}|{'-' * 28}|{'-' * 26}|")
    rows = [
        ("floor: bare public_key.verify, 1 process", floor1, None),
        ("floor: bare public_key.verify, 2 processes", floor2, None),
        ("verify_log workers=1 (fresh DB)", w1, floor1),
        ("verify_log workers=2 (fresh DB, warm)", warm, floor2),
        ("verify_log workers=2, first run (cold)", cold, floor2),
        ("verify_log again (incremental, nothing new)", inc, None),
    ]
    for label, seconds, against in rows:
        rates = [n / s for s in seconds]
        pct = ""
        if against is not None:
            floor_rate = statistics.median([n / s for s in against])
            pct = f"{statistics.median(rates) / floor_rate * 100:.0f} %"
        rate = (
            _fmt(rates, 0)
            if label.startswith(("floor", "verify_log w"))
            else f"({n / statistics.median(seconds):,.0f} lines scanned/s)"
        )
        print(f"| {label:44} | {_fmt(seconds):22} | {rate:26} | {pct:24} |")
    print()
    print(f"floor per core: 1p {statistics.median(f1):,.0f}/s; 2p {statistics.median(f2) / 2:,.0f}/s per process")
    worker_mb = max(rss_children, default=0) / 1024
    print(
        f"peak RSS: parent {PeakRss.parent_mb():.0f} MB; worker processes max {worker_mb:.0f} MB each;"
        f" DuckDB file {statistics.median(db_mb):.0f} MB"
    )
    print(f"tables of workers=1 and workers=2 identical: {len(fingerprints) == 1}")
    for scratch in cache.glob("bench-w*.duckdb*"):  # the log stays cached; the warehouses were per run
        scratch.unlink()
    if args.profile:
        print()
        print("where a line's time goes (CPU µs per line, one process, first 8,192 lines, best of 5):")
        with multiprocessing.get_context("spawn").Pool(1) as fresh:  # a clean process: no GC load of the runs
            steps = fresh.apply(breakdown, (info, cache))
        for label, micros in steps:
            print(f"  {label:52} {micros:7.2f}")


if __name__ == "__main__":
    main()
