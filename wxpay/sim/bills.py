"""Bills of the simulator (spec §5, §6, §9): apply, download, and the rows of each day.

A merchant's trade bill for day D holds, from the simulator's own ledger, one payment row
per sub order of that merchant whose ``success_time`` falls on D (Beijing calendar day, so
an order created before midnight and paid after lands on D+1), and one refund row per refund
*submitted* on D. Fees: ``round_half_up(amount × rate)`` per row, printed with 5 decimals;
refunds return the fee of the refunded amount. The fund-flow bill (``BASIC``) books each
payment net of its fee and each refund net of the returned fee, with a running balance.

The bill of day D exists from D+1 at ``options.bill_ready_hour`` (10:00) Beijing time on the
*business* clock; before that ``STATEMENT_CREATING``; a day without rows is
``NO_STATEMENT_EXIST``. A ``download_url`` carries a token that works only for the applying
merchant and only for ``options.download_lifetime`` seconds of *wall-clock* time. The
download is not signed. Benchmarks publish a large pre-generated file instead of ledger rows
with :meth:`BillDesk.publish_file`; it is streamed from disk.
"""

from __future__ import annotations

import gzip
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from wxpay.billfile import fee_fen, format_rate, format_yuan
from wxpay.models import BEIJING
from wxpay.sim.billrender import render_fund_flow_bill, render_trade_bill
from wxpay.sim.keys import SimMerchant
from wxpay.sim.state import SimApiError

if TYPE_CHECKING:
    from wxpay.sim.simulator import Simulator

BILL_HISTORY = timedelta(days=92)  # bills go back about 3 months


@dataclass
class IssuedBill:
    """A download token: which merchant may fetch what, and since when (wall clock)."""

    mchid: str
    issued_at: float
    gzip: bool
    content: bytes | None = None  # the decompressed bill, rendered from the ledger
    path: Path | None = None  # or a pre-generated .gz on disk (benchmarks)


def _rate(merchant: SimMerchant) -> Decimal:
    return Decimal(merchant.fee_rate_bp) / Decimal(10000)


