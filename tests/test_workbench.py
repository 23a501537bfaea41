"""The exception workbench on the scenario day: assign, resolve, reopen, bulk actions, the audit trail, the
alert and the backlog, a later bill that contradicts a manual resolution, and every bad input refused with
nothing written."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

import pytest

import wxpay
from flows.alerts import compose, day_report
from flows.recon import workbench
from flows.recon.workbench import Selection
from flows.settings import AlertConfig
from flows.warehouse import connect
from tests import recon_scenario
from tests.recon_scenario import P0, P1, D
from tests.test_recon import MERCHANTS, run
from wxpay.bills import BillRequest
from wxpay.models import BEIJING

ACTED = datetime(2026, 11, 27, 15, 30, tzinfo=BEIJING)
"""An action's clock when a test wants its business day; where the order of actions and runs matters, the
actions take the run clock (the process clock, moved and ticking), as runs stamp their events with it."""


def clock():
    return ACTED


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, merchant_pool):
    built = recon_scenario.build(tmp_path_factory.mktemp("scenario"), merchant_pool)
    yield built
    recon_scenario.close(built)


@pytest.fixture(scope="module")
def reconciled(scenario, tmp_path_factory):
    """The scenario's warehouse reconciled as of D (copied per test)."""
    target = tmp_path_factory.mktemp("reconciled") / "warehouse.duckdb"
    shutil.copy(scenario.warehouse, target)
    con = connect(target)
    run(con, *scenario.local_tables())
    con.close()
    return target


@pytest.fixture
def con(reconciled, tmp_path):
    target = tmp_path / "warehouse.duckdb"
    shutil.copy(reconciled, target)
    connection = connect(target)
    yield connection
    connection.close()


def exception_id(con, key, cls=None):
    sql = "select exception_id from recon.exceptions where item_key = ?"
    args = [key]
    if cls:
        sql += " and class = ?"
        args.append(cls)
    (found,) = con.execute(sql, args).fetchall()
    return found[0]


def snapshot(con):
    """Everything an action may write."""
    return (
        con.execute("select * from recon.exceptions order by exception_id").fetchall(),
        con.execute("select * from recon.exception_actions order by action_id").fetchall(),
    )


def alert_of(con):
    report = day_report(con, D, MERCHANTS)
    return report, compose(report, AlertConfig(max_count=0))


def test_assign_then_resolve_with_a_note_leaves_the_alert_and_the_backlog_and_is_audited(con):
    target = exception_id(con, "CB0002S1")
    before, alert = alert_of(con)
    backlog = before.backlog.items

    assigned = workbench.assign(con, "li.wei", ids=[target[:10]], actor="zhang.min", clock=clock)
    assert assigned.applied
    assert assigned.exception_ids == [target]
    state = con.execute(
        "select work_state, assignee from marts.mart_exceptions where exception_id = ?", [target]
    ).fetchall()
    assert state == [("assigned", "li.wei")]

    resolved = workbench.resolve(
        con, "explained", ids=[target], actor="li.wei", note="customer paid 1.00 in cash at the counter", clock=clock
    )
    assert resolved.count == 1
    row = con.execute(
        "select state, work_state, resolution, resolved_by, resolution_note, resolved_on, age_days"
        " from marts.mart_exceptions where exception_id = ?",
        [target],
    ).fetchone()
    assert row == (
        "resolved",
        "resolved",
        "explained",
        "li.wei",
        "customer paid 1.00 in cash at the counter",
        ACTED.date(),
        0,
    )

    audit = con.execute(
        "select action, actor, acted_at, business_date, from_state, to_state, assignee, resolution, note, class,"
        " bill_fen, local_fen, diff_fen from marts.mart_exception_audit where exception_id = ? order by acted_at,"
        " action",
        [target],
    ).fetchall()
    assert [(a[0], a[1], a[4], a[5]) for a in audit] == [
        ("assigned", "zhang.min", "open", "assigned"),
        ("resolved", "li.wei", "assigned", "resolved"),
    ]
    assert all(a[2] == ACTED and a[3] == ACTED.date() for a in audit)
    assert audit[1][7:] == (
        "explained",
        "customer paid 1.00 in cash at the counter",
        "amount_mismatch",
        9900,
        10000,
        -100,
    )

    after, alert_after = alert_of(con)
    assert after.exceptions == before.exceptions - 1
    assert after.backlog.items == backlog - 1
    assert f"- {P0} amount_mismatch: 1 item(s), ¥1.00" in alert.body
    assert f"{P0} amount_mismatch" not in alert_after.body
    assert "Open backlog:" in alert_after.body
    backlog_rows = con.execute(
        "select coalesce(sum(items), 0) from marts.mart_exception_backlog where class = 'amount_mismatch'"
    ).fetchone()[0]
    assert backlog_rows == 0


