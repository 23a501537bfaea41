"""The command line: exit codes say what a run found; settings errors name the setting."""

from __future__ import annotations

from datetime import date

import pytest
from typer.testing import CliRunner

from flows.cli import EXIT_EXCEPTIONS, EXIT_SETTINGS, app

pytestmark = pytest.mark.slow  # notebook kernels, the demo, subprocesses

runner = CliRunner()


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
    report = runner.invoke(app, ["report", "--date", result.bill_date.isoformat()])
    assert report.exit_code == EXIT_EXCEPTIONS, report.output
    for cls in ("amount_mismatch", "missing_locally", "notification_unverified", "notification_duplicate"):
        assert cls in report.output
    never = runner.invoke(app, ["report", "--date", date(2020, 1, 1).isoformat()])
    assert never.exit_code == 2
    assert "has not been reconciled" in never.output
