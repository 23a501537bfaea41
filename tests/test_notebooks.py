"""The finance notebooks, executed top to bottom with nbclient against a reconciled scenario warehouse.

The warehouse: ``recon_scenario.build`` (bills of D-2..D, the verified notification log, one injected case of
every class), reconciled as of D; then D+1's trade bills and the fund-flow bills of D and D+1 loaded and
reconciled as of D+1, so "since the previous run" and the settlement comparison have something to show.
Each test runs a copy of a notebook with papermill-style injected parameters and a last cell (added to the
copy only) that prints what the notebook computed as JSON. Charts land in ``build/notebook-charts/``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import nbformat
import openpyxl
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from time_machine import escape_hatch

import wxpay
from flows import finance
from flows.bills import ingest_bill
from flows.recon import ReconParams, reconcile
from flows.sources import import_local
from flows.warehouse import connect
from tests import recon_scenario
from tests.conftest import INITIATOR
from tests.recon_scenario import P0, P1, D, at
from wxpay.bills import BillRequest

pytestmark = pytest.mark.slow  # notebook kernels, the demo, subprocesses

NOTEBOOKS = finance.PROJECT_ROOT / "notebooks"
CHARTS = finance.PROJECT_ROOT / "build" / "notebook-charts"
WINDOW = (at(D - timedelta(days=4), 0), at(D + timedelta(days=3), 0))
MERCHANTS = [INITIATOR, P0, P1]
D1 = D + timedelta(days=1)


def reconcile_day(scenario, path: Path, day) -> None:
    con = connect(path)
    try:
        import_local(con, *scenario.local_tables(), start=WINDOW[0], end=WINDOW[1], source_label="test")
        reconcile(con, ReconParams(as_of=day, merchants=MERCHANTS, local_refunds=True))
    finally:
        con.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, merchant_pool):
    scenario = recon_scenario.build(tmp_path_factory.mktemp("notebooks"), merchant_pool)
    try:
        reconcile_day(scenario, scenario.warehouse, D)
        scenario.load_day(D1, business_now=at(D1 + timedelta(days=1), 10))
        con = connect(scenario.warehouse)
        try:
            for merchant in scenario.sim.merchants.values():
                with wxpay.Client(base_url=scenario.sim_url, **merchant.client_kwargs()) as client:
                    for day in (D, D1):
                        ingest_bill(con, client, scenario.archive, BillRequest.fundflow(day))
        finally:
            con.close()
        reconcile_day(scenario, scenario.warehouse, D1)
        yield scenario
    finally:
        recon_scenario.close(scenario)


def marts(world, sql: str, params=()):
    con = duckdb.connect(str(world.warehouse), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def prepared(name: str, params: dict, report: str) -> nbformat.NotebookNode:
    """A copy of the notebook: parameters injected after the ``parameters`` cell, a report cell appended."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: outputs not stripped"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell(f"import json\nprint('REPORT' + json.dumps({report}, default=str))"))
    return nb


def client_for(nb) -> NotebookClient:
    return NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})


def outputs(nb) -> str:
    return nbformat.writes(nb)


def reported(nb) -> dict:
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    return json.loads(text.split("REPORT", 1)[1])


def run(name: str, params: dict, report: str, tmp_path: Path) -> tuple[dict, str]:
    prefix = name[:2]
    for stale in CHARTS.glob(f"{prefix}_*.png"):  # what this run saves is what is there afterwards
        stale.unlink()
    nb = prepared(name, {**params, "output_dir": str(CHARTS)}, report)
    try:
        client_for(nb).execute()
    finally:
        nbformat.write(nb, tmp_path / f"{name}.executed.ipynb")  # for a look when something fails
    text = outputs(nb)
    assert "missing from font" not in text  # matplotlib's warning for a glyph it cannot draw (a tofu box)
    charts = sorted(CHARTS.glob(f"{prefix}_*.png"))
    assert charts, f"{name} saved no chart under {CHARTS}"
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in charts)
    return reported(nb), text


