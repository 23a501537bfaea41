"""A simulated business day with one injected case of every reconciliation class.

Everything goes through the real parts: combine orders are created with the client against the
simulator, paid as payers would, their callbacks delivered over loopback HTTP to the real
receiver which writes the real notification log, bills applied for and loaded, and the
merchant's own records derived from what the merchant saw, then edited to inject each case.

Day D is 2026-11-26. ``EXPECTED`` lists the exception items each injection must produce.
"""

from __future__ import annotations

import json
from copy import copy
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa

import wxpay
from flows.bills import BillArchive, ingest_bill
from flows.notifications import MerchantKeys, NotificationLog, ReceiverMerchant, create_app, serve_receiver, verify_log
from flows.sources import LOCAL_ORDER_SCHEMA, LOCAL_REFUND_SCHEMA
from flows.warehouse import Lake, connect, migrate
from tests.conftest import APPID, INITIATOR, PARTICIPANTS, NotifyTransport
from wxpay.bills import BillRequest
from wxpay.models import BEIJING
from wxpay.sim import SimOptions, Simulator, VirtualClock, serve
from wxpay.sim.keys import public_pem
from wxpay.sim.notifier import envelope

D = date(2026, 11, 26)
P0, P1 = PARTICIPANTS


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=BEIJING)


# (class, item_kind, mchid, item_key): the exceptions the scenario must yield for the run as of D
EXPECTED = {
    ("amount_mismatch", "payment", P0, "CB0002S1"),
    ("missing_locally", "payment", P0, "CB0003S1"),
    ("missing_in_bill", "payment", P0, "CB0004S1"),
    ("missing_in_bill", "payment", P1, "CB0004S2"),
    ("pending", "payment", P0, "CB0005S1"),
    ("pending", "payment", P1, "CB0005S2"),
    ("status_mismatch", "payment", P0, "CB0006S1"),
    ("status_mismatch", "payment", P1, "CB0006S2"),
    ("duplicate_in_bill", "payment", P0, "CB0007S1"),
    ("combine_partial", "combine", P0, "CB0008"),
    ("status_mismatch", "payment", P1, "CB0008S2"),
    ("transaction_mismatch", "payment", P0, "CB0009S1"),
    ("notification_missing", "notification", P0, "CB0010"),
    ("notification_unverified", "notification_line", INITIATOR, None),  # the forged first delivery of CB0011
    ("notification_amount_mismatch", "notification", INITIATOR, "CB0012"),
    ("notification_duplicate", "notification_delivery", INITIATOR, None),  # CB0013 delivered twice
    ("fee_mismatch", "fee", P1, "pay:CB0014S2"),
    ("fee_mismatch", "fee", P0, "pay:CB0007S1"),  # one item for the row printed twice
    ("refund_missing_locally", "refund", P0, "CB0001S1/RF0001"),
    ("refund_amount_mismatch", "refund", P0, "CB0015S1/RF0015"),
    ("refund_missing_in_bill", "refund", P1, "CB0016S2/RF0016"),
}


@dataclass
class Scenario:
    sim: Simulator
    root: Path
    warehouse: Path | Lake  # bills and notifications loaded; no local records yet
    log: NotificationLog
    archive: BillArchive
    orders: list[dict]  # the merchant's records (canonical local order rows)
    refunds: list[dict]
    sim_url: str

    def local_tables(self) -> tuple[pa.Table, pa.Table]:
        return (
            pa.Table.from_pylist(self.orders, schema=LOCAL_ORDER_SCHEMA),
            pa.Table.from_pylist(self.refunds, schema=LOCAL_REFUND_SCHEMA),
        )

    def keys(self) -> dict[str, MerchantKeys]:
        return {
            m.mchid: MerchantKeys.from_public_key(m.public_key_id, public_pem(m.platform_keys[0].key), m.api_v3_key)
            for m in self.sim.merchants.values()
        }

    def load_day(self, day: date, *, business_now: datetime) -> None:
        """Apply for and load every merchant's trade bill of ``day``; verify the log into the warehouse."""
        self.sim.clock.set(business_now)
        con = connect(self.warehouse)
        try:
            for merchant in self.sim.merchants.values():
                with wxpay.Client(base_url=self.sim_url, **merchant.client_kwargs()) as client:
                    ingest_bill(con, client, self.archive, BillRequest.trade(day))
            verify_log(
                con, self.log, self.keys(), start=day - timedelta(days=3), end=day + timedelta(days=1), workers=1
            )
        finally:
            con.close()


def _request(number: str, amounts: tuple[int, int], notify_url: str) -> wxpay.CombineNativeRequest:
    return wxpay.CombineNativeRequest(
        combine_appid=APPID,
        combine_mchid=INITIATOR,
        combine_out_trade_no=number,
        notify_url=notify_url,
        sub_orders=[
            {
                "mchid": mchid,
                "attach": f"cmb={number}",
                "amount": {"total_amount": amount},
                "out_trade_no": f"{number}S{i}",
                "description": f"课程 {number}-{i}",
            }
            for i, (mchid, amount) in enumerate(zip(PARTICIPANTS, amounts, strict=True), start=1)
        ],
    )


