"""Benchmark: one trade bill from the simulator into DuckDB (``flows.bills.ingest_bill``), against its floor.

    .venv/bin/python bench/ingest.py [--rows 1000000] [--runs 5] [--seed 20250310] [--only e2e,sha1,...]
    .venv/bin/python bench/ingest.py --rows 5000000            # 3 runs by default from 5M rows up
    .venv/bin/python bench/ingest.py --rows 1000000,5000000    # both sizes in one invocation: 5M ÷ 1M

A synthetic trade ALL bill of N rows (``wxpay.sim.billgen``, fixed seed, cached under
``var/bench/ingest/``) is served by the simulator running in a separate process
(``python -m wxpay.sim serve``) over loopback: the bill is published with ``POST /sim/bills/publish``
and the business clock set to the next day 10:30 with ``POST /sim/clock``. Then, round-robin,
``--runs`` times, each measurement in a fresh subprocess (peak RSS and CPU seconds from ``wait4``
are per measurement), with a warm page cache and a fresh DuckDB file per run:

* ``e2e``    ``ingest_bill``, what the nightly flow runs per merchant: apply → download (inflate +
             SHA-1 in the stream) → archive → parse → typed load → summary check → commit, into a
             fresh DuckDB file and archive directory;
* ``sha1``   floor, part 1: ISA-L inflate + SHA-1 of the cached ``.gz``, one streaming pass;
* ``parse``  floor, part 2: DuckDB typed ``read_csv`` of the ``.gz`` (amounts DECIMAL, times
             TIMESTAMP, 2 threads), ``min()`` of every column — parse only, nothing stored;
* ``pandas`` baseline: ``pandas.read_csv`` of the gz (all str), backticks stripped, fen without float
             (the point removed from a checked string, then int64), into a DuckDB file table;
* ``pycsv``  baseline: ``gzip`` + ``csv`` row loop with exact conversions into column lists, one
             Arrow table, one bulk insert into a DuckDB file table (no executemany);
* ``fetchload`` for information: download first, then load (``fetch_to_archive`` then
             ``load_archived`` on the download's proof, no overlap): what ``ingest_bill`` falls back to
             when a streamed attempt breaks off, and what the nightly ran before it loaded while
             downloading.

Once more, outside the timing: a bill with one ``3.315`` amount must fail ``ingest_bill`` with the
file, line and field named and nothing loaded.

Correctness gates (a run that fails one is not a result), checked after each measurement in a
process of its own (so their queries stay out of the measured peak RSS): e2e's table equals the
generator's fingerprint (row count, refund rows, every fen sum, distinct out_trade_no), its load
record names the bill's SHA-1, and the archived file inflates to the bill's SHA-1 and size; the
floor pass gives the same SHA-1 and size; parse-only counts every row; both baselines reproduce
the fingerprint. Printed: machine facts and versions, per measurement the median
(min–max) seconds, rows/s, MB/s of decompressed CSV, peak RSS, CPU seconds, DB file size and the CPU
seconds other processes used meanwhile (host noise); then the ratios e2e ÷ floor, e2e ÷ the
ISA-L+SHA-1 pass, pandas ÷ e2e, python-csv ÷ e2e, 5M ÷ 1M, each with the range of the per-round
ratios, and the targets of issue 3 flagged. Results are kept in ``var/bench/ingest/results-<N>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CACHE = REPO / "var" / "bench" / "ingest"
MCHID = "1900000100"  # the simulator's first merchant
BILL_DATE = date(2025, 3, 10)
BAD_DATE = BILL_DATE - timedelta(days=1)  # the negative bill is published for the day before
KINDS = ("e2e", "sha1", "parse", "pandas", "pycsv", "fetchload")
GATED = ("e2e", "fetchload", "pandas", "pycsv")  # their table is checked against the fingerprint afterwards
MB = 1_000_000
GB = 1_000_000_000
TARGETS = {"e2e_floor": 2.0, "pycsv_e2e": 10.0, "pandas_e2e": 2.0, "rss_5m": 1 * GB, "e2e_sha1_flag": 8.0}


# --- machine, noise -------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine() -> dict[str, Any]:
    import duckdb
    import isal
    import pandas
    import pyarrow

    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pyarrow": pyarrow.__version__,
        "pandas": pandas.__version__,
        "isal": isal.__version__,
        "loadavg": os.getloadavg(),
    }


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def _proc_ticks(pid: int | None) -> int:
    if not pid:
        return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (at most ``limit`` s) until the machine is idle over 0.3 s; return the last busy share seen."""
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = _busy_ticks()
        time.sleep(0.3)
        b1, t1 = _busy_ticks()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy <= threshold or time.monotonic() > deadline:
            return busy


