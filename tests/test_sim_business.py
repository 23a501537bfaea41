"""The simulator's day of business (``POST /sim/business``): orders made through the signed API, the shop's
records in the canonical shape, deterministic for a seed; and ``python -m wxpay.sim business`` over loopback."""

from __future__ import annotations

import gzip
from copy import copy
from datetime import date, datetime, timedelta

import httpx
import pyarrow.parquet as pq
import pytest

import wxpay
from flows.settings import Settings
from flows.sources import (
    LOCAL_ORDER_SCHEMA,
    LOCAL_REFUND_SCHEMA,
    LocalOrdersSource,
    LocalRefundsSource,
    bill_day_window,
    read_local_orders,
    read_local_refunds,
)
from tests.conftest import INITIATOR, START, NotifyTransport
from wxpay.bills import BillRequest, fetch_bill
from wxpay.models import BEIJING
from wxpay.sim import MerchantBook, SimOptions, Simulator, VirtualClock, create_business_day
from wxpay.sim.__main__ import main as sim_main
from wxpay.sim.business import DEFAULT_NOTIFY_URL
from wxpay.sim.records import ORDER_FIELDS, REFUND_FIELDS, order_schema, refund_schema

DAY = date(2026, 11, 25)  # the day before the sim fixture's clock (2026-11-26 09:00): the clock is set back
NOTIFY = "https://merchant.example.com/wxpay/notify/1900000100"  # acknowledged by the tests' NotifyTransport


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, datetime.min.time(), BEIJING) + timedelta(hours=hh, minutes=mm)


def admin(sim: Simulator, body: dict) -> tuple[int, dict]:
    response = sim.handle(httpx.Request("POST", "http://sim/sim/business", json=body))
    return response.status_code, response.json()


def fresh_sim(merchant_pool, seed: int = 7) -> Simulator:
    return Simulator(
        [copy(m) for m in merchant_pool],
        options=SimOptions(seed=seed),
        clock=VirtualClock(START),
        notify_transport=NotifyTransport(),
    )


def test_a_day_of_business_through_the_signed_api(sim, client):
    status, day = admin(sim, {"day": DAY.isoformat(), "orders": 36, "seed": 3, "notify_url": NOTIFY})
    assert status == 200, day
    fates = day["combine_orders"]
    assert (len(fates["paid"]), len(fates["unpaid"]), len(fates["closed"])) == (30, 4, 2)
    assert fates["paid_after_midnight"] == [f"D{DAY:%Y%m%d}9999"]
    numbers = [n for group in fates.values() for n in group]
    assert sorted(numbers) == sorted({*numbers})
    assert len(numbers) == 37
    assert day["combine_mchid"] == INITIATOR
    assert day["notify_url"] == NOTIFY

    # every order exists as the initiator created it, and the API answers what the shop recorded
    rows = {(r["mchid"], r["out_trade_no"]): r for r in day["orders"]}
    assert {r["combine_out_trade_no"] for r in rows.values()} == set(numbers)
    assert {r["mchid"] for r in rows.values()} == set(sim.merchants)  # spanning the merchants
    for number in numbers:
        order = client.combine.query(number)  # a signed query, verified answer
        for sub in order.sub_orders:
            row = rows[(sub.mchid, sub.out_trade_no)]
            assert row["status"] == sub.trade_state
            assert row["amount_fen"] == sub.amount.total_amount
            assert row["transaction_id"] == sub.transaction_id
            assert row["attach"] == f"cmb={number}"
            if sub.success_time is not None:
                assert datetime.fromisoformat(row["paid_at"]) == sub.success_time
    by_state = {n: client.combine.query(n).trade_state for n in numbers}
    assert {by_state[n] for n in fates["unpaid"]} == {"NOTPAY"}
    assert {by_state[n] for n in fates["closed"]} == {"CLOSED"}
    assert {by_state[n] for n in fates["paid"]} <= {"SUCCESS", "MIXED"}  # MIXED: one sub order refunded

    # times: created over the day, paid on it; the late one created before midnight and paid after it
    for row in rows.values():
        created = datetime.fromisoformat(row["created_at"])
        assert at(DAY, 8, 30) <= created < at(DAY + timedelta(days=1), 0)
        if row["combine_out_trade_no"] in fates["paid"]:
            assert created < datetime.fromisoformat(row["paid_at"]) < at(DAY + timedelta(days=1), 0)
    late = [r for r in rows.values() if r["combine_out_trade_no"] in fates["paid_after_midnight"]]
    assert {(r["created_at"], r["paid_at"]) for r in late} == {
        ("2026-11-25T23:59:00+08:00", "2026-11-26T00:01:00+08:00")
    }

    # refunds: half of the first sub order of a few paid orders, recorded by the shop and by WeChat Pay
    assert len(day["refunds"]) == 3
    for refund in day["refunds"]:
        row = rows[(refund["mchid"], refund["out_trade_no"])]
        assert row["status"] == "REFUND"
        assert row["out_trade_no"].endswith("S1")
        assert refund["amount_fen"] == row["amount_fen"] // 2
        assert refund["status"] == "SUCCESS"
        _order, sub = sim.ledger.find_sub(refund["mchid"], refund["out_trade_no"])
        assert [r.out_refund_no for r in sub.refunds] == [refund["out_refund_no"]]

    # every paid order was notified and acknowledged; the clock is left where the day's bills are ready
    assert sorted(d.combine_out_trade_no for d in sim.deliveries) == sorted(
        fates["paid"] + fates["paid_after_midnight"]
    )
    assert all(d.acknowledged for d in sim.deliveries)
    assert day["clock"] == "2026-11-26T10:05:00+08:00" == sim.clock.now().isoformat()


