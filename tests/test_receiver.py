"""The notify_url receiver and its log, over real loopback HTTP: the simulator served on 127.0.0.1
delivers callbacks to the receiver served on 127.0.0.1; other callbacks are fired at it directly."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

import wxpay
from flows.notifications import (
    REJECTED,
    UNROUTED,
    LogEntry,
    NotificationLog,
    ReceiverLimits,
    ReceiverMerchant,
    create_app,
    serve_receiver,
)
from tests.conftest import INITIATOR, combine_request
from wxpay.models import BEIJING
from wxpay.notify import parse_notification
from wxpay.sim import serve

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
WECHATPAY_HEADERS = {
    "wechatpay-nonce",
    "wechatpay-serial",
    "wechatpay-signature",
    "wechatpay-signature-type",
    "wechatpay-timestamp",
}
REPO = Path(__file__).resolve().parent.parent


class Harness:
    """A served simulator, and a receiver for the initiator over one log directory (restartable)."""

    def __init__(self, sim, initiator, sim_url: str, root: Path):
        self.sim, self.initiator, self.sim_url, self.root = sim, initiator, sim_url, root
        self.client = wxpay.Client(base_url=sim_url, **initiator.client_kwargs())
        self.server = None
        self.notes: list = []
        self.hook_called = threading.Event()

    def record_hook(self, note) -> None:
        self.notes.append(note)
        self.hook_called.set()

    def start(self, hook=None, clock=None, *, max_duplicates: int = 32, **options) -> Harness:
        self.stop()
        self.log = NotificationLog(self.root, max_duplicates=max_duplicates)
        merchant = ReceiverMerchant(self.initiator.verifier(), self.initiator.api_v3_key)
        self.app = create_app({INITIATOR: merchant}, self.log, hook or self.record_hook, clock=clock, **options)
        self.server = serve_receiver(self.app)
        return self

    @property
    def counters(self) -> dict[str, int]:
        return self.app.state.counters.snapshot()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def notify_url(self) -> str:
        return f"{self.server.url}/wxpay/notify/{INITIATOR}"

    def pay(self, number: str, *, deliver: bool = True):
        """Create a combine order (over HTTP) that notifies our receiver; the payer pays; WeChat notifies."""
        self.client.combine.create_native(combine_request(number, notify_url=self.notify_url))
        self.sim.pay(INITIATOR, number, openid=OPENID, deliver=deliver)
        return next(d for d in self.sim.deliveries if d.combine_out_trade_no == number)

    def post(self, body: bytes, headers: dict[str, str], path: str | None = None) -> httpx.Response:
        url = self.server.url + (path or f"/wxpay/notify/{INITIATOR}")
        return httpx.post(url, content=body, headers={"Content-Type": "application/json", **headers})

    def entries(self, mchid: str = INITIATOR) -> list[LogEntry]:
        """What a reader (a fresh log object, as the reconciliation) finds."""
        scan = NotificationLog(self.root).read(mchid)
        entries = [record.entry for record in scan]
        assert scan.skipped == []
        return entries

    def records(self) -> list[LogEntry]:
        """The records of refused requests (every path, every merchant)."""
        return self.entries(REJECTED)


@pytest.fixture
def harness(sim, initiator, tmp_path):
    with serve(sim) as sim_server:
        h = Harness(sim, initiator, sim_server.url, tmp_path / "notify-log").start()
        yield h
        h.stop()
        h.client.close()


def outcomes(entries: list[LogEntry]) -> list[str]:
    return [e.outcome for e in entries]


def reverify(entry: LogEntry, initiator):
    """What the reconciliation does with a line: verify as of received_at, decrypt."""
    verifier = initiator.verifier(clock=lambda: entry.received_at.timestamp())
    return parse_notification(entry.headers, entry.body_bytes, verifier=verifier, api_v3_key=initiator.api_v3_key)


def raw_exchange(server_url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``timeout`` passes)."""
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def head(path: str, length: int, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def test_a_valid_callback_is_answered_204_after_one_accepted_line_that_reverifies(harness, initiator):
    delivery = harness.pay("C20261126001")

    assert delivery.attempts[0].status == 204
    assert delivery.acknowledged
    [entry] = harness.entries()
    assert entry.outcome == "accepted"
    assert (entry.mchid, entry.notification_id, entry.reason, entry.reply_status) == (
        INITIATOR,
        delivery.notification_id,
        None,
        204,
    )
    assert entry.body_bytes == delivery.body
    assert set(entry.headers) == WECHATPAY_HEADERS  # no Content-Type, Host, User-Agent ...
    note = reverify(entry, initiator)
    assert note.id == delivery.notification_id
    assert note.order.combine_out_trade_no == "C20261126001"
    assert note.order.total_amount == 12800 + 3550

    [path] = (harness.root / INITIATOR).glob("*.jsonl")
    raw = path.read_bytes()
    assert raw.isascii()
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    line = json.loads(raw)
    assert line["v"] == 2
    assert list(line) == [
        "v",
        "received_at",
        "mchid",
        "outcome",
        "reason",
        "notification_id",
        "headers",
        "body",
        "reply_status",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00", line["received_at"])
    assert path.name == line["received_at"][:10] + ".jsonl"
    assert line["body"] == delivery.body.decode("utf-8")

    assert harness.hook_called.wait(5)
    assert [n.id for n in harness.notes] == [delivery.notification_id]
    assert harness.notes[0].order.combine_payer_info.openid == OPENID


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("wrong_key", "SignatureMismatchError"),
        ("stale", "TimestampOutOfWindowError"),
        ("signtest", "SignatureProbeError"),
        ("tamper", "SignatureMismatchError"),
    ],
)
def test_an_untrusted_callback_is_refused_401_logged_rejected_and_the_retry_is_accepted(harness, fault, error):
    harness.sim.faults.add("notify", fault)
    delivery = harness.pay("C20261126001")

    first = delivery.attempts[0]
    assert first.status == 401
    assert json.loads(first.error) == {"code": "FAIL", "message": error}
    assert harness.entries() == []  # the merchant's files hold only what was accepted
    [rejected] = harness.records()
    assert (rejected.mchid, rejected.outcome, rejected.reply_status) == (INITIATOR, "rejected", 401)
    assert rejected.reason.startswith(error + ": ")
    assert rejected.notification_id == delivery.notification_id  # claimed by the unverified body
    assert set(rejected.headers) == WECHATPAY_HEADERS | {"content-length", "content-type"}
    sent = delivery.body if fault != "tamper" else None  # tamper changes the body after signing
    assert rejected.body_bytes is None  # a bounded record, never the body
    assert rejected.body_complete is True
    if sent is not None:
        assert (rejected.body_length, rejected.body_sha256) == (len(sent), hashlib.sha256(sent).hexdigest())
        assert rejected.excerpt == sent[:256].decode()
    assert (rejected.peer, rejected.path) == ("127.0.0.1", f"/wxpay/notify/{INITIATOR}")
    assert not harness.hook_called.is_set()

    harness.sim.advance(15)  # WeChat Pay's first retry
    assert delivery.attempts[1].status == 204
    assert outcomes(harness.entries()) == ["accepted"]
    assert len(harness.records()) == 1
    assert harness.hook_called.wait(5)
    counters = harness.counters
    assert (counters["refused_401"], counters["records_written"], counters["accepted"]) == (1, 1, 1)