class Meter:
    """Wall, CPU of this process (all threads) and of everything else on the machine, over a block."""

    def __init__(self, sim_pid: int | None = None):
        self.sim_pid = sim_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Meter:
        self._busy = _busy_ticks()[0]
        self._sim = _proc_ticks(self.sim_pid)
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.sim_cpu = (_proc_ticks(self.sim_pid) - self._sim) / self.tick
        busy = (_busy_ticks()[0] - self._busy) / self.tick
        self.other_cpu = max(busy - self.cpu - self.sim_cpu, 0.0)

    def facts(self) -> dict[str, float]:
        return {
            "seconds": self.seconds,
            "cpu": self.cpu,
            "sim_cpu": self.sim_cpu,
            "other_cpu": round(self.other_cpu, 2),
        }


# --- inputs ---------------------------------------------------------------------------------


def bill(rows: int, seed: int, *, bad: bool = False) -> tuple[Path, dict]:
    """The cached bill of ``rows`` rows (generated once) and its fingerprint."""
    from wxpay.sim.billgen import generate_trade_bill

    CACHE.mkdir(parents=True, exist_ok=True)
    day = BAD_DATE if bad else BILL_DATE
    name = f"trade_all-{rows}-s{seed}-{MCHID}-{day.isoformat()}" + ("-bad" if bad else "")
    path, meta = CACHE / f"{name}.csv.gz", CACHE / f"{name}.json"
    if meta.exists() and path.exists():
        fp = json.loads(meta.read_text())
        if fp.get("gz_bytes") == path.stat().st_size:
            return path, fp
    print(f"generating {path.name} ...", flush=True)
    started = time.perf_counter()
    made = generate_trade_bill(
        path,
        rows=rows,
        seed=seed,
        bill_date=day,
        mchid=MCHID,
        bad_amount_row=rows - 1 - rows // 10 if bad else None,  # deep in the file, not in the last chunk
    )
    fp = {**made.as_dict(), "gz_bytes": path.stat().st_size, "bill_date": day.isoformat(), "seed": seed}
    meta.write_text(json.dumps(fp, indent=2))
    print(f"  {time.perf_counter() - started:.1f} s, {fp['gz_bytes'] / MB:.1f} MB gz", flush=True)
    return path, fp


def warm(*paths: Path) -> None:
    for path in paths:
        with path.open("rb") as f:
            while f.read(8 << 20):
                pass


# --- the simulator in its own process -------------------------------------------------------


