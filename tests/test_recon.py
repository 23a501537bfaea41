"""The reconciliation engine on a simulated day with one injected case of every class, the merchant's
records read from Parquet, a real PostgreSQL and a real MariaDB server."""

from __future__ import annotations

import gzip
import shutil
from datetime import timedelta

import pyarrow.parquet as pq
import pytest

from flows.recon import ReconParams, item_rows, reconcile
from flows.sources import LocalOrdersSource, LocalRefundsSource, import_local, read_local_orders, read_local_refunds
from flows.warehouse import connect
from tests import recon_scenario
from tests.conftest import INITIATOR
from tests.recon_scenario import EXPECTED, P0, P1, D, at

WINDOW = (at(D - timedelta(days=4), 0), at(D + timedelta(days=3), 0))
MERCHANTS = [INITIATOR, P0, P1]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, merchant_pool):
    built = recon_scenario.build(tmp_path_factory.mktemp("scenario"), merchant_pool)
    yield built
    recon_scenario.close(built)


def warehouse_copy(scenario, tmp_path):
    target = tmp_path / "warehouse.duckdb"
    shutil.copy(scenario.warehouse, target)
    return connect(target)


def run(con, orders, refunds, day=D, **kw):
    import_local(con, orders, refunds, start=WINDOW[0], end=WINDOW[1], source_label="test")
    return reconcile(con, ReconParams(as_of=day, merchants=MERCHANTS, local_refunds=True, **kw))


def exceptions_of(con, result):
    rows = con.execute(
        "select class, item_kind, mchid, item_key from recon.items where run_id = ? and class <> 'matched'",
        [result.run_id],
    ).fetchall()
    return rows


def normalised(rows):
    wildcard = {(c, k, m) for c, k, m, key in EXPECTED if key is None}
    return {(c, k, m, None if (c, k, m) in wildcard else key) for c, k, m, key in rows}


def one(con, result, cls, key):
    rows = con.execute(
        "select * exclude (run_id) from recon.items where run_id = ? and class = ? and item_key = ?",
        [result.run_id, cls, key],
    ).fetchall()
    names = [d[0] for d in con.description]
    assert len(rows) == 1, rows
    return dict(zip(names, rows[0], strict=True))


def test_every_injected_case_yields_exactly_its_class(scenario, tmp_path):
    con = warehouse_copy(scenario, tmp_path)
    result = run(con, *scenario.local_tables())
    found = exceptions_of(con, result)
    assert normalised(found) == EXPECTED, recon_scenario.dump(sorted(found))
    assert len(found) == len(EXPECTED)  # one item per expected case, nothing doubled

    amount = one(con, result, "amount_mismatch", "CB0002S1")
    assert (amount["bill_fen"], amount["local_fen"], amount["diff_fen"]) == (9900, 10000, -100)
    assert amount["local_key"] == f"{P0}/CB0002S1"
    assert amount["combine_out_trade_no"] == "CB0002"
    archived = scenario.archive.target(P0, "trade_all", D, amount["bill_archive_sha1"]).path
    line = gzip.decompress(archived.read_bytes()).decode("utf-8-sig").split("\r\n")[amount["bill_line_no"] - 1]
    assert "`CB0002S1," in line
    assert "`99.00," in line

    missing = one(con, result, "missing_locally", "CB0003S1")
    assert missing["bill_fen"] == 5000
    assert missing["local_fen"] is None
    assert missing["bill_line_no"] > 1
    fee = one(con, result, "fee_mismatch", "pay:CB0014S2")
    assert (fee["bill_fee_millifen"], fee["expected_fee_millifen"]) == (99000, 18000)  # 3333 x 0.54 % = 17.9982
    refund = one(con, result, "refund_amount_mismatch", "CB0015S1/RF0015")
    assert (refund["bill_fen"], refund["local_fen"], refund["diff_fen"]) == (100, 150, -50)
    notified = one(con, result, "notification_amount_mismatch", "CB0012")
    assert (notified["bill_fen"], notified["notified_fen"], notified["diff_fen"]) == (2700, 2799, 99)
    assert notified["notification_id"] == "f00dcafe-0000-4000-8000-000000000012"
    forged = con.execute(
        "select notification_log_file, notification_line_no, detail from recon.items where run_id = ?"
        " and class = 'notification_unverified'",
        [result.run_id],
    ).fetchone()
    assert forged[0].startswith("_rejected/")  # the receiver's bounded record of the refused request
    assert forged[1] >= 1
    assert "SignatureMismatchError" in forged[2]
    assert "rejected it too" in forged[2]
    pending = one(con, result, "pending", "CB0005S1")
    assert pending["recon_date"] == D
    assert pending["state"] == "pending"
    gone = one(con, result, "missing_in_bill", "CB0004S1")
    assert gone["recon_date"] == D - timedelta(days=2)
    assert gone["local_fen"] == 1500

    clean = con.execute(
        "select sum(items) from recon.daily_totals where run_id = ? and item_kind = 'payment'", [result.run_id]
    ).fetchone()[0]
    # 14 combine orders paid on D, 2 sub orders each, minus 7 sub-order exceptions (amount 1, missing locally 1,
    # status 3, duplicate 1, transaction 1)
    assert clean == 2 * 14 - 7
    assert result.classes()["matched"] > 0
    assert result.open_exceptions == len(EXPECTED) - 2  # all but the two pending


