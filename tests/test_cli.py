"""The command line: exit codes say what a run found; settings errors name the setting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from time_machine import escape_hatch
from typer.testing import CliRunner

from flows.cli import EXIT_EXCEPTIONS, EXIT_SETTINGS, app
from flows.report import exceptions_of_day
from flows.settings import load_settings
from wxpay.models import BEIJING

pytestmark = pytest.mark.slow  # notebook kernels, the demo, subprocesses

runner = CliRunner()


def test_help_lists_the_exit_codes():
    shown = runner.invoke(app, ["--help"]).output
    for code, word in ((0, "nothing needs attention"), (3, "late"), (4, "configuration"), (5, "busy"), (10, "failed")):
        assert re.search(rf"^\s+{code}\s+.*{word}", shown, re.M), shown


def test_missing_settings_exit_4_and_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("WXRECON_CONFIG", raising=False)
    monkeypatch.delenv("WXRECON_MERCHANTS", raising=False)
    result = runner.invoke(app, ["report", "--date", "2026-11-26"])
    assert result.exit_code == EXIT_SETTINGS
    assert "merchants" in result.output


def test_a_bad_date_is_a_usage_error(tmp_path):
    (tmp_path / "c.toml").write_text("")
    result = runner.invoke(app, ["run", "--date", "26/11/2026", "--config", str(tmp_path / "c.toml")])
    assert result.exit_code != 0


@pytest.mark.usefixtures("prefect_harness")
def test_report_of_the_demo_warehouse(tmp_path, monkeypatch):
    from flows.demo import run_demo

    result = run_demo(tmp_path / "var", say=lambda *a, **k: None)
    credentials = tmp_path / "var" / "demo-credentials"
    mchid = sorted(p.name for p in credentials.iterdir())[0]
    monkeypatch.setenv("WXRECON_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv(
        "WXRECON_MERCHANTS",
        f'[{{"mchid": "{mchid}", "appid": "wx1", "merchant_serial_no": "ABCDEF12",'
        f' "private_key_file": "{credentials / mchid / "apiclient_key.pem"}",'
        f' "api_v3_key": "{(credentials / mchid / "apiv3_key.txt").read_text()}",'
        f' "wechatpay_public_key_id": "PUB_KEY_ID_0100", "wechatpay_public_key_file":'
        f' "{credentials / mchid / "wechatpay_public_key.pem"}"}}]',
    )
    from flows import cli
    from flows.report import exceptions_of_day

    monkeypatch.setattr(cli.console, "width", 80)  # a terminal of 80 columns
    report = runner.invoke(app, ["report", "--date", result.bill_date.isoformat()])
    assert report.exit_code == EXIT_EXCEPTIONS, report.output
    for cls in ("amount_mismatch", "missing_locally", "notification_unverified", "notification_duplicate"):
        assert cls in report.output
    assert max(len(line) for line in report.output.splitlines()) <= 80
    for row in exceptions_of_day(tmp_path / "var" / "warehouse.duckdb", result.bill_date):
        if row["state"] != "pending":  # every id whole on one line: none cut, none wrapped
            key = row["notification_id"] if row["item_kind"] == "notification_line" else row["item_key"]
            assert f"{row['mchid']} {key}" in report.output, (row, report.output)
    never = runner.invoke(app, ["report", "--date", date(2020, 1, 1).isoformat()])
    assert never.exit_code == 2
    assert "has not been reconciled" in never.output
    as_of = runner.invoke(app, ["report", "--date", result.bill_date.isoformat(), "--as-of", "1"])
    assert as_of.exit_code == 2  # a snapshot is a DuckLake's; a DuckDB file keeps no history
    assert "keeps no history" in " ".join(as_of.output.split())


# --- from the simulator to a first night: the commands a new user runs, as subprocesses ---------------


def real_beijing_now() -> datetime:
    """The real moment (subprocesses run on the real clock; this process's clock was moved)."""
    return datetime.fromtimestamp(escape_hatch.time.time(), BEIJING).replace(microsecond=0)


def command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def subprocess_env() -> dict[str, str]:
    """This environment without settings of its own: only the files under test configure the subprocesses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}


@contextmanager
def wxrecon_sim(state: Path, *options: str) -> Iterator[dict]:
    """``wxrecon sim`` on a free port until the test is done; yields what it printed (its simulator.json + settings)."""
    errors = state.with_name(state.name + ".stderr")
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [command("wxrecon"), "sim", "--port", "0", "--state-dir", str(state), *options],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=subprocess_env(),
        )
    try:
        printed = []
        for line in process.stdout:  # the pipe is the start barrier: the JSON ends with a lone "}"
            printed.append(line)
            if line.rstrip() == "}":
                break
        assert printed[-1:] == ["}\n"], "".join(printed) + errors.read_text()
        yield json.loads("".join(printed))
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0, errors.read_text()  # SIGTERM stops it cleanly


def wxrecon_run(day: date, settings: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [command("wxrecon"), "run", "--date", day.isoformat(), "--config", str(settings)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=subprocess_env(),
    )


def test_wxrecon_sim_with_a_business_day_is_ready_for_wxrecon_run(tmp_path):
    now = real_beijing_now()
    day = now.date() - timedelta(days=1)
    dead = "http://127.0.0.1:9/wxpay/notify/1900000100"  # nobody receives: WeChat Pay keeps retrying
    with wxrecon_sim(
        tmp_path / "sim", "--start", now.isoformat(), "--business-day", day.isoformat(), "--notify-url", dead
    ) as info:
        settings = load_settings(Path(info["settings"]))
        assert settings.api_base_url == info["base_url"]
        assert [m.receives_notifications for m in settings.merchants] == [True, False, False]
        for merchant in settings.merchants:
            folder = tmp_path / "sim" / "merchants" / merchant.mchid
            assert merchant.api_v3_key is None
            assert merchant.api_v3_key_value() == (folder / "apiv3_key.txt").read_text()
            assert merchant.private_key_file == folder / "apiclient_key.pem"
        business = info["business"]
        assert business["day"] == day.isoformat()
        assert (business["paid"], business["unpaid"], business["closed"], business["paid_after_midnight"]) == (
            30,
            4,
            2,
            1,
        )
        assert settings.local_orders is not None
        assert Path(business["orders"]).is_file()
        assert datetime.fromisoformat(info["clock"]) >= datetime.combine(
            day + timedelta(days=1), datetime.min.time(), BEIJING
        ) + timedelta(hours=10)

        run = wxrecon_run(day, Path(info["settings"]))
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
    assert "INTEGRITY" not in run.stdout
    assert "LATE" not in run.stdout
    exceptions = exceptions_of_day(settings.warehouse_path, day)
    # the bills and the shop's records agree to the fen; only the callbacks never arrived
    assert {e["class"] for e in exceptions} == {"notification_missing"}
    assert len(exceptions) == business["paid"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_busy_warehouse_is_one_line_and_exit_5_for_every_command(tmp_path, monkeypatch):
    """Another process holds the warehouse file (a run writing): report, run and backfill say so the same way."""
    data = tmp_path / "var"
    data.mkdir()
    path = data / "warehouse.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, duckdb; con = duckdb.connect({str(path)!r}); print('held', flush=True);"
         " sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        config = tmp_path / "wxrecon.toml"
        config.write_text(f'data_dir = "{data}"\nwarehouse_wait_seconds = 0.5\n' + merchant_toml(tmp_path))
        day = (date.today() - timedelta(days=2)).isoformat()  # a day that is over, on this run's clock
        for args in (["report", "--date", day], ["run", "--date", day], ["backfill", "--start", day, "--end", day]):
            result = runner.invoke(app, [*args, "--config", str(config)])
            assert result.exit_code == 5, (args, result.output)
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert len(lines) == 1, result.output
            assert lines[0].startswith("busy:")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def merchant_toml(folder: Path) -> str:
    """One merchant whose key files exist (settings check that much; nothing here talks to WeChat Pay)."""
    (folder / "key.pem").write_text("not read here")
    return (
        '[[merchants]]\nmchid = "1900000100"\nappid = "wx1"\nmerchant_serial_no = "ABCDEF12"\n'
        f'private_key_file = "{folder / "key.pem"}"\napi_v3_key = "{"k" * 32}"\n'
        f'wechatpay_public_key_id = "PUB_KEY_ID_0100"\nwechatpay_public_key_file = "{folder / "key.pem"}"\n'
    )


@pytest.mark.usefixtures("prefect_harness")
def test_a_damaged_warehouse_file_is_one_line_naming_it_and_exit_8_for_every_command(tmp_path):
    data = tmp_path / "var"
    data.mkdir()
    path = data / "warehouse.duckdb"
    path.write_bytes(b"\x00 not what DuckDB wrote " * 4096)  # a restore gone wrong, a disk that lied
    config = tmp_path / "wxrecon.toml"
    config.write_text(f'data_dir = "{data}"\n' + merchant_toml(tmp_path))
    day = (date.today() - timedelta(days=2)).isoformat()
    for args in (["report", "--date", day], ["run", "--date", day], ["backfill", "--start", day, "--end", day]):
        result = runner.invoke(app, [*args, "--config", str(config)])
        assert result.exit_code == 8, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1, result.output
        assert lines[0].startswith("storage: DamagedFileError: damaged file: ")
        assert str(path) in lines[0]
        assert "what to do: move the file aside" in lines[0]
        assert "Traceback" not in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_backfill_that_ends_before_it_starts_is_a_usage_error(tmp_path):
    config = tmp_path / "wxrecon.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n' + merchant_toml(tmp_path))
    start, end = date.today() - timedelta(days=2), date.today() - timedelta(days=5)
    result = runner.invoke(app, ["backfill", "--start", str(start), "--end", str(end), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"backfill end {end} is before start {start}" in result.output
    assert not (tmp_path / "var" / "warehouse.duckdb").exists()
