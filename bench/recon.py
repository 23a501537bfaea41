"""Benchmark: the reconciliation engine at scale, against a pandas baseline on the same data.

    .venv/bin/python bench/recon.py                       # 5M bill rows x 5M local sub orders x 2M notifications
    .venv/bin/python bench/recon.py --rows 1000000 --runs 3

Data (deterministic, generated inside DuckDB): 2M combine orders of 2 or 3 sub orders = 5M sub orders
over three merchants on one bill day; every combine order notified once (notifications already
decoded: the rows ``flows.notifications.verify_log`` would have written). Injected, with known counts:
amount mismatches, payments missing locally, local payments missing in the bill, status mismatches,
duplicated bill rows, fee mismatches, missing and wrong-amount notifications. A run that does not
classify exactly those is not a result.

Measured per size, each in a fresh subprocess (peak RSS per measurement), fresh DuckDB file:
``flows.recon.reconcile`` with ``memory_limit=1GB`` (staging views, intermediate tables, items and
exceptions written, marts), and the pandas baseline (outer merges + ``np.select`` + group-by, the
same classes for payments and notifications) at the size it fits. Prints wall time (median, min-max),
rows/s, peak RSS and the pandas ÷ ours ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = date(2026, 11, 26)
MERCHANTS = ["1900000101", "1900000102", "1900000103"]  # sub-order merchants (they have bills)
INITIATOR = "1900000100"  # the combine initiator: its receiver got the notifications
# one in every N sub orders (or combine orders) carries an injected difference; distinct primes above 3000,
# so no two injections fall on the same sub order below 9 million rows
INJECT = {
    "amount_mismatch": 3001,
    "missing_locally": 3011,
    "status_mismatch": 3019,
    "duplicate_in_bill": 3023,
    "fee_mismatch": 3037,
    "missing_in_bill": 3041,  # extra local paid sub orders that no bill has
    "notification_missing": 3049,  # combine orders without a notification
    "notification_amount_mismatch": 3061,  # combine orders whose notification says another amount
}


def combine_orders(sub_orders: int) -> int:
    """Combine orders of 2 or 3 sub orders (alternating) that make up ``sub_orders`` sub orders."""
    return round(sub_orders / 2.5)


GENERATE = """
create or replace table gen_subs as
with combines as (
    select c, case when c % 2 = 0 then 3 else 2 end as n from range({combines}) t(c)
), subs as (
    select c, s from combines, range(1, 4) r(s) where s <= n
)
select
    c, s,
    'C' || lpad(c::varchar, 10, '0') as combine_no,
    'C' || lpad(c::varchar, 10, '0') || 'S' || s as out_trade_no,
    {merchants}[1 + (c + s) % 3] as mchid,
    100 + (hash(c * 7 + s) % 500000)::bigint as amount_fen,
    '4200002601' || '{ymd}' || lpad((c * 3 + s)::varchar, 10, '0') as transaction_id,
    timestamptz '{day} 00:00:00+08' + to_seconds((hash(c) % 86000)::bigint) as paid_at,
    row_number() over () as n
from subs;

insert into raw.trade_bill_rows (bill_mchid, bill_type, bill_date, archive_sha1, line_no, trade_time, appid, mchid,
    sub_mchid, transaction_id, out_trade_no, trade_type, trade_state, bank_type, currency,
    settlement_amount_fen, coupon_amount_fen, refund_id, out_refund_no, refund_amount_fen, recharge_coupon_refund_fen,
    description, attach, fee_millifen, fee_rate, fee_rate_pct, order_amount_fen, requested_refund_fen)
select mchid, 'trade_all', date '{day}', repeat('a', 40), n + 1, paid_at, 'wxd678efh567hg6787', mchid, '0',
    transaction_id, out_trade_no, 'NATIVE', 'SUCCESS', 'OTHERS', 'CNY',
    amount_fen, 0, '0', '0', 0, 0, '课程', 'cmb=' || combine_no,
    case when n % {fee_mismatch} = 0 then 1 else (amount_fen * 6000 + 500000) // 1000000 end * 1000,
    '0.60%', 0.6, amount_fen, 0