def test_a_signed_body_that_is_not_json_or_not_utf8_is_refused_400(harness, sim, initiator):
    headers, body = sim.signed_headers(initiator, b"not json")
    answer = harness.post(body, headers)
    assert answer.status_code == 400
    assert answer.json() == {"code": "FAIL", "message": "MalformedNotificationError"}

    headers, binary = sim.signed_headers(initiator, b"\xff\xfe\x00{binary")
    assert harness.post(binary, headers).status_code == 400

    answer = harness.post(b'{"id":"EV-1"}', {})  # no signature at all
    assert answer.status_code == 401
    assert answer.json()["message"] == "MissingSignatureError"

    text, raw, unsigned = harness.records()
    assert (text.outcome, text.reply_status, text.notification_id) == ("rejected", 400, None)
    assert text.reason.startswith("MalformedNotificationError: ")
    assert (text.body_length, text.excerpt) == (8, "not json")
    assert raw.body_length == len(b"\xff\xfe\x00{binary")
    assert raw.excerpt == "\ufffd\ufffd\\x00{binary"  # safe text: not UTF-8 is U+FFFD, control bytes escaped
    assert raw.body_sha256 == hashlib.sha256(b"\xff\xfe\x00{binary").hexdigest()
    assert (unsigned.reason.split(":")[0], unsigned.notification_id) == ("MissingSignatureError", "EV-1")
    assert set(unsigned.headers) == {"content-length", "content-type"}
    assert harness.entries() == []