class World:
    """The simulated world: WeChat Pay (the simulator) and the merchant (receiver, log, client, records).

    One business clock drives everything, callbacks included (``callback_clock="business"``).
    """

    def __init__(self, root: Path, merchant_pool, *, seed: int, start: datetime):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.sim = sim = Simulator(
            [copy(m) for m in merchant_pool[:3]],
            options=SimOptions(seed=seed, callback_clock="business"),
            clock=VirtualClock(start),
            notify_transport=NotifyTransport(),
        )
        self.log = NotificationLog(root / "notifications")
        self.initiator = initiator = sim.merchants[INITIATOR]
        business_seconds = lambda: sim.clock.now().timestamp()  # noqa: E731 - the simulated world's one clock
        app = create_app(
            {INITIATOR: ReceiverMerchant(initiator.verifier(clock=business_seconds), initiator.api_v3_key)},
            self.log,
            clock=lambda: sim.clock.now(),
        )
        self.receiver = serve_receiver(app)
        self.server = serve(sim)
        self.notify_url = f"{self.receiver.url}/wxpay/notify/{INITIATOR}"
        self.client = wxpay.Client(base_url=self.server.url, **initiator.client_kwargs())
        self.orders: list[dict] = []
        self.refunds: list[dict] = []

    def create(self, number, amounts, *, when=None):
        if when:
            self.sim.clock.set(when)
        request = _request(number, amounts, self.notify_url)
        self.client.combine.create_native(request)
        return request

    def record(self, request, *, paid_at=None, status=None):
        """The merchant's own row per sub order, as its app would have written it."""
        order = self.sim.ledger.get(INITIATOR, request.combine_out_trade_no, self.sim.clock.now())
        for sub in order.sub_orders:
            self.orders.append(
                {
                    "combine_out_trade_no": order.combine_out_trade_no,
                    "out_trade_no": sub.out_trade_no,
                    "mchid": sub.mchid,
                    "amount_fen": sub.total_amount,
                    "status": status or ("SUCCESS" if sub.success_time else "NOTPAY"),
                    "created_at": order.created_at,
                    "paid_at": paid_at or sub.success_time,
                    "transaction_id": sub.transaction_id,
                    "attach": sub.attach,
                    "description": sub.description,
                }
            )

    def row(self, out_trade_no):
        return next(r for r in self.orders if r["out_trade_no"] == out_trade_no)

    def finish(self, days, warehouse: Path | Lake | None = None) -> Scenario:
        """Load the bills of ``days`` (as of 10:00 the day after the last) and verify the log, into ``warehouse``
        (a DuckDB file under the root by default, or a DuckLake)."""
        self.client.close()
        scenario = Scenario(
            self.sim,
            self.root,
            warehouse or self.root / "warehouse.duckdb",
            self.log,
            BillArchive(self.root / "archive"),
            self.orders,
            self.refunds,
            self.server.url,
        )
        con = connect(scenario.warehouse)
        migrate(con)
        con.close()
        for day in days:
            scenario.load_day(day, business_now=at(max(days) + timedelta(days=1), 10))
        scenario._servers = (self.server, self.receiver)  # type: ignore[attr-defined]
        return scenario


def build_clean(root: Path, merchant_pool) -> Scenario:
    """A day where everything agrees: paid orders, an unpaid one, a refund known to both sides."""
    world = World(root, merchant_pool, seed=5, start=at(D, 9))
    for number, amounts in (("CL0001", (12800, 3550)), ("CL0002", (999, 1)), ("CL0003", (1250, 1250))):
        request = world.create(number, amounts)
        world.sim.advance(300)
        world.sim.pay(INITIATOR, number)
        world.record(request)
    world.record(world.create("CL0004", (500, 700)))  # never paid, and the merchant knows it
    world.sim.refund(P0, "CL0001S1", 2000, out_refund_no="RFCL0001")
    world.refunds.append(
        {
            "out_refund_no": "RFCL0001",
            "out_trade_no": "CL0001S1",
            "mchid": P0,
            "amount_fen": 2000,
            "status": "SUCCESS",
            "created_at": world.sim.clock.now(),
            "succeeded_at": world.sim.clock.now(),
        }
    )
    return world.finish([D])