from gen_subs where n % {missing_in_bill} <> 0;

insert into raw.trade_bill_rows
select * from raw.trade_bill_rows where line_no % {duplicate_in_bill} = 0;

insert into raw.bill_loads (mchid, bill_type, bill_date, archive_sha1, parser_version, row_count, header_titles,
    extra_columns, absent_columns, extra_summary_columns)
select mchid, 'trade_all', date '{day}' + cast(d as integer), repeat('a', 40), 'bench', 0, [], [], [], []
from unnest({merchants}) m(mchid), range(0, 3) r(d);

insert into raw.local_orders (mchid, out_trade_no, combine_out_trade_no, amount_fen, status, created_at, paid_at,
    transaction_id, attach, description, source_label, imported_at)
select mchid, out_trade_no, combine_no,
    amount_fen + case when n % {amount_mismatch} = 0 then 100 else 0 end,
    case when n % {status_mismatch} = 0 then 'NOTPAY' else 'SUCCESS' end,
    paid_at - interval 2 minute,
    case when n % {status_mismatch} = 0 then null else paid_at end,
    transaction_id, 'cmb=' || combine_no, '课程', 'bench', now()
from gen_subs where n % {missing_locally} <> 0 or n % {missing_in_bill} = 0;

insert into raw.notification_lines (log_file, line_no, line_sha256, mchid, outcome, received_at,
    claimed_notification_id, line_bytes, recorded_at)
select '1900000100/{day}.jsonl', c + 1, md5(c::varchar) || md5((c + 1)::varchar), '1900000100', 'accepted',
    min(paid_at) + interval 3 second, 'N' || c, 1500, now()
from gen_subs where c % {notification_missing} <> 0 group by c;

insert into raw.notification_checks (line_sha256, verified, notification_id, event_type, combine_mchid,
    combine_out_trade_no, sub_order_count, checker_version, checked_at)
select md5(c::varchar) || md5((c + 1)::varchar), true, 'N' || c, 'TRANSACTION.SUCCESS', '1900000100',
    any_value(combine_no), count(*), 1, now()
from gen_subs where c % {notification_missing} <> 0 group by c;

insert into raw.notification_sub_orders (line_sha256, sub_order_no, mchid, out_trade_no, transaction_id,
    trade_state, total_amount_fen, success_time)
select md5(c::varchar) || md5((c + 1)::varchar), s, mchid, out_trade_no, transaction_id, 'SUCCESS',
    amount_fen + case when c % {notification_amount_mismatch} = 0 and s = 1 then 1 else 0 end, paid_at
from gen_subs where c % {notification_missing} <> 0 and n % {missing_in_bill} <> 0;

