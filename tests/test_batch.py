"""Small bills of many merchants in one transaction (flows.bills.batch) against real DuckDB files: the same
rows, summaries and lineage as loading them one by one; all or nothing; a re-run replaces."""

from __future__ import annotations

import gzip
import hashlib
import re
from datetime import date

import pytest

from flows.bills import BatchRefused, BillArchive, Fetched, load_archived, load_fetched, load_manual_bill
from flows.warehouse import connect, migrate
from tests.test_billfile import spec_example_rows
from wxpay.billfile import HEADERS, BillKind
from wxpay.bills import BillProof
from wxpay.errors import BillFormatError, BillSummaryMismatchError
from wxpay.sim.billrender import render_trade_bill

DAY = date(2025, 3, 10)
TABLES = {
    "raw.bill_loads": "select * exclude (loaded_at) from raw.bill_loads order by all",
    "raw.trade_bill_rows": "select * from raw.trade_bill_rows order by all",
    "raw.trade_bill_summaries": "select * from raw.trade_bill_summaries order by all",
    "raw.bill_fetch_log": "select * exclude (fetched_at) from raw.bill_fetch_log order by all",
}


def variants() -> dict[str, bytes]:
    """One bill per merchant, each printed differently."""
    rows = spec_example_rows()
    with_extra = [{**row, "新的列": f"x{n}"} for n, row in enumerate(rows)]
    return {
        "1900000201": render_trade_bill(rows),  # BOM, CRLF, trailing newline
        "1900000202": render_trade_bill(rows, bom=False, crlf=False, trailing_newline=False),
        "1900000203": render_trade_bill(rows, crlf=True, trailing_newline=False),
        "1900000204": render_trade_bill([]),  # a day whose bill has no rows
        "1900000205": render_trade_bill(with_extra, titles=[*HEADERS[BillKind.TRADE_ALL], "新的列"]),
        "1900000206": render_trade_bill(rows[:1], bom=False),
    }


def fetched_bills(tmp_path, bills: dict[str, bytes | None]) -> tuple[BillArchive, list[Fetched]]:
    """Each bill in an archive as a verified download left it (``None``: a day without a statement)."""
    archive = BillArchive(tmp_path / "archive")
    fetched = []
    for n, (mchid, data) in enumerate(bills.items()):
        if data is None:
            fetched.append(Fetched(mchid, "trade_all", DAY, None))
            continue
        sha1 = hashlib.sha1(data).hexdigest()
        bill = archive.target(mchid, "trade_all", DAY, sha1, gzip=n % 2 == 0)
        bill.path.write_bytes(gzip.compress(data) if n % 2 == 0 else data)
        fetched.append(Fetched(mchid, "trade_all", DAY, bill, True, 1, BillProof(sha1, len(data))))
    return archive, fetched


def warehouse(path):
    con = connect(path)
    migrate(con)
    return con


def tables(con) -> dict[str, list[tuple]]:
    return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}


def test_a_batch_writes_exactly_what_loading_one_by_one_writes(tmp_path):
    archive, fetched = fetched_bills(tmp_path, {**variants(), "1900000207": None})
    alone, together = warehouse(tmp_path / "alone.duckdb"), warehouse(tmp_path / "together.duckdb")
    for f in fetched:
        load_archived(alone, archive, f, run_id="night")
    results = load_fetched(together, archive, fetched, run_id="night")
    expected = tables(alone)
    assert len(expected["raw.trade_bill_rows"]) == 3 * 4 + 1
    assert tables(together) == expected
    assert [(r.mchid, r.outcome) for r in results] == [(f.mchid, f.outcome) for f in fetched]
    assert [r.load.row_count for r in results if r.load] == [3, 3, 3, 0, 3, 1]
    assert {r.load.loader for r in results if r.load} == {"batched"}
    assert results[4].load.extra_columns == ("新的列",)
    assert archive.latest("1900000201", "trade_all", DAY).metadata()["loaded_rows"] == 3