def test_one_money_at_stake_for_the_alert_the_report_and_the_notebooks(scenario, tmp_path):
    from flows import finance
    from flows.alerts import day_report
    from flows.report import exceptions_of_day, summary_of_day

    con = warehouse_copy(scenario, tmp_path)
    run(con, *scenario.local_tables())
    alert = day_report(con, D, MERCHANTS, top=100)
    con.close()
    path = tmp_path / "warehouse.duckdb"

    # each class counts its money once, as sql/recon/items.sql says
    per_item = {(r["class"], r["item_key"]): r["exposure_fen"] for r in exceptions_of_day(path, D)}
    assert per_item[("amount_mismatch", "CB0002S1")] == 100  # 99.00 billed, 100.00 recorded
    assert per_item[("missing_locally", "CB0003S1")] == 5000
    assert per_item[("fee_mismatch", "pay:CB0014S2")] == 81  # fee 0.99 charged, 0.18 due
    assert per_item[("refund_amount_mismatch", "CB0015S1/RF0015")] == 50
    assert per_item[("notification_amount_mismatch", "CB0012")] == 99
    assert all(v == 0 for (cls, _), v in per_item.items() if cls == "notification_duplicate")
    statuses = [v for (cls, _), v in per_item.items() if cls == "status_mismatch"]
    assert statuses
    assert all(v > 0 for v in statuses)  # the whole amount is in question, not a 0 difference

    # and the alert, the report and the notebooks' helper add up the same figures
    by_alert = {(c.mchid, c.cls): c.exposure_fen for c in alert.classes}
    by_report = {(r["mchid"], r["class"]): r["exposure_fen"] for r in summary_of_day(path, D) if r["state"] == "open"}
    items = finance.Warehouse(path).recon_items(start=D, end=D)
    opened = items[items["state"] == "open"]
    by_notebook = {k: int(v) for k, v in opened.groupby(["mchid", "class"])["exposure_fen"].sum().items()}
    assert by_alert == by_report == by_notebook
    assert alert.exposure_fen == sum(by_notebook.values())
    assert alert.top[0].exposure_fen == int(opened["exposure_fen"].max())


def test_control_totals(scenario, tmp_path):
    con = warehouse_copy(scenario, tmp_path)
    run(con, *scenario.local_tables())
    rows = con.execute(
        "select summary_rows, detail_rows, summary_order_fen, detail_order_fen, summary_minus_detail_fen,"
        " local_paid_fen, bill_minus_local_fen from marts.mart_control_totals where mchid = ? and bill_date = ?",
        [P1, D],
    ).fetchall()
    assert len(rows) == 1
    summary_rows, detail_rows, summary_fen, detail_fen, diff, local_fen, bill_minus_local = rows[0]
    assert summary_rows == detail_rows
    assert summary_fen == detail_fen
    assert diff == 0
    assert bill_minus_local == detail_fen - local_fen != 0  # CB0006/CB0008 are unpaid locally


