"""Re-verifying the notification log into DuckDB (flows.notifications.verify_log).

Callbacks are made and signed by the simulator (its wall clock pinned to the business day the
test is about, so signatures are as old as they say) and logged by the real NotificationLog or
the real receiver; the warehouse is a real DuckDB file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from copy import copy
from datetime import date, datetime, timedelta

import httpx
import pytest
import time_machine

import wxpay
from flows.notifications import (
    UNROUTED,
    LogEntry,
    MerchantKeys,
    NotificationLog,
    ReceiverMerchant,
    create_app,
    serve_receiver,
    verify_log,
)
from flows.warehouse import connect
from tests.conftest import APPID, INITIATOR, PARTICIPANTS, START, NotifyTransport, combine_request
from wxpay.errors import ConfigurationError
from wxpay.models import BEIJING, format_rfc3339
from wxpay.sim import SimOptions, Simulator, VirtualClock, serve
from wxpay.sim.keys import public_pem
from wxpay.sim.notifier import envelope

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
DAY = START.date()
TABLES = ("raw.notification_lines", "raw.notification_checks", "raw.notification_sub_orders")


class Wall:
    """The simulator's and the client's wall clock (Unix seconds), moved by the test."""

    def __init__(self, moment: datetime):
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()


class World:
    """A simulator whose signatures carry the test's time, a client, a log and the recon's keys."""

    def __init__(self, sim: Simulator, wall: Wall, root):
        self.sim, self.wall, self.root = sim, wall, root
        self.initiator = sim.merchants[INITIATOR]
        kwargs = {**self.initiator.client_kwargs(), "verifier": self.initiator.verifier(clock=wall), "clock": wall}
        self.client = wxpay.Client(transport=httpx.MockTransport(sim.handle), **kwargs)
        self.log = NotificationLog(root)
        self.keys = {INITIATOR: keys_of(self.initiator)}

    def pay(self, number: str, amounts=(12800, 3550)) -> bytes:
        """A paid combine order; returns the callback body WeChat Pay would send."""
        self.wall.set(START)
        self.client.combine.create_native(combine_request(number, amounts))
        self.sim.pay(INITIATOR, number, openid=OPENID, deliver=False)
        return next(d for d in self.sim.deliveries if d.combine_out_trade_no == number).body

    def signed(self, body: bytes, at: datetime, fault: str | None = None) -> tuple[dict[str, str], bytes]:
        """Headers as the receiver logs them (names lower-cased), signed at ``at``."""
        self.wall.set(at)
        headers, sent = self.sim.signed_headers(self.initiator, body, fault=fault)
        return {k.lower(): v for k, v in headers.items()}, sent

    def accept(self, body: bytes, *, at: datetime = START, fault: str | None = None, received_at=None) -> LogEntry:
        """Log a callback as accepted, as a receiver that trusted it would (signed at ``at``)."""
        headers, sent = self.signed(body, at, fault)
        received = received_at or at + timedelta(milliseconds=250)
        return self.log.accept(LogEntry(received, INITIATOR, "accepted", None, claimed_id(sent), headers, sent, 204))

    def reject(self, body: bytes, reason: str, *, at: datetime = START, fault=None, mchid=INITIATOR, status=401):
        headers, sent = self.signed(body, at, fault)
        entry = LogEntry(
            at + timedelta(milliseconds=250), mchid, "rejected", reason, claimed_id(sent), headers, sent, status
        )
        self.log.append(entry, unrouted=mchid not in (INITIATOR, *PARTICIPANTS))
        return entry

    def verify(self, con, *, workers: int = 1, keys=None, **kw):
        return verify_log(con, self.log, self.keys if keys is None else keys, start=DAY, end=DAY, workers=workers, **kw)

    def file(self, mchid: str = INITIATOR, day: date = DAY):
        return self.log.path(mchid, day)


def keys_of(merchant) -> MerchantKeys:
    return MerchantKeys.from_public_key(
        merchant.public_key_id, public_pem(merchant.platform_keys[0].key), merchant.api_v3_key
    )


def claimed_id(body: bytes) -> str | None:
    try:
        return json.loads(body).get("id")
    except ValueError:
        return None


@pytest.fixture
def world(merchant_pool, tmp_path):
    wall = Wall(START)
    sim = Simulator(
        [copy(m) for m in merchant_pool],
        options=SimOptions(seed=11),
        clock=VirtualClock(START),
        wall_clock=wall,
        notify_transport=NotifyTransport(),
    )
    w = World(sim, wall, tmp_path / "notify-log")
    yield w
    w.client.close()
    sim.close()


@pytest.fixture
def con(tmp_path):
    connection = connect(tmp_path / "warehouse.duckdb", memory_limit="1GB")
    yield connection
    connection.close()


def rows(con, sql: str, params=None) -> list[dict]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def count(con, table: str) -> int:
    return con.execute(f"select count(*) from {table}").fetchone()[0]  # noqa: S608 - fixed names


def signed_envelope(world: World, payload: dict, *, key: str | None = None, notification_id: str = "EV-X") -> bytes:
    return envelope(
        payload,
        key or world.initiator.api_v3_key,
        notification_id=notification_id,
        create_time=START,
        nonce="0123456789ab",
    )


def test_verified_lines_become_checks_and_sub_orders_in_fen_and_instants(world, con):
    world.accept(world.pay("C20261126001", (12800, 3550)))
    world.accept(world.pay("C20261126002", (100, 200, 301)), at=START + timedelta(minutes=5))

    stats = world.verify(con)

    assert (stats.files, stats.lines_seen, stats.newly_verified, stats.failed, stats.unreadable) == (1, 2, 2, 0, 0)
    assert (stats.already_known, stats.new_line_rows, stats.workers) == (0, 2, 1)
    raw_lines = world.file().read_bytes().split(b"\n")[:-1]
    hashes = [hashlib.sha256(line).hexdigest() for line in raw_lines]
    lines = rows(con, "select * from raw.notification_lines order by line_no")
    deliveries = world.sim.deliveries
    assert [(r["log_file"], r["line_no"], r["line_sha256"], r["line_bytes"]) for r in lines] == [
        (f"{INITIATOR}/{DAY}.jsonl", 1, hashes[0], len(raw_lines[0])),
        (f"{INITIATOR}/{DAY}.jsonl", 2, hashes[1], len(raw_lines[1])),
    ]
    assert [(r["mchid"], r["outcome"], r["claimed_notification_id"], r["reply_status"]) for r in lines] == [
        (INITIATOR, "accepted", deliveries[0].notification_id, 204),
        (INITIATOR, "accepted", deliveries[1].notification_id, 204),
    ]
    assert lines[0]["received_at"] == START + timedelta(milliseconds=250)  # an instant, whatever the session zone
    assert lines[1]["received_at"] == START + timedelta(minutes=5, milliseconds=250)

    checks = {c["line_sha256"]: c for c in rows(con, "select * from raw.notification_checks")}
    first = checks[hashes[0]]
    assert first["verified"] is True
    assert (first["failure"], first["failure_detail"]) == (None, None)
    assert first["serial"] == world.initiator.public_key_id
    assert (first["notification_id"], first["event_type"]) == (deliveries[0].notification_id, "TRANSACTION.SUCCESS")
    assert first["create_time"] == START
    assert (first["combine_appid"], first["combine_mchid"], first["combine_out_trade_no"]) == (
        APPID,
        INITIATOR,
        "C20261126001",
    )
    assert checks[hashes[1]]["sub_order_count"] == 3

    subs = rows(con, "select * from raw.notification_sub_orders order by out_trade_no")
    order = world.sim.ledger.orders[(INITIATOR, "C20261126002")]
    assert [
        (
            s["line_sha256"],
            s["sub_order_no"],
            s["mchid"],
            s["out_trade_no"],
            s["total_amount_fen"],
            s["payer_amount_fen"],
        )
        for s in subs
    ] == [
        (hashes[0], 1, PARTICIPANTS[0], "C20261126001S1", 12800, 12800),
        (hashes[0], 2, PARTICIPANTS[1], "C20261126001S2", 3550, 3550),
        (hashes[1], 1, PARTICIPANTS[0], "C20261126002S1", 100, 100),
        (hashes[1], 2, PARTICIPANTS[1], "C20261126002S2", 200, 200),
        (hashes[1], 3, PARTICIPANTS[0], "C20261126002S3", 301, 301),
    ]
    assert [s["transaction_id"] for s in subs[2:]] == [sub.transaction_id for sub in order.sub_orders]
    assert {(s["trade_state"], s["currency"], s["success_time"]) for s in subs} == {("SUCCESS", "CNY", START)}
    assert [s["attach"] for s in subs] == ["cmb=C20261126001"] * 2 + ["cmb=C20261126002"] * 3

    types = dict(
        con.execute(
            "select table_name || '.' || column_name, data_type from information_schema.columns"
            " where table_schema = 'raw' and table_name like 'notification_%'"
        ).fetchall()
    )
    assert types["notification_lines.received_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["notification_checks.create_time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["notification_sub_orders.success_time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["notification_sub_orders.total_amount_fen"] == "BIGINT"
    assert types["notification_sub_orders.payer_amount_fen"] == "BIGINT"
    assert not any("openid" in name or "payer_info" in name for name in types)


def test_untrustworthy_lines_are_unverified_findings_with_their_failure_class(world, con):
    good = world.pay("C20261126001")
    expected = {}
    for fault, failure in [
        ("wrong_key", "SignatureMismatchError"),  # forged: signed with a key that is not WeChat Pay's
        ("tamper", "SignatureMismatchError"),  # body changed after signing
        ("signtest", "SignatureProbeError"),  # a WECHATPAY/SIGNTEST/ probe
        ("stale", "TimestampOutOfWindowError"),  # signed 600 s before it was received
        ("unknown_serial", "UnknownSerialError"),
    ]:
        expected[world.accept(good, fault=fault).to_line()] = failure
    other_key = signed_envelope(world, {"hello": 1}, key="k" * 32, notification_id="EV-KEY")
    expected[world.accept(other_key).to_line()] = "DecryptionError"
    sm4 = json.loads(good)
    sm4["resource"]["algorithm"] = "AEAD_SM4_GCM"
    expected[world.accept(json.dumps(sm4).encode(), at=START + timedelta(seconds=1)).to_line()] = (
        "UnsupportedAlgorithmError"
    )
    order = world.sim.ledger.orders[(INITIATOR, "C20261126001")].wire()
    for name, amount in [("EV-FLOAT", 128.5), ("EV-TEXT", "12800"), ("EV-BOOL", True)]:
        bad = json.loads(json.dumps(order))
        bad["sub_orders"][0]["amount"]["total_amount"] = amount
        expected[world.accept(signed_envelope(world, bad, notification_id=name)).to_line()] = (
            "MalformedNotificationError"
        )
    foreign = {**order, "combine_mchid": PARTICIPANTS[0]}
    expected[world.accept(signed_envelope(world, foreign, notification_id="EV-FOREIGN")).to_line()] = (
        "MalformedNotificationError"
    )
    unrouted = world.reject(good, "UnknownMerchantError: no receiver configured", mchid="1999999999", status=404)
    expected[unrouted.to_line()] = "UnknownMerchantError"
    expected[world.accept(good, at=START + timedelta(seconds=2)).to_line()] = None
    # a line edited in the log after it was written (a valid callback whose body id was changed)
    edit = world.accept(signed_envelope(world, order, notification_id="EV-EDIT")).to_line()
    path = world.file()
    before, after = b'\\"id\\":\\"EV-EDIT\\"', b'\\"id\\":\\"EV-3DIT\\"'
    assert path.read_bytes().count(before) == 1
    path.write_bytes(path.read_bytes().replace(before, after))
    expected[edit.replace(before, after)] = "SignatureMismatchError"

    stats = world.verify(con)

    assert (stats.lines_seen, stats.newly_verified, stats.failed) == (len(expected), len(expected), len(expected) - 1)
    checks = {c["line_sha256"]: c for c in rows(con, "select * from raw.notification_checks")}
    for line, failure in expected.items():
        check = checks[hashlib.sha256(line.rstrip(b"\n")).hexdigest()]
        assert (check["failure"], check["verified"]) == (failure, failure is None), line[:200]
        if failure:
            assert check["failure_detail"]
    by_failure = {c["failure"]: c for c in checks.values()}
    assert "EV-FLOAT" in by_failure["MalformedNotificationError"]["failure_detail"] or any(
        "total_amount must be a whole number of fen" in (c["failure_detail"] or "") for c in checks.values()
    )
    details = sorted(c["failure_detail"] for c in checks.values() if c["failure"] == "MalformedNotificationError")
    assert sum("sub_orders[0].amount.total_amount must be a whole number of fen" in d for d in details) == 3
    assert any("is for combine_mchid 1900000101, not 1900000100" in d for d in details)
    assert by_failure["UnknownSerialError"]["serial"] != world.initiator.public_key_id
    assert by_failure["DecryptionError"]["notification_id"] == "EV-KEY"  # signature verified: the id is authentic
    assert by_failure["SignatureMismatchError"]["notification_id"] is None  # not verified: nothing is taken from it
    verified = [c for c in checks.values() if c["verified"]]
    assert len(verified) == 1
    subs = rows(con, "select distinct line_sha256 from raw.notification_sub_orders")
    assert subs == [{"line_sha256": verified[0]["line_sha256"]}]  # failed lines give no sub-order rows
    unrouted_row = rows(con, "select * from raw.notification_lines where log_file like '_unrouted/%'")
    assert [(r["mchid"], r["outcome"], r["reply_status"]) for r in unrouted_row] == [("1999999999", "rejected", 404)]
    assert unrouted_row[0]["receiver_reason"].startswith("UnknownMerchantError")


def test_the_signature_window_is_judged_at_received_at_not_when_the_recon_runs(world, con):
    body = world.pay("C20261126001")
    on_time = world.accept(body, received_at=START + timedelta(seconds=200))
    late = world.accept(body, received_at=START + timedelta(seconds=400))  # arrived 400 s after it was signed

    with time_machine.travel(START + timedelta(days=30)):  # the recon runs long after these callbacks
        stats = world.verify(con)

    assert (stats.newly_verified, stats.failed) == (2, 1)
    checks = {
        c["line_sha256"]: c for c in rows(con, "select line_sha256, verified, failure from raw.notification_checks")
    }
    assert checks[hashlib.sha256(on_time.to_line()[:-1]).hexdigest()]["verified"] is True
    assert checks[hashlib.sha256(late.to_line()[:-1]).hexdigest()]["failure"] == "TimestampOutOfWindowError"


def test_a_rerun_verifies_nothing_and_a_line_appended_later_is_the_only_one_verified(world, con):
    for i in range(3):
        world.accept(world.pay(f"C2026112600{i}"))
    first = world.verify(con, workers=2)
    assert (first.lines_seen, first.newly_verified, first.new_line_rows, first.already_known) == (3, 3, 3, 0)
    before = {t: rows(con, f"select * from {t} order by all") for t in TABLES}  # noqa: S608 - fixed names

    again = world.verify(con, workers=2)

    assert (again.lines_seen, again.newly_verified, again.new_line_rows, again.already_known) == (3, 0, 0, 3)
    assert {t: rows(con, f"select * from {t} order by all") for t in TABLES} == before  # noqa: S608

    late = world.accept(world.pay("C20261126009"), at=START + timedelta(hours=1))
    third = world.verify(con)

    assert (third.lines_seen, third.newly_verified, third.new_line_rows, third.already_known) == (4, 1, 1, 3)
    new = rows(con, "select line_no, line_sha256 from raw.notification_lines where line_no = 4")
    assert new == [{"line_no": 4, "line_sha256": hashlib.sha256(late.to_line()[:-1]).hexdigest()}]
    assert [count(con, t) for t in TABLES] == [4, 4, 8]


def test_duplicates_are_kept_as_lines_and_identical_bytes_are_verified_once(world, con):
    body = world.pay("C20261126001")
    world.accept(body)
    second = world.accept(body, at=START + timedelta(seconds=15))  # WeChat Pay's retry: same id, new signature
    assert second.outcome == "duplicate"
    path = world.file()
    first_line = path.read_bytes().split(b"\n")[0] + b"\n"
    with path.open("ab") as handle:  # the very same bytes again (a log copied twice, say)
        handle.write(first_line)

    stats = world.verify(con)

    assert (stats.lines_seen, stats.newly_verified, stats.already_known, stats.new_line_rows) == (3, 2, 1, 3)
    lines = rows(con, "select line_no, outcome, claimed_notification_id, line_sha256 from raw.notification_lines")
    assert [(r["line_no"], r["outcome"]) for r in sorted(lines, key=lambda r: r["line_no"])] == [
        (1, "accepted"),
        (2, "duplicate"),
        (3, "accepted"),
    ]
    assert len({r["claimed_notification_id"] for r in lines}) == 1
    checks = rows(con, "select notification_id, verified from raw.notification_checks")
    assert len(checks) == 2
    assert {(c["notification_id"], c["verified"]) for c in checks} == {(world.sim.deliveries[0].notification_id, True)}
    assert count(con, "raw.notification_sub_orders") == 4  # per verified line; the recon collapses duplicates


def test_unreadable_lines_are_counted_and_recorded_not_dropped(world, con):
    world.accept(world.pay("C20261126001"))
    path = world.file()
    good = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"v":1,"this is":"not a log line"}\n')
        handle.write(good[:57])  # a crash in the middle of a write

    stats = world.verify(con)

    assert (stats.lines_seen, stats.newly_verified, stats.unreadable, stats.already_known) == (3, 1, 2, 0)
    bad = rows(con, "select * from raw.notification_lines where outcome = 'unreadable' order by line_no")
    assert [(r["line_no"], r["line_sha256"], r["line_bytes"]) for r in bad] == [(2, None, 34), (3, None, 57)]
    assert bad[0]["unreadable_reason"].startswith("unreadable line: missing keys")
    assert bad[1]["unreadable_reason"] == "incomplete final line (no newline): cut short"

    assert world.verify(con).unreadable == 2  # still findings on a re-run, recorded once
    assert count(con, "raw.notification_lines") == 3

    world.accept(world.pay("C20261126002"))  # the next writer ends the fragment with a newline first
    stats = world.verify(con)
    assert (stats.lines_seen, stats.newly_verified, stats.unreadable) == (4, 1, 2)
    bad = rows(con, "select line_no, unreadable_reason from raw.notification_lines where line_sha256 is null")
    assert [r["line_no"] for r in sorted(bad, key=lambda r: r["line_no"])] == [2, 3]
    assert all(r["unreadable_reason"].startswith("unreadable line: ") for r in bad)
    assert count(con, "raw.notification_lines") == 4


def test_no_openid_and_no_api_v3_key_reach_any_table(world, con):
    body = world.pay("C20261126001")
    world.accept(body)
    world.accept(body, fault="tamper")
    world.accept(signed_envelope(world, {"combine_payer_info": {"openid": OPENID}}, notification_id="EV-P"))
    world.verify(con)

    secrets = [OPENID, *(m.api_v3_key for m in world.sim.merchants.values())]
    for table in TABLES:
        columns = [r[0] for r in con.execute(f"describe {table}").fetchall()]  # every column, as text
        for column in columns:
            values = [v for (v,) in con.execute(f"select distinct cast({column} as varchar) from {table}").fetchall()]  # noqa: S608
            assert not any(secret in (value or "") for value in values for secret in secrets), (table, column)
    assert count(con, "raw.notification_checks") == 3


def test_workers_1_and_2_give_identical_tables(world, tmp_path):
    for i in range(7):
        world.accept(world.pay(f"C2026112610{i}", (1000 + i, 2000 + i, 3000 + i)[: 2 + i % 2]))
    body = world.pay("C20261126200")
    for fault in ("tamper", "wrong_key", "stale", None):
        world.accept(body, fault=fault, at=START + timedelta(seconds=30))
    world.reject(body, "UnknownMerchantError: x", mchid="1999999999", status=404)
    with world.file().open("ab") as handle:
        handle.write(b"not json\n")

    results = []
    for workers in (1, 2):
        con = connect(tmp_path / f"w{workers}.duckdb")
        stats = world.verify(con, workers=workers)
        tables = {
            t: con.execute(
                f"select * exclude (recorded_at) from {t} order by all"  # noqa: S608
                if t.endswith("lines")
                else f"select * exclude (checked_at) from {t} order by all"  # noqa: S608
                if t.endswith("checks")
                else f"select * from {t} order by all"  # noqa: S608
            ).fetchall()
            for t in TABLES
        }
        con.close()
        results.append((stats.lines_seen, stats.newly_verified, stats.failed, stats.unreadable, tables))
    assert results[0] == results[1]
    assert results[0][:4] == (13, 12, 4, 1)


def test_failed_lines_are_verified_again_only_when_asked(world, con):
    world.accept(world.pay("C20261126001"))
    stats = world.verify(con, keys={})  # the recon forgot this merchant's keys
    assert (stats.newly_verified, stats.failed) == (1, 1)
    assert con.execute("select failure from raw.notification_checks").fetchall() == [("UnknownMerchantError",)]

    assert world.verify(con).newly_verified == 0  # remembered by its hash
    stats = world.verify(con, recheck_failed=True)

    assert (stats.newly_verified, stats.failed) == (1, 0)
    assert con.execute("select verified, failure from raw.notification_checks").fetchall() == [(True, None)]
    assert [count(con, t) for t in TABLES] == [1, 1, 2]


def test_merchant_keys_cross_processes_and_refuse_bad_material(world):
    keys = world.keys[INITIATOR]
    assert world.initiator.api_v3_key not in repr(keys)
    assert pickle.loads(pickle.dumps(keys)).public_keys == keys.public_keys  # noqa: S301 - our own object
    with pytest.raises(ConfigurationError, match="32 bytes"):
        MerchantKeys("short", keys.public_keys)
    with pytest.raises(ConfigurationError, match="PEM"):
        MerchantKeys(world.initiator.api_v3_key, {"PUB_KEY_ID_X": b"not a pem"})
    with pytest.raises(ConfigurationError):
        MerchantKeys(world.initiator.api_v3_key, {})


def test_bad_arguments_are_refused(world, con):
    with pytest.raises(ValueError, match="workers"):
        world.verify(con, workers=0)
    with pytest.raises(TypeError, match="MerchantKeys"):
        world.verify(con, keys={INITIATOR: world.initiator.api_v3_key})


def test_a_log_written_by_the_real_receiver_reverifies(world, con):
    log = NotificationLog(world.root)
    merchant = ReceiverMerchant(world.initiator.verifier(clock=world.wall), world.initiator.api_v3_key)
    app = create_app({INITIATOR: merchant}, log, clock=lambda: datetime.fromtimestamp(world.wall(), BEIJING))
    receiver = serve_receiver(app)
    try:
        with serve(world.sim) as sim_server:
            kwargs = {**world.initiator.client_kwargs(), "verifier": world.initiator.verifier(clock=world.wall)}
            with wxpay.Client(base_url=sim_server.url, clock=world.wall, **kwargs) as client:
                notify_url = f"{receiver.url}/wxpay/notify/{INITIATOR}"
                world.sim.faults.add("notify", "wrong_key")
                client.combine.create_native(combine_request("C20261126001", notify_url=notify_url))
                world.sim.pay(INITIATOR, "C20261126001", openid=OPENID)  # refused (401): a forged signature
                world.wall.set(START + timedelta(seconds=15))
                world.sim.advance(15)  # WeChat Pay's retry: accepted
    finally:
        receiver.stop()
    assert [a.status for a in world.sim.deliveries[0].attempts] == [401, 204]

    stats = world.verify(con)

    assert (stats.lines_seen, stats.newly_verified, stats.failed) == (2, 2, 1)
    found = rows(
        con,
        "select l.log_file, l.outcome, l.reply_status, l.receiver_reason, c.verified, c.failure, c.failure_detail,"
        " c.notification_id from raw.notification_lines l join raw.notification_checks c using (line_sha256)"
        " order by l.received_at",
    )
    delivery = world.sim.deliveries[0]
    assert [(r["log_file"][:10], r["outcome"], r["reply_status"], r["verified"], r["failure"]) for r in found] == [
        ("_rejected/", "rejected", 401, False, "BodyNotKept"),  # a bounded record: no body to verify again
        (INITIATOR, "accepted", 204, True, None),
    ]
    assert found[0]["receiver_reason"].startswith("SignatureMismatchError: ")
    digest = hashlib.sha256(delivery.body).hexdigest()
    assert found[0]["failure_detail"].startswith(
        f"the receiver kept a record, not the body: {len(delivery.body)} bytes, sha256 {digest};"
        " it answered 401: SignatureMismatchError: "
    )
    assert found[1]["notification_id"] == delivery.notification_id
    subs = rows(con, "select out_trade_no, total_amount_fen, success_time from raw.notification_sub_orders order by 1")
    assert [(s["out_trade_no"], s["total_amount_fen"]) for s in subs] == [
        ("C20261126001S1", 12800),
        ("C20261126001S2", 3550),
    ]
    assert {format_rfc3339(s["success_time"]) for s in subs} == {format_rfc3339(START)}
    assert UNROUTED not in {p.name for p in world.root.iterdir()}


def test_a_line_that_changes_between_hashing_and_verifying_stops_the_run(world):
    from flows.notifications import LogChangedError
    from flows.notifications.checker import Batch, read_batch_lines
    from flows.notifications.verification import BATCH_LINES, scan_lines

    world.accept(world.pay("C20261126001"))
    path = world.file()
    [(first, spans, digests, torn)] = list(scan_lines(path))
    assert (first, len(spans), torn) == (1, 1, None)
    batch = Batch(f"{INITIATOR}/{path.name}", str(path), [(1, *spans[0], digests[0], True, True)])
    assert read_batch_lines(batch) == [path.read_bytes()[:-1]]
    assert BATCH_LINES >= 1000

    data = path.read_bytes()
    path.write_bytes(data.replace(b'"accepted"', b'"accepteD"', 1))  # same length, other bytes, same place
    with pytest.raises(LogChangedError, match=f"{INITIATOR}/{DAY}.jsonl:1 changed"):
        read_batch_lines(batch)