def test_a_body_over_the_limit_is_refused_413_without_storing_it(harness):
    # Content-Length says it: refused at once (the body is never sent here, so reading it would wait)
    answer = raw_exchange(harness.server.url, head(f"/wxpay/notify/{INITIATOR}", (1 << 20) + 1))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"code": "FAIL", "message": "PayloadTooLargeError"}')
    assert b"connection: close" in answer.lower()

    def chunks():  # no Content-Length (chunked): refused once more than the limit has arrived
        for _ in range(17):
            yield b"y" * 65536

    url = f"{harness.server.url}/wxpay/notify/{INITIATOR}"
    assert httpx.post(url, content=chunks()).status_code == 413

    declared, streamed = harness.records()
    assert (declared.outcome, declared.reply_status, declared.body_bytes) == ("rejected", 413, None)
    assert declared.reason == "PayloadTooLargeError: Content-Length 1048577 exceeds 1048576 bytes"
    assert (declared.body_length, declared.body_complete, declared.headers["content-length"]) == (0, False, "1048577")
    assert streamed.reason == "PayloadTooLargeError: body exceeds 1048576 bytes"
    assert (1 << 20) < streamed.body_length <= (1 << 20) + (1 << 18)  # it stopped reading soon after the limit
    assert streamed.body_complete is False
    assert streamed.excerpt == "y" * 256
    assert harness.entries() == []
    assert harness.counters["refused_413"] == 2


def test_a_path_naming_no_configured_merchant_is_refused_404_and_logged_unrouted(harness, sim, initiator):
    delivery = harness.pay("C20261126001", deliver=False)
    headers, body = sim.signed_headers(initiator, delivery.body)

    answer = harness.post(body, headers, "/wxpay/notify/1999999999")
    assert answer.status_code == 404
    assert answer.json() == {"code": "FAIL", "message": "UnknownMerchantError"}
    assert harness.post(body, headers, "/wxpay/notify/..%2F..%2Fescape").status_code == 404

    assert httpx.get(f"{harness.server.url}/").status_code == 404  # any other path or method too

    first, second, third = harness.records()
    assert (first.mchid, first.outcome, first.reply_status) == (UNROUTED, "rejected", 404)
    assert first.path == "/wxpay/notify/1999999999"
    assert first.notification_id == delivery.notification_id
    assert first.reason == "UnknownMerchantError: no receiver configured for /wxpay/notify/1999999999"
    assert (second.mchid, second.path) == (UNROUTED, "/wxpay/notify/../../escape")
    assert (third.path, third.reason) == ("/", "UnknownMerchantError: no receiver configured for GET /")
    assert [p.relative_to(harness.root).parts[0] for p in harness.root.rglob("*.jsonl")] == [REJECTED]
    assert sorted(p.name for p in harness.root.parent.iterdir()) == ["notify-log"]  # nothing escaped
    assert harness.entries() == []


