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


def merchant_toml(folder, merchant, api_v3_key=API_V3_KEY, api_v3_key_file=None) -> str:
    keys = [f'api_v3_key = "{api_v3_key}"'] if api_v3_key is not None else []
    keys += [f'api_v3_key_file = "{api_v3_key_file}"'] if api_v3_key_file is not None else []
    newline = "\n"
    return f"""
[[merchants]]
mchid = "{merchant.mchid}"
appid = "{merchant.appid}"
merchant_serial_no = "{merchant.merchant_serial}"
private_key_file = "{folder / "apiclient_key.pem"}"
{newline.join(keys)}
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


def test_the_apiv3_key_can_come_from_a_file(tmp_path, files):
    folder, merchant = files
    key_file = tmp_path / "apiv3_key.txt"
    key_file.write_text(f"  {API_V3_KEY}\n\n")  # as an editor or `echo` leaves it
    settings = load_settings(toml(tmp_path, merchant_toml(folder, merchant, api_v3_key=None, api_v3_key_file=key_file)))
    config = settings.merchants[0]
    assert config.api_v3_key is None
    assert config.api_v3_key_value() == API_V3_KEY
    assert API_V3_KEY not in repr(settings) + str(describe(settings))
    key_file.write_text("changed after start" * 2)  # read once, at start
    assert config.api_v3_key_value() == API_V3_KEY
    with config.client("https://api.mch.weixin.qq.com") as client:
        assert client.mchid == merchant.mchid


def test_an_inline_apiv3_key_reads_the_same(tmp_path, files):
    folder, merchant = files
    settings = load_settings(toml(tmp_path, merchant_toml(folder, merchant)))
    assert settings.merchants[0].api_v3_key_value() == API_V3_KEY


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, r"merchants\.0\.api_v3_key_file .*: .*apiv3_key\.txt does not exist"),
        (API_V3_KEY + "X", r"merchants\.0\.api_v3_key_file .*: .*exactly 32 characters \(it holds 33 bytes"),
        (API_V3_KEY[:-1] + "\n", r"merchants\.0\.api_v3_key_file .*: .*exactly 32 characters \(it holds 31 bytes"),
        (
            b"\xff" + API_V3_KEY[1:].encode(),
            r"merchants\.0\.api_v3_key_file .*: .*cannot be read \(UnicodeDecodeError\)",
        ),
        ("directory", r"merchants\.0\.api_v3_key_file .*: .*cannot be read \(IsADirectoryError\)"),
    ],
    ids=["missing", "too-long", "too-short", "not-text", "a-directory"],
)
def test_a_bad_apiv3_key_file_is_named_and_never_shown(tmp_path, files, content, problem):
    folder, merchant = files
    key_file = tmp_path / "apiv3_key.txt"
    if content == "directory":
        key_file.mkdir()
    elif isinstance(content, bytes):
        key_file.write_bytes(content)
    elif content is not None:
        key_file.write_text(content)
    path = toml(tmp_path, merchant_toml(folder, merchant, api_v3_key=None, api_v3_key_file=key_file))
    with pytest.raises(SettingsError, match=problem) as info:
        load_settings(path)
    assert API_V3_KEY[1:-1] not in str(info.value)


@pytest.mark.parametrize(("inline", "in_file"), [(True, True), (False, False)], ids=["both", "neither"])
def test_exactly_one_way_to_give_the_apiv3_key(tmp_path, files, inline, in_file):
    folder, merchant = files
    key_file = tmp_path / "apiv3_key.txt"
    key_file.write_text(API_V3_KEY)
    body = merchant_toml(
        folder, merchant, api_v3_key=API_V3_KEY if inline else None, api_v3_key_file=key_file if in_file else None
    )
    with pytest.raises(
        SettingsError, match=r"merchants\.0 .*give exactly one of api_v3_key and api_v3_key_file"
    ) as info:
        load_settings(toml(tmp_path, body))
    assert API_V3_KEY not in str(info.value)


def test_env_example_lists_every_setting():
    from pathlib import Path

    example = (Path(__file__).parents[1] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"WXRECON_{name.upper()}" in example, name


def test_the_alert_urls_of_env_example_parse_and_a_bad_one_fails_at_start():
    import json
    import re
    from pathlib import Path

    from flows.settings import AlertConfig

    example = (Path(__file__).parents[1] / ".env.example").read_text()
    shown = re.findall(r"^#\s+[^:]+:\s+([a-z]+://\S+)", example, re.M)
    assert {u.split("://")[0] for u in shown} >= {"wecombot", "dingtalk", "feishu", "mailtos", "jsons"}
    [value] = re.findall(r"^WXRECON_ALERTS='(.*)'$", example, re.M)
    configured = AlertConfig(**json.loads(value))
    assert len(configured.urls) == 2
    assert len(AlertConfig(urls=shown).urls) == len(shown)
    with pytest.raises(ValueError, match=r"url #2 \(scheme 'wxwork'\) is not a URL apprise can send to"):
        AlertConfig(urls=["json://127.0.0.1/x", "wxwork://fake-webhook-key/"])


def test_a_bad_alert_url_is_a_settings_error_naming_the_setting(tmp_path, files):
    folder, merchant = files
    path = toml(tmp_path, '[alerts]\nurls = ["wxwork://fake-key/"]\n' + merchant_toml(folder, merchant))
    with pytest.raises(SettingsError, match=r"alerts\.urls") as caught:
        load_settings(path)
    assert "fake-key" not in str(caught.value)


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
