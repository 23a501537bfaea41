"""Bills: apply, download inside the URL lifetime, verify the SHA1 of the decompressed file —
against the simulator's bill desk (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import hashlib
import threading
from datetime import date, datetime, timedelta

import httpx
import pytest

import wxpay
from tests.conftest import INITIATOR, PARTICIPANTS, combine_request
from wxpay.billfile import BillKind, parse_summary
from wxpay.bills import BillApplication, BillProof, BillRequest, afetch_bill, download, fetch_bill
from wxpay.errors import (
    BillHashMismatchError,
    BillNotReadyError,
    BillTruncatedError,
    ForeignHostError,
    NoStatementError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
)
from wxpay.models import BEIJING

DAY = date(2026, 11, 26)


@pytest.fixture
def day_of_trades(sim, client):
    """Three paid combine orders on 11-26 (one created 23:58, paid 00:01 on 11-27), one unpaid, one refund."""
    for number, amounts in (("C20261126001", (12800, 3550)), ("C20261126002", (999, 1))):
        client.combine.create_native(combine_request(number, amounts))
        sim.pay(INITIATOR, number, deliver=False)
    client.combine.create_native(combine_request("C20261126003", (500, 700)))  # never paid
    sim.refund(PARTICIPANTS[0], "C20261126001S1", 2000)
    sim.clock.set(datetime(2026, 11, 26, 23, 58, tzinfo=BEIJING))
    client.combine.create_native(combine_request("C20261126004", (4200, 4300)))
    sim.advance(timedelta(minutes=3))
    sim.pay(INITIATOR, "C20261126004", deliver=False)
    return sim


def participant_client(sim, mchid=PARTICIPANTS[0], **kw):
    return wxpay.Client(transport=httpx.MockTransport(sim.handle), **sim.merchants[mchid].client_kwargs(), **kw)


def lines_of(path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode("utf-8-sig").split("\r\n")


def test_a_bill_is_not_ready_before_ten_the_next_day(day_of_trades, tmp_path):
    with participant_client(day_of_trades) as c, pytest.raises(BillNotReadyError) as info:
        fetch_bill(c, BillRequest.trade(DAY), tmp_path / "bill.gz")
    assert info.value.code == "STATEMENT_CREATING"
    assert info.value.retryable


def test_download_verifies_and_lands_only_when_it_matches(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, 0, tzinfo=BEIJING))
    with participant_client(day_of_trades) as c:
        bill = fetch_bill(c, BillRequest.trade(DAY), lambda app: tmp_path / f"{app.hash_value}.csv.gz")
    raw = gzip.decompress(bill.path.read_bytes())
    assert bill.sha1 == hashlib.sha1(raw).hexdigest() == bill.application.hash_value
    assert bill.path.name == f"{bill.sha1}.csv.gz"
    assert bill.attempts == 1
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.endswith(b"\r\n")
    assert list(tmp_path.iterdir()) == [bill.path]  # no temporary file left behind

    lines = lines_of(bill.path)
    summary = parse_summary(lines[-3], lines[-2], kind=BillKind.TRADE_ALL)
    assert summary.values["row_count"] == 3  # 2 payments of participant 0 on 11-26 + 1 refund
    assert summary.values["settlement_amount_fen"] == 12800 + 999
    assert summary.values["refund_amount_fen"] == 2000
    # participant 0's rate is 0.38 %: 12800 → 48.64 → 49 fen; 999 → 3.7962 → 4; refund 2000 → 7.6 → -8
    assert summary.values["fee_millifen"] == (49 + 4 - 8) * 1000
    assert "C20261126004S1" not in "".join(lines)  # paid 00:01 on 11-27: the next day's bill


def test_a_cross_midnight_order_is_on_the_next_days_bill(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 28, 10, 0, tzinfo=BEIJING))
    with participant_client(day_of_trades) as c:
        bill = fetch_bill(c, BillRequest.trade(DAY + timedelta(days=1)), tmp_path / "b.gz")
    text = "\n".join(lines_of(bill.path))
    assert "`C20261126004S1," in text
    assert "`2026-11-27 00:01:00," in text


def test_an_empty_day_is_its_own_outcome(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 30, 12, tzinfo=BEIJING))
    with participant_client(day_of_trades) as c, pytest.raises(NoStatementError) as info:
        fetch_bill(c, BillRequest.trade(date(2026, 11, 28)), tmp_path / "b.gz")
    assert info.value.code == "NO_STATEMENT_EXIST"
    assert not info.value.retryable
    assert not isinstance(info.value, BillNotReadyError)


def test_hash_mismatch_loads_nothing_and_carries_both_digests(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    day_of_trades.faults.add("download", "corrupt")
    with participant_client(day_of_trades) as c, pytest.raises(BillHashMismatchError) as info:
        fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz")
    assert len(info.value.expected) == len(info.value.actual) == 40
    assert info.value.expected != info.value.actual
    assert info.value.expected in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_gzip_is_an_error_never_a_short_bill(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    day_of_trades.faults.add("download", "truncate", times=3)
    with participant_client(day_of_trades) as c, pytest.raises(BillTruncatedError, match="ended early"):
        fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz", max_attempts=3)
    assert list(tmp_path.iterdir()) == []


def test_a_broken_download_is_applied_for_again(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    day_of_trades.faults.add("download", "truncate")
    with participant_client(day_of_trades) as c:
        bill = fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz")
    assert bill.attempts == 2
    assert bill.path.exists()


def test_an_expired_url_is_applied_for_again(day_of_trades, tmp_path):
    sim = day_of_trades
    sim.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    offset = [0.0]
    sim.wall_clock = lambda: datetime.now().timestamp() + offset[0]
    applied = []

    def slow_network(request):
        response = sim.handle(request)
        if request.url.path == "/v3/bill/tradebill" and not applied:
            applied.append(request)
            offset[0] += sim.options.download_lifetime + 1  # the first URL expires before we use it
        return response

    with wxpay.Client(
        transport=httpx.MockTransport(slow_network), **sim.merchants[PARTICIPANTS[0]].client_kwargs()
    ) as c:
        bill = fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz")
    assert bill.attempts == 2


def test_slow_first_byte_past_the_lifetime(day_of_trades, tmp_path):
    sim = day_of_trades
    sim.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    sim.options.download_lifetime = 0.5
    sim.faults.add("download", "slow")
    with participant_client(sim) as c:
        bill = fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz", url_lifetime=0.5 + 1.0)
    assert bill.attempts == 2


def test_a_stalled_download_hangs_mid_file_until_released(day_of_trades, tmp_path):
    """The simulator's ``stall`` fault (for killing a downloader mid-bill): half the file, then nothing."""
    sim = day_of_trades
    sim.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    sim.faults.add("download", "stall", mchid=PARTICIPANTS[0])  # this merchant's next download only
    with participant_client(sim, PARTICIPANTS[1]) as c:
        assert fetch_bill(c, BillRequest.trade(DAY), tmp_path / "other.gz").attempts == 1
    with participant_client(sim) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(fetch_bill, c, BillRequest.trade(DAY), tmp_path / "b.gz")
        for _ in range(500):
            if sim.faults.summary()["stalled"] == 1 or pending.done():
                break
            threading.Event().wait(0.01)
        assert sim.faults.summary() == {
            "queued": {"response": [], "notify": [], "download": []},
            "targeted": {},
            "stalled": 1,
        }
        assert not pending.done()
        sim.faults.clear()
        bill = pending.result(timeout=30)
    assert bill.attempts == 1  # the rest of the file came, and its SHA1 was verified
    assert sim.faults.summary()["stalled"] == 0