def openids(world) -> list[str]:
    """The payers' openids (the simulator's ledger: the warehouse does not keep them)."""
    found = sorted({o.payer_openid for o in world.sim.ledger.orders.values() if o.payer_openid})
    assert found
    assert all(len(o) == 28 for o in found)
    return found


def assert_no_openid(world, *texts: str) -> None:
    for openid in openids(world):
        for text in texts:
            assert openid not in text


def test_daily_overview_counts_match_the_marts(world, tmp_path):
    result, text = run(
        "01_daily_overview",
        {"warehouse": str(world.warehouse), "start_date": str(D - timedelta(days=3)), "end_date": str(D1)},
        "{'class_counts': class_counts.to_dict(), 'amounts': {str(k): v for k, v in amounts.T.to_dict().items()},"
        " 'changes': change_counts.to_dict(), 'ageing': ageing.to_dict(), 'differences': control_differences,"
        " 'saved': [str(p) for p in saved]}",
        tmp_path,
    )
    expected = dict(
        marts(
            world,
            "select class, sum(items) from marts.mart_daily_summary where class <> 'matched'"
            " and recon_date between ? and ? group by class",
            [D - timedelta(days=3), D1],
        )
    )
    assert result["class_counts"] == expected
    assert result["class_counts"]["status_mismatch"] == 3
    assert result["class_counts"]["missing_in_bill"] == 2
    # D: 14 combine orders x 2 sub orders; the exceptions' amounts (bill's, else ours) in fen
    day = result["amounts"][str(D)]
    by_state = dict(
        marts(
            world,
            "select state, sum(coalesce(bill_fen, local_fen)) from marts.mart_recon_items where recon_date = ?"
            " and item_kind = 'payment' group by state",
            [D],
        )
    )
    matched = marts(
        world,
        "select sum(bill_fen) from marts.mart_daily_summary where recon_date = ? and item_kind = 'payment'"
        " and class = 'matched'",
        [D],
    )[0][0]
    assert day == {"matched": matched, "pending": by_state.get("pending", 0), "exception": by_state["open"]}
    assert day["exception"] >= 9900 + 5000  # CB0002S1 (the bill's 99.00) and CB0003S1 (missing locally) among them
    assert result["amounts"][str(D - timedelta(days=2))]["exception"] == 1500 + 2500  # CB0004 missing in the bill
    assert result["changes"] == {"opened": 0, "reclassified": 0, "resolved": 2, "reopened": 0}  # CB0005 settled
    open_count = marts(world, "select count(*) from marts.mart_exceptions where state in ('open', 'pending')")[0][0]
    assert sum(sum(v.values()) for v in result["ageing"].values()) == open_count
    assert result["differences"] >= 2
    assert finance.fmt_yuan(day["matched"]) in text
    assert finance.fmt_yuan(day["exception"]) in text
    assert {Path(p).name for p in result["saved"]} == {
        "01_daily_amounts.png",
        "01_exception_counts.png",
        "01_control_totals.png",
        "01_ageing.png",
    }
    assert_no_openid(world, text)


def drilldown(world, tmp_path, exception):
    return run(
        "02_exception_drilldown",
        {
            "warehouse": str(world.warehouse),
            "archive_root": str(world.archive.root),
            "notification_root": str(world.log.root),
            "exception": exception,
            "export_dir": str(tmp_path / "export"),
        },
        "{'key': item['item_key'], 'class': item['class'], 'bill_line': bill_line.text if bill_line else None,"
        " 'bill_fields': bill_line.fields if bill_line else None,"
        " 'verification': verification if notification else None, 'exported': len(export),"
        " 'csv': str(csv_file), 'excel': str(excel_file)}",
        tmp_path,
    )


