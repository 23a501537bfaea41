"""The notify_url receiver and its log, over real loopback HTTP: the simulator served on 127.0.0.1
delivers callbacks to the receiver served on 127.0.0.1; other callbacks are fired at it directly."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import httpx
import pytest

import wxpay
from flows.notifications import UNROUTED, LogEntry, NotificationLog, ReceiverMerchant, create_app, serve_receiver
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

    def start(self, hook=None, clock=None) -> Harness:
        self.stop()
        self.log = NotificationLog(self.root)
        merchant = ReceiverMerchant(self.initiator.verifier(), self.initiator.api_v3_key)
        self.app = create_app({INITIATOR: merchant}, self.log, hook or self.record_hook, clock=clock)
        self.server = serve_receiver(self.app)
        return self

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
    [rejected] = harness.entries()
    assert rejected.outcome == "rejected"
    assert rejected.reason.startswith(error + ": ")
    assert rejected.notification_id == delivery.notification_id  # claimed by the unverified body
    assert rejected.reply_status == 401
    assert set(rejected.headers) == WECHATPAY_HEADERS
    assert not harness.hook_called.is_set()

    harness.sim.advance(15)  # WeChat Pay's first retry
    assert delivery.attempts[1].status == 204
    assert outcomes(harness.entries()) == ["rejected", "accepted"]
    assert harness.hook_called.wait(5)


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

    text, raw, unsigned = harness.entries()
    assert (text.outcome, text.reply_status, text.notification_id) == ("rejected", 400, None)
    assert text.reason.startswith("MalformedNotificationError: ")
    assert text.body_bytes == b"not json"
    assert raw.body_bytes == b"\xff\xfe\x00{binary"
    assert '"body_b64":' in (harness.root / INITIATOR / f"{raw.day}.jsonl").read_text()
    assert (unsigned.reason.split(":")[0], unsigned.notification_id, unsigned.headers) == (
        "MissingSignatureError",
        "EV-1",
        {},
    )


def test_a_body_over_the_limit_is_refused_413_without_storing_it(harness):
    answer = harness.post(b"x" * ((1 << 20) + 1), {})
    assert answer.status_code == 413
    assert answer.json() == {"code": "FAIL", "message": "PayloadTooLargeError"}
    [entry] = harness.entries()
    assert (entry.outcome, entry.reply_status, entry.body_bytes) == ("rejected", 413, None)
    assert entry.reason == "PayloadTooLargeError: body exceeds 1048576 bytes"


def test_a_path_naming_no_configured_merchant_is_refused_404_and_logged_unrouted(harness, sim, initiator):
    delivery = harness.pay("C20261126001", deliver=False)
    headers, body = sim.signed_headers(initiator, delivery.body)

    answer = harness.post(body, headers, "/wxpay/notify/1999999999")
    assert answer.status_code == 404
    assert answer.json() == {"code": "FAIL", "message": "UnknownMerchantError"}
    assert harness.post(body, headers, "/wxpay/notify/..%2F..%2Fescape").status_code == 404

    first, second = harness.entries(UNROUTED)
    assert (first.mchid, first.outcome, first.reply_status) == ("1999999999", "rejected", 404)
    assert first.notification_id == delivery.notification_id
    assert first.reason.startswith("UnknownMerchantError: ")
    assert second.mchid == "../../escape"
    assert [p.relative_to(harness.root).parts[0] for p in harness.root.rglob("*.jsonl")] == [UNROUTED]
    assert sorted(p.name for p in harness.root.parent.iterdir()) == ["notify-log"]  # nothing escaped
    assert harness.entries() == []


def test_fifty_concurrent_deliveries_of_one_callback_make_one_accepted_line_and_49_duplicates(harness, sim, initiator):
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
def test_when_the_log_cannot_be_written_the_answer_is_500_and_the_retry_succeeds(harness, failure):
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

    delivery = harness.pay("C20261126001")
    first = delivery.attempts[0]
    assert first.status == 500
    assert json.loads(first.error) == {"code": "FAIL", "message": "notification log unavailable"}
    assert not delivery.acknowledged
    assert not harness.hook_called.is_set()

    blocker.unlink()  # the operator frees the disk
    harness.sim.advance(15)
    assert delivery.attempts[1].status == 204
    [entry] = harness.entries()
    assert (entry.outcome, entry.notification_id) == ("accepted", delivery.notification_id)
    assert harness.hook_called.wait(5)


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
    assert outcomes(harness.entries()) == ["accepted", "rejected", "accepted", "duplicate"]
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
log = NotificationLog(root / "log")
print("ready", flush=True)
sys.stdin.readline()  # start together: the test answers once both are ready
for i in range(25):
    entry = LogEntry(datetime.now(BEIJING), "1900000100", "accepted", None, "EV-shared", {}, b"{}", 204)
    log.accept(entry)
    log.append(LogEntry(datetime.now(BEIJING), "1900000100", "rejected", "X: y", None, {}, b"x" * 5000, 401))
"""


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
