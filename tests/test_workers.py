"""A night spread over two Prefect workers, all loading into one DuckLake, finds what one process finds.

The real parts: the simulator as its own process with a day of business for 20 merchants (combine orders
spanning them), a Prefect server with the ``load-bills/bills-worker`` deployment of prefect.yaml on a
process work pool, two ``prefect worker start`` processes, PostgreSQL as the lake's catalog and an S3 server
(moto) for its data files. The nightly (``wxrecon run``) splits the day's merchants into units that run as
flow runs on the workers; the same day reconciled into a DuckDB file, in one process, is the reference.
Every process runs on the real clock, so the day is the real yesterday (Beijing). DuckLake environment only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from flows.warehouse import Lake, connect, open_warehouse
from tests.prefectserver import REPO, PrefectServer
from tests.test_deployments import real_beijing_now, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # servers, workers, flow runs: slow on 2 busy cores
MERCHANTS = 20
BATCH = 10  # two units of ten merchants: one for each worker
SUMMARY = (
    "select recon_date, mchid, item_kind, class, state, items, bill_fen, local_fen, notified_fen, exposure_fen"
    " from marts.mart_daily_summary where recon_date = ? order by all"
)
ROWS = (
    "select bill_mchid, count(*), sum(settlement_amount_fen), sum(refund_amount_fen) from raw.trade_bill_rows"
    " where bill_date = ? group by all order by all"
)


@dataclass
class Night:
    server: PrefectServer
    config: Path
    day: date
    lake: Lake
    folder: Path
    workers: list[Path] = field(default_factory=list)  # their logs
    processes: list[subprocess.Popen] = field(default_factory=list)  # the workers, in the order started

    def start_worker(self) -> subprocess.Popen:
        """A ``prefect worker start`` on the pool, one flow run at a time, logging to a file of its own."""
        log_path = self.folder / f"worker{len(self.workers)}.log"
        with log_path.open("w") as log:
            worker = subprocess.Popen(
                [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "wxrecon-local",
                 "--limit", "1"],
                cwd=REPO, env=self.lake_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.workers.append(log_path)
        self.processes.append(worker)
        return worker

    @property
    def simulator(self) -> str:
        return json.loads((self.config.parent / "simulator.json").read_text())["base_url"]

    def lake_env(self, **extra: str) -> dict[str, str]:
        lake = self.lake
        settings = {
            "catalog": lake.catalog,
            "data_path": lake.data_path,
            "s3_endpoint": lake.s3_endpoint,
            "s3_key_id": lake.s3_key_id,
            "s3_secret": lake.s3_secret,
            "s3_use_ssl": False,
        }
        return self.server.env(
            WXRECON_CONFIG=str(self.config),
            WXRECON_DATA_DIR=str(self.folder / "lake-data"),
            WXRECON_WAREHOUSE_BACKEND="ducklake",
            WXRECON_DUCKLAKE=json.dumps(settings),
            WXRECON_BILLS_DEPLOYMENT="load-bills/bills-worker",
            WXRECON_BILLS_BATCH_SIZE=str(BATCH),
            WXRECON_BILLS_PER_TRANSACTION="3",  # a unit commits every three merchants' bills
            PREFECT_WORKER_QUERY_SECONDS="1",
            **extra,
        )


def wxrecon(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("wxrecon")), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def rows(target, sql: str, day) -> list[tuple]:
    con = connect(target, read_only=True)
    try:
        return con.execute(sql, [day]).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def night(prefect_server, tmp_path_factory, postgres_server, s3_server) -> Iterator[Night]:
    """The simulator with yesterday's business for 20 merchants, the load-bills deployment, two workers."""
    from tests.lakeservers import BUCKET, KEY_ID, SECRET

    folder = tmp_path_factory.mktemp("workers")
    state = folder / "sim"
    day = real_beijing_now().date() - timedelta(days=1)
    sim = subprocess.Popen(
        [str(Path(sys.executable).with_name("wxrecon")), "sim", "--port", "0", "--state-dir", str(state),
         "--merchants", str(MERCHANTS), "--business-day", str(day), "--orders", "80"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    result = None
    try:
        wait_for("the simulator", lambda: (state / "wxrecon.toml").is_file() and (state / "simulator.json").is_file())
        db = postgres_server.create_database("workers_lake")
        lake = Lake(
            catalog=f"postgres:dbname={db.dbname} host={db.host} port={db.port} user={db.user}",
            data_path=f"s3://{BUCKET}/workers/",
            s3_endpoint=s3_server.endpoint,
            s3_key_id=KEY_ID,
            s3_secret=SECRET,
            s3_use_ssl=False,
        )
        result = Night(prefect_server, state / "wxrecon.toml", day, lake, folder)
        open_warehouse(lake).close()  # the lake made (and migrated) before the night, as its first writer would
        created = prefect_server.prefect("work-pool", "create", "wxrecon-local", "--type", "process")
        assert created.returncode == 0, created.stdout + created.stderr
        deployed = prefect_server.prefect("--no-prompt", "deploy", "-n", "bills-worker")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        result.start_worker()
        result.start_worker()
        yield result
    finally:
        workers = result.processes if result is not None else []
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            stop(worker)
        stop(sim)


def loaded_merchants(night: Night) -> dict[str, int]:
    """The merchants with bill rows of the night's day in the lake, and how many rows each."""
    return {mchid: count for mchid, count, *_ in rows(night.lake, ROWS, night.day)}


def unit_runs(night: Night) -> list[dict]:
    """The flow runs of the load-bills deployment for the night's day."""
    runs = night.server.api("POST", "/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 50})
    return [r for r in runs if r["parameters"].get("bill_date") == str(night.day) and "mchids" in r["parameters"]]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_killed_mid_merchant_leaves_that_merchant_absent_and_a_rerun_completes_it(night):
    """A merchant's bill download hangs halfway (the simulator's ``stall``) and the worker loading it is killed
    with kill -9, its flow run with it: that merchant's day is absent (nothing half-written), the merchants
    loaded before it (a unit commits every ``bills_per_transaction`` bills, three here) and the other unit's are
    committed, the nightly gives the lost unit up (its unloaded
    merchants failed, exit 10) instead of waiting forever, and a re-run on a replacement worker completes the
    day without loading anything twice."""
    from flows.settings import load_settings

    mchids = load_settings(night.config).mchids
    second_unit = mchids[BATCH : 2 * BATCH]
    victim = second_unit[3]  # three of its unit's merchants are loaded before it
    faults = f"{night.simulator}/sim/faults"
    stall = {"channel": "download", "kind": "stall", "mchid": victim, "times": 3}  # every try of its download
    assert httpx.post(faults, json=stall, timeout=10).json()["targeted"] == {f"download/{victim}": ["stall"] * 3}
    given_up_after = {"WXRECON_BILL_READY_DEADLINE_HOURS": "0.001", "WXRECON_BILLS_UNIT_TIMEOUT": "20"}
    first = subprocess.Popen(
        [str(Path(sys.executable).with_name("wxrecon")), "run", "--date", str(night.day)],
        cwd=REPO, env=night.lake_env(**given_up_after), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for("the download hanging", lambda: httpx.get(faults, timeout=10).json()["stalled"] == 1, timeout=180)
        hanging = next(r for r in unit_runs(night) if victim in r["parameters"]["mchids"])
        assert hanging["state_type"] == "RUNNING"
        flow_run_process = int(str(hanging["infrastructure_pid"]).rsplit(":", 1)[-1])  # [host:]pid
        worker = next(w for w in night.processes if w.pid in (parent_of(flow_run_process), flow_run_process))
        os.kill(flow_run_process, signal.SIGKILL)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        httpx.post(faults, json={"clear": True}, timeout=10)  # the hanging answer goes to a dead socket
        output = first.communicate(timeout=240)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 10, output  # failed: merchants with nothing recorded
    committed = loaded_merchants(night)
    assert committed.keys() == set(mchids[:BATCH]) | set(second_unit[:3]), output
    text = " ".join(output.split())
    for lost in second_unit[3:]:  # the victim, halfway through its download, and those after it
        assert f"bill of {lost} for {night.day}: nothing was recorded for it" in text, output
    crashed = night.server.api("GET", f"/flow_runs/{hanging['id']}")
    assert crashed["state"]["type"] == "CRASHED"
    assert "the nightly gave up on it" in crashed["state"]["message"]

    night.start_worker()  # a replacement for the dead worker
    again = wxrecon("run", "--date", str(night.day), env=night.lake_env())
    assert again.returncode in (0, 1), again.stdout + again.stderr
    complete = loaded_merchants(night)
    assert complete.keys() == set(mchids)
    assert {m: complete[m] for m in committed} == committed
    loads = rows(
        night.lake,
        "select mchid, count(*) from raw.bill_fetch_log where bill_date = ? and outcome = 'loaded' group by all",
        night.day,
    )
    assert dict(loads) == dict.fromkeys(mchids, 1)  # the committed ones were kept, not loaded again


def test_a_night_on_two_workers_finds_what_one_process_finds(night):
    file_env = night.server.env(WXRECON_CONFIG=str(night.config), WXRECON_DATA_DIR=str(night.folder / "file-data"))
    on_file = wxrecon("run", "--date", str(night.day), env=file_env)
    assert on_file.returncode in (0, 1), on_file.stdout + on_file.stderr
    on_lake = wxrecon("run", "--date", str(night.day), env=night.lake_env())
    assert on_lake.returncode == on_file.returncode, on_lake.stdout + on_lake.stderr

    file_target = night.folder / "file-data" / "warehouse.duckdb"
    expected_rows = rows(file_target, ROWS, night.day)
    assert len(expected_rows) == MERCHANTS
    assert rows(night.lake, ROWS, night.day) == expected_rows
    summary = rows(file_target, SUMMARY, night.day)
    assert {r[3] for r in summary} - {"matched"}  # the day has exceptions to agree on
    assert rows(night.lake, SUMMARY, night.day) == summary
    # what the night's alert and report read: a snapshot, readable later as it was (report --as-of)
    snapshot = int(re.search(r"DuckLake snapshot (\d+)", on_lake.stdout)[1])
    as_seen = wxrecon("report", "--date", str(night.day), "--as-of", str(snapshot), env=night.lake_env())
    assert as_seen.returncode == on_lake.returncode, as_seen.stdout + as_seen.stderr
    assert f"Reconciliation {night.day}" in as_seen.stdout
    before_recon = wxrecon("report", "--date", str(night.day), "--as-of", "1", env=night.lake_env())
    assert before_recon.returncode == 2, before_recon.stdout + before_recon.stderr
    assert "has not been reconciled (no items in snapshot 1 of the DuckLake)" in " ".join(before_recon.stdout.split())
    # the units ran on several workers, as flow runs of the load-bills deployment
    logs = [log.read_text() for log in night.workers]
    assert sum("rows loaded" in log for log in logs) >= 2, "\n".join(log[-2000:] for log in logs)


def test_two_workers_loading_the_same_merchant_day_never_double_it(night):
    if not rows(night.lake, ROWS, night.day):
        wxrecon("run", "--date", str(night.day), env=night.lake_env())
    before = rows(night.lake, ROWS, night.day)
    assert before
    mchids = [before[0][0], before[1][0]]
    parameters = json.dumps({"bill_date": str(night.day), "mchids": mchids, "run_id": "twice", "refetch": True})
    prefect = str(Path(sys.executable).with_name("prefect"))
    runs = [
        subprocess.Popen(
            [
                prefect,
                "deployment",
                "run",
                "load-bills/bills-worker",
                "--params",
                parameters,
                "--watch",
                "--watch-timeout",
                "240",
            ],
            cwd=REPO,
            env=night.server.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    assert rows(night.lake, ROWS, night.day) == before
    fetches = rows(
        night.lake,
        "select mchid, count(*) from raw.bill_fetch_log where bill_date = ? and run_id = 'twice'"
        " and outcome = 'loaded' group by all order by all",
        night.day,
    )
    assert fetches == [(m, 2) for m in sorted(mchids)]  # both loaded each bill: the second replaced the first