def test_a_rerun_with_the_same_data_keeps_a_manual_resolution(con, scenario):
    target = exception_id(con, "CB0002S1")
    workbench.resolve(con, "explained", ids=[target], actor="li.wei", note="cash at the counter", clock=clock)
    result = run(con, *scenario.local_tables())
    assert result.changes == []
    assert con.execute(
        "select state, resolution, resolved_by from recon.exceptions where exception_id = ?", [target]
    ).fetchone() == ("resolved", "explained", "li.wei")
    report, _ = alert_of(con)
    assert "CB0002S1" not in {i.key for i in report.top}
    assert report.reopened == 0


def test_a_changed_local_record_reopens_a_manual_resolution_with_an_event(con, scenario):
    target = exception_id(con, "CB0002S1")
    workbench.resolve(con, "explained", ids=[target], actor="li.wei", note="cash at the counter")
    _, refunds = scenario.local_tables()
    edited = [dict(r) for r in scenario.orders]
    next(r for r in edited if r["out_trade_no"] == "CB0002S1")["amount_fen"] += 50
    import pyarrow as pa

    from flows.sources import LOCAL_ORDER_SCHEMA

    result = run(con, pa.Table.from_pylist(edited, schema=LOCAL_ORDER_SCHEMA), refunds)
    assert [(c.event, c.item_key) for c in result.changes] == [("reopened", "CB0002S1")]
    row = con.execute(
        "select state, resolution, resolved_by, diff_fen from recon.exceptions where exception_id = ?", [target]
    ).fetchone()
    assert row == ("open", None, None, -150)
    audit = con.execute(
        "select action, actor, run_id, from_state, to_state, resolution, diff_fen from recon.exception_actions"
        " where exception_id = ? order by acted_at, action",
        [target],
    ).fetchall()
    assert [a[0] for a in audit] == ["resolved", "reopened_by_data"]
    assert audit[1][1:] == ("wxrecon", result.run_id, "resolved", "open", "explained", -150)
    report, alert = alert_of(con)
    assert report.reopened == 1
    assert f"- {P0} amount_mismatch: 1 item(s), ¥1.50" in alert.body


def test_a_later_bill_that_contradicts_a_manual_resolution_reopens_it(con, scenario, tmp_path):
    target = exception_id(con, "pay:CB0014S2", "fee_mismatch")
    workbench.resolve(con, "written_off", ids=[target], actor="li.wei", note="WeChat misprint")
    # WeChat Pay publishes the day's bill again, with another fee for that row
    scenario.sim.bills.misprint(P1, "CB0014S2", fee_millifen=55000)
    try:
        scenario.sim.clock.set(recon_scenario.at(D + timedelta(days=1), 11))
        from flows.bills import BillArchive, ingest_bill

        merchant = scenario.sim.merchants[P1]
        with wxpay.Client(base_url=scenario.sim_url, **merchant.client_kwargs()) as client:
            ingest_bill(con, client, BillArchive(tmp_path / "archive"), BillRequest.trade(D))
    finally:
        scenario.sim.bills.misprint(P1, "CB0014S2", fee_millifen=99000)
    result = run(con, *scenario.local_tables())
    assert ("reopened", "pay:CB0014S2") in {(c.event, c.item_key) for c in result.changes}
    assert con.execute(
        "select state, resolution from recon.exceptions where exception_id = ?", [target]
    ).fetchone() == (
        "open",
        None,
    )
    events = con.execute(
        "select action, bill_fen from marts.mart_exception_audit where exception_id = ? order by acted_at, action",
        [target],
    ).fetchall()
    assert [e[0] for e in events] == ["resolved", "reopened_by_data"]
    changes = con.execute(
        "select event from marts.mart_exception_changes where is_latest and exception_id = ?", [target]
    ).fetchall()
    assert changes == [("reopened",)]