drop table gen_subs;
checkpoint;
"""


def expected_counts(combines: int) -> dict[str, int]:
    """What the generator injected, counted the same way in Python (no database)."""
    subs = []
    n = 0
    for c in range(combines):
        for s in range(1, (3 if c % 2 == 0 else 2) + 1):
            n += 1
            subs.append((c, s, n))
    counts = dict.fromkeys(INJECT, 0)
    for _c, _s, n in subs:
        billed = n % INJECT["missing_in_bill"] != 0
        local = n % INJECT["missing_locally"] != 0 or not billed
        if not billed:
            counts["missing_in_bill"] += 1
            continue
        if n % INJECT["fee_mismatch"] == 0:
            counts["fee_mismatch"] += 1
        line = n + 1
        if line % INJECT["duplicate_in_bill"] == 0:
            counts["fee_mismatch"] += n % INJECT["fee_mismatch"] == 0  # the copy is a second fee item
            counts["duplicate_in_bill"] += 1
        elif not local:
            counts["missing_locally"] += 1
        elif n % INJECT["status_mismatch"] == 0:
            counts["status_mismatch"] += 1
        elif n % INJECT["amount_mismatch"] == 0:
            counts["amount_mismatch"] += 1
    return counts


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_generate(path: Path, sub_orders: int) -> dict:
    from flows.warehouse import connect, migrate

    con = connect(path, memory_limit="4GB")
    migrate(con)
    values = {k: v for k, v in INJECT.items()}
    started = time.perf_counter()
    con.execute(
        GENERATE.format(
            combines=combine_orders(sub_orders),
            merchants=json.dumps(MERCHANTS).replace('"', "'"),
            day=DAY.isoformat(),
            ymd=DAY.strftime("%Y%m%d"),
            **values,
        )
    )
    rows = con.execute("select count(*) from raw.trade_bill_rows").fetchone()[0]
    con.close()
    return {"seconds": time.perf_counter() - started, "bill_rows": rows}


def worker_ours(path: Path, memory_limit: str) -> dict:
    from flows.recon import ReconParams, reconcile
    from flows.warehouse import connect

    con = connect(path, memory_limit=memory_limit, temp_directory=str(path) + ".tmp")
    started = time.perf_counter()
    result = reconcile(con, ReconParams(as_of=DAY, merchants=[INITIATOR, *MERCHANTS], pending_days=0))
    seconds = time.perf_counter() - started
    classes = {k: v for k, v in result.classes().items() if k != "matched"}
    by_kind = {f"{c.item_kind}:{c.cls}": c.count for c in result.counts}
    con.close()
    return {
        "seconds": seconds,
        "rss_mb": _peak_rss_mb(),
        "classes": classes,
        "by_kind": by_kind,
        "items": sum(c.count for c in result.counts),
    }


def worker_pandas(path: Path) -> dict:
    import duckdb
    import numpy as np

    con = duckdb.connect(str(path), read_only=True)
    bill = con.execute(
        "select mchid, out_trade_no, order_amount_fen as bill_fen, transaction_id,"
        " regexp_extract(attach, 'cmb=(.*)', 1) as combine from raw.trade_bill_rows"
    ).df()
    local = con.execute(
        "select mchid, out_trade_no, amount_fen as local_fen, status, combine_out_trade_no from raw.local_orders"
    ).df()
    notes = con.execute(
        "select s.mchid, s.out_trade_no, s.total_amount_fen as notified_fen from raw.notification_sub_orders s"
    ).df()
    con.close()
    started = time.perf_counter()
    bill["copies"] = bill.groupby(["mchid", "out_trade_no"])["out_trade_no"].transform("size")
    bill = bill.drop_duplicates(["mchid", "out_trade_no"])
    joined = bill.merge(local, on=["mchid", "out_trade_no"], how="outer", indicator=True)
    in_bill = joined["_merge"] != "right_only"
    in_local = joined["_merge"] != "left_only"
    paid = joined["status"].isin(["SUCCESS", "REFUND"])
    joined["class"] = np.select(
        [
            in_bill & (joined["copies"] > 1),
            in_bill & ~in_local,
            in_bill & ~paid,
            in_bill & (joined["bill_fen"] != joined["local_fen"]),
            in_bill,
            paid,
        ],
        ["duplicate_in_bill", "missing_locally", "status_mismatch", "amount_mismatch", "matched", "missing_in_bill"],
        default="",
    )
    payments = joined[joined["class"] != ""]
    billed = payments[payments["bill_fen"].notna()][["mchid", "out_trade_no", "combine", "bill_fen"]]
    noted = billed.merge(notes, on=["mchid", "out_trade_no"], how="left")
    noted["missing"] = noted["notified_fen"].isna()
    noted["differs"] = ~noted["missing"] & (noted["notified_fen"] != noted["bill_fen"])
    per_combine = noted.groupby("combine")[["missing", "differs"]].any()
    note_class = np.select(
        [per_combine["missing"], per_combine["differs"]],
        ["notification_missing", "notification_amount_mismatch"],
        default="matched",
    )
    counts = payments["class"].value_counts().to_dict()
    for name, count in zip(*np.unique(note_class, return_counts=True), strict=True):
        counts[f"notification:{name}"] = int(count)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rss_mb": _peak_rss_mb(), "classes": {k: int(v) for k, v in counts.items()}}


def run_worker(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(rows: int, runs: int, memory_limit: str, work: Path) -> dict:
    base = work / f"recon-{rows}.duckdb"
    if not base.exists():
        generated = run_worker("generate", str(base), str(rows))
        print(f"  generated {generated['bill_rows']:,} bill rows in {generated['seconds']:.1f} s", flush=True)
    ours = []
    for i in range(runs):
        copy = work / f"run-{rows}-{i}.duckdb"
        subprocess.run(["cp", str(base), str(copy)], check=True)
        ours.append(run_worker("ours", str(copy), memory_limit))
        copy.unlink()
        Path(str(copy) + ".wal").unlink(missing_ok=True)
    return {"base": base, "ours": ours}


def check(result: dict, rows: int) -> list[str]:
    expected = expected_counts(combine_orders(rows))
    problems = []
    got = result["classes"]
    for cls in (
        "amount_mismatch",
        "missing_locally",
        "status_mismatch",
        "duplicate_in_bill",
        "missing_in_bill",
        "fee_mismatch",
    ):
        if got.get(cls, 0) != expected[cls]:
            problems.append(f"{cls}: expected {expected[cls]}, got {got.get(cls, 0)}")
    if not got.get("notification_missing") or not got.get("notification_amount_mismatch"):
        problems.append("notification classes missing")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="bill rows (sub orders)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--pandas-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--worker", nargs="+")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        result = {
            "generate": lambda: worker_generate(Path(rest[0]), int(rest[1])),
            "ours": lambda: worker_ours(Path(rest[0]), rest[1]),
            "pandas": lambda: worker_pandas(Path(rest[0])),
        }[kind]()
        print(json.dumps(result))
        return 0

    import duckdb

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"DuckDB {duckdb.__version__}, memory_limit={args.memory_limit}"
    )
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        table = []
        failures = []
        for rows in sorted({args.pandas_rows, args.rows}):
            print(f"{rows:,} bill rows:", flush=True)
            measured = measure(rows, args.runs, args.memory_limit, work)
            seconds = [r["seconds"] for r in measured["ours"]]
            problems = check(measured["ours"][0], rows)
            failures += [f"{rows:,}: {p}" for p in problems]
            pandas = run_worker("pandas", str(measured["base"])) if rows == args.pandas_rows else None
            table.append(
                (
                    rows,
                    statistics.median(seconds),
                    min(seconds),
                    max(seconds),
                    max(r["rss_mb"] for r in measured["ours"]),
                    measured["ours"][0]["items"],
                    pandas,
                )
            )
            print(f"  classes: {measured['ours'][0]['classes']}", flush=True)
    print()
    print(
        "| bill rows | ours median s (min-max) | rows/s | peak RSS MB | items written | pandas s | pandas RSS MB |"
        " pandas ÷ ours |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows, median, low, high, rss, items, pandas in table:
        pandas_cols = (
            f"{pandas['seconds']:.2f} | {pandas['rss_mb']:.0f} | {pandas['seconds'] / median:.1f}x"
            if pandas
            else "- | - | -"
        )
        print(
            f"| {rows:,} | {median:.2f} ({low:.2f}-{high:.2f}) | {rows / median:,.0f} | {rss:.0f} | {items:,} | "
            f"{pandas_cols} |"
        )
    big = next(t for t in table if t[0] == args.rows)
    small = next(t for t in table if t[0] == args.pandas_rows)
    if args.rows != args.pandas_rows:
        print(
            f"\n{args.rows:,} ÷ {args.pandas_rows:,} time ratio: {big[1] / small[1]:.2f} "
            f"(linear would be {args.rows / args.pandas_rows:.1f})"
        )
    target = 15.0
    print(
        f"target: {args.rows:,} rows classified in <= {target:.0f} s with memory_limit={args.memory_limit}: "
        f"{'MET' if big[1] <= target else 'NOT MET'} ({big[1]:.2f} s)"
    )
    for failure in failures:
        print("CORRECTNESS FAILURE:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