def test_fifty_concurrent_deliveries_of_one_callback_make_one_accepted_line_and_49_duplicates(harness, sim, initiator):
    harness.start(max_duplicates=100)  # every duplicate logged (the default cap is 32)
    delivery = harness.pay("C20261126001", deliver=False)
    signed = []
    for i in range(50):
        headers, body = sim.signed_headers(initiator, delivery.body)
        signed.append(({**headers, "Request-ID": f"08F5B8C2B506102C18FDDFEEA30620BE821E28EDC405-{i}"}, body))

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=harness.server.url, limits=limits, timeout=10) as client:
            return await asyncio.gather(
                *(client.post(f"/wxpay/notify/{INITIATOR}", content=body, headers=headers) for headers, body in signed)
            )

    answers = asyncio.run(fire())

    assert [a.status_code for a in answers] == [204] * 50
    entries = harness.entries()
    assert sorted(outcomes(entries)) == ["accepted"] + ["duplicate"] * 49
    assert {e.notification_id for e in entries} == {delivery.notification_id}
    assert {e.headers["request-id"] for e in entries} == {h["Request-ID"] for h, _ in signed}
    assert all(e.reply_status == 204 for e in entries)

    sim.deliver_due()  # and WeChat Pay's own delivery of the same callback
    assert delivery.attempts[0].status == 204
    assert outcomes(harness.entries()).count("accepted") == 1
    harness.stop()  # a graceful stop waits for the hooks still running after their answers
    assert len(harness.notes) == 1


def test_a_restarted_receiver_still_knows_the_accepted_ids(harness, sim, initiator):
    delivery = harness.pay("C20261126001")
    assert delivery.attempts[0].status == 204

    harness.start()  # a new process: new app, new log object, same directory
    assert delivery.notification_id in harness.log.accepted_ids(INITIATOR)
    harness.hook_called.clear()
    headers, body = sim.signed_headers(initiator, delivery.body)
    assert harness.post(body, headers).status_code == 204
    assert outcomes(harness.entries()) == ["accepted", "duplicate"]

    other = harness.pay("C20261126002")
    assert other.attempts[0].status == 204
    assert outcomes(harness.entries()) == ["accepted", "duplicate", "accepted"]
    assert harness.hook_called.wait(5)
    assert [n.id for n in harness.notes] == [delivery.notification_id, other.notification_id]


@pytest.mark.parametrize("failure", ["unwritable_directory", "disk_full"])
def test_when_the_log_cannot_be_written_the_answer_is_500_and_the_retry_succeeds(harness, failure, caplog):
    received_at = datetime.now(BEIJING)
    harness.start(clock=lambda: received_at)
    harness.root.mkdir(parents=True, exist_ok=True)
    blocker = harness.root / INITIATOR
    if failure == "unwritable_directory":
        blocker.write_text("a file where the merchant's log directory should be")
    else:
        blocker.mkdir()
        blocker = blocker / f"{received_at.date().isoformat()}.jsonl"
        blocker.symlink_to("/dev/full")  # every write fails with ENOSPC

    caplog.set_level(logging.ERROR, logger="flows.notifications.receiver")
    delivery = harness.pay("C20261126001")
    first = delivery.attempts[0]
    assert first.status == 500
    assert json.loads(first.error) == {"code": "FAIL", "message": "StorageError"}  # no path sent to the network
    assert not delivery.acknowledged
    assert not harness.hook_called.is_set()
    assert harness.counters["storage_faults"] == 1
    code = "ENOSPC" if failure == "disk_full" else "EEXIST"
    assert f"storage fault appending to the notification log: {blocker}" in caplog.text or (
        f"storage fault opening a notification-log directory: {blocker}" in caplog.text
    )
    assert f"({code})" in caplog.text
    health = httpx.get(f"{harness.server.url}/wxpay/notify/_health")
    assert (health.status_code, health.json()["problems"]) == (503, ["storage_fault"])
    assert str(blocker) in health.json()["storage_fault"]

    blocker.unlink()  # the operator frees the disk
    harness.sim.advance(15)
    assert delivery.attempts[1].status == 204
    [entry] = harness.entries()
    assert (entry.outcome, entry.notification_id) == ("accepted", delivery.notification_id)
    assert harness.hook_called.wait(5)
    assert httpx.get(f"{harness.server.url}/wxpay/notify/_health").json()["status"] == "ok"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hook_that_raises_changes_neither_the_answer_nor_the_log(harness, caplog, kind):
    called = threading.Event()

    def sync_hook(note):
        called.set()
        raise RuntimeError("downstream is down")

    async def async_hook(note):
        called.set()
        raise RuntimeError("downstream is down")

    caplog.set_level(logging.ERROR, logger="flows.notifications.receiver")
    harness.start(hook=sync_hook if kind == "sync" else async_hook)
    delivery = harness.pay("C20261126001")

    assert delivery.attempts[0].status == 204
    assert outcomes(harness.entries()) == ["accepted"]
    harness.stop()  # a graceful stop waits for the hook to finish (and to be logged)
    assert called.is_set()
    assert f"notification hook failed for {delivery.notification_id}" in caplog.text
    assert "downstream is down" in caplog.text


