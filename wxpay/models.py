"""Typed records of the combine-order API (spec §4). Amounts are integer fen.

Request models validate strictly (what WeChat Pay would refuse, we refuse first, before
anything is sent). Response models are tolerant: unknown fields are kept, fields the docs
leave unconfirmed (``combine_transaction_id``, ``success_time`` with or without
milliseconds, fields absent while unpaid) are optional.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from wxpay.errors import RequestValidationError

BEIJING = ZoneInfo("Asia/Shanghai")
"""WeChat Pay's business time zone: bill days, bill times and order times are Beijing time."""
_UTC8 = timezone(timedelta(hours=8))

OUT_TRADE_NO_PATTERN = r"^[0-9A-Za-z_\-|*]{6,32}$"
"""6–32 characters of ``[0-9A-Za-z_-|*]`` (current merchant docs, spec §4.1)."""
_OUT_TRADE_NO = re.compile(OUT_TRADE_NO_PATTERN)
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

TradeState = Literal["SUCCESS", "REFUND", "NOTPAY", "CLOSED", "PAYERROR", "USERPAYING", "REVOKED"]


def format_rfc3339(moment: datetime) -> str:
    """``yyyy-MM-DDTHH:mm:ss+08:00``: the form WeChat Pay expects. Naive datetimes are refused."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no time zone; give an aware one (e.g. tzinfo=BEIJING)")
    return moment.astimezone(_UTC8).replace(microsecond=0).isoformat()


def check_out_trade_no(value: str, field: str = "out_trade_no") -> str:
    if not _OUT_TRADE_NO.match(value):
        raise RequestValidationError(f"{field} must be 6-32 characters of [0-9A-Za-z_-|*], got {value!r}")
    return value


def _no_four_byte_chars(value: str) -> str:
    # WeChat Pay accepts only characters encoded in 1–3 UTF-8 bytes (no emoji), spec §1.4.
    if any(ord(ch) > 0xFFFF for ch in value):
        raise ValueError("contains a character outside the Basic Multilingual Plane (4-byte UTF-8, e.g. emoji)")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bmp_only(cls, value: Any) -> Any:
        return _no_four_byte_chars(value) if isinstance(value, str) else value


class Amount(_Request):
    total_amount: StrictInt = Field(gt=0, description="fen; integer, > 0")
    currency: Literal["CNY"] = "CNY"


class SettleInfo(_Request):
    profit_sharing: bool | None = None
    subsidy_amount: StrictInt | None = Field(default=None, ge=0)


class SceneInfo(_Request):
    payer_client_ip: str = Field(max_length=45)
    device_id: str | None = Field(default=None, max_length=16)

    @field_validator("payer_client_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


class SubOrderRequest(_Request):
    mchid: str = Field(pattern=r"^[0-9]{1,32}$")
    attach: str = Field(min_length=1, max_length=128)
    amount: Amount
    out_trade_no: str = Field(pattern=OUT_TRADE_NO_PATTERN)
    description: str = Field(min_length=1, max_length=127)
    settle_info: SettleInfo | None = None
    goods_tag: str | None = Field(default=None, max_length=32)


class CombineNativeRequest(_Request):
    """``POST /v3/combine-transactions/native`` body, direct (普通商户) mode."""

    combine_appid: str = Field(min_length=1, max_length=32)
    combine_mchid: str = Field(pattern=r"^[0-9]{1,32}$")
    combine_out_trade_no: str = Field(pattern=OUT_TRADE_NO_PATTERN)
    sub_orders: list[SubOrderRequest] = Field(min_length=2, max_length=10)
    notify_url: str = Field(max_length=256)
    scene_info: SceneInfo | None = None
    time_start: AwareDatetime | None = None
    time_expire: AwareDatetime | None = None

    @field_validator("notify_url")
    @classmethod
    def _notify_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.query or parts.fragment or "?" in value:
            raise ValueError("notify_url must not carry a query string or fragment")
        if not parts.hostname:
            raise ValueError("notify_url must be an absolute URL")
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
            raise ValueError("notify_url must be https (plain http is allowed only on loopback, for the simulator)")
        return value

    @model_validator(mode="after")
    def _unique_sub_orders(self) -> CombineNativeRequest:
        numbers = [s.out_trade_no for s in self.sub_orders]
        if len(set(numbers)) != len(numbers):
            raise ValueError("sub_orders[].out_trade_no must be unique within the combine order")
        if self.time_start and self.time_expire and self.time_expire <= self.time_start:
            raise ValueError("time_expire must be after time_start")
        return self

    @field_serializer("time_start", "time_expire")
    def _rfc3339(self, value: datetime | None) -> str | None:
        return format_rfc3339(value) if value else None

    @property
    def total_amount(self) -> int:
        """Sum of the sub-order amounts, fen."""
        return sum(s.amount.total_amount for s in self.sub_orders)

    def wire(self) -> dict[str, Any]:
        """The JSON body WeChat Pay receives."""
        return self.model_dump(mode="json", exclude_none=True)


class CloseSubOrder(_Request):
    mchid: str = Field(pattern=r"^[0-9]{1,32}$")
    out_trade_no: str = Field(pattern=OUT_TRADE_NO_PATTERN)


class CombineCloseRequest(_Request):
    """``POST .../{combine_out_trade_no}/close`` body: every sub order, as created."""

    combine_appid: str = Field(min_length=1, max_length=32)
    sub_orders: list[CloseSubOrder] = Field(min_length=1, max_length=10)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --- responses --------------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class SubOrderAmount(_Response):
    total_amount: int
    currency: str = "CNY"
    payer_amount: int | None = None
    payer_currency: str | None = None


class PayerInfo(_Response):
    openid: str | None = None

    def __repr_args__(self):  # payer identifiers stay out of logs
        yield "openid", "<masked>" if self.openid else None


class SubOrder(_Response):
    mchid: str
    out_trade_no: str
    trade_state: str
    amount: SubOrderAmount
    trade_type: str | None = None
    bank_type: str | None = None
    attach: str | None = None
    success_time: AwareDatetime | None = None
    transaction_id: str | None = None
    promotion_detail: list[dict[str, Any]] | None = None
    sub_mchid: str | None = None


class CombineOrder(_Response):
    """A combine order as the query API and the payment notification describe it (§4.2, §4.4)."""

    combine_appid: str
    combine_mchid: str
    combine_out_trade_no: str
    sub_orders: list[SubOrder]
    combine_transaction_id: str | None = None
    scene_info: dict[str, Any] | None = None
    combine_payer_info: PayerInfo | None = None

    @property
    def trade_state(self) -> str:
        """The common state of the sub orders, or ``MIXED`` (WeChat pays all or none)."""
        states = {s.trade_state for s in self.sub_orders}
        return states.pop() if len(states) == 1 else "MIXED"

    @property
    def total_amount(self) -> int:
        return sum(s.amount.total_amount for s in self.sub_orders)


class EncryptedResource(_Response):
    algorithm: str
    ciphertext: str
    nonce: str
    associated_data: str = ""
    original_type: str | None = None


class NotificationEnvelope(_Response):
    """The outer JSON of a callback (§3.2): not yet decrypted."""

    id: str
    create_time: AwareDatetime
    event_type: str
    resource_type: str
    resource: EncryptedResource
    summary: str = ""


class CombinePaymentNotification(_Response):
    """A verified, decrypted combine payment notification."""

    id: str
    create_time: AwareDatetime
    event_type: str
    summary: str
    serial: str = Field(description="Wechatpay-Serial of the key that verified the callback")
    order: CombineOrder


M = TypeVar("M", bound=BaseModel)


def validate_request(model: type[M], value: M | dict[str, Any]) -> M:
    """Accept a built model, or build it from a mapping; errors join the :mod:`wxpay` tree."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise RequestValidationError(_explain(model.__name__, exc)) from None


def _explain(name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{name} is invalid: " + "; ".join(parts)
