"""The protocol demo on the simulator: create → QR in the terminal → pay → notification → query.

Everything runs on loopback: the simulator on one port, a merchant ``notify_url`` receiver
on another, the client in between, exactly as with the real WeChat Pay.
"""

from __future__ import annotations

import queue
from datetime import datetime

import httpx

from wxpay import qr
from wxpay.client import Client
from wxpay.errors import OrderPaidError, WxPayError
from wxpay.models import BEIJING, CombineNativeRequest
from wxpay.notify import failure_reply, parse_notification, success_reply
from wxpay.sim.clock import VirtualClock
from wxpay.sim.server import serve
from wxpay.sim.simulator import SimOptions, Simulator


class _Receiver:
    """A minimal merchant notify_url: verify, decrypt, hand over, acknowledge."""

    def __init__(self, merchant):
        self.merchant = merchant
        self.received: queue.Queue = queue.Queue()

    def handle(self, request: httpx.Request) -> httpx.Response:
        try:
            note = parse_notification(
                request.headers, request.content, verifier=self.merchant.verifier(), api_v3_key=self.merchant.api_v3_key
            )
        except WxPayError as exc:
            self.received.put(exc)
            reply = failure_reply(type(exc).__name__)
        else:
            self.received.put(note)
            reply = success_reply()
        return httpx.Response(reply.status, content=reply.body, headers=reply.headers)


def run_demo(print_=print) -> dict:
    now = datetime.now(BEIJING).replace(microsecond=0)
    sim = Simulator.with_merchants(3, options=SimOptions(seed=2026), clock=VirtualClock(now))
    initiator, *participants = sim.merchants.values()
    receiver = _Receiver(initiator)
    number = "C" + now.strftime("%Y%m%d%H%M%S")
    with (
        serve(sim) as sim_server,
        serve(receiver) as receiver_server,
        Client(base_url=sim_server.url, **initiator.client_kwargs()) as client,
    ):
        print_(f"WeChat Pay simulator on {sim_server.url}; merchant notify_url on {receiver_server.url}/notify")
        request = CombineNativeRequest(
            combine_appid=initiator.appid,
            combine_mchid=initiator.mchid,
            combine_out_trade_no=number,
            notify_url=f"{receiver_server.url}/notify",
            sub_orders=[
                {
                    "mchid": participants[0].mchid,
                    "attach": f"cmb={number}",
                    "amount": {"total_amount": 12800},
                    "out_trade_no": number + "A",
                    "description": "Python 数据工程课程",
                },
                {
                    "mchid": participants[1].mchid,
                    "attach": f"cmb={number}",
                    "amount": {"total_amount": 3550},
                    "out_trade_no": number + "B",
                    "description": "配套练习册",
                },
            ],
        )
        code_url = client.combine.create_native(request)
        print_(f"\n1. created combine order {number} (¥{request.total_amount / 100:.2f}); code_url {code_url}")
        print_(qr.terminal(code_url))
        print_("2. the payer scans and pays (simulator admin call /sim/pay)")
        httpx.post(
            f"{sim_server.url}/sim/pay", json={"combine_mchid": initiator.mchid, "combine_out_trade_no": number}
        ).raise_for_status()
        note = receiver.received.get(timeout=10)
        if isinstance(note, Exception):
            raise note
        print_(f"3. notification {note.id} verified (key {note.serial}) and decrypted:")
        for sub in note.order.sub_orders:
            print_(
                f"   {sub.mchid} {sub.out_trade_no} {sub.trade_state} {sub.amount.total_amount} fen "
                f"transaction {sub.transaction_id} at {sub.success_time.isoformat()}"
            )
        order = client.combine.query(number)
        print_(f"4. query: {order.trade_state}, {order.total_amount} fen in {len(order.sub_orders)} sub orders")
        try:
            client.combine.close(number, request)
        except OrderPaidError as exc:
            print_(f"5. closing the paid order is refused, as it should be: {exc.code} (Request-ID {exc.request_id})")
    sim.close()
    return {"combine_out_trade_no": number, "trade_state": order.trade_state, "notification_id": note.id}