def test_parquet_postgres_and_mariadb_sources_give_identical_results(
    scenario, tmp_path, postgres_server, mariadb_server
):
    orders, refunds = scenario.local_tables()
    pq.write_table(orders, tmp_path / "orders.parquet")
    pq.write_table(refunds, tmp_path / "refunds.parquet")
    pg = postgres_server.create_database("recon_scenario")
    my = mariadb_server.create_database("recon_scenario")
    pg.execute(
        "create table sub_orders (combine_out_trade_no text, out_trade_no text, mchid text, amount_fen bigint,"
        " status text, created_at timestamptz, paid_at timestamptz, transaction_id text, attach text, description text)"
    )
    my.execute(
        "create table sub_orders (combine_out_trade_no varchar(32), out_trade_no varchar(32), mchid varchar(32),"
        " amount_fen bigint, status varchar(16), created_at datetime(6), paid_at datetime(6),"
        " transaction_id varchar(32), attach varchar(128), description varchar(128))"
    )
    rows = orders.to_pylist()
    pg.load_rows("sub_orders", orders.column_names, [list(r.values()) for r in rows])
    local = [
        [
            *list(r.values())[:5],
            *(
                None if v is None else v.astimezone(recon_scenario.BEIJING).replace(tzinfo=None)
                for v in list(r.values())[5:7]
            ),
            *list(r.values())[7:],
        ]
        for r in rows
    ]
    my.load_rows("sub_orders", orders.column_names, local)

    sources = {
        "parquet": LocalOrdersSource(kind="parquet", paths=(str(tmp_path / "orders.parquet"),)),
        "postgresql": LocalOrdersSource(kind="postgresql", url=pg.url, table="sub_orders"),
        "mysql": LocalOrdersSource(kind="mysql", url=my.url, table="sub_orders"),
    }
    refund_source = LocalRefundsSource(kind="parquet", paths=(str(tmp_path / "refunds.parquet"),))
    results = {}
    for name, source in sources.items():
        con = warehouse_copy(scenario, tmp_path / name) if (tmp_path / name).mkdir() is None else None
        read = read_local_orders(source, *WINDOW)
        assert read.num_rows == orders.num_rows
        result = run(con, read, read_local_refunds(refund_source, *WINDOW))
        results[name] = item_rows(con, D)
        assert normalised(exceptions_of(con, result)) == EXPECTED
        con.close()
    assert results["parquet"] == results["postgresql"] == results["mysql"]


def test_rerunning_a_day_gives_identical_results(scenario, tmp_path):
    con = warehouse_copy(scenario, tmp_path)
    first = run(con, *scenario.local_tables())
    items = item_rows(con, D)
    second = run(con, *scenario.local_tables())
    assert item_rows(con, D) == items
    assert second.changes == []
    assert first.changes
    assert con.execute("select count(*) from recon.items where recon_date = ?", [D]).fetchone()[0] == len(items)


def test_a_cross_midnight_order_is_pending_on_d_and_resolved_on_d_plus_1(scenario, tmp_path):
    con = warehouse_copy(scenario, tmp_path)
    orders, refunds = scenario.local_tables()
    run(con, orders, refunds)
    con.close()
    shutil.copy(tmp_path / "warehouse.duckdb", scenario.warehouse.with_name("d1.duckdb"))
    saved, scenario.warehouse = scenario.warehouse, scenario.warehouse.with_name("d1.duckdb")
    try:
        scenario.load_day(D + timedelta(days=1), business_now=at(D + timedelta(days=2), 10))
    finally:
        scenario.warehouse = saved
    con = connect(saved.with_name("d1.duckdb"))
    result = run(con, orders, refunds, day=D + timedelta(days=1))
    resolved = {(c.item_key, c.event, c.from_class) for c in result.changes if c.event == "resolved"}
    assert {("CB0005S1", "resolved", "pending"), ("CB0005S2", "resolved", "pending")} <= resolved
    state = con.execute(
        "select state, resolution, age_days from marts.mart_exceptions where item_key = 'CB0005S1'"
    ).fetchall()
    assert state == [("resolved", "matched", 1)]
    assert con.execute("select count(*) from recon.items where item_key = 'CB0005S1'").fetchone()[0] == 0
    matched = con.execute(
        "select items from recon.daily_totals where recon_date = ? and mchid = ? and item_kind = 'payment'",
        [D + timedelta(days=1), P0],
    ).fetchall()
    assert matched == [(1,)]  # CB0005S1 matched on D+1, the day its payment is in the bill
    changes = con.execute(
        "select event, item_key from marts.mart_exception_changes where is_latest and event = 'resolved'"
    ).fetchall()
    assert ("resolved", "CB0005S2") in changes
    assert con.execute("select count(*) from marts.mart_exceptions where state = 'pending'").fetchone()[0] == 0
    con.close()