def test_loading_the_same_day_again_replaces_it(tmp_path):
    archive, fetched = fetched_bills(tmp_path, variants())
    con = warehouse(tmp_path / "w.duckdb")
    load_fetched(con, archive, fetched[:2], run_id="first")
    again = load_fetched(con, archive, fetched, run_id="second")
    assert [r.load.replaced_rows for r in again] == [3, 3, 0, 0, 0, 0]
    assert con.execute("select count(*), count(distinct (bill_mchid, line_no)) from raw.trade_bill_rows").fetchone() \
        == (13, 13)  # fmt: skip
    assert con.execute("select count(*) from raw.bill_loads").fetchone() == (6,)
    assert con.execute("select count(*) from raw.trade_bill_summaries").fetchone() == (6,)


def with_bad_value(data: bytes) -> bytes:
    """The first amount on line 2 printed with three decimals."""
    lines = data.split(b"\n")
    lines[1] = re.sub(rb"`(\d+\.\d\d),", rb"`\g<1>5,", lines[1], count=1)
    return b"\n".join(lines)


@pytest.mark.parametrize("fault", ["bad value", "wrong summary"])
def test_one_bill_that_is_not_clean_refuses_the_batch_and_nothing_is_written(tmp_path, fault):
    bills = variants()
    rows = spec_example_rows()
    bad = "1900000203"
    if fault == "bad value":
        bills[bad] = with_bad_value(bills[bad])
    else:
        bills[bad] = render_trade_bill(rows, summary_override={"fee_millifen": 1})
    archive, fetched = fetched_bills(tmp_path, bills)
    con = warehouse(tmp_path / "w.duckdb")
    load_archived(con, archive, fetched[0], run_id="earlier")  # a day loaded before: it must stay as it was
    before = tables(con)
    with pytest.raises(BatchRefused):
        load_fetched(con, archive, fetched, run_id="night")
    assert tables(con) == before
    # loaded alone, the bill names its fault: file, line and field
    expected = BillFormatError if fault == "bad value" else BillSummaryMismatchError
    with pytest.raises(expected) as info:
        load_archived(con, archive, fetched[2], run_id="night")
    assert info.value.file == fetched[2].archived.path.name
    if fault == "bad value":
        assert (info.value.line, info.value.field) == (2, "应结订单金额")


def test_a_batch_is_one_day_of_one_bill_type_one_bill_per_merchant(tmp_path):
    archive, fetched = fetched_bills(tmp_path, variants())
    con = warehouse(tmp_path / "w.duckdb")
    with pytest.raises(ValueError, match="one bill per merchant"):
        load_fetched(con, archive, [fetched[0], fetched[0]])
    assert load_fetched(con, archive, []) == []
    assert con.execute("select count(*) from raw.bill_loads").fetchone() == (0,)


@pytest.mark.parametrize(("portal_crlf", "event"), [(True, "confirmed_by_api"), (False, "replaced_by_api")])
def test_a_day_loaded_by_hand_is_confirmed_or_replaced_by_the_batch(tmp_path, portal_crlf, event):
    mchid = "1900000109"  # the merchant of the spec's rows (a manual bill must hold only its own)
    api_bill = render_trade_bill(spec_example_rows())
    portal = tmp_path / "portal.csv"  # the same rows; with other line ends it is another file
    portal.write_bytes(render_trade_bill(spec_example_rows(), crlf=portal_crlf))
    archive, fetched = fetched_bills(tmp_path, {mchid: api_bill, "1900000202": variants()["1900000202"]})
    con = warehouse(tmp_path / "w.duckdb")
    manual = load_manual_bill(con, archive, portal, mchid=mchid, bill_date=DAY, loaded_by="li.wei").archived.sha1
    load_fetched(con, archive, fetched, run_id="night")
    api = fetched[0].archived.sha1
    assert (manual == api) is portal_crlf
    events = con.execute(
        "select mchid, event, archive_sha1, previous_sha1, actor from raw.bill_load_events order by event_at, event"
    ).fetchall()
    assert events == [(mchid, "loaded_manual", manual, None, "li.wei"), (mchid, event, api, manual, "wxrecon")]
    assert con.execute("select archive_sha1, lineage, row_count from raw.bill_loads where mchid = ?", [mchid]) \
        .fetchall() == [(api, "api", 3)]  # fmt: skip
    assert con.execute("select count(*) from raw.trade_bill_rows where bill_mchid = ?", [mchid]).fetchone() == (3,)