def test_bulk_resolve_by_filter(con):
    selection = Selection(mchids=(P0,), classes=("status_mismatch", "transaction_mismatch"))
    preview = workbench.resolve(
        con, "adjusted_locally", selection=selection, actor="li.wei", note="app fixed", clock=clock, apply=False
    )
    assert {r["item_key"] for r in preview.rows} == {"CB0006S1", "CB0009S1"}
    assert not preview.applied
    assert con.execute("select count(*) from recon.exception_actions").fetchone()[0] == 0
    done = workbench.resolve(
        con, "adjusted_locally", selection=selection, actor="li.wei", note="app fixed", clock=clock
    )
    assert done.count == 2
    rows = con.execute(
        "select item_key, resolution from recon.exceptions where state = 'resolved' and resolved_by = 'li.wei'"
        " order by 1"
    ).fetchall()
    assert rows == [("CB0006S1", "adjusted_locally"), ("CB0009S1", "adjusted_locally")]
    batches = con.execute("select count(distinct batch_id), count(*) from recon.exception_actions").fetchone()
    assert batches == (1, 2)
    # the amount band: only what is at stake between 1 and 20 yuan among P1's status mismatches
    band = workbench.select(con, Selection(mchids=(P1,), classes=("status_mismatch",), min_fen=100, max_fen=2000))
    assert {r["item_key"] for r in band} == {"CB0006S2"}


def test_reopen_by_hand(con):
    target = exception_id(con, "CB0003S1")
    workbench.resolve(con, "false_positive", ids=[target], actor="li.wei", note="test order")
    workbench.reopen(con, ids=[target], actor="zhang.min", note="it was a real sale")
    assert con.execute(
        "select state, resolution from recon.exceptions where exception_id = ?", [target]
    ).fetchone() == (
        "open",
        None,
    )
    actions = [r["action"] for r in workbench.history(con, target)]
    assert actions == ["resolved", "reopened"]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda con, ids: workbench.resolve(con, "explained", ids=["0123456789ab"], actor="a", note="n"),
            workbench.UnknownException,
            "0123456789ab (no such exception)",
        ),
        (
            lambda con, ids: workbench.resolve(con, "explained", ids=["zz"], actor="a", note="n"),
            workbench.UnknownException,
            "is hex",
        ),
        (
            lambda con, ids: workbench.resolve(con, "explained", ids=[ids["resolved"]], actor="a", note="n"),
            workbench.AlreadyResolved,
            "already resolved",
        ),
        (
            lambda con, ids: workbench.assign(con, "b", ids=[ids["resolved"], ids["open"]], actor="a"),
            workbench.AlreadyResolved,
            "already resolved",
        ),
        (
            lambda con, ids: workbench.resolve(con, "forgiven", ids=[ids["open"]], actor="a", note="n"),
            workbench.UnknownResolution,
            "unknown resolution kind 'forgiven'",
        ),
        (
            lambda con, ids: workbench.resolve(con, "matched", ids=[ids["open"]], actor="a", note="n"),
            workbench.UnknownResolution,
            "given by runs only",
        ),
        (
            lambda con, ids: workbench.resolve(con, "explained", ids=[ids["open"]], actor="a", note="x" * 501),
            workbench.BadNote,
            "501 characters; at most 500",
        ),
        (
            lambda con, ids: workbench.resolve(con, "explained", ids=[ids["open"]], actor="a", note="  "),
            workbench.BadNote,
            "a note is required",
        ),
        (
            lambda con, ids: workbench.resolve(
                con, "explained", selection=Selection(mchids=("1999999999",)), actor="a", note="n"
            ),
            workbench.NothingSelected,
            "matches no exception",
        ),
        (
            lambda con, ids: workbench.resolve(
                con, "explained", selection=Selection(mchids=(P0,)), actor="a", note="n", threshold=3
            ),
            workbench.TooManySelected,
            "more than the confirmation threshold of 3",
        ),
        (
            lambda con, ids: workbench.resolve(con, "explained", selection=Selection(), actor="a", note="n"),
            workbench.WorkbenchError,
            "needs a filter",
        ),
        (
            lambda con, ids: workbench.reopen(con, ids=[ids["open"]], actor="a", note="n"),
            workbench.NotManuallyResolved,
            "not resolved",
        ),
        (
            lambda con, ids: workbench.assign(con, "", ids=[ids["open"]], actor="a"),
            workbench.WorkbenchError,
            "assignee is empty",
        ),
    ],
)
def test_bad_input_is_refused_with_nothing_written(con, call, error, message):
    resolved = exception_id(con, "CB0003S1")
    workbench.resolve(con, "false_positive", ids=[resolved], actor="li.wei", note="test order", clock=clock)
    ids = {"resolved": resolved, "open": exception_id(con, "CB0002S1")}
    before = snapshot(con)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(con, ids)
    assert snapshot(con) == before


