"""The simulator's ledger: combine orders, their sub orders and refunds, and the state machine.

``NOTPAY`` → ``SUCCESS`` (every sub order at once, one ``success_time``, one
``transaction_id`` per sub order) | ``CLOSED`` (close, or expiry). A refund moves a paid sub
order to ``REFUND``. Business errors are :class:`SimApiError` with WeChat's status and code.
Times are business-clock times (Beijing).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from wxpay.errors import ApiError
from wxpay.models import CombineCloseRequest, CombineNativeRequest, format_rfc3339

DEFAULT_EXPIRY = timedelta(days=7)  # unpaid combine orders cannot be paid after 7 days (spec §4.1)


class SimApiError(ApiError):
    """An error answer of the simulated API (raised by the simulator's own admin methods too)."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None):
        super().__init__(status, code, message, detail=detail)


@dataclass
class SimRefund:
    refund_id: str
    out_refund_no: str
    mchid: str
    out_trade_no: str
    transaction_id: str
    amount: int  # fen
    submitted_at: datetime
    status: str = "SUCCESS"
    refund_type: str = "ORIGINAL"
    succeeded_at: datetime | None = None


@dataclass
class SimSubOrder:
    mchid: str
    out_trade_no: str
    attach: str
    description: str
    total_amount: int  # fen
    trade_state: str = "NOTPAY"
    transaction_id: str | None = None
    success_time: datetime | None = None
    refunds: list[SimRefund] = field(default_factory=list)

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds)


@dataclass
class SimCombineOrder:
    combine_appid: str
    combine_mchid: str
    combine_out_trade_no: str
    sub_orders: list[SimSubOrder]
    notify_url: str
    created_at: datetime
    time_expire: datetime
    request: dict[str, Any]
    scene_info: dict[str, Any] | None = None
    state: str = "NOTPAY"  # NOTPAY | SUCCESS | CLOSED
    payer_openid: str | None = None
    combine_transaction_id: str | None = None
    success_time: datetime | None = None

    def wire(self, *, millis: bool = False, combine_transaction_id: bool = False) -> dict[str, Any]:
        """The query answer / notification payload; fields absent while unpaid (spec §4.2)."""
        body: dict[str, Any] = {
            "combine_appid": self.combine_appid,
            "combine_mchid": self.combine_mchid,
            "combine_out_trade_no": self.combine_out_trade_no,
        }
        if combine_transaction_id and self.combine_transaction_id:
            body["combine_transaction_id"] = self.combine_transaction_id
        if self.scene_info:
            body["scene_info"] = {k: v for k, v in self.scene_info.items() if k == "device_id"}
        subs = []
        for sub in self.sub_orders:
            item: dict[str, Any] = {
                "mchid": sub.mchid,
                "trade_type": "NATIVE",
                "trade_state": sub.trade_state,
                "attach": sub.attach,
                "out_trade_no": sub.out_trade_no,
                "amount": {"total_amount": sub.total_amount, "currency": "CNY"},
            }
            if sub.success_time is not None:
                item["bank_type"] = "OTHERS"
                item["transaction_id"] = sub.transaction_id
                item["success_time"] = _time(sub.success_time, millis)
                item["amount"].update(payer_amount=sub.total_amount, payer_currency="CNY")
            subs.append(item)
        body["sub_orders"] = subs
        if self.payer_openid:
            body["combine_payer_info"] = {"openid": self.payer_openid}
        return body


def _time(moment: datetime, millis: bool) -> str:
    text = format_rfc3339(moment)
    if millis:
        return text[:19] + f".{moment.microsecond // 1000:03d}" + text[19:]
    return text


