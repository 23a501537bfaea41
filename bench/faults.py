"""Benchmark: the notification receiver under attack and under faults, the long versions of
tests/test_receiver_faults.py, with figures.

    .venv/bin/python bench/faults.py [--flood 2000] [--slow 1100] [--open-files 1024] [--stream 2000]
                                     [--only flood,startup,ratelimit,slow,kill,disk]

Every probe runs the real ``wxrecon receiver`` in a process of its own (tests/receiver_process.py) from a
settings file, on loopback, with genuine callbacks signed by the simulator's keys:

* ``flood``: ``--flood`` forged callbacks of 1 MiB each (8 at a time, signed with a key that is not WeChat
  Pay's) plus 20 requests of 1 MiB of control bytes to a path naming no merchant, while a valid callback is
  sent every 0.25 s; with the default caps, then with a 1 MiB cap on the day's records. Prints the bytes
  sent, the log's growth per directory, records written and dropped, and the valid callbacks' answers
  and latency.
* ``startup``: a fresh receiver on the flood's log: seconds from spawning the process to its first
  answer, and the seconds of reading the last days of ids (``NotificationLog.warm``) alone; the same on a
  log of 7 days x 20,000 accepted lines.
* ``ratelimit``: one peer (behind a trusted proxy) sends ``--flood`` forged 1 MiB callbacks at the
  default 60 refusals a minute in a bucket of 30; another peer's valid callbacks meanwhile. Prints 401s,
  429s, and the median answer time of each.
* ``slow``: ``--slow`` connections that send half a request head, against a receiver whose open-file
  limit is ``--open-files`` (soft and hard); then 3 valid callbacks. Prints their latency, how long until
  every slow connection was closed, the counters, and the receiver's "Too many open files" lines.
* ``kill``: a stream of ``--stream`` valid callbacks from 4 senders, ``kill -9`` once a quarter are
  answered; a restart, and WeChat's retries of the rest. Prints acknowledged, logged, lost, doubled.
* ``disk``: a private 1 MiB tmpfs (``unshare -rm``) filling up, without a threshold and with 512 KiB:
  204s before, 500s / 503s after, and whether the log holds exactly the 204s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import random
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from flows.notifications import LogEntry, NotificationLog  # noqa: E402
from tests.conftest import APPID, INITIATOR, PARTICIPANTS  # noqa: E402
from tests.receiver_process import Callbacks, ReceiverProcess, settings_file, tmpfs_available  # noqa: E402
from wxpay.models import BEIJING  # noqa: E402
from wxpay.sim.keys import new_merchant  # noqa: E402

MIB = 1 << 20
PROBES = ("flood", "startup", "ratelimit", "slow", "kill", "disk")


class Bench:
    def __init__(self, work: Path):
        rng = random.Random(42)
        self.merchants = [
            new_merchant(m, APPID, rng=rng, fee_rate_bp=bp)
            for m, bp in ((INITIATOR, 60), (PARTICIPANTS[0], 38), (PARTICIPANTS[1], 54))
        ]
        self.callbacks = Callbacks(self.merchants)
        self.work = work
        self.runs = 0
        self.started: list[ReceiverProcess] = []

    def receiver(self, *, open_files=None, tmpfs_bytes=None, data=None, **settings) -> ReceiverProcess:
        self.runs += 1
        data = data or self.work / f"run{self.runs}"
        config = settings_file(self.work / f"config{self.runs}", self.merchants[0], data, **settings)
        receiver = ReceiverProcess.start(config, data / "notifications", open_files=open_files, tmpfs_bytes=tmpfs_bytes)
        self.started.append(receiver)
        return receiver

    def close(self) -> None:
        """Stop (by pid) every receiver still running, whatever happened to the probe that started it."""
        for receiver in self.started:
            receiver.stop()
        self.callbacks.close()


def sizes(root: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    if root.is_dir():
        for path in root.rglob("*.jsonl"):
            top = path.relative_to(root).parts[0]
            found[top] = found.get(top, 0) + path.stat().st_size
    return found


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def flood(bench: Bench, count: int, **settings) -> dict:
    receiver = bench.receiver(refused_per_minute=0, **settings)
    block = os.urandom(MIB)
    control = bytes(range(32)) * (MIB // 32)
    statuses: list[int] = []
    valid: list[tuple[int, float]] = []
    done = threading.Event()

    def deliver(i: int) -> int:
        if i < count:  # signed here, one at a time: 2,000 MiB are never held at once
            headers, body = bench.callbacks.forged(i.to_bytes(4, "big") + block[4:])
            path = f"/wxpay/notify/{INITIATOR}"
        else:
            headers, body, path = {"Content-Type": "application/json"}, control, "/wxpay/notify/1999999999"
        sent.append(len(body))
        with httpx.Client(timeout=120) as client:
            return client.post(receiver.url + path, content=body, headers=headers).status_code

    def valid_sender() -> None:
        i = 0
        while not done.is_set():
            _, headers, body = bench.callbacks.valid(100_000 + bench.runs * 1000 + i)
            started = time.perf_counter()
            try:
                status = httpx.post(receiver.notify_url, content=body, headers=headers, timeout=5).status_code
            except httpx.TimeoutException:
                status = 0
            valid.append((status, time.perf_counter() - started))
            i += 1
            done.wait(0.25)

    sent: list[int] = []
    sender = threading.Thread(target=valid_sender)
    started = time.perf_counter()
    sender.start()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(deliver, range(count + 20)))
    seconds = time.perf_counter() - started
    done.set()
    sender.join()
    counters = receiver.health()["counters"]
    receiver.stop()
    latencies = [t for s, t in valid if s == 204]
    return {
        "receiver": receiver,
        "sent": sum(sent),
        "seconds": seconds,
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "sizes": sizes(receiver.log_root),
        "counters": counters,
        "valid": len(valid),
        "valid_204": len(latencies),
        "latency": (statistics.median(latencies), max(latencies)) if latencies else (0, 0),
        "warnings": receiver.text.count(" WARNING "),
    }


def probe_flood(bench: Bench, args) -> Path:
    print(f"\n## flood: {args.flood} forged 1 MiB callbacks + 20 unrouted 1 MiB control-byte bodies, 8 at a time")
    results = [("default caps (64 MiB a day, 1 GiB in all)", flood(bench, args.flood))]
    results.append(("a 1 MiB cap a day", flood(bench, args.flood, rejected_day_bytes="1MiB")))
    for label, r in results:
        print(
            f"- {label}: sent {human(r['sent'])} in {r['seconds']:.1f} s ({(args.flood + 20) / r['seconds']:.0f} req/s)"
        )
        print(f"  answers {r['statuses']}; log growth {', '.join(f'{k}/ {human(v)}' for k, v in r['sizes'].items())}")
        c = r["counters"]
        print(
            f"  records written {c['records_written']}, dropped {c['records_dropped']}; "
            f"{r['warnings']} warning lines in the receiver's log"
        )
        print(
            f"  valid callbacks during the flood: {r['valid_204']}/{r['valid']} answered 204, "
            f"median {ms(r['latency'][0])}, max {ms(r['latency'][1])}"
        )
    return results[0][1]["receiver"].log_root


def probe_startup(bench: Bench, flooded: Path | None) -> None:
    print("\n## startup: a fresh receiver's first answer, and reading the last days of ids")
    logs: list[tuple[str, Path]] = []
    if flooded is not None:
        logs.append(("after the flood", flooded))
    big = bench.work / "startup-big" / "notifications"
    log = NotificationLog(big)
    now = datetime.now(BEIJING)
    body = json.dumps({"id": "x", "resource": {"ciphertext": "A" * 1500}}).encode()
    for day in range(7):
        at = now - timedelta(days=day)
        lines = b"".join(
            LogEntry(at, INITIATOR, "accepted", None, f"EV-{day}-{i:06d}", {}, body, 204).to_line()
            for i in range(20_000)
        )
        path = log.path(INITIATOR, at.date())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lines)
    logs.append(("7 days x 20,000 accepted lines", big))
    for label, root in logs:
        data = root.parent
        started = time.perf_counter()
        receiver = bench.receiver(data=data)
        receiver.health()
        first = time.perf_counter() - started
        receiver.stop()
        started = time.perf_counter()
        known = NotificationLog(root).warm(INITIATOR, now.date())
        warm = time.perf_counter() - started
        print(
            f"- {label} ({human(sum(sizes(root).values()))} of log): spawn to first answer {first:.2f} s; "
            f"warm {warm:.3f} s for {known} ids"
        )


def probe_ratelimit(bench: Bench, args) -> None:
    print(f"\n## ratelimit: one peer sends {args.flood} forged 1 MiB callbacks (60 refusals a minute, burst 30)")
    receiver = bench.receiver(trusted_proxies=["127.0.0.1"])
    block = os.urandom(MIB)
    times: dict[int, list[float]] = {}
    valid = []
    with httpx.Client(timeout=30) as client:
        for i in range(args.flood):
            headers, body = bench.callbacks.forged(i.to_bytes(4, "big") + block[4:])
            started = time.perf_counter()
            try:
                answer = client.post(
                    receiver.notify_url, content=body, headers={**headers, "X-Forwarded-For": "203.0.113.66"}
                )
                status: int | str = answer.status_code
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                status = "reset"  # answered 429 and closed without reading what was still being sent
            times.setdefault(status, []).append(time.perf_counter() - started)
            if i % 200 == 0:
                _, vh, vb = bench.callbacks.valid(200_000 + i)
                valid.append(
                    client.post(
                        receiver.notify_url, content=vb, headers={**vh, "X-Forwarded-For": "198.51.100.10"}
                    ).status_code
                )
    counters = receiver.health()["counters"]
    receiver.stop()
    for status, spent in sorted(times.items(), key=lambda item: str(item[0])):
        print(f"- {status}: {len(spent)} answers, median {ms(statistics.median(spent))} (sending 1 MiB included)")
    print(
        f"- records written {counters['records_written']}, rate_limited {counters['rate_limited']} (a client still"
        " sending its 1 MiB may see the connection reset instead of the 429)"
    )
    print(f"- the other peer's valid callbacks meanwhile: {valid.count(204)}/{len(valid)} answered 204")


def probe_slow(bench: Bench, args) -> None:
    print(f"\n## slow: {args.slow} half-sent request heads against an open-file limit of {args.open_files}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.slow + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.slow + 200), hard))
    receiver = bench.receiver(open_files=args.open_files)
    host, port = receiver.url.removeprefix("http://").split(":")
    sockets = []
    opened = time.perf_counter()
    for _ in range(args.slow):
        conn = socket.create_connection((host, int(port)), timeout=30)
        conn.sendall(f"POST /wxpay/notify/{INITIATOR} HTTP/1.1\r\nHost: x\r\n".encode())
        sockets.append(conn)
    latencies = []
    for i in range(3):
        _, headers, body = bench.callbacks.valid(300_000 + i)
        started = time.perf_counter()
        status = httpx.post(receiver.notify_url, content=body, headers=headers, timeout=5).status_code
        latencies.append((status, time.perf_counter() - started))
    selector = selectors.DefaultSelector()
    for conn in sockets:
        selector.register(conn, selectors.EVENT_READ)
    closed, last = 0, 0.0
    while closed < len(sockets):
        events = selector.select(timeout=60)
        if not events:
            break
        for key, _ in events:
            with contextlib.suppress(OSError):
                key.fileobj.recv(1024)
            selector.unregister(key.fileobj)
            key.fileobj.close()
            closed += 1
            last = time.perf_counter() - opened
    counters = receiver.health()["counters"]
    receiver.stop()
    cap = next((line for line in receiver.output if line.startswith("limits:")), "").split(",")[0]
    print(f"- receiver: {cap.removeprefix('limits: ')}")
    print(f"- valid callbacks: {', '.join(f'{s} in {ms(t)}' for s, t in latencies)}")
    print(f"- slow connections closed by the server: {closed}/{len(sockets)}, the last {last:.1f} s after opening")
    print(
        f"- evicted {counters['connections_evicted']}, head timeouts {counters['head_timeouts']}, "
        f"refused {counters['connections_refused']}; 'Too many open files' in its output: "
        f"{receiver.text.count('Too many open files')}"
    )


def probe_kill(bench: Bench, args) -> None:
    print(f"\n## kill: kill -9 in a stream of {args.stream} valid callbacks (4 senders), then a restart and retries")
    receiver = bench.receiver()
    signed = [bench.callbacks.valid(400_000 + i) for i in range(args.stream)]
    acknowledged: set[str] = set()
    lock, enough = threading.Lock(), threading.Event()

    def send(part: int) -> None:
        with httpx.Client(timeout=5) as client:
            for ident, headers, body in signed[part::4]:
                try:
                    if client.post(receiver.notify_url, content=body, headers=headers).status_code == 204:
                        with lock:
                            acknowledged.add(ident)
                            if len(acknowledged) >= args.stream // 4:
                                enough.set()
                except httpx.HTTPError:
                    return

    senders = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in senders:
        thread.start()
    enough.wait(300)
    receiver.kill()
    for thread in senders:
        thread.join()
    scan = NotificationLog(receiver.log_root).read(INITIATOR)
    logged = [r.entry.notification_id for r in scan if r.entry.outcome == "accepted"]
    print(
        f"- at the kill: {len(acknowledged)} answered 204, {len(logged)} accepted lines; lost "
        f"{len(acknowledged - set(logged))}, doubled {len(logged) - len(set(logged))}, torn lines {len(scan.skipped)}"
    )
    restarted = bench.receiver(data=receiver.log_root.parent)
    retried = 0
    with httpx.Client(timeout=5) as client:
        for ident, headers, body in signed:
            if ident not in acknowledged:
                retried += client.post(restarted.notify_url, content=body, headers=headers).status_code == 204
    restarted.stop()
    final = [r.entry for r in NotificationLog(receiver.log_root).read(INITIATOR)]
    accepted = [e.notification_id for e in final if e.outcome == "accepted"]
    print(
        f"- after the restart and {retried} retries: {len(set(accepted))}/{args.stream} accepted, "
        f"{len(accepted) - len(set(accepted))} twice, {sum(e.outcome == 'duplicate' for e in final)} duplicates "
        "(written before the kill, not answered)"
    )


def probe_disk(bench: Bench) -> None:
    print("\n## disk: a private 1 MiB tmpfs filling up")
    reason = tmpfs_available()
    if reason:
        print(f"- skipped: {reason}")
        return
    for label, threshold in (("no threshold (the writes fail)", "0B"), ("a 512 KiB threshold", "512KiB")):
        receiver = bench.receiver(tmpfs_bytes=MIB, min_free_disk=threshold)
        answers: dict[str, int] = {}
        with httpx.Client(timeout=5) as client:
            for i in range(2000):
                ident, headers, body = bench.callbacks.valid(500_000 + bench.runs * 10_000 + i)
                answers[ident] = client.post(receiver.notify_url, content=body, headers=headers).status_code
                if list(answers.values())[-20:] == [answers[ident]] * 20 and answers[ident] != 204:
                    break
        scan = NotificationLog(receiver.files_root).read(INITIATOR)
        logged = sorted(r.entry.notification_id for r in scan)
        exact = logged == sorted(i for i, s in answers.items() if s == 204)
        counters = receiver.health()["counters"]
        receiver.stop()
        codes = list(answers.values())
        print(
            f"- {label}: {codes.count(204)} answered 204, then {len(codes) - codes.count(204)} answered "
            f"{sorted(set(codes) - {204})}; the log holds exactly the 204s: {exact}; torn lines {len(scan.skipped)}; "
            f"storage_faults {counters['storage_faults']}, low_disk {counters['low_disk']}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=1100)
    parser.add_argument("--open-files", type=int, default=1024)
    parser.add_argument("--stream", type=int, default=2000)
    parser.add_argument("--only", default=",".join(PROBES))
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    print(
        f"# bench/faults.py on {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}; uvicorn {__import__('uvicorn').__version__}"
    )
    with tempfile.TemporaryDirectory(
        prefix="wxrecon-faults-", dir=REPO / "var" if (REPO / "var").is_dir() else None
    ) as tmp:
        bench = Bench(Path(tmp))
        try:
            flooded = probe_flood(bench, args) if "flood" in only else None
            if "startup" in only:
                probe_startup(bench, flooded)
            if "ratelimit" in only:
                probe_ratelimit(bench, args)
            if "slow" in only:
                probe_slow(bench, args)
            if "kill" in only:
                probe_kill(bench, args)
            if "disk" in only:
                probe_disk(bench)
        finally:
            bench.close()


if __name__ == "__main__":
    main()
