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

from flows.demo import AlertInbox
from tests.prefectserver import REPO, PrefectServer
from wxpay.models import BEIJING

pytestmark = pytest.mark.slow


@dataclass
class SimulatedDay:
    url: str
    config: Path  # the wxrecon.toml `wxrecon sim` wrote for its merchants
    day: date

    def env(self, server: PrefectServer, folder: Path, inbox: AlertInbox) -> dict[str, str]:
        """A process reconciling into ``folder``, alerting ``inbox``, with the simulator's settings otherwise."""
        alerts = json.dumps({"urls": [inbox.apprise_url], "retry_seconds": 1})
        return server.env(WXRECON_CONFIG=str(self.config), WXRECON_DATA_DIR=str(folder / "data"), WXRECON_ALERTS=alerts)


def real_beijing_now() -> datetime:
    return datetime.fromtimestamp(escape_hatch.time.time(), BEIJING).replace(microsecond=0)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Iterator[SimulatedDay]:
    """``wxrecon sim`` as its own process (real clock), with yesterday's business made through its API."""
    state = tmp_path_factory.mktemp("sim")
    day = real_beijing_now().date() - timedelta(days=1)
    wxrecon = str(Path(sys.executable).with_name("wxrecon"))
    command = [wxrecon, "sim", "--port", "0", "--state-dir", str(state), "--business-day", str(day), "--orders", "5"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        info = wait_for(
            "the simulator", lambda: (state / "simulator.json").is_file() and (state / "wxrecon.toml").is_file()
        )
        assert info
        url = json.loads((state / "simulator.json").read_text())["base_url"]
        yield SimulatedDay(url, state / "wxrecon.toml", day)
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
    assert rows[0] > 0
    assert runs == (1,)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_served_deployment_runs_a_day(prefect_server, simulated, tmp_path, inbox):
    wxrecon = str(Path(sys.executable).with_name("wxrecon"))
    log = (tmp_path / "serve.log").open("w")
    env = simulated.env(prefect_server, tmp_path, inbox)
    serving = subprocess.Popen(
        [wxrecon, "deploy", "--config", str(simulated.config)], cwd=tmp_path, env=env, stdout=log, stderr=log
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
        env=simulated.env(prefect_server, tmp_path, inbox),
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


def test_a_run_from_the_command_line_keeps_its_logs_on_the_server(prefect_server, simulated, tmp_path, inbox):
    wxrecon = str(Path(sys.executable).with_name("wxrecon"))
    env = simulated.env(prefect_server, tmp_path, inbox)
    ran = subprocess.run(
        [wxrecon, "run", "--date", str(simulated.day)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert ran.returncode in (0, 1), ran.stdout + ran.stderr  # 1: the day has exceptions (no receiver ran)
    assert "rows loaded" not in ran.stdout + ran.stderr  # the console shows warnings only...
    runs = prefect_server.api(
        "POST", "/flow_runs/filter", json={"flows": {"name": {"any_": ["reconcile-day"]}}, "sort": "START_TIME_DESC"}
    )
    ours = [r for r in runs if r["parameters"].get("bill_date") == str(simulated.day) and not r["deployment_id"]]
    assert ours
    logs = prefect_server.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [ours[0]["id"]]}}})
    assert "rows loaded" in "\n".join(entry["message"] for entry in logs)  # ...the server has the INFO logs
