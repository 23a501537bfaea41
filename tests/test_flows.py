"""The nightly flow under Prefect's test harness: a simulated day over loopback HTTP, the merchant's
records in a real PostgreSQL server, alerts to a local webhook, and the failure paths."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from flows.demo import AlertInbox
from flows.deploy import nightly_schedule
from flows.nightly import run_day, using
from flows.settings import Settings
from flows.sources import LocalOrdersSource
from flows.warehouse import connect
from tests.conftest import INITIATOR
from tests.recon_scenario import P0, D, World, at
from tests.test_batch import with_bad_value
from tests.test_billfile import spec_example_rows
from wxpay.sim.billrender import render_trade_bill

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def world(tmp_path_factory, merchant_pool, postgres_server):
    """Five combine orders paid on D, one never paid; the merchant's records in PostgreSQL, one amount edited."""
    root = tmp_path_factory.mktemp("flows")
    world = World(root, merchant_pool, seed=3, start=at(D, 9))
    for n, amounts in enumerate(((12800, 3550), (999, 1), (5000, 6000), (700, 800), (1234, 4321)), start=1):
        request = world.create(f"FL{n:04d}", amounts)
        world.sim.advance(120)
        world.sim.pay(INITIATOR, f"FL{n:04d}")
        world.record(request)
    world.record(world.create("FL0009", (100, 200)))
    world.row("FL0003S1")["amount_fen"] = 5100  # the merchant's record says 51.00; WeChat Pay took 50.00
    db = postgres_server.create_database("flows")
    db.execute(
        "create table sub_orders (combine_out_trade_no text, out_trade_no text, mchid text, amount_fen bigint,"
        " status text, created_at timestamptz, paid_at timestamptz, transaction_id text, attach text, description text)"
    )
    names = list(world.orders[0])
    db.load_rows("sub_orders", names, [[row[n] for n in names] for row in world.orders])
    world.client.close()
    world.sim.clock.set(at(D + timedelta(days=1), 10, 30))
    world.pg_url = db.url
    credentials = root / "credentials"
    for merchant in world.sim.merchants.values():
        merchant.export(credentials)
    world.credentials = credentials
    yield world
    world.server.stop()
    world.receiver.stop()
    world.sim.close()


@pytest.fixture
def inbox():
    box = AlertInbox()
    yield box
    box.close()


def settings_for(world, data_dir: Path, inbox: AlertInbox, **overrides) -> Settings:
    merchants = [
        {
            "mchid": m.mchid,
            "appid": m.appid,
            "merchant_serial_no": m.merchant_serial,
            "private_key_file": world.credentials / m.mchid / "apiclient_key.pem",
            "api_v3_key": m.api_v3_key,
            "wechatpay_public_key_id": m.public_key_id,
            "wechatpay_public_key_file": world.credentials / m.mchid / "wechatpay_public_key.pem",
            "receives_notifications": m.mchid == INITIATOR,
        }
        for m in world.sim.merchants.values()
    ]
    options = {
        "api_base_url": world.server.url,
        "merchants": merchants,
        "data_dir": data_dir,
        "notification_log": world.log.root,
        "local_orders": LocalOrdersSource(kind="postgresql", url=world.pg_url, table="sub_orders"),
        "alerts": {"urls": [inbox.apprise_url]},
        "bill_retry_seconds": 0.05,
        "bill_ready_deadline_hours": 0.001,
    }
    options.update(overrides)
    return Settings(**options)


def counts(settings: Settings) -> tuple:
    con = connect(settings.warehouse_path, read_only=True)
    try:
        return con.execute(
            "select (select count(*) from raw.trade_bill_rows), (select count(*) from recon.items),"
            " (select count(*) from recon.exceptions), (select count(*) from raw.local_orders),"
            " (select count(*) from raw.notification_lines)"
        ).fetchone()
    finally:
        con.close()


def test_a_day_end_to_end_with_a_postgres_source_and_an_alert(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox)
    with using(settings, clock=world.sim.clock.now):
        outcome = run_day(D)
    assert set(outcome.loaded) | set(outcome.empty) == set(settings.mchids)
    assert outcome.empty == [INITIATOR]  # the initiator takes no part in these sub orders: no trades, no bill
    assert outcome.classes == {"matched": outcome.classes["matched"], "amount_mismatch": 1}
    assert outcome.exceptions == 1
    assert outcome.exposure_fen == 100
    assert not outcome.late
    assert not outcome.integrity
    assert outcome.alert_sent

    assert len(inbox.received) == 1
    alert = inbox.received[0]
    assert "1 exceptions, ¥1.00" in alert["title"]
    assert f"- {P0} amount_mismatch: 1 item(s), ¥1.00" in alert["message"]
    assert "FL0003S1 amount_mismatch: bill ¥50.00, local ¥51.00, difference -¥1.00" in alert["message"]
    secrets = [m.api_v3_key for m in world.sim.merchants.values()]
    secrets += [o.payer_openid for o in world.sim.ledger.orders.values() if o.payer_openid]
    text = alert["title"] + alert["message"]
    assert not [s for s in secrets if s in text]
    assert "PRIVATE KEY" not in text