class SimProcess:
    """``python -m wxpay.sim serve`` on a free loopback port, credentials written to ``state``."""

    def __init__(self, state: Path):
        self.state = state

    def __enter__(self) -> SimProcess:
        import httpx

        self.state.mkdir(parents=True, exist_ok=True)
        info = self.state / "simulator.json"
        info.unlink(missing_ok=True)
        self.log = (self.state / "server.log").open("wb")
        start = datetime.combine(BILL_DATE, datetime.min.time()).isoformat() + "+08:00"
        command = [sys.executable, "-m", "wxpay.sim", "serve", "--port", "0", "--merchants", "1", "--start", start]
        self.proc = subprocess.Popen(
            [*command, "--state-dir", str(self.state)],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not info.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start; see {self.state / 'server.log'}")
            time.sleep(0.05)
        self.info = json.loads(info.read_text())
        self.base_url = self.info["base_url"]
        self.http = httpx.Client(base_url=self.base_url, timeout=30)
        return self

    def admin(self, path: str, body: dict) -> dict:
        response = self.http.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def publish(self, path: Path, fp: dict) -> None:
        self.admin(
            "/sim/bills/publish",
            {"mchid": MCHID, "bill_date": fp["bill_date"], "path": str(path), "sha1": fp["sha1"], "bill_type": "ALL"},
        )

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- workers: each runs in its own process --------------------------------------------------


def _client(sim: dict):
    import wxpay
    from wxpay.verifying import Verifier

    folder = Path(sim["credentials"]) / MCHID
    meta = json.loads((folder / "merchant.json").read_text())
    verifier = Verifier.from_public_key(
        meta["wechatpay_public_key_id"], (folder / "wechatpay_public_key.pem").read_bytes()
    )
    return wxpay.Client(
        base_url=sim["base_url"],
        mchid=meta["mchid"],
        serial_no=meta["merchant_serial_no"],
        private_key=(folder / "apiclient_key.pem").read_bytes(),
        api_v3_key=(folder / "apiv3_key.txt").read_text().strip(),
        verifier=verifier,
        timeout=60,
    )


FINGERPRINT_SQL = (
    "select count(*), count(*) filter (where trade_state = 'REFUND'), sum(settlement_amount_fen),"
    " sum(coupon_amount_fen), sum(refund_amount_fen), sum(recharge_coupon_refund_fen), sum(order_amount_fen),"
    " sum(requested_refund_fen), sum(fee_millifen), count(distinct out_trade_no) from raw.trade_bill_rows"
    " where bill_date = ?"
)
FINGERPRINT_KEYS = (
    "row_count",
    "refund_rows",
    "settlement_amount_fen",
    "coupon_amount_fen",
    "refund_amount_fen",
    "recharge_coupon_refund_fen",
    "order_amount_fen",
    "requested_refund_fen",
    "fee_millifen",
    "distinct_out_trade_no",
)


def _fingerprint_gate(con, fp: dict, day: date) -> list[str]:
    got = [int(x or 0) for x in con.execute(FINGERPRINT_SQL, [day]).fetchone()]
    return [f"{k}: table {g}, generator {fp[k]}" for k, g in zip(FINGERPRINT_KEYS, got, strict=True) if g != fp[k]]


def work_gate(spec: dict) -> dict:
    """The correctness gate, in a process of its own so that its queries do not count in the peak RSS measured."""
    from flows.warehouse import connect

    fp, day = spec["fp"], date.fromisoformat(spec["fp"]["bill_date"])
    con = connect(spec["db"], read_only=True)
    failures = _fingerprint_gate(con, fp, day)
    if spec.get("loads"):
        stored = con.execute("select archive_sha1, row_count from raw.bill_loads where bill_date = ?", [day]).fetchall()
        if stored != [(fp["sha1"], fp["row_count"])]:
            failures.append(f"raw.bill_loads {stored}")
        archived = sorted(Path(spec["archive"]).rglob("*.csv.gz"))
        if len(archived) != 1 or _sha1_of(archived[0]) != (fp["sha1"], fp["uncompressed_bytes"]):
            failures.append(f"archive: {[p.name for p in archived]} is not the bill")
    con.close()
    return {"failures": failures}


def _sha1_of(path: Path) -> tuple[str, int]:
    """SHA-1 and size of the decompressed bytes of a .gz: ISA-L inflate + hashlib, one streaming pass."""
    import hashlib

    from isal import isal_zlib

    digest, inflater, size = hashlib.sha1(), isal_zlib.decompressobj(31), 0  # noqa: S324 - WeChat's hash
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            data = inflater.decompress(chunk)
            digest.update(data)
            size += len(data)
    return digest.hexdigest(), size


def _db_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".wal")) if p.exists())


def work_e2e(spec: dict) -> dict:
    from flows.bills import BillArchive, ingest_bill
    from flows.warehouse import connect, migrate
    from wxpay.bills import BillRequest

    fp, db, day = spec["fp"], Path(spec["db"]), date.fromisoformat(spec["fp"]["bill_date"])
    con = connect(db)
    migrate(con)
    archive = BillArchive(spec["archive"])
    with _client(spec["sim"]) as client, Meter(spec["sim"]["pid"]) as meter:
        result = ingest_bill(con, client, archive, BillRequest.trade(day))
    failures = []
    if result.outcome != "loaded" or result.load is None:
        failures.append(f"outcome {result.outcome}")
    else:
        if result.archived.sha1 != fp["sha1"] or result.load.archive_sha1 != fp["sha1"]:
            failures.append(f"sha1 {result.archived.sha1} != {fp['sha1']}")
        if not result.downloaded:
            failures.append("not downloaded")
    con.close()
    return {
        **meter.facts(),
        "loader": getattr(result.load, "loader", None),
        "db_bytes": _db_size(db),
        "failures": failures,
    }


def work_fetchload(spec: dict) -> dict:
    from flows.bills import BillArchive, fetch_to_archive, load_archived
    from flows.warehouse import connect, migrate
    from wxpay.bills import BillRequest

    fp, db, day = spec["fp"], Path(spec["db"]), date.fromisoformat(spec["fp"]["bill_date"])
    con = connect(db)
    migrate(con)
    archive = BillArchive(spec["archive"])
    with _client(spec["sim"]) as client, Meter(spec["sim"]["pid"]) as meter:
        fetched = fetch_to_archive(client, archive, BillRequest.trade(day))
        result = load_archived(con, archive, fetched)
    failures = [] if result.archived is not None and result.archived.sha1 == fp["sha1"] else ["sha1"]
    con.close()
    return {**meter.facts(), "loader": result.load.loader, "db_bytes": _db_size(db), "failures": failures}