class BillDesk:
    """The bill endpoints, attached to a :class:`~wxpay.sim.Simulator` by :meth:`install`."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self._issued: dict[str, IssuedBill] = {}
        self._files: dict[tuple[str, str, date], tuple[Path, str]] = {}
        self._misprints: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def install(self) -> BillDesk:
        self.sim.route("GET", r"/v3/bill/tradebill", lambda sim, request, merchant: self.apply(request, merchant))
        self.sim.route("GET", r"/v3/bill/fundflowbill", lambda sim, request, merchant: self.apply(request, merchant))
        self.sim.route("GET", r"/v3/billdownload/file", lambda sim, request, merchant: self.download(request, merchant))
        return self

    def publish_file(self, mchid: str, bill_date: date, path: str | Path, sha1: str, bill_type: str = "ALL") -> None:
        """Serve a pre-generated gzip bill (and its SHA1) for (mchid, bill_type, day) instead of ledger rows."""
        with self._lock:
            self._files[(mchid, bill_type, bill_date)] = (Path(path), sha1)

    def misprint(self, mchid: str, out_trade_no: str, *, duplicate: bool = False, fee_millifen: int | None = None):
        """Make the bill print a sub order's payment row wrong: twice, or with another fee (faults for tests)."""
        with self._lock:
            self._misprints[(mchid, out_trade_no)] = {"duplicate": duplicate, "fee_millifen": fee_millifen}

    # --- rows ----------------------------------------------------------------------------------
    def trade_rows(self, mchid: str, day: date) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(payment rows, refund rows) of ``mchid``'s trade bill for ``day``."""
        merchant = self.sim.merchant(mchid)
        rate = _rate(merchant)
        payments, refunds = [], []
        with self.sim._lock:
            for order in self.sim.ledger.orders.values():
                for sub in order.sub_orders:
                    if sub.mchid != mchid or sub.success_time is None:
                        continue
                    base = {
                        "appid": order.combine_appid,
                        "mchid": sub.mchid,
                        "sub_mchid": "0",
                        "device_info": (order.scene_info or {}).get("device_id", ""),
                        "transaction_id": sub.transaction_id,
                        "out_trade_no": sub.out_trade_no,
                        "openid": order.payer_openid,
                        "trade_type": "NATIVE",
                        "bank_type": "OTHERS",
                        "currency": "CNY",
                        "description": sub.description,
                        "attach": sub.attach,
                        "fee_rate": format_rate(rate),
                        "fee_rate_remark": "",
                    }
                    if sub.success_time.astimezone(BEIJING).date() == day:
                        payments.append(
                            {
                                **base,
                                "trade_time": sub.success_time,
                                "trade_state": "SUCCESS",
                                "settlement_amount_fen": sub.total_amount,
                                "coupon_amount_fen": 0,
                                "refund_id": "0",
                                "out_refund_no": "0",
                                "refund_amount_fen": 0,
                                "recharge_coupon_refund_fen": 0,
                                "refund_type": "",
                                "refund_status": "",
                                "fee_millifen": fee_fen(sub.total_amount, rate) * 1000,
                                "order_amount_fen": sub.total_amount,
                                "requested_refund_fen": 0,
                            }
                        )
                    for refund in sub.refunds:
                        if refund.submitted_at.astimezone(BEIJING).date() != day:
                            continue
                        refunds.append(
                            {
                                **base,
                                "trade_time": refund.submitted_at,
                                "trade_state": "REFUND",
                                "settlement_amount_fen": 0,
                                "coupon_amount_fen": 0,
                                "refund_applied_at": refund.submitted_at,
                                "refund_succeeded_at": refund.succeeded_at,
                                "refund_id": refund.refund_id,
                                "out_refund_no": refund.out_refund_no,
                                "refund_amount_fen": refund.amount,
                                "recharge_coupon_refund_fen": 0,
                                "refund_type": refund.refund_type,
                                "refund_status": refund.status,
                                "fee_millifen": -fee_fen(refund.amount, rate) * 1000,
                                "order_amount_fen": 0,
                                "requested_refund_fen": refund.amount,
                            }
                        )
        for row in list(payments):
            misprint = self._misprints.get((mchid, row["out_trade_no"]))
            if misprint and misprint["fee_millifen"] is not None:
                row["fee_millifen"] = misprint["fee_millifen"]
            if misprint and misprint["duplicate"]:
                payments.append(dict(row))
        key = lambda row: (row["out_trade_no"], row["refund_id"])  # noqa: E731 - not chronological, like real files
        return sorted(payments, key=key), sorted(refunds, key=key)

    def fund_flow_rows(self, mchid: str, day: date) -> list[dict[str, Any]]:
        """The BASIC account's movements of ``mchid`` on ``day``, balance carried from every earlier movement."""
        merchant = self.sim.merchant(mchid)
        rate = _rate(merchant)
        movements: list[tuple[datetime, dict[str, Any], int]] = []
        with self.sim._lock:
            for order in self.sim.ledger.orders.values():
                for sub in order.sub_orders:
                    if sub.mchid != mchid or sub.success_time is None:
                        continue
                    fee = fee_fen(sub.total_amount, rate)
                    movements.append(
                        (
                            sub.success_time + timedelta(seconds=1),
                            {
                                "business_no": sub.transaction_id,
                                "flow_no": sub.transaction_id,
                                "business_name": "交易",
                                "business_type": "交易",
                                "direction": "收入",
                                "amount_fen": sub.total_amount - fee,
                                "applicant": "system",
                                "voucher_no": sub.out_trade_no,
                                "remark": f"结算总金额 {format_yuan(sub.total_amount)} 元;"
                                f"含手续费 {format_yuan(fee)} 元",
                            },
                            sub.total_amount - fee,
                        )
                    )
                    for refund in sub.refunds:
                        returned = fee_fen(refund.amount, rate)
                        movements.append(
                            (
                                refund.submitted_at + timedelta(seconds=1),
                                {
                                    "business_no": refund.refund_id,
                                    "flow_no": sub.transaction_id,
                                    "business_name": "退款",
                                    "business_type": "退款",
                                    "direction": "支出",
                                    "amount_fen": refund.amount - returned,
                                    "applicant": f"{mchid}API",
                                    "voucher_no": refund.out_refund_no,
                                    "remark": f"退款总金额{format_yuan(refund.amount)}元;"
                                    f"含手续费{format_yuan(returned)}元",
                                },
                                -(refund.amount - returned),
                            )
                        )
        rows, balance = [], 0
        for booked_at, row, delta in sorted(movements, key=lambda m: (m[0], m[1]["business_no"])):
            balance += delta
            if booked_at.astimezone(BEIJING).date() == day:
                rows.append({**row, "booked_at": booked_at, "balance_fen": balance})
        return rows

    # --- endpoints ---------------------------------------------------------------------------------
    def _bill_date(self, request: httpx.Request) -> date:
        text = request.url.params.get("bill_date")
        if not text:
            raise SimApiError(400, "PARAM_ERROR", "缺少参数 bill_date", {"field": "bill_date", "location": "query"})
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise SimApiError(
                400,
                "PARAM_ERROR",
                "bill_date 格式应为 yyyy-MM-DD",
                {"field": "bill_date", "value": text, "location": "query"},
            ) from None
        now = self.sim.clock.now()
        if day >= now.date() + timedelta(days=1) or day < now.date() - BILL_HISTORY:
            raise SimApiError(400, "INVALID_REQUEST", "账单日期超出可下载范围（仅支持三个月内的历史账单）")
        ready = datetime.combine(day + timedelta(days=1), datetime.min.time(), BEIJING)
        if now < ready + timedelta(hours=self.sim.options.bill_ready_hour):
            raise SimApiError(400, "STATEMENT_CREATING", "账单生成中")
        return day

    def apply(self, request: httpx.Request, merchant: SimMerchant) -> httpx.Response:
        params = request.url.params
        day = self._bill_date(request)
        tar_type = params.get("tar_type")
        if tar_type not in (None, "GZIP"):
            raise SimApiError(400, "PARAM_ERROR", "tar_type 只支持 GZIP", {"field": "tar_type", "location": "query"})
        options = {"bom": self.sim.options.bill_bom, "crlf": self.sim.options.bill_crlf}
        if request.url.path.endswith("/tradebill"):
            bill_type = params.get("bill_type", "ALL")
            if bill_type not in ("ALL", "SUCCESS", "REFUND"):
                raise SimApiError(400, "PARAM_ERROR", "bill_type 取值错误", {"field": "bill_type", "location": "query"})
            published = self._files.get((merchant.mchid, bill_type, day))
            if published is not None:
                if tar_type != "GZIP":
                    raise SimApiError(400, "PARAM_ERROR", "this published bill is served as GZIP only")
                path, sha1 = published
                return self._issue(
                    request, merchant, IssuedBill(merchant.mchid, self.sim.wall_clock(), True, path=path), sha1
                )
            payments, refunds = self.trade_rows(merchant.mchid, day)
            rows = {"ALL": payments + refunds, "SUCCESS": payments, "REFUND": refunds}[bill_type]
            if not rows:
                raise SimApiError(400, "NO_STATEMENT_EXIST", "请求的账单文件不存在")
            content = render_trade_bill(rows, bill_type=bill_type, **options)
        else:
            account = params.get("account_type", "BASIC")
            if account not in ("BASIC", "OPERATION", "FEES"):
                raise SimApiError(400, "PARAM_ERROR", "account_type 取值错误")
            rows = self.fund_flow_rows(merchant.mchid, day) if account == "BASIC" else []
            if not rows:
                raise SimApiError(400, "NO_STATEMENT_EXIST", "请求的账单文件不存在")
            content = render_fund_flow_bill(rows, **options)
        sha1 = hashlib.sha1(content).hexdigest()  # noqa: S324 - the digest WeChat Pay publishes
        issued = IssuedBill(merchant.mchid, self.sim.wall_clock(), tar_type == "GZIP", content=content)
        return self._issue(request, merchant, issued, sha1)

    def _issue(self, request: httpx.Request, merchant: SimMerchant, issued: IssuedBill, sha1: str) -> httpx.Response:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._issued[token] = issued
        origin = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
        url = f"{origin}/v3/billdownload/file?token={token}" + ("&tartype=gzip" if issued.gzip else "")
        return self.sim.respond(request, merchant, 200, {"hash_type": "SHA1", "hash_value": sha1, "download_url": url})

    def download(self, request: httpx.Request, merchant: SimMerchant) -> httpx.Response:
        with self._lock:
            issued = self._issued.get(request.url.params.get("token", ""))
        fault = self.sim.faults.take("download", issued.mchid if issued is not None else None)
        lifetime = self.sim.options.download_lifetime
        if fault == "slow":  # the first byte would come after the URL expired
            time.sleep(lifetime + 0.3)
        if issued is None or self.sim.wall_clock() - issued.issued_at > lifetime:
            raise SimApiError(400, "INVALID_REQUEST", "请按第一步申请账单的API指引，重新获取账单地址后再请求")
        if issued.mchid != merchant.mchid:
            raise SimApiError(403, "NO_AUTH", "无权下载其他商户的账单")
        headers = {
            "Request-ID": self.sim._request_id(),
            "Content-Type": "application/x-gzip" if issued.gzip else "text/plain",
        }  # unsigned (spec §2.4)
        if issued.path is not None:
            return httpx.Response(200, headers=headers, content=self._file_chunks(issued.path, fault), request=request)
        content = issued.content or b""
        if fault == "corrupt":
            content = content.replace(b"`", b"'", 1) if b"`" in content else content + b" "
        body = gzip.compress(content, compresslevel=6, mtime=0) if issued.gzip else content
        if fault == "truncate":
            body = body[: max(1, len(body) * 3 // 5)]
        if fault == "stall":
            return httpx.Response(200, headers=headers, content=self._stalled(body), request=request)
        return httpx.Response(200, headers=headers, content=body, request=request)

    def _stalled(self, body: bytes) -> Iterator[bytes]:
        yield body[: len(body) // 2]
        self.sim.faults.stall()
        yield body[len(body) // 2 :]

    def _file_chunks(self, path: Path, fault: str | None, size: int = 1 << 20) -> Iterator[bytes]:
        total = path.stat().st_size
        limit = total * 3 // 5 if fault == "truncate" else total
        stall_at = total // 2 if fault == "stall" else None
        sent = 0
        with path.open("rb") as handle:
            while sent < limit:
                if stall_at is not None and sent >= stall_at:
                    self.sim.faults.stall()
                    stall_at = None
                until = limit if stall_at is None else min(limit, stall_at)
                chunk = handle.read(min(size, until - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