def test_running_the_day_again_changes_nothing(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox)
    with using(settings, clock=world.sim.clock.now):
        first = run_day(D)
        before = counts(settings)
        second = run_day(D)
    assert counts(settings) == before
    assert first.classes == second.classes
    assert first.opened == ["amount_mismatch FL0003S1"]  # what opened since the previous run (there was none)
    assert second.opened == []
    assert second.closed == []


def test_two_concurrent_runs_of_one_day_produce_no_doubles(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox)
    outcomes, errors = [], []

    def run():
        try:
            with using(settings, clock=world.sim.clock.now):
                outcomes.append(run_day(D))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert errors == []
    assert len(outcomes) == 2
    with using(settings, clock=world.sim.clock.now):
        run_day(D)
    rows, items, exceptions, _local, _lines = counts(settings)
    assert rows == sum(2 for _ in range(5))  # 5 paid combine orders x 2 sub orders, once
    assert exceptions == 1
    con = connect(settings.warehouse_path, read_only=True)
    try:
        assert con.execute("select count(*) from recon.items where recon_date = ?", [D]).fetchone()[0] == items
        assert con.execute("select count(*) from recon.runs").fetchone()[0] == 3
    finally:
        con.close()


def test_not_ready_yet_is_retried_until_the_bill_is_there(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox, bill_ready_deadline_hours=0.05)
    world.sim.faults.error("/v3/bill/tradebill", 400, "STATEMENT_CREATING", "账单生成中", times=4)
    with using(settings, clock=world.sim.clock.now):
        outcome = run_day(D)
    assert outcome.late == []
    assert set(outcome.loaded) | set(outcome.empty) == set(settings.mchids)
    assert world.sim.faults.errors == []  # all four "not ready" answers were used up by retries


def test_a_bill_not_ready_by_the_deadline_is_late_and_alerted(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox, bill_retry_seconds=0.01, bill_ready_deadline_hours=0.0001)
    world.sim.faults.error("/v3/bill/tradebill", 400, "STATEMENT_CREATING", "账单生成中", times=1000)
    try:
        with using(settings, clock=world.sim.clock.now):
            outcome = run_day(D)
    finally:
        world.sim.faults.clear()
    assert len(outcome.late) == 3
    assert outcome.alert_sent
    assert inbox.received[0]["title"].startswith("LATE: bill not ready")
    assert "LATE: WeChat Pay has not published the bill yet" in inbox.received[0]["message"]


def test_a_hash_mismatch_loads_nothing_of_that_day_and_alerts_integrity(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox, concurrency=1)
    world.sim.faults.add("download", "corrupt")
    try:
        with using(settings, clock=world.sim.clock.now):
            outcome = run_day(D)
    finally:
        world.sim.faults.clear()
    assert len(outcome.integrity) == 1
    assert "BillHashMismatchError" in outcome.integrity[0]
    failed = outcome.integrity[0].split()[2]
    con = connect(settings.warehouse_path, read_only=True)
    try:
        assert con.execute("select count(*) from raw.trade_bill_rows where bill_mchid = ?", [failed]).fetchone() == (0,)
    finally:
        con.close()
    assert "INTEGRITY" in inbox.received[0]["message"]
    assert "expected" in inbox.received[0]["message"]


def test_the_deployment_runs_at_2230_shanghai_time():
    definition = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())
    [deployment] = [d for d in definition["deployments"] if d["name"] == "nightly-worker"]
    assert deployment["entrypoint"] == "flows/nightly.py:reconcile_day"
    assert deployment["schedules"] == [{"cron": "30 22 * * *", "timezone": "Asia/Shanghai", "active": True}]
    schedule = nightly_schedule(
        Settings.model_construct(schedule_cron="30 22 * * *", schedule_timezone="Asia/Shanghai")
    )
    assert (schedule.cron, schedule.timezone) == ("30 22 * * *", "Asia/Shanghai")
    assert Settings.model_fields["schedule_cron"].default == "30 22 * * *"
    assert Settings.model_fields["schedule_timezone"].default == "Asia/Shanghai"