def work_negative(spec: dict) -> dict:
    from flows.bills import BillArchive, ingest_bill
    from flows.warehouse import connect, migrate
    from wxpay.bills import BillRequest
    from wxpay.errors import BillFormatError

    fp, day = spec["fp"], date.fromisoformat(spec["fp"]["bill_date"])
    con = connect(spec["db"])
    migrate(con)
    failures, message = [], None
    with _client(spec["sim"]) as client, Meter() as meter:
        try:
            ingest_bill(con, client, BillArchive(spec["archive"]), BillRequest.trade(day))
            failures.append("the load of a bill with a 3.315 amount succeeded")
        except BillFormatError as exc:
            message = str(exc)
            if (exc.line, exc.field) != (fp["bad_line"], "应结订单金额") or "3.315" not in message:
                failures.append(f"wrong error: {message}")
    left = con.execute("select (select count(*) from raw.trade_bill_rows), (select count(*) from raw.bill_loads)")
    if (counts := left.fetchone()) != (0, 0):
        failures.append(f"rows left behind: {counts}")
    con.close()
    return {**meter.facts(), "message": message, "failures": failures}


def work_sha1(spec: dict) -> dict:
    fp = spec["fp"]
    with Meter() as meter:
        got = _sha1_of(Path(spec["gz"]))
    failures = [] if got == (fp["sha1"], fp["uncompressed_bytes"]) else ["digest/size"]
    return {**meter.facts(), "failures": failures}


def _parse_sql(path: str) -> str:
    from wxpay.billfile import HEADERS, TRADE_COLUMNS, BillKind

    types = {"text": "VARCHAR", "rate": "VARCHAR", "yuan": "DECIMAL(18,2)", "fee": "DECIMAL(18,5)", "time": "TIMESTAMP"}
    cols = [TRADE_COLUMNS[t] for t in HEADERS[BillKind.TRADE_ALL]]
    # the first value keeps its backtick (the 2-byte delimiter strips the others): read as text, cast after
    spec = ", ".join(f"'c{i:02d}': '{'VARCHAR' if i == 0 else types[c.kind]}'" for i, c in enumerate(cols))
    reader = (
        f"read_csv('{path}', columns = {{{spec}}}, delim = ',`', quote = '', escape = '', header = false,"
        " skip = 1, auto_detect = false, new_line = '\\r\\n', compression = 'gzip', store_rejects = true)"
    )
    mins = ["min(cast(substr(c00, 2) as timestamp))"] + [f"min(c{i:02d})" for i in range(1, len(cols))]
    return f"select count(*), {', '.join(mins)} from {reader}"  # noqa: S608 - constant column list


def work_parse(spec: dict) -> dict:
    import duckdb

    con = duckdb.connect(config={"preserve_insertion_order": False})
    sql = _parse_sql(spec["gz"])
    with Meter() as meter:
        count = con.execute(sql).fetchone()[0]
    return {**meter.facts(), "failures": [] if count == spec["fp"]["row_count"] else [f"count {count}"]}


# Target columns of raw.trade_bill_rows for the 27 titles of an ALL bill, in file order.
def _all_columns() -> list:
    from wxpay.billfile import HEADERS, TRADE_COLUMNS, BillKind

    return [TRADE_COLUMNS[t] for t in HEADERS[BillKind.TRADE_ALL]]