def test_the_days_bills_are_ready_and_hold_what_was_paid(sim, tmp_path):
    status, day = admin(sim, {"day": DAY.isoformat(), "orders": 12, "seed": 1, "notify_url": NOTIFY})
    assert status == 200
    fates = day["combine_orders"]
    for mchid, merchant in sim.merchants.items():
        paid = {
            r["out_trade_no"]
            for r in day["orders"]
            if r["mchid"] == mchid and r["combine_out_trade_no"] in fates["paid"]
        }
        if not paid:
            continue
        with wxpay.Client(transport=httpx.MockTransport(sim.handle), **merchant.client_kwargs()) as client:
            bill = fetch_bill(client, BillRequest.trade(DAY), tmp_path / f"{mchid}.csv.gz")
        text = gzip.decompress(bill.path.read_bytes()).decode("utf-8-sig")
        assert {n for n in paid if f"`{n}," in text} == paid
        assert f"D{DAY:%Y%m%d}9999" not in text  # paid after midnight: the next day's bill


def test_the_same_seed_makes_the_same_day(merchant_pool):
    def day_of(seed: int) -> dict:
        simulator = fresh_sim(merchant_pool)
        try:
            return create_business_day(simulator, DAY, orders=20, seed=seed, notify_url=NOTIFY).to_json()
        finally:
            simulator.close()

    first, again, other = day_of(5), day_of(5), day_of(6)
    assert first == again
    assert first["orders"] != other["orders"]


def test_the_clock_ends_where_it_was_when_that_is_later(merchant_pool):
    simulator = fresh_sim(merchant_pool)
    later = START + timedelta(days=9)
    simulator.clock.set(later)
    business = create_business_day(simulator, DAY, orders=5, notify_url=NOTIFY)
    assert business.clock == later == simulator.clock.now()
    assert len(business.paid) + len(business.unpaid) + len(business.closed) == 5
    assert len(business.unpaid) == len(business.closed) == 1
    simulator.close()


