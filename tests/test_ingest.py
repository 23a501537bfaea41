"""A simulated day into the warehouse over real loopback HTTP: apply, download, archive, load."""

from __future__ import annotations

import gzip
import hashlib
from datetime import date, datetime, timedelta

import pytest

import wxpay
from flows.bills import BillArchive, fetch_to_archive, ingest_bill, load_archived
from flows.warehouse import connect, migrate
from tests.conftest import INITIATOR, PARTICIPANTS, combine_request
from wxpay.bills import BillRequest
from wxpay.errors import BillFormatError
from wxpay.models import BEIJING
from wxpay.sim import serve
from wxpay.sim.billgen import generate_trade_bill

DAY = date(2026, 11, 26)


@pytest.fixture
def warehouse(tmp_path):
    con = connect(tmp_path / "warehouse.duckdb")
    migrate(con)
    yield con
    con.close()


@pytest.fixture
def served(sim, client):
    """A day: two paid combine orders, a refund, an unpaid order, one order paid 00:01 the next day."""
    for number, amounts in (("C20261126001", (12800, 3550)), ("C20261126002", (999, 1))):
        client.combine.create_native(combine_request(number, amounts))
        sim.pay(INITIATOR, number)
    client.combine.create_native(combine_request("C20261126003", (500, 700)))
    sim.refund(PARTICIPANTS[0], "C20261126001S1", 2000)
    sim.clock.set(datetime(2026, 11, 26, 23, 58, tzinfo=BEIJING))
    client.combine.create_native(combine_request("C20261126004", (4200, 4300)))
    sim.advance(timedelta(minutes=3))
    sim.pay(INITIATOR, "C20261126004")
    sim.clock.set(datetime(2026, 11, 28, 10, tzinfo=BEIJING))
    with serve(sim) as server:
        yield sim, server.url


def merchant_client(sim, url, mchid):
    return wxpay.Client(base_url=url, **sim.merchants[mchid].client_kwargs())


def totals(con, mchid, day):
    return con.execute(
        "select count(*), sum(order_amount_fen), sum(refund_amount_fen), sum(fee_millifen) from raw.trade_bill_rows"
        " where bill_mchid = ? and bill_date = ?",
        [mchid, day],
    ).fetchone()


def summary(con, mchid, day):
    return con.execute(
        "select row_count, order_amount_fen, refund_amount_fen, fee_millifen from raw.trade_bill_summaries"
        " where bill_mchid = ? and bill_date = ?",
        [mchid, day],
    ).fetchone()


def test_a_day_round_trips_with_exact_fen_totals(served, warehouse, tmp_path):
    sim, url = served
    archive = BillArchive(tmp_path / "archive")
    for mchid in PARTICIPANTS:
        with merchant_client(sim, url, mchid) as c:
            for day in (DAY, DAY + timedelta(days=1)):
                result = ingest_bill(warehouse, c, archive, BillRequest.trade(day))
                assert result.outcome == "loaded"
                assert result.downloaded
                assert totals(warehouse, mchid, day) == summary(warehouse, mchid, day)

    # participant 0 at 0.38 %: 12800 and 999 paid on 11-26, 2000 refunded; 4200 paid at 00:01 on 11-27
    assert totals(warehouse, PARTICIPANTS[0], DAY) == (3, 12800 + 999, 2000, (49 + 4 - 8) * 1000)
    assert totals(warehouse, PARTICIPANTS[0], DAY + timedelta(days=1)) == (1, 4200, 0, 16 * 1000)
    # participant 1 at 0.54 %: 3550 → 19.17 → 19 fen; 1 → 0
    assert totals(warehouse, PARTICIPANTS[1], DAY) == (2, 3550 + 1, 0, 19 * 1000)
    crossed = warehouse.execute(
        "select bill_date, trade_time from raw.trade_bill_rows where out_trade_no = 'C20261126004S1'"
    ).fetchall()
    assert crossed == [(DAY + timedelta(days=1), datetime(2026, 11, 27, 0, 1, tzinfo=BEIJING))]
    assert crossed[0][1].utcoffset() is not None  # timezone-aware instants

    lineage = warehouse.execute(
        "select distinct archive_sha1 from raw.trade_bill_rows where bill_mchid = ? and bill_date = ?",
        [PARTICIPANTS[0], DAY],
    ).fetchall()
    stored = archive.latest(PARTICIPANTS[0], "trade_all", DAY)
    assert lineage == [(stored.sha1,)]
    assert stored.path.name == f"{stored.sha1}.csv.gz"
    assert stored.metadata()["parser_version"]
    assert stored.metadata()["loaded_rows"] == 3