def test_bad_selections_are_refused_before_anything_is_opened():
    with pytest.raises(workbench.WorkbenchError, match="unknown class 'amount'"):
        Selection(classes=("amount",))
    with pytest.raises(workbench.WorkbenchError, match=r"ends .* before it starts"):
        Selection(start=D, end=D - timedelta(days=1))
    with pytest.raises(workbench.WorkbenchError, match="whole number of fen"):
        Selection(min_fen=1.5)  # type: ignore[arg-type]


# --- 补单: asking WeChat Pay (the simulator, over loopback HTTP) ----------------------------------------


def initiator_client(scenario):
    from tests.conftest import INITIATOR

    merchant = scenario.sim.merchants[INITIATOR]
    return lambda row: wxpay.Client(base_url=scenario.sim_url, **merchant.client_kwargs())


def test_query_proposes_never_paid_and_paid_bill_pending_and_retries_429(con, scenario):
    from flows.recon.query import query_exceptions
    from tests.conftest import APPID

    with initiator_client(scenario)(None) as client:  # the merchant closes the order it never saw paid
        if client.combine.query("CB0004").trade_state == "NOTPAY":
            sub_orders = [{"mchid": P0, "out_trade_no": "CB0004S1"}, {"mchid": P1, "out_trade_no": "CB0004S2"}]
            client.combine.close("CB0004", {"combine_appid": APPID, "sub_orders": sub_orders})
    scenario.sim.faults.error("/v3/combine-transactions/out-trade-no/", 429, "FREQUENCY_LIMITED", times=2)
    try:
        report = query_exceptions(
            con,
            initiator_client(scenario),
            selection=Selection(classes=("missing_in_bill", "pending")),
            actor="li.wei",
            per_second=50,
            retry_seconds=0.01,
        )
    finally:
        scenario.sim.faults.clear()
    assert sorted(q.combine_out_trade_no for q in report.queried) == ["CB0004", "CB0005"]
    assert report.retried == 2
    assert [r for q in report.queried for r in q.retries] == ["429 FREQUENCY_LIMITED"] * 2
    assert not report.failed
    proposals = dict(
        con.execute(
            "select item_key, proposed_resolution from marts.mart_exceptions"
            " where class in ('missing_in_bill', 'pending') and state <> 'resolved'"
        ).fetchall()
    )
    assert proposals == {
        "CB0004S1": "never_paid",
        "CB0004S2": "never_paid",
        "CB0005S1": "paid_bill_pending",
        "CB0005S2": "paid_bill_pending",
    }
    import json

    evidence = con.execute(
        "select evidence, note from marts.mart_exception_audit where action = 'queried' and item_key = 'CB0005S1'"
    ).fetchone()
    answer = json.loads(evidence[0])
    sub = next(s for s in answer["sub_orders"] if s["out_trade_no"] == "CB0005S1")
    assert (answer["trade_state"], sub["trade_state"], sub["total_amount_fen"]) == ("SUCCESS", "SUCCESS", 1700)
    assert sub["transaction_id"]
    assert sub["success_time"].startswith(str(D + timedelta(days=1)))
    assert answer["retried"] in ([], ["429 FREQUENCY_LIMITED"], ["429 FREQUENCY_LIMITED"] * 2)
    assert "paid, bill pending" in evidence[1]
    closed = json.loads(
        con.execute(
            "select evidence from recon.exception_actions a join recon.exceptions e using (exception_id)"
            " where a.action = 'queried' and e.item_key = 'CB0004S1'"
        ).fetchone()[0]
    )
    assert closed["trade_state"] == "CLOSED"
    # nothing is resolved until finance confirms; confirming without a kind takes the proposal
    assert con.execute("select count(*) from recon.exceptions where state = 'resolved'").fetchone()[0] == 0
    target = exception_id(con, "CB0004S1")
    workbench.resolve(con, None, ids=[target], actor="zhang.min", note="WeChat Pay: closed, never paid")
    assert con.execute("select resolution from recon.exceptions where exception_id = ?", [target]).fetchone() == (
        "never_paid",
    )


