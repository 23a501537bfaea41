"""``wxrecon demo``: the whole product on loopback, with no configuration.

1. Start the WeChat Pay simulator (three merchants: one combine initiator, all three take part
   in sub orders), the merchant's notification receiver and a local alert webhook.
2. The simulator's day of business (:func:`wxpay.sim.create_business_day`): the shop creates combine
   orders through the signed API — some left unpaid, some closed, some refunded, one paid a minute
   after midnight — and keeps its own records of what the API answered; callbacks reach the receiver.
3. Inject four discrepancies: a local amount edited, a local record missing, a forged callback,
   a duplicate callback.
4. Run the nightly flow (``reconcile_day``) under Prefect — the day of business left the simulator's
   clock past 10:00 the next day, when bills are ready — then print the exceptions and the alert the
   webhook got. The run asks WeChat Pay (补单) about the exceptions whose truth it decides.
5. Resolve the injected amount mismatch through the workbench — the code of ``wxrecon exceptions resolve``
   — and run the day again: the second alert counts one exception fewer.

The warehouse, archive, notification log and the merchant's records stay under ``data_dir``
(default ``var/``), where ``./scripts/notebooks`` opens them. Business times follow the
simulator's clock, callbacks included (``callback_clock="business"``), so the day reconciled is
"yesterday" whatever the wall clock says.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flows.clock import Clock, wall_clock, yesterday
from flows.notifications import NotificationLog, ReceiverMerchant, create_app, serve_receiver
from flows.recon.classes import QUERYABLE
from flows.recon.workbench import resolve_with_settings
from flows.report import exceptions_of_day
from flows.settings import Settings
from flows.sources import LocalOrdersSource, LocalRefundsSource
from wxpay.models import BEIJING
from wxpay.sim import SimOptions, Simulator, VirtualClock, create_business_day, serve

MARKER = ".wxrecon-demo"
INJECTED = {"amount_mismatch", "missing_locally", "notification_unverified", "notification_duplicate"}


class AlertInbox:
    """A local JSON webhook (apprise ``json://``) that keeps what it receives."""

    def __init__(self):
        self.received: list[dict[str, Any]] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                inbox.received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def apprise_url(self) -> str:
        return "json://" + self.url.removeprefix("http://")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class DemoResult:
    bill_date: date
    outcome: Any
    exceptions: list[dict[str, Any]]  # as the first run found them
    alerts: list[dict[str, Any]]  # the first run's alert, then the re-run's
    data_dir: Path
    resolved: dict[str, Any] | None = None  # the exception resolved through the workbench
    rerun: Any = None  # the re-run's outcome

    @property
    def as_injected(self) -> bool:
        """True when the run found exactly the injected discrepancies."""
        return {e["class"] for e in self.exceptions} == INJECTED and len(self.exceptions) == len(INJECTED)


def prepare(data_dir: Path) -> None:
    """Make ``data_dir`` a fresh demo folder; refuse to touch a folder the demo did not create."""
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / MARKER).exists():
        raise FileExistsError(f"{data_dir} holds data the demo did not write; choose another --data-dir")
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / MARKER).write_text("written by `wxrecon demo`; safe to delete\n")


