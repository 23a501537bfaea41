"""Benchmark: a night of N merchants through the real nightly — the DuckDB file vs DuckLake with 1 and 2 workers.

    .venv-lake/bin/python bench/nightly.py [--merchants 30,300,3000] [--configs file,lake1,lake2] [--seed 7] [--small]

What runs, per N (the data are cached under ``var/bench/nightly/``):

* a day of combine orders spanning the merchants (two sub orders each, for two different merchants), so that
  each merchant's trade bill has 30 to 3,000 rows (most 30, some 300, a few 3,000; with ``--small`` every one
  30: what a small merchant costs), rendered as WeChat Pay prints them; the shop's own records of the same
  orders (a few amounts edited, so there are exceptions);
* the simulator as its own process (``python -m wxpay.sim serve --shared-keys``), every bill published to it;
* the real nightly (``flows.nightly.run_day``) in a process of its own, for each configuration:
  ``file`` — the DuckDB file, units in the nightly's process (``.venv``: DuckDB 2.0, the default install);
  ``lake1`` / ``lake2`` — a DuckLake (catalog in a PostgreSQL started here, data files in a directory),
  units as flow runs of the ``load-bills`` deployment on 1 or 2 Prefect workers (``.venv-lake``: DuckDB 1.5.5)
  — a Prefect server is started here for them.

Printed per run: wall seconds of the night and of its fetch-and-load step, CPU ms per merchant on the
pipeline's side (the nightly's process and the workers with their flow runs; the simulator's and the Prefect
server's own CPU are measured and shown apart, never counted), peak RSS, bill rows loaded per second, how
many of the machine's cores were busy during the fetch-and-load step (every process: ``/proc/stat``); then
the speed-up of the second worker and the growth of the CPU per merchant from the smallest N to the largest.
Gate: every configuration of an N must find the same classes and totals (else the run is not a result).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CACHE = REPO / "var" / "bench" / "nightly"
DAY = date(2026, 11, 26)
BEIJING_OFFSET = "+08:00"
SIZES = ((0.80, 30), (0.15, 300), (0.05, 3000))  # share of merchants, bill rows


# --- data -------------------------------------------------------------------------------------------


def bill_rows_per_merchant(n: int, rng: random.Random, small: bool = False) -> list[int]:
    if small:  # every merchant a small one: what a small merchant costs, without the large bills' rows
        return [SIZES[0][1]] * n
    sizes = []
    for _ in range(n):
        draw = rng.random()
        for share, rows in SIZES:
            if draw < share:
                sizes.append(rows)
                break
            draw -= share
        else:
            sizes.append(SIZES[0][1])
    return sizes


def generate(n: int, seed: int, small: bool = False) -> Path:
    """Bills and the shop's records for ``n`` merchants (cached); returns the folder."""
    folder = CACHE / f"n{n}-s{seed}{'-small' if small else ''}"
    if (folder / "manifest.json").is_file():
        return folder
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.sources import LOCAL_ORDER_SCHEMA
    from wxpay.billvalues import fee_fen
    from wxpay.models import BEIJING
    from wxpay.sim.billrender import render_trade_bill

    rng = random.Random(seed)
    mchids = [str(1900000100 + i) for i in range(n)]
    rates = {m: ("0.60%", "0.38%", "0.54%")[i % 3] for i, m in enumerate(mchids)}
    wanted = dict(zip(mchids, bill_rows_per_merchant(n, rng, small), strict=True))
    rows: dict[str, list[dict]] = {m: [] for m in mchids}
    local: list[dict] = []
    open_rows = [m for m in mchids for _ in range(wanted[m])]
    rng.shuffle(open_rows)
    number = 0
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=BEIJING)
    while len(open_rows) >= 2:
        a = open_rows.pop()
        b = next((i for i in range(len(open_rows) - 1, -1, -1) if open_rows[i] != a), None)
        if b is None:
            break
        b = open_rows.pop(b)
        number += 1
        combine = f"NB{number:08d}"
        paid = start + timedelta(seconds=rng.randrange(60, 86340))
        for i, mchid in enumerate((a, b), start=1):
            amount = rng.randrange(100, 200000)
            out_trade_no = f"{combine}S{i}"
            transaction_id = f"42000{number:015d}{i:08d}"
            rows[mchid].append(
                {
                    "trade_time": paid,
                    "appid": "wxd678efh567hg6787",
                    "mchid": mchid,
                    "sub_mchid": "0",
                    "device_info": "",
                    "transaction_id": transaction_id,
                    "out_trade_no": out_trade_no,
                    "openid": f"oBench{number:010d}",
                    "trade_type": "NATIVE",
                    "trade_state": "SUCCESS",
                    "bank_type": "OTHERS",
                    "currency": "CNY",
                    "settlement_amount_fen": amount,
                    "order_amount_fen": amount,
                    "refund_id": "0",
                    "out_refund_no": "0",
                    "fee_millifen": fee_fen(amount, rates[mchid]) * 1000,
                    "fee_rate": Decimal(rates[mchid].rstrip("%")) / 100,
                    "description": "基准测试订单",
                    "attach": f"cmb={combine}",
                }
            )
            edited = rng.random() < 0.001  # the shop recorded a different amount: an exception
            local.append(
                {
                    "combine_out_trade_no": combine,
                    "out_trade_no": out_trade_no,
                    "mchid": mchid,
                    "amount_fen": amount + (100 if edited else 0),
                    "status": "SUCCESS",
                    "created_at": paid - timedelta(seconds=30),
                    "paid_at": paid,
                    "transaction_id": transaction_id,
                    "attach": f"cmb={combine}",
                    "description": "基准测试订单",
                }
            )
    bills = folder / "bills"
    bills.mkdir(parents=True, exist_ok=True)
    manifest = {"day": DAY.isoformat(), "merchants": {}, "rows": 0}
    for mchid in mchids:
        data = render_trade_bill(rows[mchid])
        path = bills / f"{mchid}.csv.gz"
        path.write_bytes(gzip.compress(data, 6))
        manifest["merchants"][mchid] = {
            "path": str(path),
            "sha1": hashlib.sha1(data).hexdigest(),  # noqa: S324 - WeChat Pay's bill hash
            "rows": len(rows[mchid]),
        }
        manifest["rows"] += len(rows[mchid])
    pq.write_table(pa.Table.from_pylist(local, schema=LOCAL_ORDER_SCHEMA), folder / "orders.parquet")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# --- processes --------------------------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """CPU seconds of a process and of its children it has waited for (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def host_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process) since boot: ``/proc/stat``."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def rss_of(pid: int) -> int:
    """Peak resident memory (VmHWM) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Simulated:
    """The simulator in its own process with the bills of ``data`` published."""

    def __init__(self, data: Path, n: int, python: str, workdir: Path):
        import httpx

        self.state = workdir / "sim"
        log = (workdir / "sim.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *(python, "-m", "wxpay.sim", "serve", "--port", "0", "--merchants", str(n), "--shared-keys"),
                *("--state-dir", str(self.state), "--start", f"{DAY}T08:00:00{BEIJING_OFFSET}"),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        info = self.state / "simulator.json"
        deadline = time.monotonic() + 600
        while not info.is_file():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start: {(workdir / 'sim.log').read_text()[-2000:]}")
            time.sleep(0.2)
        self.info = json.loads(info.read_text())
        self.url = self.info["base_url"]
        manifest = json.loads((data / "manifest.json").read_text())
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for mchid, bill in manifest["merchants"].items():
                body = {"mchid": mchid, "bill_date": DAY.isoformat(), "path": bill["path"], "sha1": bill["sha1"]}
                http.post("/sim/bills/publish", json=body).raise_for_status()
            http.post("/sim/clock", json={"set": f"{DAY + timedelta(days=1)}T10:30:00{BEIJING_OFFSET}"})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def settings_toml(sim: Simulated, data: Path, folder: Path, extra: str = "") -> Path:
    lines = [
        f'api_base_url = "{sim.url}"',
        f'data_dir = "{folder}"',
        f'local_orders = {{ kind = "parquet", paths = ["{data / "orders.parquet"}"] }}',
        "bill_retry_seconds = 1",
        "bill_ready_deadline_hours = 0.01",
        extra,
    ]
    for merchant in sim.info["merchants"]:
        credentials = Path(merchant["credentials"])
        lines += [
            "[[merchants]]",
            f'mchid = "{merchant["mchid"]}"',
            f'appid = "{merchant["appid"]}"',
            f'merchant_serial_no = "{merchant["merchant_serial_no"]}"',
            f'private_key_file = "{credentials / "apiclient_key.pem"}"',
            f'api_v3_key_file = "{credentials / "apiv3_key.txt"}"',
            f'wechatpay_public_key_id = "{merchant["wechatpay_public_key_id"]}"',
            f'wechatpay_public_key_file = "{credentials / "wechatpay_public_key.pem"}"',
        ]
    path = folder / "wxrecon.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- one night (run in a process of its own) -----------------------------------------------------------


def night(config: Path, out: Path) -> None:
    os.environ["WXRECON_CONFIG"] = str(config)
    import flows.nightly as nightly

    marks: dict[str, tuple[float, float]] = {}

    def hook(event: str, done: int, total: int) -> None:
        if event.startswith("step: "):
            marks.setdefault(event.removeprefix("step: "), (time.perf_counter(), time.process_time(), host_busy()))

    nightly.progress_hook = hook
    profile = os.environ.get("BENCH_PROFILE")  # a file for cProfile's stats of the night
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = (time.perf_counter(), time.process_time(), host_busy())
    outcome = nightly.run_day(DAY)
    ended = (time.perf_counter(), time.process_time(), host_busy())
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    steps = [*marks.items(), ("end", ended)]
    fetch = next((i for i, (name, _) in enumerate(steps) if name.startswith("fetch")), None)
    summary = {
        "wall": ended[0] - started[0],
        "cpu": ended[1] - started[1],
        "fetch_wall": steps[fetch + 1][1][0] - steps[fetch][1][0] if fetch is not None else None,
        "fetch_cpu": steps[fetch + 1][1][1] - steps[fetch][1][1] if fetch is not None else None,
        "fetch_host": steps[fetch + 1][1][2] - steps[fetch][1][2] if fetch is not None else None,
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "classes": outcome.classes,
        "loaded": len(outcome.loaded),
        "problems": [str(p) for p in outcome.problems][:10],
        "exposure_fen": outcome.exposure_fen,
    }
    out.write_text(json.dumps(summary))


# --- the configurations ----------------------------------------------------------------------------------


@contextlib.contextmanager
def lake_services(workdir: Path, python: str):
    """A PostgreSQL for the lake catalogs and a Prefect server with the load-bills deployment on a pool."""
    sys.path.insert(0, str(REPO))
    from tests.dbservers import run_postgres
    from tests.prefectserver import run_prefect_server

    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(run_postgres())
        server_gen = run_prefect_server()
        server = next(server_gen)
        stack.callback(lambda: next(server_gen, None))
        env = server.env()
        prefect = str(Path(python).with_name("prefect"))
        subprocess.run([prefect, "work-pool", "create", "wxrecon-local", "--type", "process"], cwd=REPO, env=env,
                       capture_output=True, check=False)  # fmt: skip
        deployed = subprocess.run([prefect, "--no-prompt", "deploy", "-n", "bills-worker"], cwd=REPO, env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
        if deployed.returncode:
            raise RuntimeError(deployed.stdout + deployed.stderr)
        yield postgres, server


def run_config(name: str, n: int, data: Path, workdir: Path, pythons: dict[str, str], services) -> dict:
    python = pythons["file" if name == "file" else "lake"]
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    sim = Simulated(data, n, python, folder)
    workers: list[subprocess.Popen] = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WXRECON_"))}
        env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_HOME=str(folder / "prefect"))
        extra = 'warehouse_backend = "duckdb"'
        postgres, server = services
        env.update(server.env())
        if name != "file":
            db = postgres.create_database(f"lake_{name}_{n}_{os.getpid()}")
            extra = "\n".join(
                [
                    'warehouse_backend = "ducklake"',
                    'bills_deployment = "load-bills/bills-worker"',
                    # one unit per worker: a flow run costs seconds to start
                    f"bills_batch_size = {max(1, -(-n // int(name[-1])))}",
                    "[ducklake]",
                    f'catalog = "postgres:dbname={db.dbname} host={db.host} port={db.port} user={db.user}"',
                    f'data_path = "{folder / "lake"}/"',
                ]
            )
        config = settings_toml(sim, data, folder, extra)
        env["WXRECON_CONFIG"] = str(config)
        if name != "file":
            prefect = str(Path(python).with_name("prefect"))
            env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # a worker looks for work every 2 s (default 10)
            for _ in range(int(name[-1])):
                log = (folder / f"worker{len(workers)}.log").open("wb")
                workers.append(
                    subprocess.Popen(
                        [prefect, "worker", "start", "--pool", "wxrecon-local", "--limit", "1"],
                        cwd=REPO,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            time.sleep(5)  # the workers register with the server before the night starts
        before = {"sim": cpu_of(sim.proc.pid), **{f"w{i}": cpu_of(w.pid) for i, w in enumerate(workers)}}
        out = folder / "night.json"
        started = time.perf_counter()
        spy = os.environ.get("BENCH_PYSPY")  # a file for py-spy's collapsed stacks of the night (every thread)
        pyspy = str(Path(sys.executable).with_name("py-spy"))
        wrap = [pyspy, "record", "-r", "50", "--format", "raw", "-o", spy, "--"] if spy else []
        child = subprocess.run([*wrap, python, __file__, "_night", str(config), str(out)], cwd=REPO, env=env,
                               capture_output=True, text=True, check=False)  # fmt: skip
        wall = time.perf_counter() - started
        if child.returncode:
            raise RuntimeError(f"{name} N={n} failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
        result = json.loads(out.read_text())
        worker_cpu = sum(cpu_of(w.pid) - before[f"w{i}"] for i, w in enumerate(workers))
        result.update(
            name=name,
            n=n,
            process_wall=wall,
            sim_cpu=cpu_of(sim.proc.pid) - before["sim"],
            worker_cpu=worker_cpu,
            worker_rss=max((rss_of(w.pid) for w in workers), default=0),
        )
        return result
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        sim.stop()


def report(results: list[dict], rows: dict[int, int]) -> None:
    print(f"{'N':>6} {'config':<7} {'wall s':>8} {'fetch s':>8} {'CPU ms per merchant':>20} {'(sim ms)':>9}"
          f" {'peak RSS MB':>12} {'rows/s':>9} {'exceptions':>10} {'cores busy':>10}")  # fmt: skip
    for r in results:
        pipeline = (r["cpu"] + r["worker_cpu"]) / r["n"] * 1000
        rss = max(r["maxrss"], r["worker_rss"]) / 1e6
        fetch = r["fetch_wall"] or r["wall"]
        exceptions = sum(v for k, v in r["classes"].items() if k != "matched")
        sim = r["sim_cpu"] / r["n"] * 1000
        busy = r["fetch_host"] / fetch if r.get("fetch_host") is not None else float("nan")
        print(
            f"{r['n']:>6} {r['name']:<7} {r['wall']:>8.1f} {fetch:>8.1f} {pipeline:>20.1f} {sim:>9.1f}"
            f" {rss:>12.0f} {rows[r['n']] / fetch:>9.0f} {exceptions:>10} {busy:>10.2f}"
        )
    print(f"(cores busy: of the machine's {os.cpu_count()}, on average over the fetch-and-load step, every process)")
    by = {(r["n"], r["name"]): r for r in results}
    for n in sorted(rows):
        if (n, "lake1") in by and (n, "lake2") in by:
            one, two = by[(n, "lake1")], by[(n, "lake2")]
            step, night = one["fetch_wall"] / two["fetch_wall"], one["wall"] / two["wall"]
            print(
                f"N={n}: second worker speed-up {step:.2f}x (fetch-and-load step), {night:.2f}x (whole night);"
                f" this machine has {os.cpu_count()} cores"
            )
    sizes = sorted(rows)
    if len(sizes) >= 2:
        for name in ("file", "lake1", "lake2"):
            small, large = by.get((sizes[-2], name)), by.get((sizes[-1], name))
            if small and large:
                cpu_small = (small["cpu"] + small["worker_cpu"]) / small["n"]
                cpu_large = (large["cpu"] + large["worker_cpu"]) / large["n"]
                print(f"{name}: CPU per merchant grows {cpu_large / cpu_small:.2f}x from N={sizes[-2]} to N={sizes[-1]}"
                      f" ({sizes[-1] // sizes[-2]}x the merchants; linear would be 1.00x)")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_night":
        night(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", default="30,300,3000")
    parser.add_argument("--configs", default="file,lake1,lake2")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--small", action="store_true", help=f"every bill {SIZES[0][1]} rows (a small merchant's cost)")
    parser.add_argument("--file-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--lake-python", default=str(REPO / ".venv-lake" / "bin" / "python"))
    args = parser.parse_args()
    sizes = [int(x) for x in args.merchants.split(",")]
    configs = args.configs.split(",")
    pythons = {"file": args.file_python, "lake": args.lake_python}
    workdir = CACHE / f"run-{os.getpid()}"
    results, rows = [], {}
    print(f"machine: {os.cpu_count()} cores; file backend: {args.file_python}; DuckLake: {args.lake_python}")
    with contextlib.ExitStack() as stack:
        services = stack.enter_context(lake_services(workdir, args.lake_python))
        for n in sizes:
            data = generate(n, args.seed, args.small)
            rows[n] = json.loads((data / "manifest.json").read_text())["rows"]
            found = {}
            for name in configs:
                result = run_config(name, n, data, workdir / f"n{n}", pythons, services)
                results.append(result)
                found[name] = (result["classes"], result["exposure_fen"], result["loaded"])
                loaded, problems = result["loaded"], result["problems"][:2]
                print(f"  N={n} {name}: {result['wall']:.1f} s, loaded {loaded}, problems {problems}", flush=True)
            if len({json.dumps(v, sort_keys=True) for v in found.values()}) != 1:
                print(f"GATE FAILED at N={n}: the configurations disagree: {found}")
    report(results, rows)


if __name__ == "__main__":
    main()
