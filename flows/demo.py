"""``wxrecon demo``: the whole product on loopback, with no configuration.

1. Start the WeChat Pay simulator (three merchants: one combine initiator, all three take part
   in sub orders), the merchant's notification receiver and a local alert webhook.
2. A small "merchant app" creates a realistic business day of combine orders — some left
   unpaid, some closed, some refunded, one paid a minute after midnight — and keeps its own
   records, marking orders paid when a verified callback arrives, as real shops do.
3. Inject four discrepancies: a local amount edited, a local record missing, a forged callback,
   a duplicate callback.
4. Move the simulator's clock past 10:00 the next day and run the nightly flow
   (``reconcile_day``) under Prefect, then print the exceptions and the alert the webhook got.

The warehouse, archive, notification log and the merchant's records stay under ``data_dir``
(default ``var/``), where ``./scripts/notebooks`` opens them. Business times follow the
simulator's clock, callbacks included (``callback_clock="business"``), so the day reconciled is
"yesterday" whatever the wall clock says.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.clock import Clock, wall_clock, yesterday
from flows.notifications import NotificationLog, ReceiverMerchant, create_app, serve_receiver
from flows.settings import Settings
from flows.sources import LOCAL_ORDER_SCHEMA, LOCAL_REFUND_SCHEMA, LocalOrdersSource, LocalRefundsSource
from wxpay import Client, CombineNativeRequest, CombinePaymentNotification
from wxpay.models import BEIJING
from wxpay.sim import SimOptions, Simulator, VirtualClock, serve

MARKER = ".wxrecon-demo"
DESCRIPTIONS = (
    "Python 数据工程课程",
    "配套练习册",
    "年度会员",
    "咖啡豆 500g",
    "手冲壶",
    "机械键盘",
    "数据可视化讲座门票",
    "会计实务（第三版）",
    "午餐套餐",
    "停车费",
)
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
class MerchantApp:
    """The merchant's own system: it writes what it asked WeChat Pay for and what callbacks told it."""

    orders: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    notified: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)

    def created(self, request: CombineNativeRequest, at: datetime) -> None:
        with self.lock:
            for sub in request.sub_orders:
                self.orders[(sub.mchid, sub.out_trade_no)] = {
                    "combine_out_trade_no": request.combine_out_trade_no,
                    "out_trade_no": sub.out_trade_no,
                    "mchid": sub.mchid,
                    "amount_fen": sub.amount.total_amount,
                    "status": "NOTPAY",
                    "created_at": at,
                    "paid_at": None,
                    "transaction_id": None,
                    "attach": sub.attach,
                    "description": sub.description,
                }

    def on_notification(self, note: CombinePaymentNotification) -> None:
        """The receiver's hook: a verified, decrypted payment notification."""
        with self.lock:
            for sub in note.order.sub_orders:
                row = self.orders.get((sub.mchid, sub.out_trade_no))
                if row is not None and sub.trade_state == "SUCCESS":
                    row.update(status="SUCCESS", paid_at=sub.success_time, transaction_id=sub.transaction_id)
            self.notified += 1
            self.lock.notify_all()

    def wait_for_notifications(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` notifications reached the hook (hooks run just after each 204)."""
        with self.lock:
            return self.lock.wait_for(lambda: self.notified >= count, timeout)

    def closed(self, request: CombineNativeRequest) -> None:
        with self.lock:
            for sub in request.sub_orders:
                self.orders[(sub.mchid, sub.out_trade_no)]["status"] = "CLOSED"

    def refunded(self, mchid: str, out_trade_no: str, refund, at: datetime) -> None:
        with self.lock:
            self.orders[(mchid, out_trade_no)]["status"] = "REFUND"
            self.refunds.append(
                {
                    "out_refund_no": refund.out_refund_no,
                    "out_trade_no": out_trade_no,
                    "mchid": mchid,
                    "amount_fen": refund.amount,
                    "status": "SUCCESS",
                    "created_at": at,
                    "succeeded_at": refund.succeeded_at,
                }
            )

    def export(self, folder: Path) -> tuple[Path, Path]:
        """The merchant's database, exported as Parquet (what the pipeline reads)."""
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            orders = pa.Table.from_pylist(list(self.orders.values()), schema=LOCAL_ORDER_SCHEMA)
            refunds = pa.Table.from_pylist(self.refunds, schema=LOCAL_REFUND_SCHEMA)
        pq.write_table(orders, folder / "orders.parquet")
        pq.write_table(refunds, folder / "refunds.parquet")
        return folder / "orders.parquet", folder / "refunds.parquet"


@dataclass
class DemoResult:
    bill_date: date
    outcome: Any
    exceptions: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    data_dir: Path

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


def _business_day(sim: Simulator, app: MerchantApp, client: Client, notify_url: str, day: date, rng: random.Random):
    """Orders through the day; returns what to inject on (out_trade_no values)."""
    initiator, *others = sim.merchants.values()
    mchids = [m.mchid for m in (initiator, *others)]
    moments = sorted(
        datetime.combine(day, datetime.min.time(), BEIJING) + timedelta(minutes=rng.randint(540, 1400))
        for _ in range(36)
    )
    paid: list[CombineNativeRequest] = []
    for n, moment in enumerate(moments, start=1):
        sim.clock.set(max(moment, sim.clock.now()))
        number = f"D{day:%Y%m%d}{n:04d}"
        parts = rng.sample(mchids, rng.choice((2, 2, 3)))
        request = CombineNativeRequest(
            combine_appid=initiator.appid,
            combine_mchid=initiator.mchid,
            combine_out_trade_no=number,
            notify_url=notify_url,
            sub_orders=[
                {
                    "mchid": m,
                    "attach": f"cmb={number}",
                    "amount": {"total_amount": rng.randint(990, 299900)},
                    "out_trade_no": f"{number}S{i}",
                    "description": rng.choice(DESCRIPTIONS),
                }
                for i, m in enumerate(parts, start=1)
            ],
        )
        client.combine.create_native(request)
        app.created(request, sim.clock.now())
        fate = rng.random()
        if n == 7:  # a forged callback arrives first; WeChat Pay's genuine retry comes 15 s later
            sim.faults.add("notify", "wrong_key")
        if n == 11:  # the same callback delivered twice
            sim.faults.add("notify", "duplicate")
        if fate < 0.12 and n not in (7, 11):
            continue  # never paid
        if fate < 0.2 and n not in (7, 11):
            sim.advance(timedelta(minutes=6))
            client.combine.close(number, request)
            app.closed(request)
            continue
        sim.advance(timedelta(seconds=rng.randint(20, 240)))
        sim.pay(initiator.mchid, number)
        sim.advance(15)  # retries of refused callbacks fall due
        paid.append(request)
    for request in rng.sample(paid[:-1], 3):  # refunds submitted the same day
        sub = request.sub_orders[0]
        sim.clock.set(max(sim.clock.now(), datetime.combine(day, datetime.min.time(), BEIJING) + timedelta(hours=23)))
        refund = sim.refund(sub.mchid, sub.out_trade_no, sub.amount.total_amount // 2)
        app.refunded(sub.mchid, sub.out_trade_no, refund, sim.clock.now())
    # a combine order created a minute before midnight and paid after it: the next day's bill
    sim.clock.set(datetime.combine(day, datetime.min.time(), BEIJING) + timedelta(hours=23, minutes=59))
    number = f"D{day:%Y%m%d}9999"
    request = CombineNativeRequest(
        combine_appid=initiator.appid,
        combine_mchid=initiator.mchid,
        combine_out_trade_no=number,
        notify_url=notify_url,
        sub_orders=[
            {
                "mchid": m,
                "attach": f"cmb={number}",
                "amount": {"total_amount": a},
                "out_trade_no": f"{number}S{i}",
                "description": "夜宵",
            }
            for i, (m, a) in enumerate(((mchids[1], 3800), (mchids[2], 1200)), start=1)
        ],
    )
    client.combine.create_native(request)
    app.created(request, sim.clock.now())
    sim.advance(timedelta(minutes=2))
    sim.pay(initiator.mchid, number)
    return paid


def run_demo(data_dir: Path = Path("var"), *, say=print, seed: int = 2026, clock: Clock = wall_clock) -> DemoResult:
    """Run the demo end to end; see the module docstring. The business day is the day before ``clock``'s."""
    from flows.nightly import run_day, using

    data_dir = Path(data_dir)
    prepare(data_dir)
    rng = random.Random(seed)  # noqa: S311 - demo data
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
    app = MerchantApp()
    log = NotificationLog(data_dir / "notifications")
    business_seconds = lambda: sim.clock.now().timestamp()  # noqa: E731 - the simulated world's one clock
    receiver_app = create_app(
        {initiator.mchid: ReceiverMerchant(initiator.verifier(clock=business_seconds), initiator.api_v3_key)},
        log,
        hook=app.on_notification,
        clock=sim.clock.now,
    )
    inbox = AlertInbox()
    with serve(sim) as sim_server, serve_receiver(receiver_app) as receiver:
        say(f"WeChat Pay simulator  {sim_server.url}")
        say(f"notification receiver {receiver.url}/wxpay/notify/{initiator.mchid}")
        say(f"alert webhook         {inbox.url}")
        say(f"business day          {day} (Beijing); merchants {', '.join(sim.merchants)}")
        with Client(base_url=sim_server.url, **initiator.client_kwargs()) as client:
            paid = _business_day(sim, app, client, f"{receiver.url}/wxpay/notify/{initiator.mchid}", day, rng)
        expected = sum(1 for d in sim.deliveries if d.acknowledged)
        app.wait_for_notifications(expected, timeout=10)
        edited = paid[3].sub_orders[0]
        app.orders[(edited.mchid, edited.out_trade_no)]["amount_fen"] += 100
        dropped = paid[5].sub_orders[-1]
        del app.orders[(dropped.mchid, dropped.out_trade_no)]
        say(f"{len(app.orders)} sub orders recorded by the merchant; {expected} callbacks acknowledged")
        say(
            f"injected: local amount of {edited.out_trade_no} +¥1.00; local record of {dropped.out_trade_no} "
            "deleted; a forged callback; a duplicate callback"
        )
        orders_file, refunds_file = app.export(data_dir / "local")
        sim.clock.set(
            datetime.combine(day + timedelta(days=1), datetime.min.time(), BEIJING) + timedelta(hours=10, minutes=5)
        )
        settings = demo_settings(
            sim, sim_server.url, credentials, data_dir, orders_file, refunds_file, inbox.apprise_url
        )
        say(f"running reconcile_day({day}) under Prefect ...")
        with using(settings, clock=sim.clock.now):  # the simulated world's clock is the run's clock
            outcome = run_day(day)
    inbox.close()
    sim.close()
    from flows.report import exceptions_of_day

    exceptions = exceptions_of_day(settings.warehouse_path, day)
    return DemoResult(day, outcome, exceptions, inbox.received, data_dir)


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
                "api_v3_key": merchant.api_v3_key,
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
    )
