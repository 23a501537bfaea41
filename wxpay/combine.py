"""Combine orders (合单支付), Native scene (spec §4): create, query, close."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from wxpay._operation import Operation, json_body, parse_empty, parse_model, request_id
from wxpay.errors import UnexpectedResponseError
from wxpay.models import (
    CombineCloseRequest,
    CombineNativeRequest,
    CombineOrder,
    check_out_trade_no,
    validate_request,
)

CREATE_NATIVE_PATH = "/v3/combine-transactions/native"
ORDER_PATH = "/v3/combine-transactions/out-trade-no/{combine_out_trade_no}"
CLOSE_PATH = ORDER_PATH + "/close"


def _order_path(template: str, combine_out_trade_no: str) -> str:
    check_out_trade_no(combine_out_trade_no, "combine_out_trade_no")
    return template.format(combine_out_trade_no=quote(combine_out_trade_no, safe=""))


def _code_url(response: httpx.Response) -> str:
    body = json_body(response)
    code_url = body.get("code_url") if isinstance(body, dict) else None
    if not isinstance(code_url, str) or not code_url:
        raise UnexpectedResponseError(
            response.status_code,
            "create answer has no code_url",
            body_excerpt=response.text,
            request_id=request_id(response),
        )
    return code_url


def create_native(request: CombineNativeRequest | dict[str, Any]) -> Operation[str]:
    """``POST /v3/combine-transactions/native`` → the ``code_url`` to render as a QR code."""
    body = validate_request(CombineNativeRequest, request)
    return Operation("POST", CREATE_NATIVE_PATH, _code_url, json=body.wire())


def query(combine_out_trade_no: str) -> Operation[CombineOrder]:
    """``GET /v3/combine-transactions/out-trade-no/{combine_out_trade_no}``."""
    return Operation("GET", _order_path(ORDER_PATH, combine_out_trade_no), parse_model(CombineOrder))


def close_request_for(created: CombineNativeRequest) -> CombineCloseRequest:
    """The close body matching a creation request: every sub order, as created (§4.3)."""
    return CombineCloseRequest(
        combine_appid=created.combine_appid,
        sub_orders=[{"mchid": s.mchid, "out_trade_no": s.out_trade_no} for s in created.sub_orders],
    )


def close(
    combine_out_trade_no: str, request: CombineCloseRequest | CombineNativeRequest | dict[str, Any]
) -> Operation[None]:
    """``POST .../{combine_out_trade_no}/close`` → ``204``. Pass the creation request to close it whole."""
    if isinstance(request, CombineNativeRequest):
        request = close_request_for(request)
    body = validate_request(CombineCloseRequest, request)
    return Operation("POST", _order_path(CLOSE_PATH, combine_out_trade_no), parse_empty, json=body.wire())


class CombineOrders:
    """The combine-order endpoints bound to a client's ``send`` (sync or async)."""

    def __init__(self, send: Callable[[Operation[Any]], Any]):
        self._send = send

    def create_native(self, request: CombineNativeRequest | dict[str, Any]) -> Any:
        """Create a Native combine order; returns its ``code_url``."""
        return self._send(create_native(request))

    def query(self, combine_out_trade_no: str) -> Any:
        """Query a combine order; returns a :class:`~wxpay.models.CombineOrder`."""
        return self._send(query(combine_out_trade_no))

    def close(
        self, combine_out_trade_no: str, request: CombineCloseRequest | CombineNativeRequest | dict[str, Any]
    ) -> Any:
        """Close an unpaid combine order (all sub orders, exactly as created)."""
        return self._send(close(combine_out_trade_no, request))