def test_retries_are_bounded(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    day_of_trades.faults.add("download", "truncate", times=5)
    with participant_client(day_of_trades) as c, pytest.raises(BillTruncatedError):
        fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz", max_attempts=2)
    assert day_of_trades.faults.queued["download"] == ["truncate"] * 3


def test_rate_limit_and_system_error_on_apply_are_retryable_errors(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    day_of_trades.faults.error("/v3/bill/", 429, "FREQUENCY_LIMITED")
    day_of_trades.faults.error("/v3/bill/", 500, "SYSTEM_ERROR")
    with participant_client(day_of_trades) as c:
        with pytest.raises(RateLimitedError) as first:
            fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz")
        with pytest.raises(ServerError) as second:
            fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz")
        assert first.value.retryable
        assert second.value.retryable
        assert fetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz").attempts == 1


def test_a_download_url_works_only_for_the_applying_merchant(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    with participant_client(day_of_trades) as owner, participant_client(day_of_trades, PARTICIPANTS[1]) as other:
        application = owner.send(BillRequest.trade(DAY).operation())
        with pytest.raises(PermissionDeniedError, match="NO_AUTH"):
            download(other.http, application, tmp_path / "b.gz")


def test_our_authorization_is_never_sent_to_a_foreign_download_host(sim, client, tmp_path):
    sent = []
    client.http._transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200, content=b""))
    forged = BillApplication(
        hash_type="SHA1", hash_value="0" * 40, download_url="https://files.example.com/v3/billdownload/file?token=abc"
    )
    with pytest.raises(ForeignHostError):
        download(client.http, forged, tmp_path / "b.gz")
    assert sent == []
    assert list(tmp_path.iterdir()) == []


def test_success_refund_and_fund_flow_bills(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    with participant_client(day_of_trades) as c:
        success = fetch_bill(c, BillRequest.trade(DAY, "SUCCESS"), tmp_path / "s.gz")
        refund = fetch_bill(c, BillRequest.trade(DAY, "REFUND"), tmp_path / "r.gz")
        flow = fetch_bill(c, BillRequest.fundflow(DAY), tmp_path / "f.gz")
        with pytest.raises(NoStatementError):
            fetch_bill(c, BillRequest.fundflow(DAY, "OPERATION"), tmp_path / "o.gz")
    assert len(lines_of(success.path)[0].split(",")) == 20
    refund_lines = lines_of(refund.path)
    assert len(refund_lines[0].split(",")) == 29
    assert len(refund_lines) == 1 + 1 + 2 + 1
    flow_lines = lines_of(flow.path)
    assert flow_lines[0].startswith("记账时间,微信支付业务单号")
    assert len(flow_lines) == 1 + 3 + 2 + 1


def test_uncompressed_download(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    with participant_client(day_of_trades) as c:
        bill = fetch_bill(c, BillRequest.trade(DAY, gzip=False), tmp_path / "b.csv")
    assert hashlib.sha1(bill.path.read_bytes()).hexdigest() == bill.sha1


def test_bad_bill_requests_are_refused_before_sending():
    with pytest.raises(wxpay.RequestValidationError):
        BillRequest.trade(DAY, "EVERYTHING")
    with pytest.raises(wxpay.RequestValidationError):
        BillRequest.fundflow(DAY, "SAVINGS")


def test_future_and_too_old_dates_are_invalid(day_of_trades, tmp_path):
    with participant_client(day_of_trades) as c:
        for day in (date(2026, 11, 28), date(2026, 8, 1)):
            with pytest.raises(wxpay.InvalidRequestError, match="INVALID_REQUEST"):
                fetch_bill(c, BillRequest.trade(day), tmp_path / "b.gz")


def test_async_fetch(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    merchant = day_of_trades.merchants[PARTICIPANTS[0]]

    async def run():
        async with wxpay.AsyncClient(
            transport=httpx.MockTransport(day_of_trades.handle), **merchant.client_kwargs()
        ) as c:
            return await afetch_bill(c, BillRequest.trade(DAY), tmp_path / "b.gz")

    assert asyncio.run(run()).sha1 == hashlib.sha1(gzip.decompress((tmp_path / "b.gz").read_bytes())).hexdigest()


def test_a_download_tees_the_bytes_it_verified_and_hands_on_its_proof(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    pieces: list[bytes] = []
    with participant_client(day_of_trades) as c:
        application = c.send(BillRequest.trade(DAY).operation())
        bill = download(c.http, application, tmp_path / "b.gz", tee=pieces.append)
        again = fetch_bill(c, BillRequest.trade(DAY), lambda _: bill.path, reuse_existing=True)
    content = gzip.decompress(bill.path.read_bytes())
    assert b"".join(pieces) == content
    assert bill.proof == BillProof(hashlib.sha1(content).hexdigest(), len(content))
    assert again.reused
    assert again.proof is None  # nothing was verified now: the loader hashes it


def test_a_tee_sees_a_broken_download_but_nothing_lands(day_of_trades, tmp_path):
    day_of_trades.clock.set(datetime(2026, 11, 27, 10, tzinfo=BEIJING))
    day_of_trades.faults.add("download", "corrupt")
    pieces: list[bytes] = []
    with participant_client(day_of_trades) as c:
        application = c.send(BillRequest.trade(DAY).operation())
        with pytest.raises(BillHashMismatchError):
            download(c.http, application, tmp_path / "b.gz", tee=pieces.append)
    assert pieces  # a consumer of the tee must wait for the download's verdict
    assert list(tmp_path.iterdir()) == []