def test_records_are_in_the_canonical_shape(merchant_pool, tmp_path):
    assert order_schema() == LOCAL_ORDER_SCHEMA
    assert refund_schema() == LOCAL_REFUND_SCHEMA
    simulator = fresh_sim(merchant_pool)
    business = create_business_day(simulator, DAY, orders=24, seed=2, notify_url=NOTIFY)
    simulator.close()
    answer = business.to_json()
    assert all(tuple(r) == ORDER_FIELDS for r in answer["orders"])
    assert all(tuple(r) == REFUND_FIELDS for r in answer["refunds"])
    book = MerchantBook.from_json(answer)  # what the CLI does with the admin call's answer
    assert book.to_json() == business.book.to_json()
    orders_file, refunds_file = book.write_parquet(tmp_path / "local")
    assert pq.read_schema(orders_file) == LOCAL_ORDER_SCHEMA
    start, end = bill_day_window(DAY - timedelta(days=1), 3)
    orders = read_local_orders(LocalOrdersSource(kind="parquet", paths=(str(orders_file),)), start, end)
    refunds = read_local_refunds(LocalRefundsSource(kind="parquet", paths=(str(refunds_file),)), start, end)
    assert orders.num_rows == len(answer["orders"])
    assert refunds.num_rows == len(answer["refunds"]) == 2
    assert sorted(orders.column("status").to_pylist()) == sorted(r["status"] for r in answer["orders"])


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"orders": 3}, 400, "PARAM_ERROR"),  # no day
        ({"day": "26/11/2026"}, 400, "PARAM_ERROR"),
        ({"day": DAY.isoformat(), "orders": 0}, 400, "PARAM_ERROR"),
        ({"day": DAY.isoformat(), "notify_url": "ftp://merchant.example.com/n"}, 400, "PARAM_ERROR"),
        ({"day": DAY.isoformat(), "combine_mchid": "1900009999"}, 400, "MCH_NOT_EXISTS"),
    ],
)
def test_a_bad_request_is_refused(sim, body, status, code):
    answer = admin(sim, body)
    assert answer[0] == status
    assert answer[1]["code"] == code
    assert not sim.ledger.orders


def test_a_day_is_created_once(sim):
    assert admin(sim, {"day": DAY.isoformat(), "orders": 4, "notify_url": NOTIFY})[0] == 200
    status, error = admin(sim, {"day": DAY.isoformat(), "orders": 4, "notify_url": NOTIFY})
    assert (status, error["code"]) == (400, "INVALID_REQUEST")


def test_an_api_error_on_the_way_is_the_calls_answer(sim):
    """The orders go through the real endpoint: a fault injected there stops the day with that error."""
    sim.faults.error("/v3/combine-transactions/native", 500, "SYSTEM_ERROR", "系统繁忙")
    status, error = admin(sim, {"day": DAY.isoformat(), "orders": 4, "notify_url": NOTIFY})
    assert (status, error["code"]) == (500, "SYSTEM_ERROR")
    assert "系统繁忙" in error["message"]
    assert not sim.ledger.orders


def test_the_default_notify_url_is_the_receivers_default_address():
    fields = Settings.model_fields
    receiver = f"http://{fields['receiver_host'].default}:{fields['receiver_port'].default}/wxpay/notify/{{mchid}}"
    assert receiver == DEFAULT_NOTIFY_URL


def test_the_cli_asks_a_served_simulator_and_writes_parquet(merchant_pool, tmp_path, capsys):
    simulator = fresh_sim(merchant_pool)
    with wxpay.sim.serve(simulator) as server:
        out = tmp_path / "business" / DAY.isoformat()
        code = sim_main(
            [
                *("business", "--url", server.url, "--day", DAY.isoformat(), "--orders", "8", "--seed", "4"),
                *("--notify-url", NOTIFY, "--out", str(out)),
            ]
        )
        assert code == 0
        again = sim_main(["business", "--url", server.url, "--day", DAY.isoformat(), "--out", str(out)])
        assert again == 1
    simulator.close()
    printed = capsys.readouterr()
    assert '"paid_after_midnight": 1' in printed.out
    assert "INVALID_REQUEST" in printed.err
    orders = pq.read_table(out / "orders.parquet")
    assert orders.schema == LOCAL_ORDER_SCHEMA
    assert set(orders.column("combine_out_trade_no").to_pylist()) == {
        f"D{DAY:%Y%m%d}{n:04d}" for n in (*range(1, 9), 9999)
    }
    assert pq.read_table(out / "refunds.parquet").num_rows == 1
