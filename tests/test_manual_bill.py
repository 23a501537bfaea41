"""The manual bill fallback: a bill downloaded by hand from the merchant portal loads with lineage ``manual``; a
later API download of the day confirms it (same SHA-1) or replaces it (another SHA-1) with an event; a file of
another merchant or day, or not a bill at all, is refused with nothing written."""

from __future__ import annotations

import gzip
import hashlib
from datetime import date, datetime, timedelta

import pytest
from typer.testing import CliRunner

from flows.bills import BillArchive, ManualBillError, fetch_to_archive, ingest_bill, load_manual_bill
from flows.warehouse import connect, migrate
from tests.conftest import INITIATOR, PARTICIPANTS, combine_request
from tests.test_bills import participant_client
from wxpay.bills import BillRequest
from wxpay.models import BEIJING

DAY = date(2026, 11, 26)
P0, P1 = PARTICIPANTS


@pytest.fixture
def day_of_trades(sim, client):
    """Two paid combine orders and a refund on 11-26; bills ready at 10:00 on 11-27."""
    for number, amounts in (("C20261126001", (12800, 3550)), ("C20261126002", (999, 1))):
        client.combine.create_native(combine_request(number, amounts))
        sim.pay(INITIATOR, number, deliver=False)
    sim.refund(P0, "C20261126001S1", 2000)
    sim.clock.set(datetime(2026, 11, 27, 10, 0, tzinfo=BEIJING))
    return sim


@pytest.fixture
def portal_files(day_of_trades, tmp_path):
    """What finance downloads from the portal: each participant's bill of DAY as a plain csv."""
    scratch = BillArchive(tmp_path / "downloads")
    files = {}
    for mchid in PARTICIPANTS:
        with participant_client(day_of_trades, mchid) as c:
            fetched = fetch_to_archive(c, scratch, BillRequest.trade(DAY))
        target = tmp_path / f"portal-{mchid}-{DAY}.csv"
        target.write_bytes(gzip.decompress(fetched.archived.path.read_bytes()))
        files[mchid] = target
    return files


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    con = connect(path)
    migrate(con)
    yield con
    con.close()


def loads(con):
    return con.execute(
        "select mchid, bill_date, archive_sha1, lineage, row_count from raw.bill_loads order by all"
    ).fetchall()


def events(con):
    return con.execute(
        "select mchid, event, archive_sha1, previous_sha1, actor from raw.bill_load_events order by event_at, event"
    ).fetchall()


def everything(con, archive_root):
    tables = ("raw.bill_loads", "raw.trade_bill_rows", "raw.trade_bill_summaries", "raw.bill_load_events")
    files = sorted(p.relative_to(archive_root) for p in archive_root.rglob("*") if p.is_file())
    return [con.execute(f"select * from {t} order by all").fetchall() for t in tables], files  # noqa: S608


def test_a_portal_bill_loads_with_lineage_manual_and_the_same_api_bill_confirms_it(
    day_of_trades, portal_files, warehouse, tmp_path
):
    archive = BillArchive(tmp_path / "archive")
    file = portal_files[P0]
    sha1 = hashlib.sha1(file.read_bytes()).hexdigest()
    loaded = load_manual_bill(warehouse, archive, file, mchid=P0, bill_date=DAY, loaded_by="li.wei")
    assert loaded.load.row_count == 3
    assert loaded.archived.sha1 == sha1
    assert loaded.archived.path.name == f"{sha1}.csv.gz"
    assert gzip.decompress(loaded.archived.path.read_bytes()) == file.read_bytes()
    assert loaded.archived.metadata()["source"] == "manual"
    assert loads(warehouse) == [(P0, DAY, sha1, "manual", 3)]
    assert events(warehouse) == [(P0, "loaded_manual", sha1, None, "li.wei")]
    # the rows are there for the reconciliation, with their lineage
    assert warehouse.execute(
        "select count(*), sum(settlement_amount_fen) from raw.trade_bill_rows where bill_mchid = ? and refund_id = '0'",
        [P0],
    ).fetchone() == (2, 12800 + 999)

    # the nightly asks the API anyway: the same file confirms the manual load
    with participant_client(day_of_trades, P0) as c:
        ingested = ingest_bill(warehouse, c, archive, BillRequest.trade(DAY))
    assert ingested.archived.sha1 == sha1
    assert loads(warehouse) == [(P0, DAY, sha1, "api", 3)]
    assert events(warehouse)[1:] == [(P0, "confirmed_by_api", sha1, sha1, "wxrecon")]