# --- failures say what they are ---------------------------------------------------------------------


def run_state(world, settings, day=D):
    """The flow run's final state, and the outcome it carries."""
    from flows.nightly import outcome_of, reconcile_day

    with using(settings, clock=world.sim.clock.now):
        state = reconcile_day(day, return_state=True)
    return state, outcome_of(state)


@pytest.fixture
def info_logs():
    """The run's INFO logs reach the server (the suite keeps Prefect's loggers at WARNING)."""
    import logging

    logger = logging.getLogger("prefect")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


def flow_run_logs(state) -> str:
    """What the Prefect server holds of a flow run's log (after the log worker has sent what it has)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return "\n".join(log.message for log in logs)


def test_a_swapped_key_is_a_configuration_problem_not_a_late_bill(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox)
    merchants = [m.model_dump() for m in settings.merchants]
    merchants[1]["private_key_file"], merchants[2]["private_key_file"] = (
        merchants[2]["private_key_file"],
        merchants[1]["private_key_file"],
    )
    settings = settings_for(world, tmp_path, inbox, merchants=merchants)
    state, outcome = run_state(world, settings)
    assert state.is_failed()
    assert outcome.late == []
    swapped = {settings.merchants[1].mchid, settings.merchants[2].mchid}
    assert {p.mchid for p in outcome.problems} == swapped
    assert {p.kind.value for p in outcome.problems} == {"configuration"}
    assert all("401 SIGN_ERROR" in p.text for p in outcome.problems)
    assert outcome.exit_code() == 4
    title = inbox.received[0]["title"]
    assert title.startswith("CONFIGURATION: credentials or settings refused")
    assert "an operator problem, not finance's" in inbox.received[0]["message"]
    assert inbox.received[0]["type"] == "failure"


def test_an_unknown_merchant_id_is_a_configuration_problem(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox)
    merchants = [m.model_dump() for m in settings.merchants]
    merchants[0]["mchid"] = "1999999999"
    state, outcome = run_state(world, settings_for(world, tmp_path, inbox, merchants=merchants))
    assert state.is_failed()
    assert [(p.kind.value, p.mchid) for p in outcome.problems] == [("configuration", "1999999999")]


def test_wechat_pay_down_after_the_retries_is_unavailable(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox, bill_retry_seconds=0.01, bill_ready_deadline_hours=0.0001)
    world.sim.faults.error("/v3/bill/tradebill", 500, "SYSTEM_ERROR", "系统错误", times=1000)
    try:
        state, outcome = run_state(world, settings)
    finally:
        world.sim.faults.clear()
    assert state.is_failed()
    assert {p.kind.value for p in outcome.problems} == {"unavailable"}
    assert outcome.exit_code() == 7
    assert inbox.received[0]["title"].startswith("UNAVAILABLE: WeChat Pay unavailable")


def test_a_day_that_is_not_over_is_refused_before_anything_is_stored(world, tmp_path, inbox):
    from flows.nightly import BillDateError

    settings = settings_for(world, tmp_path, inbox)
    today = world.sim.clock.now().date()
    for day in (today, today + timedelta(days=1)):
        with pytest.raises(BillDateError, match="not over yet"), using(settings, clock=world.sim.clock.now):
            run_day(day)
    assert not settings.warehouse_path.exists()
    assert not settings.archive_root.exists()
    assert inbox.received == []


def test_a_late_bill_makes_the_run_late_not_green(world, tmp_path, inbox):
    settings = settings_for(world, tmp_path, inbox, bill_retry_seconds=0.01, bill_ready_deadline_hours=0.0001)
    world.sim.faults.error("/v3/bill/tradebill", 400, "STATEMENT_CREATING", "账单生成中", times=1000)
    try:
        state, outcome = run_state(world, settings)
    finally:
        world.sim.faults.clear()
    assert (state.type.value, state.name) == ("COMPLETED", "Late")
    assert outcome.exit_code() == 3
    assert inbox.received[0]["title"].startswith("LATE: bill not ready")
    assert inbox.received[0]["type"] == "warning"
    # a later run of the day, once the bills are there, picks them up
    with using(settings, clock=world.sim.clock.now):
        later = run_day(D)
    assert later.late == []
    assert set(later.loaded) | set(later.empty) == set(settings.mchids)


def test_a_bill_ready_after_two_not_ready_answers_is_retried_by_prefect(world, tmp_path, inbox, info_logs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    settings = settings_for(world, tmp_path, inbox, bill_retry_seconds=0.01, bills_batch_size=1)
    world.sim.faults.error("/v3/bill/tradebill", 400, "STATEMENT_CREATING", "账单生成中", times=2)
    state, outcome = run_state(world, settings)
    assert state.is_completed()
    assert outcome.late == []
    assert set(outcome.loaded) | set(outcome.empty) == set(settings.mchids)
    with get_client(sync_client=True) as client:
        flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs = client.read_task_runs(flow_run_filter=flow_run)
        bills = [r for r in runs if r.name.startswith("load bills")]
        history = {r.id: [s.name for s in client.read_task_run_states(r.id)] for r in bills}
    # each "not ready" answer was a Prefect retry of the unit that got it (the task itself never waited)
    assert sum(r.run_count for r in bills) == len(bills) + 2
    assert sum(names.count("AwaitingRetry") for names in history.values()) == 2
    assert sum(names.count("Retrying") for names in history.values()) == 2
    assert "not ready yet" in flow_run_logs(state)


def test_an_alert_route_that_fails_makes_the_run_say_so(world, tmp_path, inbox):
    closed = f"json://127.0.0.1:{inbox.url.split(':')[2].split('/')[0]}/nowhere"
    inbox.close()  # the route's listener is gone
    settings = settings_for(world, tmp_path, inbox, alerts={"urls": [closed], "retries": 1, "retry_seconds": 0})
    state, outcome = run_state(world, settings)
    assert state.is_failed()
    assert [p.kind.value for p in outcome.problems] == ["alert"]
    assert "alert route #1 json (did not accept it)" in outcome.problems[0].text
    assert outcome.exit_code() == 9
    assert not outcome.alert_sent
    assert "alert not delivered after 2 tries" in flow_run_logs(state)


# --- a run that cannot go on says what stopped it, with the exit code of its kind ---------------------------


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(str(value))


def config_file(world, data_dir: Path, inbox: AlertInbox, **overrides) -> Path:
    """``settings_for``'s settings as the wxrecon.toml a command reads."""
    settings = settings_for(world, data_dir, inbox)
    options = {
        "api_base_url": world.server.url,
        "data_dir": data_dir,
        "notification_log": world.log.root,
        "alerts": {"urls": [inbox.apprise_url]},
        "bill_retry_seconds": 0.05,
        "bill_ready_deadline_hours": 0.001,
        "merchants": [
            {
                "mchid": m.mchid,
                "appid": m.appid,
                "merchant_serial_no": m.merchant_serial_no,
                "private_key_file": m.private_key_file,
                "api_v3_key": m.api_v3_key_value(),
                "wechatpay_public_key_id": m.wechatpay_public_key_id,
                "wechatpay_public_key_file": m.wechatpay_public_key_file,
                "receives_notifications": m.receives_notifications,
            }
            for m in settings.merchants
        ],
        **overrides,
    }
    path = data_dir / "wxrecon.toml"
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in options.items()))
    return path


