"""The nightly as users run it: deployments on a real Prefect server, run by their own processes.

A real ``prefect server`` (tests/prefectserver.py), the simulator in a process of its own with a day of
business made through its API, and the two ways to deploy (flows/deploy.py): ``wxrecon deploy`` serving
``reconcile-day/nightly-serve``, and ``prefect deploy`` of prefect.yaml's ``reconcile-day/nightly-worker``
run by ``prefect worker start`` on a process work pool. For each, a run of the simulated day is triggered
with ``prefect deployment run`` and must end Completed with its artifact, its logs on the server, the alert
at a local listener and the day's rows in the warehouse. Every process here runs on the real clock, so the
day is the real yesterday (Beijing).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest
from time_machine import escape_hatch

import wxpay
from flows.demo import AlertInbox
from tests.prefectserver import REPO, PrefectServer
from wxpay.models import BEIJING

pytestmark = pytest.mark.slow
ORDERS = 5  # combine orders of two sub orders each, all paid on the day


@dataclass
class SimulatedDay:
    url: str
    credentials: Path
    day: date

    def settings(self, folder: Path, inbox: AlertInbox) -> Path:
        """A wxrecon.toml for the simulator's merchants, its data under ``folder``."""
        lines = [
            f'api_base_url = "{self.url}"',
            f'data_dir = "{folder / "data"}"',
            "bill_retry_seconds = 1",
            "bill_ready_deadline_hours = 0.01",
            "",
            "[alerts]",
            f'urls = ["{inbox.apprise_url}"]',
            "retry_seconds = 1",
            "",
        ]
        for path in sorted(self.credentials.iterdir()):
            info = json.loads((path / "merchant.json").read_text())
            lines += [
                "[[merchants]]",
                f'mchid = "{info["mchid"]}"',
                f'appid = "{info["appid"]}"',
                f'merchant_serial_no = "{info["merchant_serial_no"]}"',
                f'private_key_file = "{path / "apiclient_key.pem"}"',
                f'api_v3_key = "{(path / "apiv3_key.txt").read_text().strip()}"',
                f'wechatpay_public_key_id = "{info["wechatpay_public_key_id"]}"',
                f'wechatpay_public_key_file = "{path / "wechatpay_public_key.pem"}"',
                "",
            ]
        config = folder / "wxrecon.toml"
        config.write_text("\n".join(lines))
        return config


def real_beijing_now() -> datetime:
    return datetime.fromtimestamp(escape_hatch.time.time(), BEIJING).replace(microsecond=0)