def test_a_later_api_bill_with_another_sha1_replaces_the_manual_one_with_an_event(
    day_of_trades, portal_files, warehouse, tmp_path
):
    archive = BillArchive(tmp_path / "archive")
    portal = portal_files[P0]
    edited = tmp_path / "portal-lf.csv.gz"  # the portal's export with other line ends: another file, same rows
    edited.write_bytes(gzip.compress(portal.read_bytes().replace(b"\r\n", b"\n")))
    manual = load_manual_bill(warehouse, archive, edited, mchid=P0, bill_date=DAY, loaded_by="li.wei").archived.sha1
    with participant_client(day_of_trades, P0) as c:
        api = ingest_bill(warehouse, c, archive, BillRequest.trade(DAY)).archived.sha1
    assert manual != api
    assert loads(warehouse) == [(P0, DAY, api, "api", 3)]
    assert events(warehouse) == [
        (P0, "loaded_manual", manual, None, "li.wei"),
        (P0, "replaced_by_api", api, manual, "wxrecon"),
    ]
    both = sorted(p.name for p in archive.directory(P0, "trade_all", DAY).glob("*.csv.gz"))
    assert both == sorted([f"{manual}.csv.gz", f"{api}.csv.gz"])  # the archive keeps both, forever


def test_a_manual_load_replaces_the_day_and_says_which_load_it_replaced(
    day_of_trades, portal_files, warehouse, tmp_path
):
    archive = BillArchive(tmp_path / "archive")
    with participant_client(day_of_trades, P0) as c:
        api = ingest_bill(warehouse, c, archive, BillRequest.trade(DAY)).archived.sha1
    edited = tmp_path / "portal-lf.csv"
    edited.write_bytes(portal_files[P0].read_bytes().replace(b"\r\n", b"\n"))
    manual = load_manual_bill(warehouse, archive, edited, mchid=P0, bill_date=DAY, loaded_by="li.wei")
    assert manual.previous_sha1 == api
    assert events(warehouse) == [(P0, "loaded_manual", manual.archived.sha1, api, "li.wei")]
    assert warehouse.execute("select count(*) from raw.trade_bill_rows").fetchone()[0] == 3  # replaced, not doubled


@pytest.mark.parametrize(
    ("mchid", "day", "says"),
    [
        (P1, DAY, f"3 row(s) name merchant {P0} (not {P1})"),
        (P0, DAY + timedelta(days=1), f"3 row(s) name day {DAY} (not {DAY + timedelta(days=1)})"),
    ],
)
def test_a_file_of_another_merchant_or_day_is_refused_with_nothing_written(
    portal_files, warehouse, tmp_path, mchid, day, says
):
    archive = BillArchive(tmp_path / "archive")
    archive.root.mkdir()
    before = everything(warehouse, archive.root)
    with pytest.raises(ManualBillError, match=r"lines 2, 3, 4: this is not the trade_all bill") as info:
        load_manual_bill(warehouse, archive, portal_files[P0], mchid=mchid, bill_date=day, loaded_by="li.wei")
    assert says in str(info.value)
    assert everything(warehouse, archive.root) == before


def test_what_is_not_a_bill_is_refused_by_name(portal_files, warehouse, tmp_path):
    archive = BillArchive(tmp_path / "archive")
    archive.root.mkdir()
    before = everything(warehouse, archive.root)
    broken = tmp_path / "broken.csv"
    lines = portal_files[P0].read_bytes().split(b"\r\n")
    lines[2] = lines[2].replace(b"`9.99", b"`9x99")  # an amount that is not one
    broken.write_bytes(b"\r\n".join(lines))
    for file, says in (
        (tmp_path / "missing.csv", "no file"),
        (broken, "broken.csv: BillFormatError"),
    ):
        with pytest.raises(ManualBillError, match=says):
            load_manual_bill(warehouse, archive, file, mchid=P0, bill_date=DAY, loaded_by="li.wei")
    with pytest.raises(ManualBillError, match="cannot be loaded by hand"):
        load_manual_bill(
            warehouse, archive, portal_files[P0], mchid=P0, bill_date=DAY, bill_type="fundflow_basic", loaded_by="x"
        )
    assert everything(warehouse, archive.root) == before


def test_wxrecon_load_bill(portal_files, tmp_path):
    from flows.cli import app

    (tmp_path / "key.pem").write_text("not read here")
    config = tmp_path / "wxrecon.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "var"}"\n[[merchants]]\nmchid = "{P0}"\nappid = "wx1"\n'
        f'merchant_serial_no = "ABCDEF12"\nprivate_key_file = "{tmp_path / "key.pem"}"\napi_v3_key = "{"k" * 32}"\n'
        f'wechatpay_public_key_id = "PUB_KEY_ID_0100"\nwechatpay_public_key_file = "{tmp_path / "key.pem"}"\n'
    )
    runner = CliRunner()
    refused = runner.invoke(
        app, ["load-bill", str(portal_files[P0]), "--mchid", P1, "--date", str(DAY), "--config", str(config)]
    )
    assert refused.exit_code == 2, refused.output
    assert f"name merchant {P0} (not {P1})" in " ".join(refused.output.split())
    done = runner.invoke(
        app,
        [
            "load-bill",
            str(portal_files[P0]),
            "--mchid",
            P0,
            "--date",
            str(DAY),
            "--by",
            "li.wei",
            "--config",
            str(config),
        ],
    )
    assert done.exit_code == 0, done.output
    assert "3 rows" in done.output
    con = connect(tmp_path / "var" / "warehouse.duckdb")
    try:
        assert [row[3] for row in loads(con)] == ["manual"]
    finally:
        con.close()