def test_query_that_stays_rate_limited_is_reported_and_writes_nothing(con, scenario):
    from flows.recon.query import query_exceptions

    before = snapshot(con)
    scenario.sim.faults.error("/v3/combine-transactions/out-trade-no/", 429, "FREQUENCY_LIMITED", times=10)
    try:
        report = query_exceptions(
            con,
            initiator_client(scenario),
            ids=[exception_id(con, "CB0004S1")],
            actor="li.wei",
            retries=2,
            retry_seconds=0.01,
        )
    finally:
        scenario.sim.faults.clear()
    (queried,) = report.queried
    assert queried.retries == ["429 FREQUENCY_LIMITED"] * 2
    assert "RateLimitedError" in queried.error
    assert snapshot(con) == before


def test_query_refuses_a_class_wechat_pay_cannot_settle(con, scenario):
    from flows.recon.query import query_exceptions

    before = snapshot(con)
    with pytest.raises(workbench.WorkbenchError, match=r"补单 cannot settle .* \(amount_mismatch\)"):
        query_exceptions(con, initiator_client(scenario), ids=[exception_id(con, "CB0002S1")], actor="li.wei")
    assert snapshot(con) == before


# --- where finance works: the command line and the notebook helper -------------------------------------


def cli_config(tmp_path, warehouse, **extra) -> str:
    """Settings for the command line over a copy of ``warehouse`` (nothing here talks to WeChat Pay)."""
    data = tmp_path / "var"
    data.mkdir(parents=True)
    shutil.copy(warehouse, data / "warehouse.duckdb")
    (tmp_path / "key.pem").write_text("not read here")
    lines = [f'data_dir = "{data}"', *(f"{k} = {v!r}".replace("'", '"') for k, v in extra.items())]
    lines += [
        "[[merchants]]",
        'mchid = "1900000100"',
        'appid = "wx1"',
        'merchant_serial_no = "ABCDEF12"',
        f'private_key_file = "{tmp_path / "key.pem"}"',
        f'api_v3_key = "{"k" * 32}"',
        'wechatpay_public_key_id = "PUB_KEY_ID_0100"',
        f'wechatpay_public_key_file = "{tmp_path / "key.pem"}"',
    ]
    (tmp_path / "wxrecon.toml").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "wxrecon.toml")