def test_running_a_day_again_replaces_it_and_reuses_the_archive(served, warehouse, tmp_path):
    sim, url = served
    archive = BillArchive(tmp_path / "archive")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c:
        first = ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
        again = ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
    assert first.downloaded
    assert not again.downloaded
    assert totals(warehouse, PARTICIPANTS[0], DAY)[0] == 3
    assert len(archive.files(PARTICIPANTS[0], "trade_all", DAY)) == 1


def test_a_changed_bill_for_the_same_day_is_kept_beside_the_old_one(served, warehouse, tmp_path):
    sim, url = served
    archive = BillArchive(tmp_path / "archive")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c:
        ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
        sim.refund(PARTICIPANTS[0], "C20261126002S1", 100)  # submitted "now": on 11-28, so move it back
        sim.ledger.find_sub(PARTICIPANTS[0], "C20261126002S1")[1].refunds[-1].submitted_at = datetime(
            2026, 11, 26, 18, tzinfo=BEIJING
        )
        ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
    files = archive.files(PARTICIPANTS[0], "trade_all", DAY)
    assert len(files) == 2
    assert files[0].sha1 != files[1].sha1
    assert totals(warehouse, PARTICIPANTS[0], DAY)[0] == 4  # replaced by the new file, not added to
    for f in files:
        assert gzip.decompress(f.path.read_bytes()).startswith(b"\xef\xbb\xbf")


def test_a_hash_mismatch_loads_nothing_and_archives_nothing(served, warehouse, tmp_path):
    sim, url = served
    archive = BillArchive(tmp_path / "archive")
    sim.faults.add("download", "corrupt")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c, pytest.raises(wxpay.BillHashMismatchError) as info:
        ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
    assert info.value.expected != info.value.actual
    assert totals(warehouse, PARTICIPANTS[0], DAY)[0] == 0
    assert archive.files(PARTICIPANTS[0], "trade_all", DAY) == []


def test_an_empty_day_is_recorded_as_such(served, warehouse, tmp_path):
    sim, url = served
    with merchant_client(sim, url, PARTICIPANTS[1]) as c:
        result = ingest_bill(warehouse, c, BillArchive(tmp_path / "a"), BillRequest.trade(DAY - timedelta(days=1)))
    assert result.outcome == "no_statement"
    assert warehouse.execute("select outcome from raw.bill_fetches").fetchall() == [("no_statement",)]


def test_fund_flow_bill(served, warehouse, tmp_path):
    sim, url = served
    with merchant_client(sim, url, PARTICIPANTS[0]) as c:
        result = ingest_bill(warehouse, c, BillArchive(tmp_path / "a"), BillRequest.fundflow(DAY))
    assert result.load.row_count == 3
    income, expense = warehouse.execute(
        "select sum(amount_fen) filter (where direction = '收入'), sum(amount_fen) filter (where direction = '支出')"
        " from raw.fund_flow_rows"
    ).fetchone()
    assert income == (12800 - 49) + (999 - 4)
    assert expense == 2000 - 8


# --- loading while the bill downloads ----------------------------------------------------------

QUIET_DAY = DAY - timedelta(days=1)  # no trades in the simulator: a generated bill is published for it


def publish_generated(sim, tmp_path, **kw):
    path = tmp_path / "generated.csv.gz"
    fp = generate_trade_bill(path, rows=150_000, seed=5, bill_date=QUIET_DAY, mchid=PARTICIPANTS[0], **kw)
    sim.bills.publish_file(PARTICIPANTS[0], QUIET_DAY, path, fp.sha1)
    return fp