def run_demo(data_dir: Path = Path("var"), *, say=print, seed: int = 2026, clock: Clock = wall_clock) -> DemoResult:
    """Run the demo end to end; see the module docstring. The business day is the day before ``clock``'s."""
    from flows.nightly import run_day, using

    data_dir = Path(data_dir)
    prepare(data_dir)
    day = yesterday(clock)
    sim = Simulator.with_merchants(
        3,
        options=SimOptions(seed=seed, callback_clock="business"),
        clock=VirtualClock(datetime.combine(day, datetime.min.time(), BEIJING) + timedelta(hours=8, minutes=30)),
    )
    initiator = next(iter(sim.merchants.values()))
    credentials = data_dir / "demo-credentials"  # simulator test credentials, not real ones
    for merchant in sim.merchants.values():
        merchant.export(credentials)
    log = NotificationLog(data_dir / "notifications")
    business_seconds = lambda: sim.clock.now().timestamp()  # noqa: E731 - the simulated world's one clock
    receiver_app = create_app(
        {initiator.mchid: ReceiverMerchant(initiator.verifier(clock=business_seconds), initiator.api_v3_key)},
        log,
        clock=sim.clock.now,
    )
    inbox = AlertInbox()
    with serve(sim) as sim_server, serve_receiver(receiver_app) as receiver:
        say(f"WeChat Pay simulator  {sim_server.url}")
        say(f"notification receiver {receiver.url}/wxpay/notify/{initiator.mchid}")
        say(f"alert webhook         {inbox.url}")
        say(f"business day          {day} (Beijing); merchants {', '.join(sim.merchants)}")
        # the shop's day through the signed API; a forged callback arrives first for the 7th order (WeChat Pay's
        # genuine retry comes 15 s later) and the 11th order's callback is delivered twice
        business = create_business_day(
            sim,
            day,
            orders=36,
            seed=seed,
            notify_url=f"{receiver.url}/wxpay/notify/{initiator.mchid}",
            notify_faults={7: "wrong_key", 11: "duplicate"},
        )
        book = business.book
        acknowledged = sum(1 for d in sim.deliveries if d.acknowledged)  # logged durably before each answer
        edited = next(r for r in book.orders.values() if r["combine_out_trade_no"] == business.paid[3])
        edited["amount_fen"] += 100
        dropped = [r for r in book.orders.values() if r["combine_out_trade_no"] == business.paid[5]][-1]
        del book.orders[(dropped["mchid"], dropped["out_trade_no"])]
        say(f"{len(book.orders)} sub orders recorded by the merchant; {acknowledged} callbacks acknowledged")
        say(
            f"injected: local amount of {edited['out_trade_no']} +¥1.00; local record of {dropped['out_trade_no']} "
            "deleted; a forged callback; a duplicate callback"
        )
        orders_file, refunds_file = book.write_parquet(data_dir / "local")
        settings = demo_settings(
            sim, sim_server.url, credentials, data_dir, orders_file, refunds_file, inbox.apprise_url
        )
        say(f"running reconcile_day({day}) under Prefect ...")
        with using(settings, clock=sim.clock.now):  # the simulated world's clock is the run's clock
            outcome = run_day(day)
            exceptions = exceptions_of_day(settings.warehouse_path, day)
            resolved = resolve_one(settings, exceptions, say)
            say(f"running reconcile_day({day}) again ...")
            rerun = run_day(day)
    inbox.close()
    sim.close()
    return DemoResult(day, outcome, exceptions, inbox.received, data_dir, resolved, rerun)


DEMO_NOTE = "demo: the customer paid the ¥1.00 difference in cash at the counter"


def resolve_one(settings: Settings, exceptions: list[dict[str, Any]], say) -> dict[str, Any] | None:
    """Resolve the injected amount mismatch as ``wxrecon exceptions resolve ID --kind explained --note …`` does."""
    target = next((e for e in exceptions if e["class"] == "amount_mismatch"), None)
    if target is None:
        return None
    say(
        f"wxrecon exceptions resolve {target['exception_id'][:12]} --kind explained --note {DEMO_NOTE!r}"
        f"   # {target['class']} {target['item_key']}"
    )
    resolve_with_settings(settings, [target["exception_id"]], kind="explained", note=DEMO_NOTE, actor="demo")
    return target


def demo_settings(
    sim: Simulator, base_url: str, credentials: Path, data_dir: Path, orders: Path, refunds: Path, alert_url: str
) -> Settings:
    merchants = []
    for n, merchant in enumerate(sim.merchants.values()):
        folder = credentials / merchant.mchid
        merchants.append(
            {
                "mchid": merchant.mchid,
                "appid": merchant.appid,
                "merchant_serial_no": merchant.merchant_serial,
                "private_key_file": folder / "apiclient_key.pem",
                "api_v3_key_file": folder / "apiv3_key.txt",
                "wechatpay_public_key_id": merchant.public_key_id,
                "wechatpay_public_key_file": folder / "wechatpay_public_key.pem",
                "receives_notifications": n == 0,
                "contracted_fee_rate": f"{merchant.fee_rate_bp / 100:.2f}%",
            }
        )
    return Settings(
        api_base_url=base_url,
        merchants=merchants,
        data_dir=data_dir,
        local_orders=LocalOrdersSource(kind="parquet", paths=(str(orders),)),
        local_refunds=LocalRefundsSource(kind="parquet", paths=(str(refunds),)),
        alerts={"urls": [alert_url], "max_count": 0, "max_amount_fen": 0},
        bill_retry_seconds=1,
        bill_ready_deadline_hours=0.01,
        query_classes=list(QUERYABLE),  # 补单 after the recon: ask WeChat Pay where its view decides
        query_retry_seconds=0.2,
    )