def test_a_torn_final_line_is_skipped_and_reported_and_the_next_line_is_intact(harness):
    harness.pay("C20261126001")
    [path] = (harness.root / INITIATOR).glob("*.jsonl")
    good = path.read_bytes()
    with path.open("ab") as handle:  # a crash in the middle of a write
        handle.write(good[:57])

    scan = NotificationLog(harness.root).read(INITIATOR)
    assert [(r.line, r.entry.outcome) for r in scan] == [(1, "accepted")]
    [torn] = scan.skipped
    assert (torn.path, torn.line, torn.size, torn.final) == (path, 2, 57, True)
    assert "incomplete final line" in str(torn)

    harness.start()  # restart after the crash, then the next callback
    second = harness.pay("C20261126002")
    assert second.attempts[0].status == 204
    scan = NotificationLog(harness.root).read(INITIATOR)
    assert [(r.line, r.entry.notification_id) for r in scan][1] == (3, second.notification_id)
    [fragment] = scan.skipped
    assert (fragment.line, fragment.final) == (2, False)
    assert str(fragment).startswith(f"{path}:2: unreadable line")


def test_no_apiv3_key_and_no_payer_data_reach_the_log_files_or_the_logs(harness, sim, initiator, caplog):
    caplog.set_level(logging.DEBUG)
    delivery = harness.pay("C20261126001")
    sim.faults.add("notify", "wrong_key")
    other = harness.pay("C20261126002")
    harness.sim.advance(15)
    headers, body = sim.signed_headers(initiator, delivery.body)
    assert harness.post(body, headers).status_code == 204
    assert harness.post(body, headers, "/wxpay/notify/1900000999").status_code == 404
    assert outcomes(harness.entries()) == ["accepted", "accepted", "duplicate"]
    assert [r.reply_status for r in harness.records()] == [401, 404]
    assert other.acknowledged

    order = sim.ledger.get(INITIATOR, "C20261126001", sim.clock.now())
    secrets = [initiator.api_v3_key, OPENID, order.combine_transaction_id]
    secrets += [sub.transaction_id for sub in order.sub_orders]
    files = [p for p in harness.root.rglob("*") if p.is_file()]
    assert len(files) >= 3
    for path in files:
        content = path.read_bytes()
        assert not any(secret.encode() in content for secret in secrets), path
    assert not any(secret in caplog.text for secret in secrets)
    merchant = harness.app.state.receiver.merchants[INITIATOR]
    assert initiator.api_v3_key not in repr(merchant)
    assert "***" in repr(merchant)


WRITER = """
import os, sys
from datetime import datetime
from pathlib import Path
from flows.notifications import LogEntry, NotificationLog
from wxpay.models import BEIJING

root, me = Path(sys.argv[1]), sys.argv[2]
log = NotificationLog(root / "log", max_duplicates=100)
print("ready", flush=True)
sys.stdin.readline()  # start together: the test answers once both are ready
for i in range(25):
    entry = LogEntry(datetime.now(BEIJING), "1900000100", "accepted", None, "EV-shared", {}, b"{}", 204)
    log.accept(entry)
    log.append(LogEntry(datetime.now(BEIJING), "1900000100", "rejected", "X: y", None, {}, b"x" * 5000, 401))
"""


@pytest.mark.slow  # hundreds of requests or connections, or processes
def test_writers_in_two_processes_never_interleave_and_accept_an_id_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(i)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]

    scan = NotificationLog(tmp_path / "log").read(INITIATOR)
    entries = [r.entry for r in scan]
    assert scan.skipped == []
    assert len(entries) == 100
    assert sorted(outcomes(entries)) == ["accepted"] + ["duplicate"] * 49 + ["rejected"] * 50