@pytest.mark.slow  # a bill of 100k+ rows
def test_a_large_bill_is_loaded_while_it_downloads(served, warehouse, tmp_path):
    sim, url = served
    fp = publish_generated(sim, tmp_path)
    archive = BillArchive(tmp_path / "archive")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c:
        result = ingest_bill(warehouse, c, archive, BillRequest.trade(QUIET_DAY))
    assert (result.outcome, result.downloaded, result.attempts) == ("loaded", True, 1)
    assert (result.load.loader, result.load.row_count) == ("streamed", fp.row_count)
    got = warehouse.execute(
        "select count(*), sum(settlement_amount_fen), sum(refund_amount_fen), sum(fee_millifen), min(line_no),"
        " max(line_no), count(distinct archive_sha1) from raw.trade_bill_rows where bill_date = ?",
        [QUIET_DAY],
    ).fetchone()
    assert got == (
        fp.row_count,
        fp.settlement_amount_fen,
        fp.refund_amount_fen,
        fp.fee_millifen,
        2,
        fp.row_count + 1,
        1,
    )
    stored = archive.latest(PARTICIPANTS[0], "trade_all", QUIET_DAY)
    assert stored.sha1 == fp.sha1
    assert stored.metadata()["decompressed_size"] == fp.uncompressed_bytes
    assert stored.metadata()["loaded_rows"] == fp.row_count


@pytest.mark.slow  # a bill of 100k+ rows
def test_a_bad_value_in_a_streamed_bill_is_named_the_bill_archived_and_nothing_loaded(served, warehouse, tmp_path):
    sim, url = served
    fp = publish_generated(sim, tmp_path, bad_amount_row=140_000)
    archive = BillArchive(tmp_path / "archive")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c, pytest.raises(BillFormatError) as info:
        ingest_bill(warehouse, c, archive, BillRequest.trade(QUIET_DAY))
    assert (info.value.line, info.value.field) == (fp.bad_line, "应结订单金额")
    assert "'3.315'" in str(info.value)
    assert totals(warehouse, PARTICIPANTS[0], QUIET_DAY)[0] == 0
    assert warehouse.execute("select count(*) from raw.bill_loads").fetchone() == (0,)
    assert [f.sha1 for f in archive.files(PARTICIPANTS[0], "trade_all", QUIET_DAY)] == [fp.sha1]  # verified: kept


def test_a_first_download_that_breaks_off_is_fetched_again(served, warehouse, tmp_path):
    sim, url = served
    archive = BillArchive(tmp_path / "archive")
    sim.faults.add("download", "truncate")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c:
        result = ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
    assert (result.outcome, result.attempts) == ("loaded", 2)
    assert totals(warehouse, PARTICIPANTS[0], DAY) == summary(warehouse, PARTICIPANTS[0], DAY)
    assert totals(warehouse, PARTICIPANTS[0], DAY)[0] == 3
    assert len(archive.files(PARTICIPANTS[0], "trade_all", DAY)) == 1


def test_a_bill_fetched_first_is_loaded_on_the_downloads_proof(served, warehouse, tmp_path, monkeypatch):
    sim, url = served
    archive = BillArchive(tmp_path / "archive")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c:
        fetched = fetch_to_archive(c, archive, BillRequest.trade(DAY))
    assert fetched.proof is not None
    assert fetched.proof.sha1 == fetched.archived.sha1

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again despite the proof")

    monkeypatch.setattr(hashlib, "sha1", no_hashing)
    result = load_archived(warehouse, archive, fetched)
    assert (result.outcome, result.load.row_count) == ("loaded", 3)


def test_the_archive_is_owner_only_and_the_warehouse_keeps_no_openid(served, warehouse, tmp_path):
    sim, url = served
    archive = BillArchive(tmp_path / "archive")
    with merchant_client(sim, url, PARTICIPANTS[0]) as c:
        result = ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
    folders = [p for p in archive.root.rglob("*") if p.is_dir()]
    files = [p for p in archive.root.rglob("*") if p.is_file()]
    assert len(folders) == 3
    assert {p.suffix for p in files} == {".gz", ".json"}
    assert {oct(p.stat().st_mode & 0o777) for p in [archive.root, *folders]} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    openids = {o.payer_openid for o in sim.ledger.orders.values() if o.payer_openid}
    assert openids
    assert any(o.encode() in gzip.decompress(result.archived.path.read_bytes()) for o in openids)  # the evidence
    columns = [r[0] for r in warehouse.execute("describe raw.trade_bill_rows").fetchall()]
    assert "openid" not in columns
    rows = warehouse.execute("select * from raw.trade_bill_rows").fetchall()
    assert len(rows) == 3
    assert not [o for o in openids if o in repr(rows)]