def comparable(path, exception_id):
    """An exception and its audit rows without the stamps and ids that differ between two runs of an action."""
    con = connect(path)
    try:
        exception = con.execute(
            "select class, state, work_state, resolution, resolved_by, resolution_note, assignee, bill_fen, local_fen"
            " from marts.mart_exceptions where exception_id = ?",
            [exception_id],
        ).fetchall()
        audit = con.execute(
            "select action, actor, from_state, to_state, assignee, resolution, note, class, bill_fen, local_fen,"
            " diff_fen, exposure_fen from recon.exception_actions where exception_id = ? order by action",
            [exception_id],
        ).fetchall()
        return exception, audit
    finally:
        con.close()


def test_the_command_line_and_the_notebook_helper_give_the_same_result(reconciled, tmp_path):
    from typer.testing import CliRunner

    from flows import finance
    from flows.cli import app

    runner = CliRunner()
    config = cli_config(tmp_path / "cli", reconciled)
    con = connect(reconciled)
    target = exception_id(con, "CB0002S1")
    con.close()
    note = "customer paid the difference in cash"

    listed = runner.invoke(app, ["exceptions", "list", "--class", "amount_mismatch", "--config", config])
    assert listed.exit_code == 0, listed.output
    assert target[:12] in listed.output
    assert "CB0002S1" in listed.output
    done = runner.invoke(
        app, ["exceptions", "resolve", target[:8], "--kind", "explained", "--note", note, "--by", "li.wei",
              "--config", config],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "resolved: 1" in done.output
    shown = runner.invoke(app, ["exceptions", "show", target[:8], "--config", config])
    assert shown.exit_code == 0, shown.output
    assert "li.wei: resolved explained" in shown.output
    assert note in shown.output
    listed = runner.invoke(app, ["exceptions", "list", "--class", "amount_mismatch", "--config", config])
    assert "CB0002S1" not in listed.output

    copy = tmp_path / "notebook.duckdb"
    shutil.copy(reconciled, copy)
    desk = finance.Workbench(copy, actor="li.wei")
    preview = desk.preview_resolve(["CB0002S1"], kind="explained", note=note)
    assert preview.frame["单号 key"].tolist() == ["CB0002S1"]
    assert preview.frame["之后 after"].tolist() == ["resolved (explained)"]
    assert comparable(copy, target)[1] == []  # a preview writes nothing
    preview.confirm()
    with pytest.raises(finance.ActionRefused, match="confirmed already"):
        preview.confirm()

    assert comparable(copy, target) == comparable(tmp_path / "cli" / "var" / "warehouse.duckdb", target)
    assert comparable(copy, target)[0][0][:6] == (
        "amount_mismatch",
        "resolved",
        "resolved",
        "explained",
        "li.wei",
        note,
    )


def test_the_command_line_refuses_bad_input_with_exit_2_and_writes_nothing(reconciled, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    config = cli_config(tmp_path, reconciled, action_threshold=3)
    path = tmp_path / "var" / "warehouse.duckdb"
    con = connect(path)
    target = exception_id(con, "CB0002S1")
    before = snapshot(con)
    con.close()
    for args, says in (
        (["resolve", "0123456789ab", "--kind", "explained", "--note", "n"], "no such exception"),
        (["resolve", target, "--kind", "forgiven", "--note", "n"], "unknown resolution kind 'forgiven'"),
        (["resolve", target, "--kind", "explained", "--note", "x" * 501], "at most 500"),
        (["resolve", target, "--kind", "explained"], "a note is required"),
        (["resolve", "--mchid", P0, "--kind", "explained", "--note", "n"], "confirmation threshold of 3"),
        (["resolve", "--mchid", "1999999999", "--kind", "explained", "--note", "n"], "matches no exception"),
        (["assign", "--class", "amount", "--assignee", "b"], "unknown class 'amount'"),
        (["reopen", target, "--note", "n"], "not resolved"),
        (["list", "--date", "2026-11-26", "--from", "2026-11-25"], "not both"),
    ):
        result = runner.invoke(app, ["exceptions", *args, "--config", config])
        assert result.exit_code == 2, (args, result.output)
        assert says in " ".join(result.output.split()), (args, result.output)
    con = connect(path)
    assert snapshot(con) == before
    # the threshold is a confirmation: raising it to the count does the bulk action
    result = runner.invoke(
        app, ["exceptions", "assign", "--mchid", P0, "--class", "fee_mismatch", "--class", "amount_mismatch",
              "--assignee", "li.wei", "--max", "3", "--by", "zhang.min", "--config", config],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert con.execute("select count(*) from recon.exceptions where assignee = 'li.wei'").fetchone()[0] == 2
    con.close()


@pytest.mark.slow
def test_an_action_on_a_busy_warehouse_waits_then_exits_5_with_nothing_written(reconciled, tmp_path):
    import subprocess
    import sys

    from typer.testing import CliRunner

    from flows.cli import app

    config = cli_config(tmp_path, reconciled, action_wait_seconds=0.5)
    path = tmp_path / "var" / "warehouse.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, duckdb; con = duckdb.connect({str(path)!r}); print('held', flush=True);"
         " sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(
            app, ["exceptions", "resolve", "--class", "amount_mismatch", "--kind", "explained", "--note", "n",
                  "--config", config],
        )  # fmt: skip
        assert result.exit_code == 5, result.output
        assert result.output.startswith("busy:")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    con = connect(path)
    assert con.execute("select count(*) from recon.exception_actions").fetchone()[0] == 0
    con.close()


def test_wxrecon_exceptions_query_asks_the_simulator_as_the_initiator(reconciled, scenario, tmp_path):
    """The command line's 补单 with real settings: keys from files, the simulator over loopback HTTP."""
    from typer.testing import CliRunner

    from flows.cli import app

    data = tmp_path / "var"
    data.mkdir()
    shutil.copy(reconciled, data / "warehouse.duckdb")
    lines = [f'api_base_url = "{scenario.sim_url}"', f'data_dir = "{data}"', "query_retry_seconds = 0.01"]
    for n, merchant in enumerate(scenario.sim.merchants.values()):
        folder = merchant.export(tmp_path / "keys")
        lines += [
            "[[merchants]]",
            f'mchid = "{merchant.mchid}"',
            f'appid = "{merchant.appid}"',
            f'merchant_serial_no = "{merchant.merchant_serial}"',
            f'private_key_file = "{folder / "apiclient_key.pem"}"',
            f'api_v3_key_file = "{folder / "apiv3_key.txt"}"',
            f'wechatpay_public_key_id = "{merchant.public_key_id}"',
            f'wechatpay_public_key_file = "{folder / "wechatpay_public_key.pem"}"',
            f"receives_notifications = {'true' if n == 0 else 'false'}",
        ]
    config = tmp_path / "wxrecon.toml"
    config.write_text("\n".join(lines) + "\n")
    scenario.sim.faults.error("/v3/combine-transactions/out-trade-no/", 429, "FREQUENCY_LIMITED", times=1)
    try:
        result = CliRunner().invoke(
            app, ["exceptions", "query", "--class", "pending", "--by", "li.wei", "--config", str(config)]
        )
    finally:
        scenario.sim.faults.clear()
    assert result.exit_code == 0, result.output
    assert "CB0005: WeChat Pay says SUCCESS: paid_bill_pending" in result.output
    assert "retried 1 time(s): 429 FREQUENCY_LIMITED" in result.output
    assert "2 proposal(s), 1 retried answer(s), 0 failed" in result.output
    con = connect(data / "warehouse.duckdb")
    try:
        proposals = con.execute(
            "select item_key, proposed_resolution from marts.mart_exceptions where proposed_resolution is not null"
            " order by 1"
        ).fetchall()
    finally:
        con.close()
    assert proposals == [("CB0005S1", "paid_bill_pending"), ("CB0005S2", "paid_bill_pending")]