def make_business(url: str, credentials: Path, day: date) -> None:
    """Paid combine orders on ``day``, created through the signed API as a merchant does; then the business
    clock moves past 10:00 the next day, when WeChat Pay has published the day's bills."""
    merchants = httpx.get(url + "/sim/merchants").json()
    initiator = merchants[0]
    folder = credentials / initiator["mchid"]
    real_clock = escape_hatch.time.time  # the simulator is another process, on the real clock
    verifier = wxpay.Verifier.from_public_key(
        initiator["wechatpay_public_key_id"], (folder / "wechatpay_public_key.pem").read_bytes(), clock=real_clock
    )
    with wxpay.Client(
        mchid=initiator["mchid"],
        serial_no=initiator["merchant_serial_no"],
        private_key=(folder / "apiclient_key.pem").read_bytes(),
        verifier=verifier,
        base_url=url,
        clock=real_clock,
    ) as client:
        for n in range(1, ORDERS + 1):
            number = f"DP{n:04d}"
            httpx.post(url + "/sim/clock", json={"set": f"{day}T{9 + n:02d}:00:00+08:00"}).raise_for_status()
            client.combine.create_native(
                {
                    "combine_appid": initiator["appid"],
                    "combine_mchid": initiator["mchid"],
                    "combine_out_trade_no": number,
                    "notify_url": "https://merchant.example.com/notify",
                    "sub_orders": [
                        {
                            "mchid": m["mchid"],
                            "attach": f"cmb={number}",
                            "amount": {"total_amount": 1000 * n + i},
                            "out_trade_no": f"{number}S{i}",
                            "description": "课程",
                        }
                        for i, m in enumerate(merchants[1:], start=1)
                    ],
                }
            )
            pay = {"combine_mchid": initiator["mchid"], "combine_out_trade_no": number}
            httpx.post(url + "/sim/pay", json=pay).raise_for_status()
    published = f"{day + timedelta(days=1)}T10:30:00+08:00"
    httpx.post(url + "/sim/clock", json={"set": published}).raise_for_status()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Iterator[SimulatedDay]:
    """The simulator as its own process (real clock), with yesterday's business in it."""
    state = tmp_path_factory.mktemp("sim")
    day = real_beijing_now().date() - timedelta(days=1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wxpay.sim",
            "serve",
            "--port",
            "0",
            "--state-dir",
            str(state),
            "--start",
            f"{day}T08:00:00+08:00",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads("".join(iter(proc.stdout.readline, "}\n")) + "}")
        make_business(info["base_url"], Path(info["credentials"]), day)
        yield SimulatedDay(info["base_url"], Path(info["credentials"]), day)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def inbox() -> Iterator[AlertInbox]:
    box = AlertInbox()
    yield box
    box.close()


def wait_for(what: str, probe, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def deployment(server: PrefectServer, name: str) -> dict | None:
    try:
        return server.api("GET", f"/deployments/name/reconcile-day/{name}")
    except httpx.HTTPStatusError:
        return None


def run_the_day(server: PrefectServer, name: str, day: date) -> dict:
    """``prefect deployment run`` of the day, watched to its end; the flow run, as the server has it."""
    ran = server.prefect(
        "deployment", "run", f"reconcile-day/{name}", "-p", f"bill_date={day}", "--watch", "--watch-timeout", "240",
        timeout=300,
    )  # fmt: skip
    created = re.search(r"UUID: ([0-9a-f-]{36})", ran.stdout)
    assert created, ran.stdout + ran.stderr
    return server.api("GET", f"/flow_runs/{created[1]}")


def assert_the_day_was_reconciled(server: PrefectServer, run: dict, simulated: SimulatedDay, folder, inbox) -> None:
    state = run["state"]
    assert (state["type"], state["name"]) == ("COMPLETED", "Completed"), state
    wanted = {"artifacts": {"key": {"any_": [f"recon-{simulated.day}"]}, "flow_run_id": {"any_": [run["id"]]}}}
    artifacts = server.api("POST", "/artifacts/filter", json=wanted)
    assert len(artifacts) == 1
    assert "| merchant | class | items | at stake |" in artifacts[0]["data"]
    logs = server.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    text = "\n".join(entry["message"] for entry in logs)
    assert "rows loaded" in text  # every step logs its counts to the run
    assert "alert (warning) sent to #1 json" in text
    assert len(inbox.received) == 1
    assert f"WeChat Pay reconciliation {simulated.day}" in inbox.received[0]["title"]
    con = duckdb.connect(str(folder / "data" / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.execute("select count(*) from raw.trade_bill_rows where bill_date = ?", [simulated.day]).fetchone()
        runs = con.execute("select count(*) from recon.runs where as_of_date = ?", [simulated.day]).fetchone()
    finally:
        con.close()
    assert rows == (2 * ORDERS,)  # each sub order once, in its merchant's bill
    assert runs == (1,)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_served_deployment_runs_a_day(prefect_server, simulated, tmp_path, inbox):
    config = simulated.settings(tmp_path, inbox)
    wxrecon = str(Path(sys.executable).with_name("wxrecon"))
    log = (tmp_path / "serve.log").open("w")
    serving = subprocess.Popen(
        [wxrecon, "deploy", "--config", str(config)], cwd=tmp_path, env=prefect_server.env(), stdout=log, stderr=log
    )
    try:
        found = wait_for("the served deployment", lambda: deployment(prefect_server, "nightly-serve"))
        assert found["schedules"][0]["schedule"]["cron"] == "30 22 * * *"
        assert found["schedules"][0]["schedule"]["timezone"] == "Asia/Shanghai"
        run = run_the_day(prefect_server, "nightly-serve", simulated.day)
    finally:
        stop(serving)
        log.close()
    assert_the_day_was_reconciled(prefect_server, run, simulated, tmp_path, inbox)


def test_the_worker_deployment_runs_a_day(prefect_server, simulated, tmp_path, inbox):
    config = simulated.settings(tmp_path, inbox)
    created = prefect_server.prefect("work-pool", "create", "wxrecon-local", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_server.prefect("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    found = deployment(prefect_server, "nightly-worker")
    assert found["work_pool_name"] == "wxrecon-local"
    assert found["path"] is None or not Path(found["path"]).is_absolute() or found["pull_steps"]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "wxrecon-local"],
        cwd=REPO,  # the worker runs flows where it was started: the project (prefect.yaml's working_dir)
        env=prefect_server.env(WXRECON_CONFIG=str(config)),
        stdout=log,
        stderr=log,
    )
    try:
        run = run_the_day(prefect_server, "nightly-worker", simulated.day)
    finally:
        stop(worker)
        log.close()
    assert_the_day_was_reconciled(prefect_server, run, simulated, tmp_path, inbox)
    names = {d["name"] for d in prefect_server.api("POST", "/deployments/filter", json={})}
    assert {"nightly-worker"} <= names  # under its own name: serving never overwrites it, nor it serving
