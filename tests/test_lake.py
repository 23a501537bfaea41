"""The warehouse as a DuckLake — a PostgreSQL catalog, Parquet data files on S3-compatible storage — runs the
same SQL and finds the same as the DuckDB file; readers are never held up by a writer, and can read the past.

These run in the DuckLake environment (.venv-lake: DuckDB 1.5.5 with the ducklake extra; ./scripts/test runs
them there), against real PostgreSQL and an S3 server started by the test set-up (tests/lakeservers.py).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from flows.alerts import compose, day_report
from flows.bills import load_fetched
from flows.finance import Warehouse
from flows.recon import ReconParams, reconcile
from flows.settings import AlertConfig
from flows.sources import import_local
from flows.warehouse import connect, current_snapshot, is_lake, open_warehouse
from tests import recon_scenario
from tests.conftest import INITIATOR
from tests.recon_scenario import EXPECTED, P0, P1, D, at

pytestmark = pytest.mark.slow
WINDOW = (at(D - timedelta(days=4), 0), at(D + timedelta(days=3), 0))
MERCHANTS = [INITIATOR, P0, P1]
SUMMARY = (
    "select recon_date, mchid, item_kind, class, state, items, bill_fen, local_fen, notified_fen, exposure_fen"
    " from marts.mart_daily_summary order by all"
)


def reconciled(target, scenario) -> tuple[set, list, list]:
    con = connect(target)
    try:
        import_local(con, *scenario.local_tables(), start=WINDOW[0], end=WINDOW[1], source_label="test")
        result = reconcile(con, ReconParams(as_of=D, merchants=MERCHANTS, local_refunds=True))
        found = con.execute(
            "select class, item_kind, mchid, item_key from recon.items where run_id = ? and class <> 'matched'",
            [result.run_id],
        ).fetchall()
        summary = con.execute(SUMMARY).fetchall()
        if is_lake(con):  # the notebooks' helper reads a lake too, at its last commit or at a snapshot
            assert len(Warehouse(target).mart("mart_daily_summary")) == len(summary)
            at = Warehouse(target, snapshot=current_snapshot(con)).mart("mart_daily_summary")
            assert sorted(at["class"]) == sorted(row[3] for row in summary)
        # the alert names the snapshot it read, so finance can see later what it saw (report --as-of)
        report = day_report(con, D, MERCHANTS)
        assert report.snapshot == (current_snapshot(con) if is_lake(con) else None)
        alert = compose(report, AlertConfig(max_count=0))
        assert (f"--as-of {report.snapshot}" in alert.body) == is_lake(con)
        evidence = con.execute(
            "select item_key, bill_type, bill_archive_path, bill_line_no from marts.mart_recon_items"
            " where bill_archive_sha1 is not null order by all"
        ).fetchall()
        return found, summary, evidence
    finally:
        con.close()


def test_the_reconciliation_on_a_lake_finds_exactly_what_it_finds_on_a_file(tmp_path_factory, merchant_pool, lake):
    on_file = recon_scenario.build(tmp_path_factory.mktemp("file"), merchant_pool)
    try:
        file_found, file_summary, file_evidence = reconciled(on_file.warehouse, on_file)
    finally:
        recon_scenario.close(on_file)
    on_lake = recon_scenario.build(tmp_path_factory.mktemp("lake"), merchant_pool, warehouse=lake)
    try:
        lake_found, lake_summary, lake_evidence = reconciled(lake, on_lake)
    finally:
        recon_scenario.close(on_lake)
    wildcard = {(c, k, m) for c, k, m, key in EXPECTED if key is None}
    assert {(c, k, m, None if (c, k, m) in wildcard else key) for c, k, m, key in lake_found} == EXPECTED

    def same_world(found):  # a refused callback's record holds when and from where it came: its hash differs
        return sorted((c, k, m, None if k == "notification_line" else key) for c, k, m, key in found)

    assert same_world(lake_found) == same_world(file_found)
    assert lake_summary == file_summary  # every class, count and fen sum of every merchant-day
    assert lake_evidence == file_evidence  # the same archived bill lines


def test_readers_see_the_last_commit_while_a_writer_works_and_can_read_an_older_snapshot(
    tmp_path_factory, merchant_pool, lake
):
    scenario = recon_scenario.build(tmp_path_factory.mktemp("lake"), merchant_pool, warehouse=lake)
    try:
        reconciled(lake, scenario)
    finally:
        recon_scenario.close(scenario)
    writer = open_warehouse(lake)
    assert is_lake(writer)
    before = current_snapshot(writer)
    count = "select count(*) from marts.mart_recon_items where recon_date = ?"
    items = writer.execute(count, [D]).fetchone()[0]
    assert items > 0
    writer.execute("begin transaction")
    writer.execute("delete from recon.items where recon_date = ?", [D])  # a run in the middle of replacing the day
    reader = open_warehouse(lake, read_only=True, wait=0)  # no WarehouseBusy: a lake is never held
    assert reader.execute(count, [D]).fetchone()[0] == items
    writer.execute("commit")
    reader.close()
    assert open_warehouse(lake, read_only=True).execute(count, [D]).fetchone()[0] == 0
    past = open_warehouse(lake, read_only=True, snapshot=before)  # what an alert saw before the change
    assert past.execute(count, [D]).fetchone()[0] == items
    writer.close()


def test_workbench_actions_and_a_rerun_on_a_lake(tmp_path_factory, merchant_pool, lake):
    """The workbench's one-transaction actions on a DuckLake, and a re-run that keeps a manual resolution (the
    exception upsert's MERGE has the one UPDATE a DuckLake takes) and reopens a contradicted one."""
    from flows.recon import workbench
    from flows.recon.workbench import Selection

    scenario = recon_scenario.build(tmp_path_factory.mktemp("lake"), merchant_pool, warehouse=lake)
    try:
        reconciled(lake, scenario)
        con = connect(lake)
        try:
            ids = dict(con.execute("select item_key, exception_id from recon.exceptions").fetchall())
            workbench.assign(con, "li.wei", ids=[ids["CB0002S1"]], actor="zhang.min")
            workbench.resolve(con, "explained", ids=[ids["CB0002S1"]], actor="li.wei", note="cash")
            done = workbench.resolve(
                con, "adjusted_locally", selection=Selection(mchids=(P0,), classes=("status_mismatch",)),
                actor="li.wei", note="app fixed",
            )  # fmt: skip
            assert done.count == 1
            before = con.execute("select * from recon.exception_actions order by all").fetchall()
            with pytest.raises(workbench.AlreadyResolved):
                workbench.resolve(con, "explained", ids=[ids["CB0002S1"]], actor="li.wei", note="again")
            assert con.execute("select * from recon.exception_actions order by all").fetchall() == before
            # the merchant corrects CB0006S1's record; CB0002S1 stays as it was
            orders, refunds = scenario.local_tables()
            rows = orders.to_pylist()
            for row in rows:
                if row["out_trade_no"] == "CB0006S1":
                    row["amount_fen"] += 1
            import pyarrow as pa

            import_local(con, pa.Table.from_pylist(rows, schema=orders.schema), refunds, start=WINDOW[0],
                         end=WINDOW[1], source_label="test")  # fmt: skip
            result = reconcile(con, ReconParams(as_of=D, merchants=MERCHANTS, local_refunds=True))
            assert ("reopened", "CB0006S1") in {(c.event, c.item_key) for c in result.changes}
            states = dict(
                con.execute(
                    "select item_key, work_state from marts.mart_exceptions where item_key in ('CB0002S1', 'CB0006S1')"
                ).fetchall()
            )
            assert states == {"CB0002S1": "resolved", "CB0006S1": "open"}
            assert con.execute(
                "select action from recon.exception_actions where exception_id = ? and action = 'reopened_by_data'",
                [ids["CB0006S1"]],
            ).fetchall() == [("reopened_by_data",)]
        finally:
            con.close()
    finally:
        recon_scenario.close(scenario)


