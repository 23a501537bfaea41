"""The simulator-only admin calls over HTTP: unsigned JSON endpoints under ``/sim/``.

Each call is one :class:`~wxpay.sim.simulator.Simulator` method (a payer paying, a refund, the business
clock, faults, deliveries, merchants, publishing a bill file) or one function of the simulator's own
(a day of business, :mod:`wxpay.sim.business`) with a JSON body in and a JSON answer out. A missing or
malformed field is a 400 ``PARAM_ERROR``; an unknown call is a 404 ``NOT_FOUND``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import httpx

from wxpay.errors import ApiError, RequestValidationError, WxPayError
from wxpay.models import format_rfc3339
from wxpay.sim.business import create_business_day
from wxpay.sim.keys import public_pem
from wxpay.sim.state import SimApiError

if TYPE_CHECKING:
    from wxpay.sim.simulator import Simulator

__all__ = ["dispatch"]


def dispatch(sim: Simulator, request: httpx.Request) -> httpx.Response:
    """Answer one ``/sim/...`` request; raises :class:`SimApiError` for the simulator to render."""
    for method, pattern, call in _CALLS:
        if pattern.fullmatch(request.url.path) and method == request.method:
            body = sim._json(request) if request.method == "POST" and request.content else {}
            try:
                result = call(sim, body)
            except (KeyError, TypeError, ValueError) as exc:
                raise SimApiError(400, "PARAM_ERROR", f"{type(exc).__name__}: {exc}") from None
            content = json.dumps(result, ensure_ascii=False).encode()
            return httpx.Response(200, content=content, headers={"Content-Type": "application/json"})
    raise SimApiError(404, "NOT_FOUND", f"no such simulator call: {request.method} {request.url.path}")


def _pay(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    order = sim.pay(body["combine_mchid"], body["combine_out_trade_no"], openid=body.get("openid"))
    return sim._wire(order)


def _refund(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    refund = sim.refund(
        body["mchid"],
        body["out_trade_no"],
        body["amount"],
        out_refund_no=body.get("out_refund_no"),
        status=body.get("status", "SUCCESS"),
    )
    return {
        "refund_id": refund.refund_id,
        "out_refund_no": refund.out_refund_no,
        "amount": refund.amount,
        "submitted_at": format_rfc3339(refund.submitted_at),
        "status": refund.status,
    }


def _clock(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    if "advance_seconds" in body:
        sim.advance(float(body["advance_seconds"]))
    elif "set" in body:
        sim.clock.set(datetime.fromisoformat(body["set"]))
    return {"now": format_rfc3339(sim.clock.now())}


def _faults(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    if "error" in body:
        e = body["error"]
        sim.faults.error(
            e["path_prefix"], int(e["status"]), e["code"], e.get("message", ""), times=int(e.get("times", 1))
        )
    elif "channel" in body:
        sim.faults.add(body["channel"], body["kind"], times=int(body.get("times", 1)), mchid=body.get("mchid"))
    elif body.get("clear"):
        sim.faults.clear()
    return {"ok": True, **sim.faults.summary()}


def _deliveries(sim: Simulator, body: dict[str, Any]) -> list[dict[str, Any]]:
    with sim._lock:
        return [d.summary() for d in sim.deliveries]


def _deliver(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    return {"attempts": len(sim.deliver_due())}


def _publish_bill(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    sim.bills.publish_file(
        body["mchid"],
        date.fromisoformat(body["bill_date"]),
        body["path"],
        body["sha1"],
        body.get("bill_type", "ALL"),
    )
    return {"ok": True}


def _business(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """A day of business through the signed API; an error of that API is answered as this call's error."""
    try:
        business = create_business_day(
            sim,
            date.fromisoformat(body["day"]),
            orders=int(body.get("orders", 36)),
            seed=int(body.get("seed", 0)),
            notify_url=body.get("notify_url"),
            combine_mchid=body.get("combine_mchid"),
        )
    except (SimApiError, RequestValidationError):  # the latter: a PARAM_ERROR (a bad notify_url, say)
        raise
    except ApiError as exc:
        code = exc.code or "SYSTEM_ERROR"
        raise SimApiError(exc.status, code, f"the day of business stopped: {exc.message}") from None
    except WxPayError as exc:
        raise SimApiError(500, "SYSTEM_ERROR", f"the day of business stopped: {type(exc).__name__}: {exc}") from None
    return business.to_json()


def _merchants(sim: Simulator, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "mchid": m.mchid,
            "appid": m.appid,
            "mode": m.mode,
            "merchant_serial_no": m.merchant_serial,
            "wechatpay_public_key_id": m.public_key_id,
            "fee_rate_bp": m.fee_rate_bp,
            "wechatpay_public_key": public_pem(m.platform_keys[0].key).decode(),
        }
        for m in sim.merchants.values()
    ]


_CALLS: list[tuple[str, re.Pattern[str], Callable[[Simulator, dict[str, Any]], Any]]] = [
    ("POST", re.compile(r"/sim/pay"), _pay),
    ("POST", re.compile(r"/sim/refund"), _refund),
    ("GET", re.compile(r"/sim/clock"), _clock),
    ("POST", re.compile(r"/sim/clock"), _clock),
    ("GET", re.compile(r"/sim/faults"), _faults),
    ("POST", re.compile(r"/sim/faults"), _faults),
    ("GET", re.compile(r"/sim/deliveries"), _deliveries),
    ("POST", re.compile(r"/sim/deliver"), _deliver),
    ("GET", re.compile(r"/sim/merchants"), _merchants),
    ("POST", re.compile(r"/sim/bills/publish"), _publish_bill),
    ("POST", re.compile(r"/sim/business"), _business),
]
