"""README "Running it for real", run as it stands: from a clone to a completed deployed run of yesterday.

The block is taken from README.md and run by bash in a copy of the repository (the files git tracks), on
the real clock, with the ports it names (8421, 8080, 4200). Only its first line, which creates the
virtual environment and installs the project, is replaced by putting this environment's ``bin`` first on
PATH (``./scripts/test`` has just done that install). The background processes it starts are stopped at
the end. What a newcomer must see: the deployment run ends Completed, and the report prints the day.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from time_machine import escape_hatch

from wxpay.models import BEIJING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
PORTS = (8421, 8080, 4200)


def readme_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Running it for real") :]
    block = section[section.index("```sh\n") + len("```sh\n") :]
    return block[: block.index("```")].splitlines()


def stop_group(pgid: int) -> None:
    """SIGTERM to every process the block started, SIGKILL to what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_readme_takes_a_newcomer_to_a_completed_deployed_run(tmp_path):
    lines = readme_block()
    assert lines[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e .")
    busy = [port for port in PORTS if not free(port)]
    assert not busy, f"ports {busy} are taken: the README's commands need them free"
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    script = "\n".join(
        [
            "set -uo pipefail",
            f'export PATH="{Path(sys.executable).parent}:$PATH"  # instead of: {lines[0]}',
            *lines[1:],
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WXRECON_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    started = time.monotonic()
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # the services it starts in the background are stopped with it, below
    )  # fmt: skip
    try:
        output, _ = shell.communicate(timeout=480)
    finally:
        took = time.monotonic() - started
        stop_group(shell.pid)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in clone.glob("var-*.log"))
    assert "Flow run finished successfully in 'Completed'" in output, output[-4000:] + logs
    day = (datetime.fromtimestamp(escape_hatch.time.time(), BEIJING) - timedelta(days=1)).date()
    assert f"Reconciliation {day}" in output, output[-4000:]
    assert re.search(r"Created flow run '[a-z-]+'", output)
    warehouse = clone / "var" / "sim" / "recon" / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute("select count(*) from raw.trade_bill_rows where bill_date = ?", [day]).fetchone()[0]
        verified = con.execute("select count(*) from raw.notification_checks where verified").fetchone()[0]
    finally:
        con.close()
    assert rows > 0
    assert verified > 0  # the receiver got the day's callbacks and the run re-verified them
    print(f"README 'Running it for real' took {took:.0f} s")