class Ledger:
    """All combine orders of the simulated WeChat Pay, keyed by (combine_mchid, combine_out_trade_no)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.orders: dict[tuple[str, str], SimCombineOrder] = {}
        self._subs: dict[tuple[str, str], SimCombineOrder] = {}  # (combine_mchid, sub out_trade_no)
        self._out_refund_nos: set[tuple[str, str]] = set()

    # ids ---------------------------------------------------------------------------------
    def _digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    def new_transaction_id(self, day: datetime) -> str:
        return "4200002601" + day.strftime("%Y%m%d") + self._digits(10)

    def new_refund_id(self, day: datetime) -> str:
        return "5030090201" + day.strftime("%Y%m%d") + self._digits(11)

    def new_openid(self) -> str:
        return "o" + "".join(self.rng.choice(string.ascii_letters + string.digits + "_-") for _ in range(27))

    # state machine ---------------------------------------------------------------------------
    def create(self, request: CombineNativeRequest, now: datetime) -> SimCombineOrder:
        key = (request.combine_mchid, request.combine_out_trade_no)
        wire = request.wire()
        existing = self.orders.get(key)
        if existing is not None:
            self.expire(existing, now)
            if existing.state == "SUCCESS":
                raise SimApiError(400, "ORDER_PAID", "该订单已支付")
            if existing.state == "CLOSED":
                raise SimApiError(400, "ORDER_CLOSED", "订单已关闭")
            if existing.request != wire:
                raise SimApiError(403, "OUT_TRADE_NO_USED", "商户订单号重复，且参数与原订单不一致")
            return existing  # same parameters before expiry: a fresh code_url for the same order
        for sub in request.sub_orders:
            if (request.combine_mchid, sub.out_trade_no) in self._subs:
                raise SimApiError(403, "OUT_TRADE_NO_USED", f"子单商户订单号 {sub.out_trade_no} 已使用")
        expire = request.time_expire or now + DEFAULT_EXPIRY
        order = SimCombineOrder(
            combine_appid=request.combine_appid,
            combine_mchid=request.combine_mchid,
            combine_out_trade_no=request.combine_out_trade_no,
            sub_orders=[
                SimSubOrder(s.mchid, s.out_trade_no, s.attach, s.description, s.amount.total_amount)
                for s in request.sub_orders
            ],
            notify_url=request.notify_url,
            created_at=now,
            time_expire=max(expire, now + timedelta(minutes=1)),
            request=wire,
            scene_info=request.scene_info.model_dump(exclude_none=True) if request.scene_info else None,
        )
        self.orders[key] = order
        for sub in order.sub_orders:
            self._subs[(order.combine_mchid, sub.out_trade_no)] = order
        return order

    def get(self, combine_mchid: str, combine_out_trade_no: str, now: datetime) -> SimCombineOrder:
        order = self.orders.get((combine_mchid, combine_out_trade_no))
        if order is None:
            raise SimApiError(404, "ORDER_NOT_EXIST", "订单不存在")
        self.expire(order, now)
        return order

    @staticmethod
    def expire(order: SimCombineOrder, now: datetime) -> None:
        if order.state == "NOTPAY" and now >= order.time_expire:
            order.state = "CLOSED"
            for sub in order.sub_orders:
                sub.trade_state = "CLOSED"

    def close(self, combine_mchid: str, combine_out_trade_no: str, request: CombineCloseRequest, now: datetime) -> None:
        order = self.get(combine_mchid, combine_out_trade_no, now)
        asked = sorted((s.mchid, s.out_trade_no) for s in request.sub_orders)
        created = sorted((s.mchid, s.out_trade_no) for s in order.sub_orders)
        if request.combine_appid != order.combine_appid or asked != created:
            raise SimApiError(400, "INVALID_REQUEST", "请求关单的子单信息与下单时的子单信息不一致")
        if order.state == "CLOSED":
            raise SimApiError(400, "ORDER_CLOSED", "订单已关闭")
        if order.state == "SUCCESS":
            raise SimApiError(400, "ORDER_PAID", "订单已支付，不能关单")
        order.state = "CLOSED"
        for sub in order.sub_orders:
            sub.trade_state = "CLOSED"

    def pay(
        self, combine_mchid: str, combine_out_trade_no: str, now: datetime, openid: str | None = None
    ) -> SimCombineOrder:
        """What happens when a payer scans the QR code and pays: every sub order succeeds at once."""
        order = self.get(combine_mchid, combine_out_trade_no, now)
        if order.state != "NOTPAY":
            raise SimApiError(
                400,
                "ORDER_PAID" if order.state == "SUCCESS" else "ORDER_CLOSED",
                f"order is {order.state}, cannot be paid",
            )
        order.state = "SUCCESS"
        order.success_time = now
        order.payer_openid = openid or self.new_openid()
        order.combine_transaction_id = "1217752501" + now.strftime("%Y%m%d") + self._digits(10)
        for sub in order.sub_orders:
            sub.trade_state = "SUCCESS"
            sub.success_time = now
            sub.transaction_id = self.new_transaction_id(now)
        return order

    def find_sub(self, mchid: str, out_trade_no: str) -> tuple[SimCombineOrder, SimSubOrder]:
        for order in self.orders.values():
            for sub in order.sub_orders:
                if sub.mchid == mchid and sub.out_trade_no == out_trade_no:
                    return order, sub
        raise SimApiError(404, "ORDER_NOT_EXIST", f"sub order {mchid}/{out_trade_no} does not exist")

    def refund(
        self,
        mchid: str,
        out_trade_no: str,
        amount: int,
        now: datetime,
        *,
        out_refund_no: str | None = None,
        status: str = "SUCCESS",
    ) -> SimRefund:
        """Record a refund on a paid sub order (simulator admin call; bills need refunds)."""
        _order, sub = self.find_sub(mchid, out_trade_no)
        if sub.trade_state not in ("SUCCESS", "REFUND") or sub.transaction_id is None:
            raise SimApiError(400, "TRADE_ERROR", f"sub order {out_trade_no} is {sub.trade_state}, not refundable")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise SimApiError(400, "PARAM_ERROR", "refund amount must be a positive integer (fen)")
        if amount > sub.total_amount - sub.refunded:
            raise SimApiError(403, "NOT_ENOUGH", "退款金额超过订单可退金额")
        number = out_refund_no or "RF" + now.strftime("%Y%m%d") + self._digits(8)
        if (mchid, number) in self._out_refund_nos:
            raise SimApiError(403, "INVALID_REQUEST", f"out_refund_no {number} already used")
        refund = SimRefund(
            refund_id=self.new_refund_id(now),
            out_refund_no=number,
            mchid=mchid,
            out_trade_no=out_trade_no,
            transaction_id=sub.transaction_id,
            amount=amount,
            submitted_at=now,
            status=status,
            succeeded_at=now + timedelta(seconds=4) if status == "SUCCESS" else None,
        )
        self._out_refund_nos.add((mchid, number))
        sub.refunds.append(refund)
        sub.trade_state = "REFUND"
        return refund
