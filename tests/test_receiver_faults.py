"""The receiver under attack and under faults, as it runs in production: ``wxrecon receiver`` in a process of
its own, from a settings file. A flood of forged 1 MiB callbacks, a peer refused too often, ``kill -9`` in the
middle of a stream, a filesystem that fills up, slow connections past the open-file limit. Each asserts
counts; bench/faults.py runs the long versions and prints figures."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import resource
import selectors
import socket
import threading

import httpx
import pytest

from flows.notifications import REJECTED, NotificationLog
from tests.conftest import INITIATOR
from tests.receiver_process import Callbacks, ReceiverProcess, settings_file, tmpfs_available

pytestmark = pytest.mark.slow

MIB = 1 << 20


@pytest.fixture
def callbacks(merchant_pool):
    made = Callbacks(merchant_pool)
    yield made
    made.close()


@pytest.fixture
def receivers(tmp_path, merchant_pool):
    """Start receivers (``start(**settings)``); every one still running is stopped by its pid at the end."""
    started: list[ReceiverProcess] = []
    initiator = next(m for m in merchant_pool if m.mchid == INITIATOR)

    def start(*, open_files=None, tmpfs_bytes=None, **settings) -> ReceiverProcess:
        config = settings_file(tmp_path / "config", initiator, tmp_path / "var", **settings)
        receiver = ReceiverProcess.start(
            config, tmp_path / "var" / "notifications", open_files=open_files, tmpfs_bytes=tmpfs_bytes
        )
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def post(url: str, headers: dict[str, str], body: bytes, *, timeout: float = 5.0) -> httpx.Response:
    """One delivery, with WeChat Pay's patience (an answer later than 5 s is a failure)."""
    return httpx.post(url, content=body, headers=headers, timeout=timeout)


def log_bytes(root) -> dict[str, int]:
    """Bytes of log per top-level directory."""
    sizes: dict[str, int] = {}
    for path in root.rglob("*.jsonl"):
        top = path.relative_to(root).parts[0]
        sizes[top] = sizes.get(top, 0) + path.stat().st_size
    return sizes