def test_two_first_loads_of_the_same_days_at_once_leave_each_day_loaded_once(tmp_path, lake):
    """Two units given the same merchants (one given up while it still ran, and its re-run) load days no one loaded
    before: both insert and both commit (a lake has no constraints), and the one committing last loads its
    doubled days again, so each day ends loaded once."""
    from tests.test_batch import fetched_bills, variants

    archive, fetched = fetched_bills(tmp_path, variants())
    open_warehouse(lake).close()  # made and migrated
    both_inserted = threading.Barrier(2, timeout=120)  # neither commits before the other has written everything
    errors: list[BaseException] = []

    def load() -> None:
        con = open_warehouse(lake)
        try:
            load_fetched(con, archive, fetched, run_id="twice", _after_insert=lambda _: both_inserted.wait())
        except BaseException as exc:
            errors.append(exc)
        finally:
            con.close()

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    con = open_warehouse(lake, read_only=True)
    try:
        loads = con.execute("select mchid, count(*) from raw.bill_loads group by all order by all").fetchall()
        rows = con.execute(
            "select bill_mchid, count(*), count(distinct line_no) from raw.trade_bill_rows group by all order by all"
        ).fetchall()
        summaries = con.execute("select count(*), count(distinct bill_mchid) from raw.trade_bill_summaries").fetchone()
        logged = con.execute("select count(*) from raw.bill_fetch_log where run_id = 'twice'").fetchone()
    finally:
        con.close()
    assert loads == [(f.mchid, 1) for f in fetched]
    assert rows == [(mchid, n, n) for mchid, n in [(f.mchid, 3) for f in fetched[:3]] + [(fetched[4].mchid, 3),
                    (fetched[5].mchid, 1)]]  # fmt: skip
    assert summaries == (len(fetched), len(fetched))
    assert logged == (2 * len(fetched),)  # both loads are on record