def work_pandas(spec: dict) -> dict:
    import csv

    import pandas as pd

    from flows.bills.lineage import NOT_STORED
    from flows.warehouse import connect, migrate

    fp, db, day = spec["fp"], Path(spec["db"]), date.fromisoformat(spec["fp"]["bill_date"])
    cols = _all_columns()
    con = connect(db)
    migrate(con)
    with Meter() as meter:
        df = pd.read_csv(
            spec["gz"],
            compression="gzip",
            header=None,
            skiprows=1,
            names=[c.name for c in cols],
            dtype=str,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_filter=False,
            engine="c",
        )
        df = df.iloc[:-2]  # the summary header and values
        out = pd.DataFrame({"line_no": df.index.to_numpy() + 2})
        for c in cols:
            s = df[c.name].str.slice(1)  # every value starts with a backtick
            if c.kind in ("yuan", "fee"):
                decimals = 2 if c.kind == "yuan" else 5
                point = s.str.len() - s.str.find(".")
                if not (point == decimals + 1).all():
                    raise ValueError(f"{c.title}: not exactly {decimals} decimals")
                out[c.name] = s.str.replace(".", "", regex=False).astype("int64")  # exact: never a float
            elif c.kind == "time":
                out[c.name] = pd.to_datetime(s, format="%Y-%m-%d %H:%M:%S").dt.tz_localize("Asia/Shanghai")
            else:
                out[c.name] = s.where(s != "", None)
        out["fee_rate_pct"] = out["fee_rate"].str.rstrip("%")
        out = out.drop(columns=[name for name in NOT_STORED if name in out])  # parsed, as ours does; not kept
        names = ", ".join(out.columns)
        con.execute("begin transaction")
        con.execute(
            f"insert into raw.trade_bill_rows (bill_mchid, bill_type, bill_date, archive_sha1, {names})"  # noqa: S608
            f" select ?, 'trade_all', ?, ?, {names} from out",
            [MCHID, day, fp["sha1"]],
        )
        con.execute("commit")
    con.close()
    return {**meter.facts(), "db_bytes": _db_size(db), "failures": []}


def work_pycsv(spec: dict) -> dict:
    import csv
    import gzip
    from datetime import timezone
    from decimal import Decimal

    import pyarrow as pa

    from flows.bills.lineage import NOT_STORED
    from flows.warehouse import connect, migrate

    fp, db, day = spec["fp"], Path(spec["db"]), date.fromisoformat(spec["fp"]["bill_date"])
    cols = _all_columns()
    con = connect(db)
    migrate(con)
    beijing = timezone(timedelta(hours=8))

    def fen(text: str, decimals: int) -> int:  # "-12.30" -> -1230, exactly
        whole, point, frac = text.partition(".")
        negative = whole.startswith("-")
        digits = whole[1:] if negative else whole
        if not point or len(frac) != decimals or not digits.isdigit() or not frac.isdigit():
            raise ValueError(f"not an amount with {decimals} decimals: {text!r}")
        value = int(digits) * 10**decimals + int(frac)
        return -value if negative else value

    def when(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=beijing)

    convert = {"yuan": lambda v: fen(v, 2), "fee": lambda v: fen(v, 5), "time": when, "rate": str, "text": str}
    converters = [convert[c.kind] for c in cols]
    with Meter() as meter:
        columns: list[list] = [[] for _ in cols]
        line_nos: list[int] = []
        with gzip.open(spec["gz"], "rt", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=",", quoting=csv.QUOTE_NONE)
            next(reader)
            for line_no, row in enumerate(reader, start=2):
                if len(row) != len(cols):
                    if len(row) == 7:  # the summary block
                        break
                    raise ValueError(f"line {line_no}: {len(row)} values")
                line_nos.append(line_no)
                for target, conv, value in zip(columns, converters, row, strict=True):
                    text = value[1:]  # the backtick
                    target.append(conv(text) if text else None)
        types = {
            "yuan": pa.int64(),
            "fee": pa.int64(),
            "time": pa.timestamp("us", tz="Asia/Shanghai"),
            "text": pa.string(),
            "rate": pa.string(),
        }
        arrays = {"line_no": pa.array(line_nos, pa.int64())}
        for c, values in zip(cols, columns, strict=True):
            arrays[c.name] = pa.array(values, types[c.kind])
        pct = [Decimal(v[:-1]) if v else None for v in columns[[c.kind for c in cols].index("rate")]]
        arrays["fee_rate_pct"] = pa.array(pct, pa.decimal128(7, 4))
        arrays = {name: array for name, array in arrays.items() if name not in NOT_STORED}  # parsed; not kept
        con.register("bulk", pa.table(arrays))
        names = ", ".join(arrays)
        con.execute("begin transaction")
        con.execute(
            f"insert into raw.trade_bill_rows (bill_mchid, bill_type, bill_date, archive_sha1, {names})"  # noqa: S608
            f" select ?, 'trade_all', ?, ?, {names} from bulk",
            [MCHID, day, fp["sha1"]],
        )
        con.execute("commit")
    con.close()
    return {**meter.facts(), "db_bytes": _db_size(db), "failures": []}