# --- under attack: bounded records, caps, refusal limit, free disk, slow bodies -----------------------------


@pytest.mark.slow  # hundreds of requests or connections, or processes
def test_records_of_refused_requests_stop_at_their_cap_while_valid_callbacks_are_still_logged(harness, sim, caplog):
    caplog.set_level(logging.WARNING, logger="flows.notifications.receiver")
    limits = ReceiverLimits(rejected_day_bytes=16 * 1024, rejected_total_bytes=64 * 1024)
    harness.start(limits=limits)
    forged = [sim.signed_headers(harness.initiator, os.urandom(65536), fault="wrong_key") for _ in range(40)]
    answers = [harness.post(body, headers).status_code for headers, body in forged]
    delivery = harness.pay("C20261126001")  # WeChat Pay's genuine callback, in the middle of the flood
    answers += [harness.post(body, headers).status_code for headers, body in forged[:10]]

    assert answers == [401] * 50
    assert delivery.attempts[0].status == 204
    assert outcomes(harness.entries()) == ["accepted"]
    [day_file] = (harness.root / REJECTED).glob("*.jsonl")
    assert day_file.stat().st_size <= 16 * 1024  # 50 MB-ish of forged bodies: 16 KiB of records at most
    counters = harness.counters
    assert counters["records_written"] == len(harness.records()) == day_file.read_bytes().count(b"\n")
    assert counters["records_written"] + counters["records_dropped"] == 50
    assert counters["records_dropped"] > 0
    assert caplog.text.count("reached the day's cap of 16384 bytes") == 1  # said once, counted always
    health = httpx.get(f"{harness.server.url}/wxpay/notify/_health").json()
    assert (health["status"], health["problems"]) == ("degraded", ["rejected_stream_full"])
    assert health["counters"]["records_dropped"] == counters["records_dropped"]


def test_the_total_cap_of_records_removes_the_oldest_days_first(tmp_path, caplog):
    from flows.notifications.guards import Counters
    from flows.notifications.rejected import RejectedLog, refusal_record

    log = NotificationLog(tmp_path)
    folder = tmp_path / REJECTED
    folder.mkdir()
    today = datetime(2026, 11, 26, 12, tzinfo=BEIJING)
    for back in (3, 2, 1):
        (folder / f"{(today - timedelta(days=back)).date()}.jsonl").write_bytes(b"x" * 9000 + b"\n")
    counters = Counters()
    stream = RejectedLog(log, counters, day_bytes=8000, total_bytes=20000)
    record = refusal_record(
        received_at=today,
        mchid=UNROUTED,
        reason="UnknownMerchantError: no receiver configured for GET /",
        status=404,
        raw_headers=[],
        body=b"",
        complete=True,
        peer="203.0.113.9",
        path="/",
    )
    written = [stream.write(record) for _ in range(40)]

    assert sorted(p.name for p in folder.glob("*.jsonl")) == [
        f"{(today - timedelta(days=1)).date()}.jsonl",
        f"{today.date()}.jsonl",
    ]
    assert counters["record_files_removed"] == 2  # the two oldest days made room; yesterday still fits
    assert sum(p.stat().st_size for p in folder.glob("*.jsonl")) <= 20000
    assert written.count(True) == counters["records_written"] > 0
    assert written[-1] is False  # then today's cap
    assert "to keep" in caplog.text