def test_drilldown_of_the_amount_mismatch_shows_both_amounts_and_the_bill_line(world, tmp_path):
    result, text = drilldown(world, tmp_path, "CB0002S1")
    assert (result["key"], result["class"]) == ("CB0002S1", "amount_mismatch")
    assert "¥99.00" in text
    assert "¥100.00" in text
    assert "-¥1.00" in text
    assert "`CB0002S1," in result["bill_line"]
    assert "`99.00," in result["bill_line"]
    assert result["bill_fields"]["商户订单号"] == "CB0002S1"
    assert result["bill_fields"]["应结订单金额"] == "99.00"
    assert "***" in result["bill_fields"]["用户标识"]
    assert "账单金额与本地记录不一致" in text
    assert "Amount mismatch" in text
    assert result["verification"].startswith("已验证 verified")  # CB0002's notification, verified by the run
    assert "AEAD_AES_256_GCM" in text
    assert "TRANSACTION.SUCCESS" in text
    assert "Base64 characters, encrypted" in text
    assert f"{P0}/CB0002S1" in text  # the local record key

    open_rows = marts(world, "select count(*) from marts.mart_exceptions where state = 'open'")[0][0]
    assert result["exported"] == open_rows
    with open(result["csv"], encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == open_rows
    mismatch = next(r for r in rows if r["item_key"] == "CB0002S1")
    assert (mismatch["bill_yuan"], mismatch["local_yuan"], mismatch["diff_yuan"]) == ("99.00", "100.00", "-1.00")
    sheet = openpyxl.load_workbook(result["excel"]).active
    assert sheet.max_row == open_rows + 1
    exported = Path(result["csv"]).read_text(encoding="utf-8-sig") + json.dumps(
        [[c.value for c in row] for row in sheet.iter_rows()], default=str, ensure_ascii=False
    )
    assert_no_openid(world, text, exported)


def test_drilldown_defaults_to_the_open_exception_with_most_at_stake(world, tmp_path):
    result, text = drilldown(world, tmp_path, None)
    largest = marts(
        world,
        "select item_key from marts.mart_exceptions where state = 'open' order by exposure_fen desc limit 1",
    )[0][0]
    assert result["key"] == largest
    assert_no_openid(world, text)


def test_drilldown_of_notification_findings(world, tmp_path):
    result, text = drilldown(world, tmp_path, "CB0012")
    assert result["class"] == "notification_amount_mismatch"
    assert result["verification"].startswith("已验证 verified")
    assert "¥27.99" in text
    assert "¥27.00" in text
    assert "f00dcafe-0000-4000-8000-000000000012" in text
    assert result["bill_line"] is None

    forged = marts(world, "select item_key from marts.mart_exceptions where class = 'notification_unverified'")
    result, text = drilldown(world, tmp_path, forged[0][0])
    assert result["verification"].startswith("未通过验证 NOT verified")
    assert "SignatureMismatchError" in result["verification"]
    assert_no_openid(world, text)


def test_fees_and_settlement(world, tmp_path):
    result, text = run(
        "03_fees_and_settlement",
        {"warehouse": str(world.warehouse), "start_date": str(D - timedelta(days=3)), "end_date": str(D1)},
        "{'verdicts': dict(zip(paid['mchid'] + ' ' + paid['bill_date'].astype(str), paid['verdict'])),"
        " 'fee_keys': list(fee_items['item_key']), 'refunds': refund_table.to_dict('records'),"
        " 'settlement': dict(zip(settled['mchid'] + ' ' + settled['bill_date'].astype(str),"
        " settled['settlement_diff_millifen'].astype(int)))}",
        tmp_path,
    )
    # P1's bill charged 0.99 instead of 0.18 on CB0014S2: beyond what per-row rounding explains
    assert result["verdicts"][f"{P1} {D}"].startswith("偏高 HIGHER")
    fee_keys = marts(
        world,
        "select item_key from marts.mart_exceptions where class = 'fee_mismatch' and recon_date between ? and ?"
        " order by recon_date, mchid, item_key",
        [D - timedelta(days=3), D1],
    )
    assert result["fee_keys"] == [k for (k,) in fee_keys]
    assert "pay:CB0014S2" in result["fee_keys"]
    assert "¥0.99" in text  # CB0014S2: the bill's fee, what it should be, the difference
    assert "¥0.18" in text
    assert "¥0.81" in text
    assert result["refunds"][0]["退款金额 refunded"] == "¥21.00"  # RF0001 20.00 + RF0015 1.00
    # fund flow minus trade bill, per merchant-day with a fund-flow bill, as the mart computes it
    expected = dict(
        marts(
            world,
            "select mchid || ' ' || bill_date, settlement_diff_millifen from marts.mart_fund_flow_daily"
            " where fund_flow_loaded and (flow_rows > 0 or payment_rows > 0)",
        )
    )
    assert result["settlement"] == expected
    assert result["settlement"][f"{P1} {D}"] == 81000  # P1's misprinted fee: charged 0.99, WeChat booked 0.18
    assert result["settlement"][f"{P0} {D}"] < 0  # P0's bill lists CB0007S1 twice; the money came once
    assert result["settlement"][f"{P0} {D1}"] == 0  # CB0005S1, paid across midnight, settles on D+1
    assert finance.fmt_fee(result["settlement"][f"{P0} {D}"]) in text
    assert_no_openid(world, text)


def hold_write_lock(path: Path) -> subprocess.Popen:
    """Another process with the warehouse open read-write (as the nightly run has it), until stdin closes."""
    code = (
        "import sys, duckdb\n"
        f"con = duckdb.connect({str(path)!r})\n"
        "con.execute('create table if not exists lock_probe (a int)')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "con.close()\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    return writer


def test_a_nightly_run_in_progress_gives_warehouse_busy_not_a_crash(world, tmp_path):
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(world.warehouse, copy)
    writer = hold_write_lock(copy)
    try:
        with pytest.raises(finance.WarehouseBusy, match="try again in a moment") as caught:
            finance.Warehouse(copy, busy_retries=2, busy_wait=0.1).runs()
        assert caught.value._render_traceback_() == [f"WarehouseBusy: {caught.value}"]
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

        # in a notebook: one line naming the problem, no DuckDB stack trace
        nb = prepared("01_daily_overview", {"warehouse": str(copy), "output_dir": str(tmp_path / "charts")}, "{}")
        with pytest.raises(CellExecutionError):
            client_for(nb).execute()
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert [e.ename for e in errors] == ["WarehouseBusy"]
        assert len(errors[0].traceback) == 1
        assert "try again in a moment" in errors[0].traceback[0]
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    assert finance.Warehouse(copy).runs().shape[0] == 2  # once the run is done, the same call works


def settings_toml(world, tmp_path: Path, warehouse: Path) -> Path:
    """A wxrecon settings file for the scenario's simulated merchants (test credentials exported here)."""
    credentials = tmp_path / "credentials"
    lines = [
        f'api_base_url = "{world.sim_url}"',
        f'data_dir = "{tmp_path}"',
        f'warehouse = "{warehouse}"',
        f'archive = "{world.archive.root}"',
        f'notification_log = "{world.log.root}"',
    ]
    for merchant in world.sim.merchants.values():
        folder = merchant.export(credentials)
        lines += [
            "[[merchants]]",
            f'mchid = "{merchant.mchid}"',
            f'appid = "{merchant.appid}"',
            f'merchant_serial_no = "{merchant.merchant_serial}"',
            f'private_key_file = "{folder / "apiclient_key.pem"}"',
            f'api_v3_key = "{merchant.api_v3_key}"',
            f'wechatpay_public_key_id = "{merchant.public_key_id}"',
            f'wechatpay_public_key_file = "{folder / "wechatpay_public_key.pem"}"',
            f"receives_notifications = {'true' if merchant.mchid == INITIATOR else 'false'}",
        ]
    orders, refunds = world.local_tables()
    import pyarrow.parquet as pq

    pq.write_table(orders, tmp_path / "orders.parquet")
    pq.write_table(refunds, tmp_path / "refunds.parquet")
    lines[5:5] = [
        f'local_orders = {{ kind = "parquet", paths = ["{tmp_path / "orders.parquet"}"] }}',
        f'local_refunds = {{ kind = "parquet", paths = ["{tmp_path / "refunds.parquet"}"] }}',
    ]
    path = tmp_path / "wxrecon.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.usefixtures("prefect_harness")
def test_an_open_notebook_does_not_make_wxrecon_run_fail(world, tmp_path):
    """A JupyterLab tab left open, its user clicking around, while the nightly `wxrecon run` writes."""
    from prefect.settings import PREFECT_API_URL

    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(world.warehouse, copy)
    config = settings_toml(world, tmp_path, copy)
    nb = prepared("01_daily_overview", {"warehouse": str(copy), "output_dir": str(tmp_path / "charts")}, "{}")
    client = client_for(nb)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        # the kernel keeps reading the warehouse in the background while the run goes
        reader = nbformat.v4.new_code_cell(
            "import threading, time\n"
            "reads = {'ok': 0, 'busy': 0}\n"
            "stop = threading.Event()\n"
            "def keep_reading():\n"
            "    while not stop.is_set():\n"
            "        try:\n"
            "            wh.runs(); reads['ok'] += 1\n"
            "        except finance.WarehouseBusy:\n"
            "            reads['busy'] += 1\n"
            "        time.sleep(0.2)\n"
            "reader = threading.Thread(target=keep_reading, daemon=True)\n"
            "reader.start()"
        )
        nb.cells.append(reader)
        client.execute_cell(reader, len(nb.cells) - 1)
        # the run is another process, on the real clock: the simulator judges its signatures by that clock
        world.sim.wall_clock, test_clock = escape_hatch.time.time, world.sim.wall_clock
        try:
            run = subprocess.run(
                [
                    str(Path(sys.executable).with_name("wxrecon")),
                    "run",
                    "--date",
                    D1.isoformat(),
                    "--config",
                    str(config),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},  # the session's Prefect server
            )
        finally:
            world.sim.wall_clock = test_clock
        probe = nbformat.v4.new_code_cell("stop.set(); reader.join(); print('READS', reads, 'RUNS', len(wh.runs()))")
        nb.cells.append(probe)
        client.execute_cell(probe, len(nb.cells) - 1)
    assert run.returncode in (0, 1), run.stdout[-2000:] + run.stderr[-2000:]  # 1: the day has exceptions
    assert "INTEGRITY" not in run.stdout
    text = probe.outputs[0]["text"]
    assert "RUNS 3" in text  # the notebook now sees the run it was open during
    assert "'ok': 0" not in text  # it kept reading while the run went


def test_drilldown_resolves_with_a_note_after_a_preview_like_the_command_line(world, tmp_path):
    from tests.test_workbench import cli_config, comparable

    note = "customer paid the difference in cash"
    copy = tmp_path / "notebook" / "warehouse.duckdb"
    copy.parent.mkdir()
    shutil.copy(world.warehouse, copy)
    params = {
        "warehouse": str(copy),
        "archive_root": str(world.archive.root),
        "notification_root": str(world.log.root),
        "exception": "CB0002S1",
        "export_dir": str(tmp_path / "export"),
        "resolve": ["CB0002S1"],
        "resolution": "explained",
        "note": note,
        "actor": "li.wei",
    }
    report = "{'previewed': list(preview.frame['单号 key']), 'resolved': resolved.count if resolved else None}"
    previewed, text = run("02_exception_drilldown", params, report, tmp_path)
    assert previewed == {"previewed": ["CB0002S1"], "resolved": None}  # a preview writes nothing
    assert "nothing was written" in text
    (target,) = marts(world, "select exception_id from recon.exceptions where item_key = 'CB0002S1'")[0]
    assert comparable(copy, target)[1] == []
    confirmed, text = run("02_exception_drilldown", {**params, "confirm": True}, report, tmp_path)
    assert confirmed == {"previewed": ["CB0002S1"], "resolved": 1}
    assert note in text

    from typer.testing import CliRunner

    from flows.cli import app

    config = cli_config(tmp_path / "cli", world.warehouse)
    done = CliRunner().invoke(
        app, ["exceptions", "resolve", target, "--kind", "explained", "--note", note, "--by", "li.wei",
              "--config", config],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert comparable(copy, target) == comparable(tmp_path / "cli" / "var" / "warehouse.duckdb", target)
    assert comparable(copy, target)[0][0][:4] == ("amount_mismatch", "resolved", "resolved", "explained")
