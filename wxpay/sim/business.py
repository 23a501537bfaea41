"""A realistic day of business, created through the real API (``POST /sim/business``, ``python -m wxpay.sim business``).

As the combine initiator, a shop creates Native combine orders over one Beijing day by signed requests to
the simulator's own ``/v3/combine-transactions/native``: a :class:`wxpay.Client` on
``httpx.MockTransport(sim.handle)`` with the merchant's own credentials, the path a real merchant takes.
Sub orders span the merchants of the initiator's appid. Payers scan and pay most orders (``sim.pay``); some
stay unpaid; some are closed through the API; a few paid sub orders are partly refunded late in the evening
(``sim.refund``); one order is created a minute before midnight and paid a minute after it (it belongs to
the next day's bill). After each payment the shop queries the order through the API and writes down what it
answered (:class:`~wxpay.sim.records.MerchantBook`), so its records hold what a shop's database would.

The business clock is moved through the day (set back first if it was later), delivering due notifications
on the way, and left where the day's bills are ready (``bill_ready_hour`` the next day, 5 minutes past) or
where it was before, whichever is later. Deterministic for a seed: which orders, their numbers, amounts,
times and fates (ids drawn by the simulator follow its own seed).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from wxpay.client import Client
from wxpay.models import BEIJING, CombineNativeRequest, format_rfc3339
from wxpay.sim.records import MerchantBook
from wxpay.sim.state import SimApiError

if TYPE_CHECKING:
    from wxpay.sim.simulator import Simulator

__all__ = ["DEFAULT_NOTIFY_URL", "MAX_ORDERS", "BusinessDay", "create_business_day"]

DEFAULT_NOTIFY_URL = "http://127.0.0.1:8080/wxpay/notify/{mchid}"
"""Where callbacks go unless told: ``wxrecon receiver`` with its default host and port."""
MAX_ORDERS = 1000
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


@dataclass
class BusinessDay:
    """What a day of business created: the combine orders by fate, and the shop's records of them."""

    day: date
    seed: int
    combine_mchid: str
    notify_url: str
    book: MerchantBook
    paid: list[str]  # combine_out_trade_no, in the order they were paid on the day
    unpaid: list[str]
    closed: list[str]
    paid_after_midnight: list[str]  # created on the day, paid on the next one
    clock: datetime  # the business clock when the day was done

    def to_json(self) -> dict[str, Any]:
        """The admin call's answer (see :func:`create_business_day`)."""
        return {
            "day": self.day.isoformat(),
            "seed": self.seed,
            "combine_mchid": self.combine_mchid,
            "notify_url": self.notify_url,
            "combine_orders": {
                "paid": self.paid,
                "unpaid": self.unpaid,
                "closed": self.closed,
                "paid_after_midnight": self.paid_after_midnight,
            },
            "clock": format_rfc3339(self.clock),
            **self.book.to_json(),
        }


def create_business_day(
    sim: Simulator,
    day: date,
    *,
    orders: int = 36,
    seed: int = 0,
    notify_url: str | None = None,
    combine_mchid: str | None = None,
    notify_faults: Mapping[int, str] | None = None,
) -> BusinessDay:
    """Create ``orders`` combine orders on ``day`` (Beijing) plus one paid after midnight; see the module docstring.

    ``combine_mchid`` is the initiator (default: the simulator's first merchant); ``notify_url`` receives the
    callbacks (default :data:`DEFAULT_NOTIFY_URL`). ``notify_faults`` maps an order's number (1-based) to a
    ``notify`` fault for its first callback (the demo's forged and duplicated callbacks); such orders are
    always paid. Raises :class:`SimApiError` for a bad request, and whatever the API raises on the way.
    """
    if not 1 <= orders <= MAX_ORDERS:
        raise SimApiError(400, "PARAM_ERROR", f"orders must be between 1 and {MAX_ORDERS}, not {orders}")
    initiator = sim.merchant(combine_mchid) if combine_mchid else next(iter(sim.merchants.values()), None)
    if initiator is None:
        raise SimApiError(400, "PARAM_ERROR", "the simulator has no merchants")
    mchids = [initiator.mchid] + [
        m.mchid for m in sim.merchants.values() if m.appid == initiator.appid and m != initiator
    ]
    if len(mchids) < 2:
        raise SimApiError(400, "PARAM_ERROR", f"a combine order needs two merchants of appid {initiator.appid}")
    numbers = [f"D{day:%Y%m%d}{n:04d}" for n in range(1, orders + 1)]
    late = f"D{day:%Y%m%d}9999"
    if any((initiator.mchid, no) in sim.ledger.orders for no in (numbers[0], late)):
        raise SimApiError(400, "INVALID_REQUEST", f"the business of {day} was already created in this simulator")
    notify_url = notify_url or DEFAULT_NOTIFY_URL.format(mchid=initiator.mchid)
    faults = dict(notify_faults or {})
    rng = random.Random(seed)  # noqa: S311 - simulated business, not security
    midnight = datetime.combine(day, datetime.min.time(), BEIJING)
    moments = sorted(midnight + timedelta(minutes=rng.randint(540, 1400)) for _ in numbers)
    fates = _fates(rng, orders, forced_paid=set(faults))
    requests = [
        _request(initiator.appid, initiator.mchid, no, notify_url, _sub_orders(rng, no, mchids)) for no in numbers
    ]
    business = BusinessDay(day, seed, initiator.mchid, notify_url, MerchantBook(), [], [], [], [], midnight)
    before = sim.clock.now()
    kwargs = initiator.client_kwargs(clock=sim.wall_clock)
    with Client(transport=httpx.MockTransport(sim.handle), **kwargs) as client:
        _move_to(sim, midnight + timedelta(hours=8, minutes=30))
        for n, (moment, request, fate) in enumerate(zip(moments, requests, fates, strict=True), start=1):
            _move_to(sim, max(moment, sim.clock.now()))
            client.combine.create_native(request)
            business.book.created(request, sim.clock.now())
            if n in faults:
                sim.faults.add("notify", faults[n])
            if fate == "unpaid":
                business.unpaid.append(request.combine_out_trade_no)
            elif fate == "closed":
                sim.advance(timedelta(minutes=6))
                client.combine.close(request.combine_out_trade_no, request)
                business.book.closed(request)
                business.closed.append(request.combine_out_trade_no)
            else:
                sim.advance(timedelta(seconds=rng.randint(20, 240)))
                _pay(sim, client, business, request)
                sim.advance(15)  # retries of refused callbacks fall due
                business.paid.append(request.combine_out_trade_no)
        _refunds(sim, business, requests, rng, midnight + timedelta(hours=23))
        _move_to(sim, midnight + timedelta(hours=23, minutes=59))
        request = _request(
            initiator.appid,
            initiator.mchid,
            late,
            notify_url,
            [(mchids[1], 3800, "夜宵"), (mchids[2 % len(mchids)], 1200, "夜宵")],
        )
        client.combine.create_native(request)
        business.book.created(request, sim.clock.now())
        sim.advance(timedelta(minutes=2))
        _pay(sim, client, business, request)
        business.paid_after_midnight.append(late)
    ready = midnight + timedelta(days=1, hours=sim.options.bill_ready_hour, minutes=5)
    _move_to(sim, max(ready, before))
    business.clock = sim.clock.now()
    return business