@pytest.mark.slow  # hundreds of requests or connections, or processes
def test_a_peer_refused_too_often_is_answered_429_before_its_request_is_read(harness, sim, initiator):
    ticks = [1000.0]  # the receiver's monotonic clock, moved by the test
    limits = ReceiverLimits(refused_per_minute=60, refused_burst=3, rate_limit_loopback=True, body_timeout=120)
    harness.start(limits=limits, monotonic=lambda: ticks[0])
    url = f"/wxpay/notify/{INITIATOR}"
    assert [harness.post(b'{"id":"EV-1"}', {}).status_code for _ in range(3)] == [401] * 3

    # its bucket is empty: 429 at once, without waiting for a body that is never sent (reading it would
    # take the 120 s body timeout), and the connection is closed
    answer = raw_exchange(harness.server.url, head(url, 1000))
    assert answer.startswith(b"HTTP/1.1 429 ")
    assert b"connection: close" in answer.lower()
    delivery = harness.pay("C20261126001")  # even a valid callback: WeChat Pay retries later
    assert delivery.attempts[0].status == 429
    assert len(harness.records()) == 3  # 429s are counted, not recorded
    assert harness.entries() == []

    ticks[0] += 2.0  # two refusals' worth of refill (1 a second)
    harness.sim.advance(15)  # the retry
    assert delivery.attempts[1].status == 204  # a 204 spends nothing
    assert [harness.post(b'{"id":"EV-2"}', {}).status_code for _ in range(3)] == [401, 401, 429]
    counters = harness.counters
    assert (counters["rate_limited"], counters["refused_401"], counters["accepted"]) == (3, 5, 1)


@pytest.mark.slow  # hundreds of requests or connections, or processes
def test_loopback_peers_are_not_limited_unless_asked(harness):
    harness.start(limits=ReceiverLimits(refused_per_minute=60, refused_burst=2))
    assert {harness.post(b"{}", {}).status_code for _ in range(10)} == {401}
    assert harness.counters["rate_limited"] == 0


def test_peers_behind_a_trusted_proxy_are_who_it_forwarded():
    from flows.notifications.guards import Peers, RefusalLimiter

    direct = Peers()
    assert direct.peer(("10.0.0.5", 4000), {"x-forwarded-for": "203.0.113.9"}) == "10.0.0.5"  # believed by no one
    proxied = Peers(["10.0.0.0/8", "::1"])
    assert proxied.peer(("10.0.0.5", 4000), {"x-forwarded-for": "198.51.100.1, 203.0.113.9, 10.0.0.7"}) == (
        "203.0.113.9"  # the right-most address that is not a trusted proxy (the left ones are the client's word)
    )
    assert proxied.peer(("192.0.2.1", 4000), {"x-forwarded-for": "203.0.113.9"}) == "192.0.2.1"  # not a proxy
    assert proxied.peer(("10.0.0.5", 4000), {"x-forwarded-for": "junk, 203.0.113.9"}) == "203.0.113.9"
    assert proxied.peer(("10.0.0.5", 4000), {"x-forwarded-for": "203.0.113.9, junk"}) == "10.0.0.5"
    assert proxied.peer(("10.0.0.5", 4000), {"x-forwarded-for": ""}) == "10.0.0.5"
    assert Peers.key("2001:db8:1:2:3:4:5:6") == Peers.key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert Peers.key("::ffff:203.0.113.9") == "203.0.113.9"
    assert Peers.is_loopback("::1")
    assert Peers.is_loopback("::ffff:127.0.0.1")

    ticks = [0.0]
    limiter = RefusalLimiter(60, 2, max_peers=2, monotonic=lambda: ticks[0])
    for peer in ("203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.2"):
        limiter.refused(peer)
    assert limiter.limited("203.0.113.1")
    assert not limiter.limited("127.0.0.1")
    limiter.refused("203.0.113.3")  # a third peer: the least recently refused one is forgotten
    assert not limiter.limited("203.0.113.1")
    assert limiter.limited("203.0.113.2")
    ticks[0] += 1.0
    assert not limiter.limited("203.0.113.2")


def test_below_the_free_disk_threshold_every_callback_is_answered_503_and_nothing_is_written(harness, caplog):
    caplog.set_level(logging.WARNING, logger="flows.notifications.receiver")
    ticks = [0.0]
    harness.start(limits=ReceiverLimits(min_free_bytes=1 << 62, disk_check_interval=5), monotonic=lambda: ticks[0])
    delivery = harness.pay("C20261126001")
    assert delivery.attempts[0].status == 503
    assert json.loads(delivery.attempts[0].error) == {"code": "FAIL", "message": "InsufficientStorage"}
    assert harness.post(b"{}", {}).status_code == 503  # refused requests are not recorded either
    assert not any(p.is_file() for p in harness.root.rglob("*.jsonl"))
    assert harness.counters["low_disk"] == 2
    assert caplog.text.count("below the threshold of 4611686018427387904") == 1
    health = httpx.get(f"{harness.server.url}/wxpay/notify/_health")
    assert (health.status_code, health.json()["problems"]) == (503, ["low_disk"])

    harness.app.state.receiver.disk.min_free_bytes = 1  # space freed (the threshold lowered, to the same effect)
    ticks[0] += 5  # the next look at the disk
    harness.sim.advance(15)
    assert delivery.attempts[1].status == 204
    assert outcomes(harness.entries()) == ["accepted"]
    assert "accepting callbacks" in caplog.text


