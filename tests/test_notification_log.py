"""The notification log's files, without a receiver: the line format (2, and 1 still read), the bounded set of
ids a writer remembers, the cap on duplicate lines, storage faults named with the file."""

from __future__ import annotations

import base64
import errno
import json
from datetime import date, datetime, timedelta

import pytest

from flows.notifications import NotificationLog
from flows.notifications.entry import MAX_RECORD_BYTES, LogEntry
from flows.notifications.lines import read_line
from flows.notifications.rejected import refusal_record, safe_text
from flows.notifications.seen import read_outcome
from flows.storage import StorageError, is_storage_fault
from wxpay.models import BEIJING

MCHID = "1900000100"
AT = datetime(2026, 11, 26, 9, 0, 0, 123000, tzinfo=BEIJING)
HEADERS = {"wechatpay-serial": "PUB_KEY_ID_01", "wechatpay-signature": "S" * 344}


def accepted(notification_id: str, at: datetime = AT, body: bytes | None = None) -> LogEntry:
    body = body if body is not None else json.dumps({"id": notification_id}).encode()
    return LogEntry(at, MCHID, "accepted", None, notification_id, HEADERS, body, 204)


def test_a_body_is_stored_as_text_or_base64_whichever_is_shorter_and_reads_back_exactly():
    plain = (
        b'{"id":"EV-1","summary":"\xe6\x94\xaf\xe4\xbb\x98\xe6\x88\x90\xe5\x8a\x9f","resource":{"a":"'
        + b"x" * 400
        + b'"}}'
    )
    control = b"\x01\x02\x03" * 1000  # JSON would write each as \u0001: 6 bytes for 1
    chinese = "支付成功".encode() * 300  # 3 UTF-8 bytes, 6 in a \u escape
    not_utf8 = b"\xff\xfe" + b"a" * 100
    shapes = {}
    for body in (plain, control, chinese, not_utf8, b""):
        line = accepted("EV-1", body=body).to_line()
        obj = json.loads(line)
        shapes[body[:6]] = "body" if "body" in obj else "body_b64"
        assert line.isascii()
        assert LogEntry.from_json(obj).body_bytes == body  # exact, either way
        assert read_line(line.rstrip(b"\n"))[7] == body  # the re-verification reads the same bytes
        overhead = len(accepted("EV-1", body=b"").to_line())
        assert len(line) - overhead <= 4 * ((len(body) + 2) // 3) + 8  # never more than 4/3 of the body
    assert shapes == {
        plain[:6]: "body",
        control[:6]: "body_b64",
        chinese[:6]: "body_b64",
        not_utf8[:6]: "body_b64",
        b"": "body",
    }
    assert json.loads(accepted("EV-1", body=control).to_line())["body_b64"] == base64.b64encode(control).decode()


def test_lines_of_format_1_are_still_read(tmp_path):
    v1 = {
        "v": 1,
        "received_at": "2026-11-26T09:00:00.123+08:00",
        "mchid": MCHID,
        "outcome": "rejected",
        "reason": "PayloadTooLargeError: body exceeds 1048576 bytes",
        "notification_id": None,
        "headers": {},
        "body": None,
        "reply_status": 413,
    }
    good = {**v1, "outcome": "accepted", "reason": None, "notification_id": "EV-1", "body": "{}", "reply_status": 204}
    folder = tmp_path / MCHID
    folder.mkdir()
    (folder / "2026-11-26.jsonl").write_text(json.dumps(v1) + "\n" + json.dumps(good) + "\n")
    log = NotificationLog(tmp_path)
    scan = log.read(MCHID)
    old413, old_good = (r.entry for r in scan)
    assert scan.skipped == []
    assert (old413.body_bytes, old413.is_record, old_good.body_bytes) == (None, False, b"{}")
    assert log.warm(MCHID, date(2026, 11, 26)) == 1  # a v1 accepted line still counts for duplicates
    assert read_line(json.dumps(v1).encode())[7] is None


def test_a_record_of_a_refused_request_is_bounded_whatever_was_sent():
    nasty = "\u202e\x1b[31m" + "\\" * 10 + "支" * 20000  # bidi override, a terminal escape, backslashes, lots
    raw_headers = [(name.encode(), nasty.encode("utf-8")) for name in ("wechatpay-signature", "wechatpay-nonce")]
    raw_headers += [(b"wechatpay-serial", b"\xff" * 16000), (b"request-id", b"\x00" * 16000)]
    raw_headers += [(b"content-type", b'"' * 16000), (b"content-length", b"9" * 16000)]
    raw_headers += [
        (b"wechatpay-timestamp", b"\\" * 16000),
        (b"wechatpay-signature-type", "\U0001f4b0".encode() * 9000),
    ]
    raw_headers += [(f"wechatpay-x{i}".encode(), b"y" * 100) for i in range(100)]  # names it does not keep
    record = refusal_record(
        received_at=AT,
        mchid="_unrouted",
        reason="UnknownMerchantError: " + nasty,
        status=404,
        raw_headers=raw_headers,
        body=b"\x00\x01\xff" * 400_000,
        complete=False,
        peer="2001:db8::1",
        path="/wxpay/notify/" + nasty,
        notification_id=None,
    )
    line = record.to_line()
    assert len(line) <= MAX_RECORD_BYTES
    assert line.isascii()
    obj = json.loads(line)
    assert obj["body"] is None
    assert (obj["body_length"], obj["body_complete"]) == (1_200_000, False)
    assert len(obj["headers"]) == 8  # only the names that matter
    shown = json.dumps(obj, ensure_ascii=False)
    assert not {"\u202e", "\x1b", "\x00"} & set(shown)  # nothing a terminal would obey
    assert obj["path"].endswith("…")
    again = LogEntry.from_json(obj)
    assert (again.body_sha256, again.excerpt) == (record.body_sha256, record.excerpt)
    assert safe_text("plain text 支付", 100) == "plain text 支付"


def test_a_line_without_a_body_is_a_record_or_unreadable_in_format_2():
    record = json.loads(
        refusal_record(
            received_at=AT,
            mchid=MCHID,
            reason="X: y",
            status=401,
            raw_headers=[],
            body=b"{}",
            complete=True,
            peer="198.51.100.7",
            path="/p",
        ).to_line()
    )
    assert LogEntry.from_json(record).is_record
    for broken, problem in [
        ({**record, "outcome": "accepted"}, "only a rejected line may be without its body"),
        ({k: v for k, v in record.items() if k != "body_sha256"}, "missing keys ['body_sha256']"),
        ({**record, "body_length": -1}, "body_length"),
        ({**record, "body_sha256": "XYZ"}, "body_sha256"),
        ({**record, "v": 3}, "unknown format version 3"),
        ({**record, "v": True}, "unknown format version True"),
    ]:
        with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            LogEntry.from_json(broken)
        assert isinstance(read_line(json.dumps(broken).encode()), str)  # the re-verification: unreadable


def test_the_ids_remembered_are_those_of_the_last_days_exactly_as_a_restart_reads_them(tmp_path):
    log = NotificationLog(tmp_path, remember_days=2)
    start = AT - timedelta(days=6)
    for back in range(7):  # one id a day, six days ago to today
        log.accept(accepted(f"EV-{back}", start + timedelta(days=back)))
    today = AT.date()
    assert log.remembered_days(MCHID) == [today - timedelta(days=2), today - timedelta(days=1), today]
    assert log.accepted_ids(MCHID) == {"EV-4", "EV-5", "EV-6"}  # not the process lifetime's ids

    restarted = NotificationLog(tmp_path, remember_days=2)
    assert restarted.warm(MCHID, today) == 3
    assert restarted.accepted_ids(MCHID) == log.accepted_ids(MCHID)  # memory holds what a restart reads
    assert restarted.accept(accepted("EV-4")).outcome == "duplicate"  # two days back: still caught
    assert restarted.accept(accepted("EV-2")).outcome == "accepted"  # four days back: beyond the window


def test_duplicates_beyond_the_cap_are_answered_and_counted_not_written_also_after_a_restart(tmp_path):
    log = NotificationLog(tmp_path, max_duplicates=3)
    outcomes = [log.accept(accepted("EV-1", AT + timedelta(seconds=i))).outcome for i in range(6)]
    assert outcomes == ["accepted"] + ["duplicate"] * 5
    lines = [r.entry.outcome for r in log.read(MCHID)]
    assert lines == ["accepted", "duplicate", "duplicate", "duplicate"]
    assert log.stats == {"duplicates_not_logged": 2}

    restarted = NotificationLog(tmp_path, max_duplicates=3)
    assert restarted.accept(accepted("EV-1", AT + timedelta(minutes=1))).outcome == "duplicate"
    assert restarted.stats == {"duplicates_not_logged": 1}  # the cap counted from the files, not from memory
    assert len(list(restarted.read(MCHID))) == 4
    assert restarted.accept(accepted("EV-2")).outcome == "accepted"


def test_the_writers_own_outcome_reader_matches_the_json_reader():
    entry = accepted('EV-"quoted"\\ 支付')
    line = entry.to_line()
    assert read_outcome(line) == ("accepted", 'EV-"quoted"\\ 支付')
    dup = LogEntry(AT, MCHID, "duplicate", None, "EV-2", {}, b'"outcome":"accepted"', 204).to_line()
    assert read_outcome(dup) == ("duplicate", "EV-2")
    rejected = LogEntry(AT, MCHID, "rejected", "X: y", "EV-3", {}, b'"accepted" "duplicate"', 401).to_line()
    assert read_outcome(rejected) is None
    spaced = json.dumps({"outcome": "accepted", "notification_id": "EV-4"}).encode() + b"\n"
    assert read_outcome(spaced) == ("accepted", "EV-4")  # another serializer: judged by its JSON


def test_a_write_that_fails_is_a_storage_error_naming_the_file(tmp_path):
    log = NotificationLog(tmp_path)
    folder = tmp_path / MCHID
    folder.mkdir()
    (folder / f"{AT.date().isoformat()}.jsonl").symlink_to("/dev/full")
    with pytest.raises(StorageError) as info:
        log.accept(accepted("EV-1"))
    error = info.value
    assert (error.errno, error.code, error.path) == (errno.ENOSPC, "ENOSPC", folder / f"{AT.date()}.jsonl")
    assert str(error).startswith(f"storage fault appending to the notification log: {error.path}: ")
    assert "free space" in str(error)
    assert isinstance(error, OSError)
    assert is_storage_fault(error)
    assert log.accepted_ids(MCHID) == frozenset()  # nothing remembered that is not on disk

    (tmp_path / "1900000101").write_text("a file where a directory should be")
    with pytest.raises(StorageError, match="opening a notification-log directory"):
        log.accept(LogEntry(AT, "1900000101", "accepted", None, "EV-1", {}, b"{}", 204))