@pytest.mark.parametrize("flood", [200])
def test_a_forged_flood_grows_the_log_no_more_than_the_cap_while_a_valid_callback_is_accepted(
    receivers, callbacks, flood
):
    cap = 128 * 1024
    receiver = receivers(rejected_day_bytes=cap, rejected_total_bytes=4 * cap, refused_per_minute=0)
    block = os.urandom(MIB)
    valid_id, valid_headers, valid_body = callbacks.valid(1)
    answers: list[int] = []

    def forge(i: int) -> int:
        headers, body = callbacks.forged(i.to_bytes(4, "big") + block[4:])  # 1 MiB each, each different
        return post(receiver.notify_url, headers, body, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(forge, i) for i in range(flood)]
        concurrent.futures.wait(futures[: flood // 2])
        valid = post(receiver.notify_url, valid_headers, valid_body)  # in the middle of the flood
        answers = [f.result() for f in futures]

    assert valid.status_code == 204
    assert answers == [401] * flood
    sizes = log_bytes(receiver.log_root)
    assert sizes[REJECTED] <= cap  # 200 MiB of forged bodies, at most 128 KiB of records
    [accepted] = (r.entry for r in NotificationLog(receiver.log_root).read(INITIATOR))
    assert (accepted.outcome, accepted.notification_id, accepted.body_bytes) == ("accepted", valid_id, valid_body)
    counters = receiver.health()["counters"]
    assert counters["records_written"] + counters["records_dropped"] == flood
    assert counters["records_dropped"] > 0
    assert (counters["refused_401"], counters["accepted"]) == (flood, 1)
    assert receiver.text.count("reached the day's cap") == 1


def test_a_peer_refused_too_often_gets_429_and_other_peers_are_served(receivers, callbacks):
    receiver = receivers(refused_per_minute=6, refused_burst=10, trusted_proxies=["127.0.0.1"])
    attacker = {"X-Forwarded-For": "203.0.113.66"}  # as a TLS-terminating proxy on this host would say
    wechat = {"X-Forwarded-For": "198.51.100.10"}
    block = os.urandom(MIB)
    answers: list[int | str] = []
    for i in range(50):
        headers, body = callbacks.forged(i.to_bytes(4, "big") + block[4:])
        try:
            answers.append(post(receiver.notify_url, {**headers, **attacker}, body).status_code)
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            # answered 429 and closed without reading the 1 MiB still being sent: the kernel resets the
            # connection, and a client still sending may see the reset instead of the answer
            answers.append("reset")
    _, headers, body = callbacks.valid(2)
    assert post(receiver.notify_url, {**headers, **wechat}, body).status_code == 204

    assert answers[:10] == [401] * 10
    assert set(answers[10:]) <= {401, 429, "reset"}  # a refill of one a 10 s may let one more through
    refused_unread = answers.count(429) + answers.count("reset")
    assert refused_unread >= 38
    records = [r.entry for r in NotificationLog(receiver.log_root).read(REJECTED)]
    assert len(records) == answers.count(401)  # a 429 is counted, not recorded, and costs no RSA
    assert {r.peer for r in records} == {"203.0.113.66"}
    assert receiver.health()["counters"]["rate_limited"] == refused_unread


def test_kill_9_in_the_middle_of_a_stream_loses_no_acknowledged_callback_and_doubles_none(receivers, callbacks):
    receiver = receivers()
    total = 400
    signed = [callbacks.valid(i) for i in range(total)]
    acknowledged: set[str] = set()
    enough = threading.Event()
    lock = threading.Lock()

    def send(part: int) -> None:
        with httpx.Client(timeout=5) as client:
            for ident, headers, body in signed[part::4]:
                try:
                    answer = client.post(receiver.notify_url, content=body, headers=headers)
                except httpx.HTTPError:
                    return  # the receiver is gone
                if answer.status_code == 204:
                    with lock:
                        acknowledged.add(ident)
                        if len(acknowledged) >= total // 4:
                            enough.set()

    senders = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in senders:
        thread.start()
    assert enough.wait(120)
    receiver.kill()  # kill -9, with deliveries in flight
    for thread in senders:
        thread.join(timeout=60)

    scan = NotificationLog(receiver.log_root).read(INITIATOR)
    logged = [r.entry.notification_id for r in scan if r.entry.outcome == "accepted"]
    assert total // 4 <= len(acknowledged) < total
    assert acknowledged <= set(logged)  # every 204 is on disk
    assert len(logged) == len(set(logged))  # once
    assert all(s.final for s in scan.skipped)  # at most a line cut short at the very end, never a good one lost

    restarted = receivers()  # WeChat Pay retries what was not acknowledged
    for ident, headers, body in signed:
        if ident not in acknowledged:
            assert post(restarted.notify_url, headers, body).status_code == 204
    final = [r.entry for r in NotificationLog(receiver.log_root).read(INITIATOR)]
    accepted = [e.notification_id for e in final if e.outcome == "accepted"]
    assert sorted(accepted) == sorted(ident for ident, _, _ in signed)  # all of them, each exactly once
    duplicates = [e.notification_id for e in final if e.outcome == "duplicate"]
    assert set(duplicates) == set(logged) - acknowledged  # written, then killed before it could answer


@pytest.fixture
def tmpfs():
    reason = tmpfs_available()
    if reason:
        pytest.skip(reason)


@pytest.mark.usefixtures("tmpfs")
def test_a_full_filesystem_while_receiving_acknowledges_nothing_it_did_not_persist(receivers, callbacks):
    receiver = receivers(tmpfs_bytes=128 * 1024, min_free_disk="0B")  # no threshold: the writes themselves fail
    answers: dict[str, httpx.Response] = {}
    failures = 0
    for i in range(400):  # until the filesystem is full, and five more deliveries
        ident, headers, body = callbacks.valid(i)
        answers[ident] = post(receiver.notify_url, headers, body)
        failures += answers[ident].status_code == 500
        if failures > 5:
            break

    codes = [a.status_code for a in answers.values()]
    assert 204 in codes
    assert 500 in codes
    assert set(codes) == {204, 500}
    failed = next(a for a in answers.values() if a.status_code == 500)
    assert failed.json() == {"code": "FAIL", "message": "StorageError"}
    scan = NotificationLog(receiver.files_root).read(INITIATOR)
    logged = [r.entry.notification_id for r in scan]
    assert scan.skipped == []  # nothing half-written
    assert sorted(logged) == sorted(i for i, a in answers.items() if a.status_code == 204)  # no 204 unpersisted
    assert "storage fault appending to the notification log" in receiver.text
    assert "(ENOSPC)" in receiver.text
    health = receiver.health()
    assert "storage_fault" in health["problems"]
    assert health["counters"]["storage_faults"] == codes.count(500)


@pytest.mark.usefixtures("tmpfs")
def test_below_the_free_disk_threshold_valid_callbacks_get_503(receivers, callbacks):
    receiver = receivers(tmpfs_bytes=256 * 1024, min_free_disk="200KiB")
    codes: dict[str, int] = {}
    for i in range(200):
        ident, headers, body = callbacks.valid(i)
        codes[ident] = post(receiver.notify_url, headers, body).status_code
        if list(codes.values())[-3:] == [503] * 3:
            break
    statuses = list(codes.values())
    assert statuses[0] == 204
    first = statuses.index(503)
    assert set(statuses[first:]) == {503}  # once below the threshold, every callback: WeChat retries later
    logged = [r.entry.notification_id for r in NotificationLog(receiver.files_root).read(INITIATOR)]
    assert sorted(logged) == sorted(i for i, c in codes.items() if c == 204)
    assert "below the threshold of 204800" in receiver.text
    health = receiver.health()
    assert health["problems"] == ["low_disk"]
    assert health["counters"]["low_disk"] == statuses.count(503)


@pytest.mark.parametrize(("slow", "open_files"), [(1100, 1024)])
def test_slow_connections_past_the_open_file_limit_do_not_starve_valid_callbacks(
    receivers, callbacks, slow, open_files
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < slow + 200:
        if hard < slow + 200:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (slow + 200, hard))
    receiver = receivers(open_files=open_files, head_timeout=5)
    host, port = receiver.url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(slow):
        conn = socket.create_connection((host, int(port)), timeout=10)
        conn.sendall(f"POST /wxpay/notify/{INITIATOR} HTTP/1.1\r\nHost: x\r\n".encode())
        sockets.append(conn)
    for i in range(3):
        _, headers, body = callbacks.valid(i)
        assert post(receiver.notify_url, headers, body).status_code == 204  # within WeChat Pay's 5 s

    selector = selectors.DefaultSelector()
    for conn in sockets:
        selector.register(conn, selectors.EVENT_READ)
    closed = 0
    while closed < slow:
        events = selector.select(timeout=30)
        assert events, f"{slow - closed} slow connections still open"
        for key, _ in events:
            with contextlib.suppress(ConnectionResetError):
                assert key.fileobj.recv(1024) == b""
            selector.unregister(key.fileobj)
            key.fileobj.close()
            closed += 1
    counters = receiver.health()["counters"]
    assert counters["connections_evicted"] + counters["head_timeouts"] == slow
    assert counters["accepted"] == 3
    assert f"connections (open-file limit {open_files})" in receiver.text
    assert "Too many open files" not in receiver.text
    assert json.loads(json.dumps(counters))["connections_refused"] == 0