def test_a_body_slower_than_the_body_timeout_is_refused_408_and_its_connection_closed(harness):
    harness.start(limits=ReceiverLimits(body_timeout=0.5))
    answer = raw_exchange(harness.server.url, head(f"/wxpay/notify/{INITIATOR}", 100) + b'{"id":"EV-')
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    [record] = harness.records()
    assert (record.reply_status, record.body_length, record.body_complete) == (408, 10, False)
    assert record.reason == "RequestTimeoutError: body not received within 0.5 s (10 bytes read)"
    assert harness.counters["refused_408"] == 1


def test_the_health_of_the_receiver_is_shown_to_loopback_only(harness):
    harness.start(limits=ReceiverLimits(trusted_proxies=("127.0.0.1",)))
    health = httpx.get(f"{harness.server.url}/wxpay/notify/_health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert set(health.json()["counters"]) >= {"accepted", "rate_limited", "low_disk", "duplicates_not_logged"}
    outside = httpx.get(f"{harness.server.url}/wxpay/notify/_health", headers={"X-Forwarded-For": "203.0.113.9"})
    assert outside.status_code == 404
    [record] = harness.records()
    assert (record.peer, record.path, record.mchid) == ("203.0.113.9", "/wxpay/notify/_health", UNROUTED)


def signed_callbacks(harness, count: int) -> list[tuple[dict[str, str], bytes]]:
    """``count`` genuine callbacks (distinct ids) for the initiator, as WeChat Pay would send them."""
    delivery = harness.pay("C20261126001", deliver=False)
    template = json.loads(delivery.body)
    signed = []
    for i in range(count):
        body = json.dumps({**template, "id": f"{template['id'][:-4]}{i:04d}"}, separators=(",", ":")).encode()
        signed.append(harness.sim.signed_headers(harness.initiator, body))
    return signed


@pytest.mark.slow  # hundreds of requests or connections, or processes
@pytest.mark.parametrize("slow", [200])
def test_slow_connections_cannot_starve_valid_callbacks_and_are_closed_after_the_head_timeout(harness, slow):
    import selectors

    harness.start(limits=ReceiverLimits(max_connections=slow // 2, head_timeout=2.0))
    valid = signed_callbacks(harness, 3)
    host, port = harness.server.url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(slow):  # twice the cap: each sends half a request head and nothing more
        conn = socket.create_connection((host, int(port)), timeout=10)
        conn.sendall(f"POST /wxpay/notify/{INITIATOR} HTTP/1.1\r\nHost: x\r\n".encode())
        sockets.append(conn)

    url = f"{harness.server.url}/wxpay/notify/{INITIATOR}"
    for headers, body in valid:  # WeChat Pay's budget: answered within 5 s, or it counts as a failure
        assert httpx.post(url, content=body, headers=headers, timeout=5).status_code == 204
    assert outcomes(harness.entries()) == ["accepted"] * 3

    selector = selectors.DefaultSelector()
    for conn in sockets:
        selector.register(conn, selectors.EVENT_READ)
    closed = 0
    while closed < slow:  # every slow connection is closed by the server: evicted, or at its head deadline
        events = selector.select(timeout=10)
        assert events, f"{slow - closed} slow connections still open"
        for key, _ in events:
            try:
                data = key.fileobj.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b""
            selector.unregister(key.fileobj)
            key.fileobj.close()
            closed += 1
    counters = harness.counters
    assert counters["connections_evicted"] + counters["head_timeouts"] == slow
    assert counters["connections_evicted"] >= slow // 2  # the first half made room for the second
    assert counters["head_timeouts"] > 0
