"""``python -m wxpay.sim``: run the simulator on loopback, or the protocol demo.

python -m wxpay.sim serve --port 8421 --state-dir var/sim   # credentials are written there
python -m wxpay.sim demo                                    # create → QR → pay → notify → query
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from datetime import datetime
from pathlib import Path

from wxpay.models import BEIJING
from wxpay.sim.clock import VirtualClock
from wxpay.sim.server import serve
from wxpay.sim.simulator import SimOptions, Simulator


def _serve(args: argparse.Namespace) -> None:
    start = datetime.fromisoformat(args.start) if args.start else datetime.now(BEIJING)
    sim = Simulator.with_merchants(args.merchants, options=SimOptions(seed=args.seed), clock=VirtualClock(start))
    state = Path(args.state_dir)
    for merchant in sim.merchants.values():
        merchant.export(state / "merchants")
    server = serve(sim, args.host, args.port)
    info = {"base_url": server.url, "merchants": sorted(sim.merchants), "credentials": str(state / "merchants")}
    (state / "simulator.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        sim.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wxpay.sim", description="Offline WeChat Pay APIv3 simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve the simulator on loopback")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8421)
    run.add_argument("--merchants", type=int, default=3)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--start", help="business clock start, ISO 8601 with offset (default: now, Beijing)")
    run.add_argument("--state-dir", default="var/sim", help="where merchant test credentials are written")
    commands.add_parser("demo", help="create a combine order, show its QR, pay it, receive the notification")
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args)
    else:
        from wxpay.sim.demo import run_demo

        run_demo()


if __name__ == "__main__":
    main()