def wxrecon(world, *args: str):
    from typer.testing import CliRunner

    from flows.cli import app

    with using(Settings.model_construct(), clock=world.sim.clock.now):  # the command reads its --config
        return CliRunner().invoke(app, list(args))


def local_counts(path: Path) -> tuple:
    con = connect(path, read_only=True)
    try:
        return con.execute("select count(*), sum(amount_fen) from raw.local_orders").fetchone()
    finally:
        con.close()


def test_an_empty_export_stops_the_run_with_nothing_replaced_and_is_not_retried(world, tmp_path, inbox):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    data = tmp_path / "var"
    data.mkdir()
    config = config_file(
        world, data, inbox, local_orders={"kind": "postgresql", "url": world.pg_url, "table": "sub_orders"}
    )
    assert wxrecon(world, "run", "--date", D.isoformat(), "--config", str(config)).exit_code == 1  # the edited amount
    before = local_counts(data / "warehouse.duckdb")
    assert before[0] == 12
    names = ",".join(world.orders[0])
    (tmp_path / "export.csv").write_text(names + "\n")  # the export job wrote its header, then died
    config = config_file(world, data, inbox, local_orders={"kind": "csv", "paths": [str(tmp_path / "export.csv")]})
    with get_client(sync_client=True) as client:
        tries_before = len(
            client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="read local records")))
        )
    result = wxrecon(world, "run", "--date", D.isoformat(), "--config", str(config))
    assert result.exit_code == 6, result.output  # integrity: the merchant's records failed their check
    assert "SuspiciousSourceError" in result.output
    assert "export.csv" in " ".join(result.output.split())
    assert "gave no records" in result.output
    assert local_counts(data / "warehouse.duckdb") == before  # nothing replaced
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="read local records")))
    [latest] = sorted(runs, key=lambda r: r.created)[-1:]
    assert len(runs) == tries_before + 1
    assert latest.run_count == 1  # a deterministic source error is not tried again