def build(root: Path, merchant_pool, warehouse: Path | Lake | None = None) -> Scenario:
    """Run the simulated days; leave a warehouse with the bills of D-2..D and the verified log."""
    world = World(root, merchant_pool, seed=11, start=at(D - timedelta(days=2), 9))
    sim, initiator, orders, refunds = world.sim, world.initiator, world.orders, world.refunds
    create, record, row, notify_url = world.create, world.record, world.row, world.notify_url

    # D-2: the merchant believes CB0004 was paid; WeChat Pay never saw a payment (missing_in_bill by D)
    c4 = create("CB0004", (1500, 2500), when=at(D - timedelta(days=2), 11))
    record(c4, paid_at=at(D - timedelta(days=2), 12), status="SUCCESS")

    # D: ordinary and injected orders
    sim.clock.set(at(D, 9))
    for number, amounts in (
        ("CB0001", (12800, 3550)),
        ("CB0002", (9900, 100)),
        ("CB0003", (5000, 5000)),
        ("CB0006", (700, 800)),
        ("CB0007", (1200, 1300)),
        ("CB0008", (2100, 2200)),
        ("CB0009", (3100, 3200)),
        ("CB0014", (6000, 3333)),
        ("CB0015", (4000, 4100)),
        ("CB0016", (4500, 4600)),
    ):
        request = create(number, amounts)
        sim.advance(60)
        sim.pay(INITIATOR, number)
        record(request)
    sim.faults.add("notify", "lose")  # CB0010: WeChat Pay's callback never arrives
    request = create("CB0010", (1000, 1001))
    sim.pay(INITIATOR, "CB0010")
    record(request)

    sim.faults.add("notify", "wrong_key")  # CB0011: a forged first delivery; WeChat's retry is genuine
    request = create("CB0011", (1100, 1200))
    sim.pay(INITIATOR, "CB0011")
    sim.advance(15)
    record(request)

    sim.faults.add("notify", "lose")  # CB0012: the genuine callback is lost; a verified one with a wrong amount came
    request = create("CB0012", (1300, 1400))
    order = sim.pay(INITIATOR, "CB0012")
    record(request)
    payload = order.wire()
    payload["sub_orders"][0]["amount"] = {
        **payload["sub_orders"][0]["amount"],
        "total_amount": 1399,
        "payer_amount": 1399,
    }
    body = envelope(
        payload,
        initiator.api_v3_key,
        notification_id="f00dcafe-0000-4000-8000-000000000012",
        create_time=sim.clock.now(),
        nonce="abcdefghijkl",
    )
    headers, body = sim.signed_headers(initiator, body, callback=True)
    answer = httpx.post(notify_url, content=body, headers=headers)
    assert answer.status_code == 204, answer.text

    sim.faults.add("notify", "duplicate")  # CB0013: the same callback delivered twice
    request = create("CB0013", (1500, 1600))
    sim.pay(INITIATOR, "CB0013")
    record(request)

    # refunds submitted on D
    sim.refund(P0, "CB0001S1", 2000, out_refund_no="RF0001")  # no local record of it
    sim.refund(P0, "CB0015S1", 100, out_refund_no="RF0015")
    refunds.append(
        {
            "out_refund_no": "RF0015",
            "out_trade_no": "CB0015S1",
            "mchid": P0,
            "amount_fen": 150,
            "status": "SUCCESS",
            "created_at": sim.clock.now(),
            "succeeded_at": sim.clock.now(),
        }
    )
    refunds.append(
        {
            "out_refund_no": "RF0016",
            "out_trade_no": "CB0016S2",
            "mchid": P1,
            "amount_fen": 300,
            "status": "SUCCESS",
            "created_at": at(D - timedelta(days=2), 15),
            "succeeded_at": at(D - timedelta(days=2), 15),
        }
    )  # WeChat Pay never had it

    # CB0005: created 23:59, paid 00:00:02 on D+1 by WeChat; the merchant's clock wrote 23:59:58 on D
    request = create("CB0005", (1700, 1800), when=at(D, 23, 59))
    sim.advance(62)
    sim.pay(INITIATOR, "CB0005")
    record(request, paid_at=at(D, 23, 59, 58))

    # bills that misprint
    sim.bills.misprint(P0, "CB0007S1", duplicate=True, fee_millifen=1000)  # twice, and with a wrong fee
    sim.bills.misprint(P1, "CB0014S2", fee_millifen=99000)

    # the merchant's records, edited
    row("CB0002S1")["amount_fen"] += 100  # amount_mismatch
    orders.remove(row("CB0003S1"))  # missing_locally
    for number in ("CB0006S1", "CB0006S2"):  # status_mismatch: the app never saw the payment
        row(number)["status"], row(number)["paid_at"] = "NOTPAY", None
    row("CB0008S2")["status"], row("CB0008S2")["paid_at"] = "CLOSED", None  # combine_partial (+ status_mismatch)
    row("CB0009S1")["transaction_id"] = "4200000000000000000000000000"  # transaction_mismatch
    refunds.append(
        {
            "out_refund_no": "RF0001-other",
            "out_trade_no": "CB0002S2",
            "mchid": P1,
            "amount_fen": 1,
            "status": "CLOSED",
            "created_at": at(D, 10),
            "succeeded_at": None,
        }
    )  # a closed refund: no item

    return world.finish([D - timedelta(days=2), D - timedelta(days=1), D], warehouse)


def close(scenario: Scenario) -> None:
    for server in scenario._servers:  # type: ignore[attr-defined]
        server.stop()
    scenario.sim.close()


def dump(rows) -> str:
    return json.dumps(rows, default=str, ensure_ascii=False, indent=1)