WORKERS = {
    "gate": work_gate,
    "e2e": work_e2e,
    "fetchload": work_fetchload,
    "negative": work_negative,
    "sha1": work_sha1,
    "parse": work_parse,
    "pandas": work_pandas,
    "pycsv": work_pycsv,
}


def run_worker(kind: str, spec: dict, scratch: Path) -> dict:
    """Run one measurement in a fresh interpreter; its peak RSS and CPU seconds come from wait4."""
    out, err = scratch / f"{kind}.out", scratch / f"{kind}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, json.dumps(spec)], cwd=REPO, stdout=stdout, stderr=stderr
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = out.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = err.read_text()[-3000:]
        return {"failures": [f"worker {kind} exited with {proc.returncode}: {tail}"]}
    result = json.loads(lines[-1])
    result["peak_rss"] = usage.ru_maxrss * 1024
    result["process_cpu"] = usage.ru_utime + usage.ru_stime
    return result


# --- the driver -----------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _span(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}" if values else "–"


def measure(rows: int, args: argparse.Namespace, kinds: list[str]) -> dict:
    gz, fp = bill(rows, args.seed)
    bad_gz, bad_fp = bill(min(rows, 200_000), args.seed, bad=True)
    runs = args.runs or (3 if rows >= 5_000_000 else 5)
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="ingest-", dir=CACHE) as tmp, SimProcess(Path(tmp) / "sim") as sim:
        scratch = Path(tmp)
        sim.publish(gz, fp)
        sim.publish(bad_gz, bad_fp)
        now = datetime.combine(BILL_DATE + timedelta(days=1), datetime.min.time()).replace(hour=10, minute=30)
        sim.admin("/sim/clock", {"set": now.isoformat() + "+08:00"})
        sim_info = {
            "base_url": sim.base_url,
            "credentials": sim.info["credentials"],
            "pid": sim.proc.pid,
        }
        warm(gz, bad_gz)
        noisy = 0
        for round_no in range(runs):
            for kind in kinds:
                run_dir = scratch / f"{kind}-{round_no}"
                run_dir.mkdir()
                spec = {
                    "gz": str(gz),
                    "fp": fp,
                    "db": str(run_dir / "bench.duckdb"),
                    "archive": str(run_dir / "archive"),
                    "sim": sim_info,
                }
                busy = wait_quiet(args.quiet_wait) if args.quiet_wait else 0.0
                noisy += busy > 0.15
                result = run_worker(kind, spec, run_dir)
                if kind in GATED and not result.get("failures"):
                    gate = run_worker("gate", {**spec, "loads": kind in ("e2e", "fetchload")}, run_dir)
                    result["failures"] = gate["failures"]
                result["busy_before"] = round(busy, 2)
                results[kind].append(result)
                shown = f"{result['seconds']:.2f} s" if "seconds" in result else "FAILED"
                print(f"  {rows:,} rows  round {round_no + 1}/{runs}  {kind:7s} {shown}", flush=True)
                _cleanup(run_dir)
        negative = None
        if "e2e" in kinds:
            run_dir = scratch / "negative"
            run_dir.mkdir()
            spec = {
                "gz": str(bad_gz),
                "fp": bad_fp,
                "db": str(run_dir / "bench.duckdb"),
                "archive": str(run_dir / "archive"),
                "sim": sim_info,
            }
            negative = run_worker("negative", spec, run_dir)
    return {
        "rows": rows,
        "runs": runs,
        "fingerprint": fp,
        "negative": negative,
        "noisy_starts": noisy,
        "results": results,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }


