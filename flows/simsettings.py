"""A ready ``wxrecon.toml`` for the simulator's merchants: what ``wxrecon sim`` writes next to their credentials.

It is written from what the simulator says about itself (its ``simulator.json``: its URL, each merchant's
ids and credential folder, where days of business are recorded) and is used as is by ``wxrecon run``,
``receiver``, ``deploy`` and ``report`` (``--config``): the simulator as ``api_base_url``; keys by file
(``private_key_file``, ``api_v3_key_file``, ``wechatpay_public_key_file``); the combine initiator
``receives_notifications``; the merchant's own records read from every day of business recorded under the
simulator's state directory (``business/*/orders.parquet``, ``business/*/refunds.parquet``); the warehouse,
archive and notification log under ``data_dir``. This module reads files only; it never imports the simulator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["sim_settings_toml", "write_sim_settings"]


def _quoted(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def sim_settings_toml(info: Mapping[str, Any], *, data_dir: Path) -> str:
    """The settings file's text for a simulator described by ``info`` (its ``simulator.json``)."""
    root = Path(info["business_root"])
    lines = [
        f"# wxrecon settings for the WeChat Pay simulator at {info['base_url']}: test credentials, not real ones.",
        "# Written by `wxrecon sim`; use it with --config (or WXRECON_CONFIG).",
        f"api_base_url = {_quoted(info['base_url'])}",
        f"data_dir = {_quoted(data_dir)}",
        "# the shop's records of every day of business created on the simulator (python -m wxpay.sim business)",
        f'local_orders = {{ kind = "parquet", paths = [{_quoted(root / "*" / "orders.parquet")}] }}',
        f'local_refunds = {{ kind = "parquet", paths = [{_quoted(root / "*" / "refunds.parquet")}] }}',
    ]
    for merchant in info["merchants"]:
        folder = Path(merchant["credentials"])
        lines += [
            "",
            "[[merchants]]",
            f"mchid = {_quoted(merchant['mchid'])}",
            f"appid = {_quoted(merchant['appid'])}",
            f"merchant_serial_no = {_quoted(merchant['merchant_serial_no'])}",
            f"private_key_file = {_quoted(folder / 'apiclient_key.pem')}",
            f"api_v3_key_file = {_quoted(folder / 'apiv3_key.txt')}",
            f"wechatpay_public_key_id = {_quoted(merchant['wechatpay_public_key_id'])}",
            f"wechatpay_public_key_file = {_quoted(folder / 'wechatpay_public_key.pem')}",
            f"receives_notifications = {'true' if merchant['combine_initiator'] else 'false'}",
            f'contracted_fee_rate = "{merchant["fee_rate_bp"] / 100:.2f}%"',
        ]
    return "\n".join(lines) + "\n"


def write_sim_settings(info: Mapping[str, Any], path: Path, *, data_dir: Path) -> Path:
    """Write :func:`sim_settings_toml` to ``path`` (replacing it whole) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(sim_settings_toml(info, data_dir=data_dir.resolve()), encoding="utf-8")
    partial.replace(path)
    return path