def _fates(rng: random.Random, orders: int, forced_paid: set[int]) -> list[str]:
    """About 12 % unpaid and 8 % closed (at least one of each from four orders on), the rest paid."""
    free = [n for n in range(1, orders + 1) if n not in forced_paid]
    unpaid = max(1, orders * 12 // 100) if orders >= 4 else 0
    closed = max(1, orders * 8 // 100) if orders >= 4 else 0
    chosen = rng.sample(free, min(len(free), unpaid + closed))
    fate = dict.fromkeys(chosen[:unpaid], "unpaid") | dict.fromkeys(chosen[unpaid:], "closed")
    return [fate.get(n, "paid") for n in range(1, orders + 1)]


def _sub_orders(rng: random.Random, number: str, mchids: list[str]) -> list[tuple[str, int, str]]:
    parts = rng.sample(mchids, min(len(mchids), rng.choice((2, 2, 3))))
    return [(m, rng.randint(990, 299900), rng.choice(DESCRIPTIONS)) for m in parts]


def _request(
    appid: str, mchid: str, number: str, notify_url: str, subs: list[tuple[str, int, str]]
) -> CombineNativeRequest:
    return CombineNativeRequest(
        combine_appid=appid,
        combine_mchid=mchid,
        combine_out_trade_no=number,
        notify_url=notify_url,
        sub_orders=[
            {
                "mchid": sub_mchid,
                "attach": f"cmb={number}",
                "amount": {"total_amount": amount},
                "out_trade_no": f"{number}S{i}",
                "description": description,
            }
            for i, (sub_mchid, amount, description) in enumerate(subs, start=1)
        ],
    )


def _pay(sim: Simulator, client: Client, business: BusinessDay, request: CombineNativeRequest) -> None:
    """A payer scans and pays; the shop's payment page then asks the API how the order stands."""
    sim.pay(request.combine_mchid, request.combine_out_trade_no)
    business.book.paid(client.combine.query(request.combine_out_trade_no))


def _refunds(
    sim: Simulator, business: BusinessDay, requests: list[CombineNativeRequest], rng: random.Random, at: datetime
) -> None:
    """About one paid order in twelve (at least one, never the last paid) gets half its first sub order back."""
    refundable = set(business.paid[:-1])
    paid = [r for r in requests if r.combine_out_trade_no in refundable]
    if not paid:
        return
    _move_to(sim, max(sim.clock.now(), at))
    for request in rng.sample(paid, min(len(paid), max(1, len(requests) // 12))):
        sub = request.sub_orders[0]
        refund = sim.refund(sub.mchid, sub.out_trade_no, sub.amount.total_amount // 2)
        business.book.refunded(refund, sim.clock.now())


def _move_to(sim: Simulator, moment: datetime) -> None:
    """Forward: deliver what falls due on the way; back (a day before the clock's): just set it."""
    now = sim.clock.now()
    if moment >= now:
        sim.advance(moment - now)
    else:
        sim.clock.set(moment)
