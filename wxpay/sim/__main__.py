"""``python -m wxpay.sim``: run the simulator on loopback, create a day of business on one, or the protocol demo.

python -m wxpay.sim serve --port 8421 --state-dir var/sim [--business-day 2026-11-26]   # credentials written there
python -m wxpay.sim business --url http://127.0.0.1:8421 --day 2026-11-26 --out var/sim/business/2026-11-26
python -m wxpay.sim demo                                    # create → QR → pay → notify → query
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from pathlib import Path

import httpx

from wxpay.sim.business import DEFAULT_NOTIFY_URL, MAX_ORDERS
from wxpay.sim.records import MerchantBook
from wxpay.sim.standalone import BUSINESS_DIR, start_standalone

DEFAULT_STATE_DIR = Path("var/sim")


def business_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def clock_start(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time with an offset (2026-11-27T09:00+08:00)")
    return moment


def order_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= MAX_ORDERS:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_ORDERS}")
    return count


def _serve(args: argparse.Namespace) -> None:
    running = start_standalone(
        host=args.host,
        port=args.port,
        merchants=args.merchants,
        seed=args.seed,
        start=args.start,
        state_dir=args.state_dir,
        business_day=args.business_day,
        orders=args.orders,
        notify_url=args.notify_url,
        shared_keys=args.shared_keys,
    )
    print(json.dumps(running.info, indent=2), flush=True)
    running.wait()


def _business(args: argparse.Namespace) -> int:
    """Ask a running simulator for a day of business; write the shop's records as Parquet."""
    body = {"day": args.day.isoformat(), "orders": args.orders, "seed": args.seed}
    if args.notify_url:
        body["notify_url"] = args.notify_url
    try:
        answer = httpx.post(f"{args.url.rstrip('/')}/sim/business", json=body, timeout=600)
    except httpx.HTTPError as exc:
        print(f"the simulator at {args.url} did not answer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if answer.status_code != 200:
        print(f"the simulator refused: {answer.status_code} {answer.text}", file=sys.stderr)
        return 1
    result = answer.json()
    out = Path(args.out) if args.out else DEFAULT_STATE_DIR / BUSINESS_DIR / args.day.isoformat()
    orders, refunds = MerchantBook.from_json(result).write_parquet(out)
    summary = {
        "day": result["day"],
        **{k: len(v) for k, v in result["combine_orders"].items()},
        "sub_orders": len(result["orders"]),
        "refunds": len(result["refunds"]),
        "notify_url": result["notify_url"],
        "clock": result["clock"],
        "orders_file": str(orders),
        "refunds_file": str(refunds),
    }
    print(json.dumps(summary, indent=2), flush=True)
    return 0


def _business_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orders", type=order_count, default=36, help="combine orders on the day (default 36)")
    parser.add_argument(
        "--notify-url",
        help=f"where callbacks go (default {DEFAULT_NOTIFY_URL.format(mchid='<initiator>')}: wxrecon receiver)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wxpay.sim", description="Offline WeChat Pay APIv3 simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve the simulator on loopback")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8421, help="0: any free port (see simulator.json)")
    run.add_argument("--merchants", type=int, default=3)
    run.add_argument("--shared-keys", action="store_true", help="merchants reuse the first one's keys (load tests)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--start", type=clock_start, help="business clock start, ISO 8601 with offset (default: now)")
    run.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where credentials and records are written")
    run.add_argument("--business-day", type=business_day, help="create this day of business at start (YYYY-MM-DD)")
    _business_options(run)
    business = commands.add_parser("business", help="create a day of business on a running simulator")
    business.add_argument("--url", default="http://127.0.0.1:8421", help="the simulator (default %(default)s)")
    business.add_argument("--day", type=business_day, required=True, help="the Beijing day (YYYY-MM-DD)")
    _business_options(business)
    business.add_argument("--seed", type=int, default=0)
    business.add_argument(
        "--out", help=f"folder for orders.parquet, refunds.parquet (default {DEFAULT_STATE_DIR}/{BUSINESS_DIR}/<day>)"
    )
    commands.add_parser("demo", help="create a combine order, show its QR, pay it, receive the notification")
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args)
    elif args.command == "business":
        return _business(args)
    else:
        from wxpay.sim.demo import run_demo

        run_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