def test_an_unreadable_log_line_is_a_finding(scenario, tmp_path):
    con = warehouse_copy(scenario, tmp_path)
    log_dir = scenario.log.directory(INITIATOR)
    day_file = sorted(log_dir.glob("*.jsonl"))[0]
    original = day_file.read_bytes()
    try:
        day_file.write_bytes(original + b'{"v":1,"received_at": this is not json\n')
        from flows.notifications import verify_log

        stats = verify_log(con, scenario.log, scenario.keys(), start=D - timedelta(days=3), end=D, workers=1)
        assert stats.unreadable == 1
    finally:
        day_file.write_bytes(original)
    result = run(con, *scenario.local_tables())
    unreadable = con.execute(
        "select detail from recon.items where run_id = ? and class = 'notification_unverified'"
        " and detail like 'UnreadableLine%'",
        [result.run_id],
    ).fetchall()
    assert len(unreadable) == 1


def test_tolerance_absorbs_small_differences(scenario, tmp_path):
    con = warehouse_copy(scenario, tmp_path)
    result = run(con, *scenario.local_tables(), tolerance_fen=100)
    classes = {c for c, *_ in exceptions_of(con, result)}
    assert "amount_mismatch" not in classes
    assert "refund_amount_mismatch" not in classes


def test_without_a_receiving_merchant_orders_are_not_compared_with_notifications(scenario, tmp_path):
    con = warehouse_copy(scenario, tmp_path)
    # orders are not compared with notifications; the log's own findings (forged, duplicate lines) remain
    compared = {"notification_missing", "notification_amount_mismatch"}
    expected = {(c, k, m) for c, k, m, _ in EXPECTED if c not in compared}
    result = run(con, *scenario.local_tables(), check_notifications=False)
    assert {(c, k, m) for c, k, m, _ in exceptions_of(con, result)} == expected
    assert con.execute("select check_notifications from recon.runs where run_id = ?", [result.run_id]).fetchall() == [
        (False,)
    ]


def test_params_are_validated():
    with pytest.raises(ValueError, match="merchant"):
        ReconParams(as_of=D, merchants=[])
    with pytest.raises(ValueError, match="tolerance_fen"):
        ReconParams(as_of=D, merchants=[P0], tolerance_fen=-1)


def test_a_clean_day_yields_only_matched_and_no_exceptions(tmp_path_factory, merchant_pool, tmp_path):
    clean = recon_scenario.build_clean(tmp_path_factory.mktemp("clean"), merchant_pool)
    try:
        con = warehouse_copy(clean, tmp_path)
        result = run(con, *clean.local_tables())
    finally:
        recon_scenario.close(clean)
    assert set(result.classes()) == {"matched"}
    assert result.exceptions == 0
    assert result.open_exceptions == 0
    kinds = {(c.item_kind, c.count) for c in result.counts}
    assert kinds == {("payment", 6), ("notification", 3), ("refund", 1)}
    assert con.execute("select count(*) from marts.mart_exceptions").fetchone()[0] == 0


def test_a_callback_to_an_unknown_merchant_is_a_finding(scenario, tmp_path):
    from flows.notifications import LogEntry, NotificationLog, verify_log

    con = warehouse_copy(scenario, tmp_path)
    log = NotificationLog(tmp_path / "log")
    for path in scenario.log.root.rglob("*.jsonl"):
        target = log.root / path.relative_to(scenario.log.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    log.append(
        LogEntry(
            at(D, 12),
            "1999999999",
            "rejected",
            "UnknownMerchantError: no receiver configured for mchid",
            None,
            {},
            b'{"id":"x"}',
            404,
        ),
        unrouted=True,
    )
    verify_log(con, log, scenario.keys(), start=D - timedelta(days=3), end=D, workers=1)
    result = run(con, *scenario.local_tables())
    unrouted = con.execute(
        "select class, detail from recon.items where run_id = ? and mchid = '_unrouted'", [result.run_id]
    ).fetchall()
    assert len(unrouted) == 1
    assert unrouted[0][0] == "notification_unverified"
    assert "UnknownMerchantError" in unrouted[0][1]