def test_an_unwritable_archive_is_storage_not_late(world, tmp_path, inbox):
    data = tmp_path / "var"
    data.mkdir()
    (data / "archive").write_text("a file where the archive directory should be")
    config = config_file(world, data, inbox)
    result = wxrecon(world, "run", "--date", D.isoformat(), "--config", str(config))
    assert result.exit_code == 8, result.output
    output = " ".join(result.output.split())
    assert "STORAGE" in output
    assert "LATE" not in output
    assert "INTEGRITY" not in output
    assert str(data / "archive") in "".join(result.output.split())  # folded at the console's width
    assert "what to do" in output


def test_a_crash_of_a_step_exits_with_the_run_failed_code(world, tmp_path, inbox):
    data = tmp_path / "var"
    data.mkdir()
    config = config_file(world, data, inbox)
    con = connect(data / "warehouse.duckdb")
    from flows.warehouse import migrate

    migrate(con)
    con.execute("drop table raw.local_orders")  # someone's hand in the warehouse: the reconcile step breaks
    con.close()
    result = wxrecon(world, "run", "--date", D.isoformat(), "--config", str(config))
    assert result.exit_code == 10, result.output
    assert result.output.strip().startswith("failed: CatalogException")
    assert "local_orders" in result.output


def test_a_run_removes_what_a_crashed_run_left_and_says_so(world, tmp_path, inbox):
    import os

    settings = settings_for(world, tmp_path, inbox)
    day = settings.archive_root / f"mchid={P0}" / "bill_type=trade_all" / f"bill_date={D}"
    day.mkdir(parents=True)
    left = day / f".{'b' * 40}.csv.gz.0badf00d.part"  # a download a killed run never finished
    left.write_bytes(b"\x1f\x8b" + b"\x00" * 1000)
    fresh = day / f".{'c' * 40}.csv.gz.0123abcd.part"  # a download in progress in another process
    fresh.write_bytes(b"\x1f\x8b")
    seven_hours_ago = fresh.stat().st_mtime - 7 * 3600  # file times are real times, whatever the run's clock
    os.utime(left, (seven_hours_ago, seven_hours_ago))
    _, outcome = run_state(world, settings)
    assert outcome.removed == [str(left)]
    assert not left.exists()
    assert fresh.exists()
    from flows.nightly import summary_markdown

    artifact = summary_markdown(outcome_report(settings), outcome)
    assert f"Removed 1 file(s) a crashed run had left:\n- `{left}`" in artifact


def outcome_report(settings):
    from flows.alerts import day_report

    con = connect(settings.warehouse_path, read_only=True)
    try:
        return day_report(con, D, settings.mchids, top=5)
    finally:
        con.close()


def test_a_bill_that_is_not_clean_fails_alone_and_the_rest_of_its_unit_loads(world, tmp_path, inbox):
    """Small bills load together; a batch holding a bad one is loaded again one by one, so only that merchant
    fails, with its file, line and field named."""
    quiet = D - timedelta(days=2)
    bad = INITIATOR
    data = with_bad_value(render_trade_bill(spec_example_rows()))
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(data))
    world.sim.bills.publish_file(bad, quiet, path, hashlib.sha1(data).hexdigest())
    settings = settings_for(world, tmp_path, inbox)
    with using(settings, clock=world.sim.clock.now):
        outcome = run_day(quiet)
    assert [p.mchid for p in outcome.problems if p.mchid] == [bad]
    problem = next(p for p in outcome.problems if p.mchid)
    assert "BillFormatError" in problem.text
    assert ".csv.gz:2 [应结订单金额]" in problem.text
    assert sorted(outcome.empty) == sorted(m for m in settings.mchids if m != bad)
    con = connect(settings.warehouse_path, read_only=True)
    try:
        logged = con.execute(
            "select mchid, outcome from raw.bill_fetch_log where bill_date = ? order by mchid", [quiet]
        ).fetchall()
    finally:
        con.close()
    assert logged == sorted([(bad, "failed")] + [(m, "no_statement") for m in settings.mchids if m != bad])
