"""The wxrecon.toml written for a standalone simulator: it loads as is, its keys work against that simulator,
and its local sources read the days of business recorded there."""

from __future__ import annotations

import tomllib
from datetime import date, datetime, timedelta

import pytest

from flows.settings import load_settings
from flows.simsettings import sim_settings_toml, write_sim_settings
from flows.sources import bill_day_window, read_local_orders, read_local_refunds
from wxpay.models import BEIJING
from wxpay.sim.standalone import start_standalone

DAY = date(2026, 11, 25)
REFUSED = "http://127.0.0.1:9/wxpay/notify/1900000100"  # nobody listens: callbacks fail at once and are retried


@pytest.fixture
def standalone(tmp_path):
    stale = tmp_path / "sim" / "business" / "2020-01-01"
    stale.mkdir(parents=True)
    (stale / "orders.parquet").write_text("an earlier world")
    (tmp_path / "sim" / "business" / "notes").mkdir()
    running = start_standalone(
        port=0,
        state_dir=tmp_path / "sim",
        start=datetime(2026, 11, 26, 15, 0, tzinfo=BEIJING),
        business_day=DAY,
        orders=12,
        notify_url=REFUSED,
    )
    yield running
    running.stop()


def test_the_settings_load_as_written_and_work_against_the_simulator(standalone, tmp_path):
    info = standalone.info
    assert (standalone.state_dir / "simulator.json").is_file()
    assert not (standalone.state_dir / "business" / "2020-01-01").exists()  # an earlier world's records
    assert (standalone.state_dir / "business" / "notes").is_dir()  # not ours: left alone
    path = write_sim_settings(info, tmp_path / "sim" / "wxrecon.toml", data_dir=tmp_path / "recon")
    settings = load_settings(path)
    assert settings.api_base_url == standalone.url
    assert settings.data_dir == (tmp_path / "recon").resolve()
    assert [m.mchid for m in settings.merchants] == list(standalone.sim.merchants)
    assert [m.receives_notifications for m in settings.merchants] == [True, False, False]
    for merchant in settings.merchants:
        simulated = standalone.sim.merchants[merchant.mchid]
        assert merchant.api_v3_key_value() == simulated.api_v3_key
        assert merchant.contracted_fee_rate == f"{simulated.fee_rate_bp / 100:.2f}%"
    initiator = settings.merchants[0]
    with initiator.client(settings.api_base_url) as client:  # signed over loopback with the files' keys
        order = client.combine.query(standalone.business.paid[0])
    assert order.trade_state in ("SUCCESS", "MIXED")

    start, end = bill_day_window(DAY - timedelta(days=1), 3)
    orders = read_local_orders(settings.local_orders, start, end)
    refunds = read_local_refunds(settings.local_refunds, start, end)
    assert orders.num_rows == len(standalone.business.book.orders)
    assert refunds.num_rows == len(standalone.business.book.refunds) == 1
    assert info["business"]["paid"] == len(standalone.business.paid)


def test_paths_with_quotes_and_non_ascii_survive(standalone, tmp_path):
    info = standalone.info
    odd = tmp_path / '商户 "一号"'
    info["merchants"][0]["credentials"] = str(odd)
    parsed = tomllib.loads(sim_settings_toml(info, data_dir=tmp_path))
    assert parsed["merchants"][0]["private_key_file"] == str(odd / "apiclient_key.pem")
    assert parsed["local_orders"]["paths"] == [str(standalone.state_dir / "business" / "*" / "orders.parquet")]