def _cleanup(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and path.suffix not in (".out", ".err"):
            path.unlink()


def summarize(m: dict) -> dict[str, dict]:
    fp, rows = m["fingerprint"], m["rows"]
    table = {}
    for kind, runs in m["results"].items():
        good = [r for r in runs if not r.get("failures")]
        if not runs:
            continue
        secs = [r["seconds"] for r in good]
        med = _median(secs)
        table[kind] = {
            "ok": len(good) == len(runs),
            "failures": [f for r in runs for f in r.get("failures", [])],
            "seconds": secs,
            "median": med,
            "rows_s": rows / med if good else float("nan"),
            "mb_s": fp["uncompressed_bytes"] / MB / med if good else float("nan"),
            "rss": [r.get("peak_rss", 0) for r in good],
            "cpu": [r.get("cpu", 0) for r in good],
            "sim_cpu": [r.get("sim_cpu", 0) for r in good],
            "other_cpu": [r.get("other_cpu", 0) for r in good],
            "db_bytes": [r["db_bytes"] for r in good if r.get("db_bytes")],
            "loaders": sorted({r["loader"] for r in good if r.get("loader")}),
        }
    return table


def _ratio(table: dict, top: str, bottom: tuple[str, ...], runs: dict) -> tuple[float, list[float]] | None:
    if top not in table or any(b not in table for b in bottom):
        return None
    whole = table[top]["median"] / sum(table[b]["median"] for b in bottom)
    per_round = []
    for i, r in enumerate(runs[top]):
        parts = [runs[b][i] for b in bottom if i < len(runs[b])]
        if "seconds" in r and len(parts) == len(bottom) and all("seconds" in p for p in parts):
            per_round.append(r["seconds"] / sum(p["seconds"] for p in parts))
    return whole, per_round


def report(m: dict, facts: dict, other: dict | None) -> list[str]:
    rows, fp = m["rows"], m["fingerprint"]
    table = summarize(m)
    flags: list[str] = []
    print()
    print(
        f"== {rows:,} rows: {fp['uncompressed_bytes'] / MB:.1f} MB CSV, {fp['gz_bytes'] / MB:.1f} MB gz, "
        f"{m['runs']} interleaved runs, medians (min–max); {m['noisy_starts']} runs started on a busy host"
    )
    header = (
        f"{'measurement':<22}{'seconds':>16}{'rows/s':>11}{'MB/s':>8}{'peak RSS MB':>17}{'CPU s':>13}"
        f"{'sim CPU s':>10}{'other CPU s':>12}{'DB MB':>8}"
    )
    print(header)
    print("-" * len(header))
    names = {
        "e2e": "e2e ingest_bill",
        "sha1": "floor: ISA-L+SHA1",
        "parse": "floor: DuckDB parse",
        "pandas": "pandas baseline",
        "pycsv": "python-csv baseline",
        "fetchload": "fetch, then load",
    }

    def row(label: str, t: dict) -> None:
        db = f"{_median(t['db_bytes']) / MB:.1f}" if t["db_bytes"] else "–"
        print(
            f"{label:<22}{t['median']:>6.2f} ({_span(t['seconds'])}){t['rows_s'] / 1000:>9.0f}k"
            f"{t['mb_s']:>8.0f}{_median(t['rss']) / MB:>7.0f} (max {max(t['rss']) / MB:>5.0f})"
            f"{_median(t['cpu']):>7.2f} ({max(t['cpu']):.1f})"
            f"{_median(t['sim_cpu']):>10.2f}{_median(t['other_cpu']):>12.2f}{db:>8}"
        )

    for kind in ("e2e", "fetchload", "sha1", "parse", "floor", "pandas", "pycsv"):
        if kind == "floor":
            if all(k in table and table[k]["seconds"] for k in ("sha1", "parse")):
                floor = table["sha1"]["median"] + table["parse"]["median"]
                print(
                    f"{'floor: sum':<22}{floor:>6.2f}{'':>14}{rows / floor / 1000:>9.0f}k"
                    f"{fp['uncompressed_bytes'] / MB / floor:>8.0f}"
                )
            continue
        if kind not in table:
            continue
        t = table[kind]
        if not t["seconds"]:
            print(f"{names[kind]:<22}  FAILED: {t['failures'][:1]}")
            flags.append(f"{kind}: failed: {t['failures'][:1]}")
            continue
        row(names[kind], t)
        if not t["ok"]:
            flags.append(f"{kind}: {len(t['failures'])} failed runs: {t['failures'][:1]}")
    paths = {k: table[k]["loaders"] for k in ("e2e", "fetchload") if k in table and table[k]["loaders"]}
    if paths:
        print("   (loader path: " + "; ".join(f"{k} {'/'.join(v)}" for k, v in paths.items()) + ")")
    if "e2e" in table and "exact" in table["e2e"]["loaders"]:
        flags.append("e2e: a clean bill went through the exact (slow) path")
    print()
    print("ratios (of medians; per-round range in brackets)")
    checks = [
        ("e2e ÷ floor (ISA-L+SHA1 + DuckDB parse)", "e2e", ("sha1", "parse"), "e2e_floor", "le"),
        ("e2e ÷ ISA-L+SHA1 pass", "e2e", ("sha1",), "e2e_sha1_flag", "le"),
        ("pandas ÷ e2e", "pandas", ("e2e",), "pandas_e2e", "ge"),
        ("python-csv ÷ e2e", "pycsv", ("e2e",), "pycsv_e2e", "ge"),
        ("fetch-then-load ÷ e2e (overlap gain)", "fetchload", ("e2e",), None, None),
    ]
    for label, top, bottom, target, sense in checks:
        got = _ratio(table, top, bottom, m["results"])
        if got is None or not (table[top]["seconds"] and all(table[b]["seconds"] for b in bottom)):
            continue
        value, per_round = got
        if target is None:
            print(f"  {label:<42}{value:>6.2f}  [{_span(per_round)}]")
            continue
        limit = TARGETS[target]
        ok = value <= limit if sense == "le" else value >= limit
        what = "target" if target != "e2e_sha1_flag" else "flag above"
        verdict = f"{what} {'≤' if sense == 'le' else '≥'} {limit:g}: {'met' if ok else 'MISSED'}"
        print(f"  {label:<42}{value:>6.2f}  [{_span(per_round)}]  {verdict}")
        if not ok and (rows == 1_000_000 or (target == "e2e_sha1_flag" and rows > 1_000_000)):
            flags.append(f"{label} = {value:.2f} ({verdict})")
    if other and "e2e" in table and "e2e" in other["table"] and table["e2e"]["seconds"]:
        small, big = (other, m) if other["rows"] < rows else (m, other)
        big_t, small_t = summarize(big)["e2e"], summarize(small)["e2e"]
        scale = big["rows"] / small["rows"]
        note = (
            "" if other.get("same_invocation") else f" (the {other['rows']:,}-row run is from {other['finished_at']})"
        )
        print(
            f"  {'e2e ' + _size(big['rows']) + ' ÷ ' + _size(small['rows']):<42}"
            f"{big_t['median'] / small_t['median']:>6.2f}  (linear: {scale:.1f}){note}"
        )
    if "e2e" in table and table["e2e"]["rss"] and rows >= 5_000_000:
        peak = max(table["e2e"]["rss"])
        ok = peak <= TARGETS["rss_5m"]
        print(
            f"  {'e2e peak RSS at ' + _size(rows):<42}{peak / GB:>6.2f} GB  target ≤ 1 GB: {'met' if ok else 'MISSED'}"
        )
        if not ok:
            flags.append(f"peak RSS {peak / GB:.2f} GB at {rows:,} rows (target ≤ 1 GB)")
    neg = m.get("negative")
    if neg is not None:
        ok = not neg.get("failures")
        print(f"  negative gate (one 3.315 amount): {'rejected: ' + str(neg.get('message')) if ok else 'FAILED'}")
        if not ok:
            flags.append(f"negative gate: {neg.get('failures')}")
    return flags


def _size(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000000", help="rows of the bill; a comma-separated list runs each")
    parser.add_argument("--runs", type=int, default=0, help="runs per measurement (default 5, 3 from 5M rows)")
    parser.add_argument("--seed", type=int, default=20250310)
    parser.add_argument("--only", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="wait up to this many s for an idle host before each run"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return 0

    kinds = [k for k in args.only.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown measurement(s) {sorted(unknown)}")
    sizes = [int(s.replace("_", "")) for s in args.rows.split(",")]
    facts = machine()
    print(
        f"machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory_gib']} GiB RAM, Linux {facts['kernel']}; "
        f"Python {facts['python']}, DuckDB {facts['duckdb']}, pyarrow {facts['pyarrow']}, pandas {facts['pandas']}, "
        f"isal {facts['isal']}; load average {', '.join(f'{x:.2f}' for x in facts['loadavg'])}"
    )
    done: dict[int, dict] = {}
    for rows in sizes:
        m = measure(rows, args, kinds)
        m["machine"] = facts
        (CACHE / f"results-{rows}.json").write_text(json.dumps(m, indent=1, default=str))
        done[rows] = m
    all_flags = []
    for rows, m in done.items():
        other = None
        partner = {1_000_000: 5_000_000, 5_000_000: 1_000_000}.get(rows)
        if partner in done:
            other = {**done[partner], "same_invocation": True}
        elif partner and (CACHE / f"results-{partner}.json").exists():
            other = json.loads((CACHE / f"results-{partner}.json").read_text())
        if other is not None:
            other["table"] = summarize(other)
        all_flags += report(m, facts, other)
    print()
    if all_flags:
        print("TARGETS / GATES FAILED:")
        for flag in all_flags:
            print(f"  - {flag}")
        return 1
    print("all gates passed; no target missed (time targets are judged at 1M rows, peak RSS at 5M)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
