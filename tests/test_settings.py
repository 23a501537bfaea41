"""Settings: sources and precedence, errors that name the setting, secrets that never show."""

from __future__ import annotations

import pytest

from flows.settings import Settings, SettingsError, describe, load_settings

API_V3_KEY = "Wx3xKt5Qp0bL7sY2dRnA9cM4eF6gH8jZ"


@pytest.fixture
def files(tmp_path, merchant_pool):
    merchant = merchant_pool[0]
    merchant.export(tmp_path)
    return tmp_path / merchant.mchid, merchant


def toml(tmp_path, body: str):
    path = tmp_path / "wxrecon.toml"
    path.write_text(body)
    return path


def merchant_toml(folder, merchant, api_v3_key=API_V3_KEY) -> str:
    return f"""
[[merchants]]
mchid = "{merchant.mchid}"
appid = "{merchant.appid}"
merchant_serial_no = "{merchant.merchant_serial}"
private_key_file = "{folder / "apiclient_key.pem"}"
api_v3_key = "{api_v3_key}"
wechatpay_public_key_id = "{merchant.public_key_id}"
wechatpay_public_key_file = "{folder / "wechatpay_public_key.pem"}"
receives_notifications = true
"""


def test_a_toml_file_with_env_overrides(tmp_path, files, monkeypatch):
    folder, merchant = files
    path = toml(tmp_path, 'data_dir = "/srv/recon"\npending_days = 3\n' + merchant_toml(folder, merchant))
    monkeypatch.setenv("WXRECON_PENDING_DAYS", "4")
    monkeypatch.setenv("WXRECON_ALERTS__MAX_COUNT", "7")
    settings = load_settings(path)
    assert settings.pending_days == 4  # the environment beats the file
    assert settings.alerts.max_count == 7
    assert str(settings.warehouse_path) == "/srv/recon/warehouse.duckdb"
    assert settings.merchant(merchant.mchid).client("https://api.mch.weixin.qq.com").mchid == merchant.mchid


def test_secrets_never_show(tmp_path, files):
    folder, merchant = files
    path = toml(
        tmp_path, merchant_toml(folder, merchant) + '\n[alerts]\nurls = ["json://hooks.example/abc?token=S3CR3T"]\n'
    )
    settings = load_settings(path)
    shown = repr(settings) + str(describe(settings)) + repr(settings.merchants[0])
    assert API_V3_KEY not in shown
    assert "S3CR3T" not in shown
    assert settings.merchants[0].api_v3_key.get_secret_value() == API_V3_KEY


def test_a_missing_setting_is_named(monkeypatch):
    monkeypatch.delenv("WXRECON_CONFIG", raising=False)
    with pytest.raises(SettingsError, match=r"merchants \(environment WXRECON_MERCHANTS\): Field required"):
        load_settings()


def test_a_malformed_secret_is_named_but_not_shown(tmp_path, files):
    folder, merchant = files
    path = toml(tmp_path, merchant_toml(folder, merchant, api_v3_key="too-short-but-secret"))
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert "merchants.0.api_v3_key" in str(info.value)
    assert "too-short-but-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("pending_days = -1", "pending_days"),
        ('memory_limit = "lots"', "memory_limit"),
        ("colour = 1", "colour"),
        ("[alerts]\nmax_count = -2", "alerts.max_count"),
    ],
)
def test_malformed_settings_are_named(tmp_path, files, extra, named):
    folder, merchant = files
    path = toml(tmp_path, extra + "\n" + merchant_toml(folder, merchant))
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings(path)


def test_key_files_must_exist(tmp_path, files):
    _folder, merchant = files
    path = toml(tmp_path, merchant_toml(tmp_path / "nowhere", merchant))
    with pytest.raises(SettingsError, match=r"private_key_file .* does not exist"):
        load_settings(path)


def test_a_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_one_mchid_once(tmp_path, files):
    folder, merchant = files
    path = toml(tmp_path, merchant_toml(folder, merchant) * 2)
    with pytest.raises(SettingsError, match="appears twice"):
        load_settings(path)


def test_env_example_lists_every_setting():
    from pathlib import Path

    example = (Path(__file__).parents[1] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"WXRECON_{name.upper()}" in example, name


@pytest.mark.usefixtures("prefect_harness")
def test_a_secret_can_come_from_a_prefect_secret_block(tmp_path, files):
    from prefect.blocks.system import Secret

    folder, merchant = files
    Secret(value=API_V3_KEY).save("wxrecon-test-apiv3", overwrite=True)
    path = toml(tmp_path, merchant_toml(folder, merchant, api_v3_key="prefect-secret:wxrecon-test-apiv3"))
    settings = load_settings(path)
    assert settings.merchants[0].api_v3_key.get_secret_value() == API_V3_KEY
    missing = toml(tmp_path, merchant_toml(folder, merchant, api_v3_key="prefect-secret:no-such-block"))
    with pytest.raises(SettingsError, match="no-such-block"):
        load_settings(missing)


def test_the_receiver_settings_become_its_limits(tmp_path, files, monkeypatch):
    folder, merchant = files
    path = toml(
        tmp_path,
        'receiver_max_body = "2MiB"\nreceiver_rejected_day_bytes = "8MiB"\nreceiver_min_free_disk = "5%"\n'
        + merchant_toml(folder, merchant),
    )
    monkeypatch.setenv("WXRECON_RECEIVER_TRUSTED_PROXIES", "10.0.0.5, fd00::/64")
    monkeypatch.setenv("WXRECON_RECEIVER_REFUSED_PER_MINUTE", "0")
    limits = load_settings(path).receiver_limits()
    assert (limits.max_body, limits.rejected_day_bytes, limits.rejected_total_bytes) == (2 << 20, 8 << 20, 1 << 30)
    assert (limits.min_free_bytes, limits.min_free_ratio) == (0, 0.05)
    assert limits.trusted_proxies == ("10.0.0.5", "fd00::/64")
    assert limits.refused_per_minute == 0
    monkeypatch.delenv("WXRECON_RECEIVER_TRUSTED_PROXIES")
    defaults = load_settings(toml(tmp_path, merchant_toml(folder, merchant))).receiver_limits()
    assert (defaults.min_free_bytes, defaults.max_connections, defaults.trusted_proxies) == (1 << 30, 1000, ())


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('receiver_min_free_disk = "lots"', "receiver_min_free_disk"),
        ('receiver_min_free_disk = "100%"', "receiver_min_free_disk"),
        ('receiver_trusted_proxies = ["not-an-address"]', "receiver_trusted_proxies"),
        ('receiver_rejected_day_bytes = "2GiB"', "receiver_rejected_day_bytes cannot exceed"),
        ("receiver_remember_days = 1", "receiver_remember_days"),
    ],
)
def test_malformed_receiver_settings_are_named(tmp_path, files, extra, named):
    folder, merchant = files
    with pytest.raises(SettingsError, match=named):
        load_settings(toml(tmp_path, extra + "\n" + merchant_toml(folder, merchant)))
