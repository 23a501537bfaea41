"""A deterministic, large synthetic trade ALL bill, gzip-compressed, for tests and benchmarks.

:func:`generate_trade_bill` writes ``rows`` detail rows (default 1,000,000; 5,000,000 is fine)
plus the summary block straight into a ``.gz`` file, a chunk at a time, so memory stays
bounded by ``chunk_rows``. Every column of a chunk is built with numpy and Arrow compute
kernels — no Python loop over rows — and compressed with ISA-L. The same ``seed`` gives the
same bytes.

The values look like a real merchant's day (spec §6): about 3 % refund rows (negative fee,
订单金额 0.00), Chinese product names, 28-digit transaction ids starting ``42000``, 29-digit
refund ids starting ``503``, rates 0.60/0.54/0.38/0.20 %, fees ``round_half_up(amount × rate)``
to the fen, times spread over the Beijing day and not in order. About 40 % of the refunds
refund a payment of the same day (so ``distinct_out_trade_no`` < ``row_count``); the others
refund earlier days' orders.

It returns a :class:`BillFingerprint`: what a correct loader must find in the table (row count,
refund rows, every fen sum, distinct out_trade_no) and the SHA-1 of the uncompressed bytes
(what WeChat Pay's ``hash_value`` would be). ``bad_amount_row`` prints one amount as ``3.315``
for the negative test. Run ``python -m wxpay.sim.billgen OUT.csv.gz --rows N`` to make one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip

from wxpay.billfile import BOM, HEADERS, SUMMARY_HEADERS, BillKind, format_fee, format_yuan
from wxpay.models import BEIJING

__all__ = ["BillFingerprint", "generate_trade_bill"]

PRODUCTS = (
    "精品咖啡豆 500g",
    "拿铁咖啡 大杯",
    "有机绿茶礼盒",
    "Python 进阶课程",
    "数据分析训练营",
    "年度会员",
    "月度会员",
    "无线蓝牙耳机",
    "机械键盘",
    "儿童绘本套装",
    "新鲜水果拼盘",
    "手工牛轧糖",
    "运动水杯 750ml",
    "瑜伽垫",
    "电影票 2 张",
    "外卖套餐 A",
    "外卖套餐 B",
    "云存储扩容 1TB",
    "停车费",
    "充电宝租借",
    "洗车服务",
    "宠物粮 2kg",
    "保温饭盒",
    "英语口语一对一",
    "考研资料包",
    "文创帆布包",
    "手机壳",
    "鲜花速递",
    "家政保洁 2 小时",
    "游戏点卡 100 元",
)
RATES_BP = np.array([60, 60, 60, 60, 60, 54, 38, 20], dtype=np.int64)
"""Fee rates in basis points (0.60 % = 60): mostly 0.60 %."""

_SUMS = (
    "settlement_amount_fen",
    "coupon_amount_fen",
    "refund_amount_fen",
    "recharge_coupon_refund_fen",
    "order_amount_fen",
    "requested_refund_fen",
    "fee_millifen",
)


@dataclass(frozen=True)
class BillFingerprint:
    """What the generated file holds. Sums are of the detail rows, in fen (fee in milli-fen)."""

    row_count: int
    refund_rows: int
    settlement_amount_fen: int
    coupon_amount_fen: int
    refund_amount_fen: int
    recharge_coupon_refund_fen: int
    order_amount_fen: int
    requested_refund_fen: int
    fee_millifen: int
    distinct_out_trade_no: int
    sha1: str
    """SHA-1 of the uncompressed bytes (BOM and line endings included)."""
    uncompressed_bytes: int
    bad_line: int | None = None
    """1-based line of the injected ``3.315`` amount (column 应结订单金额), if any."""

    def as_dict(self) -> dict:
        return asdict(self)


def _text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _padded(values: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(_text(values), width=width, padding="0")


def _decimal(units: np.ndarray, places: int) -> pa.Array:
    """Integer minor units -> ``-?W.FF`` text with exactly ``places`` decimals."""
    scale = 10**places
    mag = np.abs(units)
    out = pc.binary_join_element_wise(_text(mag // scale), _padded(mag % scale, places), ".")
    negative = units < 0
    if negative.any():
        out = pc.if_else(pa.array(negative), pc.binary_join_element_wise(pa.scalar("-"), out, ""), out)
    return out


def _const(value: str, n: int) -> pa.Array:
    return pa.array(np.full(n, value, dtype=object), type=pa.string()) if n else pa.array([], pa.string())


def _pick(choices: pa.Array, index: np.ndarray) -> pa.Array:
    return choices.take(pa.array(index))


@dataclass
class _Day:
    bill_date: date
    mchid: str
    appid: str
    openids: pa.Array
    products: pa.Array
    rates: pa.Array

    @property
    def ymd(self) -> str:
        return self.bill_date.strftime("%Y%m%d")

    @property
    def prev_ymd(self) -> str:
        return (self.bill_date - timedelta(days=1)).strftime("%Y%m%d")


def _openid_pool(rng: np.random.Generator, size: int) -> pa.Array:
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)
    tails = alphabet[rng.integers(0, 64, size=(size, 22))]
    raw = np.concatenate([np.broadcast_to(np.frombuffer(b"oUpF8u", np.uint8), (size, 6)), tails], axis=1)
    return pa.array(raw.copy().view("S28").ravel().astype(object)).cast(pa.string())


def _chunk(rng: np.random.Generator, day: _Day, start: int, n: int, refund_share: float, bad_row: int | None):
    """``n`` rows starting at global row ``start``: (line text array, sums, refund rows, distinct out_trade_no)."""
    idx = np.arange(start, start + n, dtype=np.int64)
    refund = rng.random(n) < refund_share
    pay = ~refund
    seconds = rng.integers(0, 86_400, size=n)
    bp = RATES_BP[rng.integers(0, len(RATES_BP), size=n)]
    order = np.clip(np.exp(rng.normal(8.3, 1.3, size=n)).astype(np.int64), 1, 5_000_000)
    order = np.where(rng.random(n) < 0.3, np.maximum(order // 100, 1) * 100, order)  # whole-yuan prices
    coupon = np.where(
        pay & (rng.random(n) < 0.05) & (order > 200), np.minimum(rng.integers(100, 2001, n), order // 2), 0
    )

    # refunds: ~40 % refund a payment of this chunk (each at most once), the rest earlier days' orders
    refund_pos = np.flatnonzero(refund)
    pay_pos = np.flatnonzero(pay)
    n_same = min(round(len(refund_pos) * 0.4), len(pay_pos))
    same_refunds = rng.permutation(refund_pos)[:n_same]
    targets = rng.choice(pay_pos, size=n_same, replace=False) if n_same else np.empty(0, np.int64)
    target = idx.copy()  # row whose order a row belongs to (itself for payments)
    target[same_refunds] = idx[targets]
    prior = refund.copy()
    prior[same_refunds] = False
    order_of_target = order.copy()
    order_of_target[same_refunds] = order[targets]
    refund_amt = np.where(refund, np.maximum(order_of_target // np.where(rng.random(n) < 0.5, 1, 2), 1), 0)
    recharge = np.where(refund & (rng.random(n) < 0.01), np.minimum(refund_amt, 50), 0)

    settlement = np.where(pay, order - coupon, 0)
    order_col = np.where(pay, order, 0)
    coupon_col = np.where(pay, coupon, 0)
    requested = refund_amt
    fee_fen = np.where(pay, (settlement * bp + 5_000) // 10_000, -((refund_amt * bp + 5_000) // 10_000))
    fee = fee_fen * 1_000

    # ids: unique per row, scrambled so they do not look sequential (7919 is coprime with 10**10)
    scramble = (target * 7_919 + 12_345) % 10**10
    tx_day = np.where(prior, day.prev_ymd, day.ymd).astype(object)
    transaction_id = pc.binary_join_element_wise("4200002601", pa.array(tx_day, pa.string()), _padded(scramble, 10), "")
    out_trade_no = pc.binary_join_element_wise("SUB", pa.array(tx_day, pa.string()), _padded(target, 9), "")
    refund_no = (idx * 104_729 + 7) % 10**11
    refund_id = pc.if_else(
        pa.array(refund),
        pc.binary_join_element_wise("5030090201", day.ymd, _padded(refund_no, 11), ""),
        "0",
    )
    out_refund_no = pc.if_else(pa.array(refund), pc.binary_join_element_wise("RF", day.ymd, _padded(idx, 9), ""), "0")
    attach = pc.binary_join_element_wise("cmb=C", pa.array(tx_day, pa.string()), _padded(target // 2, 9), "")

    midnight = int(datetime.combine(day.bill_date, datetime.min.time(), BEIJING).timestamp()) + 8 * 3600
    times = pc.strftime(pa.array(midnight + seconds, pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")
    settlement_text = _decimal(settlement, 2)
    if bad_row is not None and start <= bad_row < start + n:
        mask = np.zeros(n, dtype=bool)
        mask[bad_row - start] = True
        settlement_text = pc.if_else(pa.array(mask), "3.315", settlement_text)

    zero = _const("0.00", n)
    empty = _const("", n)
    by_title = {
        "交易时间": pc.binary_join_element_wise("`", times, ""),
        "公众账号ID": _const(day.appid, n),
        "商户号": _const(day.mchid, n),
        "特约商户号": _const("0", n),
        "设备号": empty,
        "微信订单号": transaction_id,
        "商户订单号": out_trade_no,
        "用户标识": _pick(day.openids, rng.integers(0, len(day.openids), n)),
        "交易类型": pc.if_else(pa.array(rng.random(n) < 0.8), "NATIVE", "JSAPI"),
        "交易状态": pc.if_else(pa.array(refund), "REFUND", "SUCCESS"),
        "付款银行": _const("OTHERS", n),
        "货币种类": _const("CNY", n),
        "应结订单金额": settlement_text,
        "代金券金额": _decimal(coupon_col, 2) if coupon_col.any() else zero,
        "微信退款单号": refund_id,
        "商户退款单号": out_refund_no,
        "退款金额": _decimal(refund_amt, 2),
        "充值券退款金额": _decimal(recharge, 2),
        "退款类型": pc.if_else(pa.array(refund), "ORIGINAL", ""),
        "退款状态": pc.if_else(
            pa.array(refund & (rng.random(n) < 0.98)), "SUCCESS", pc.if_else(pa.array(refund), "PROCESSING", "")
        ),
        "商品名称": _pick(day.products, rng.integers(0, len(day.products), n)),
        "商户数据包": attach,
        "手续费": _decimal(fee, 5),
        "费率": day.rates.take(pa.array(np.searchsorted(np.unique(RATES_BP), bp))),
        "订单金额": _decimal(order_col, 2),
        "申请退款金额": _decimal(requested, 2),
        "费率备注": empty,
    }
    columns = [by_title[t] for t in HEADERS[BillKind.TRADE_ALL]]
    lines = pc.binary_join_element_wise(*columns, ",`")
    sums = {
        "settlement_amount_fen": int(settlement.sum()),
        "coupon_amount_fen": int(coupon_col.sum()),
        "refund_amount_fen": int(refund_amt.sum()),
        "recharge_coupon_refund_fen": int(recharge.sum()),
        "order_amount_fen": int(order_col.sum()),
        "requested_refund_fen": int(requested.sum()),
        "fee_millifen": int(fee.sum()),
    }
    distinct = int(pay.sum() + prior.sum())
    return lines, sums, int(refund.sum()), distinct


def _line_bytes(lines: pa.Array, newline: str) -> memoryview:
    """The UTF-8 bytes of all lines, each followed by ``newline``, without copying row by row."""
    joined = pc.binary_join_element_wise(lines, pa.scalar(newline), "")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    return memoryview(joined.buffers()[2])[offsets[0] : offsets[-1]]


def generate_trade_bill(
    path: str | Path,
    *,
    rows: int = 1_000_000,
    seed: int = 20250310,
    bill_date: date = date(2025, 3, 10),
    mchid: str = "1900000109",
    appid: str = "wxd678efh567hg6787",
    refund_share: float = 0.03,
    bom: bool = True,
    crlf: bool = True,
    chunk_rows: int = 200_000,
    compresslevel: int = 1,
    bad_amount_row: int | None = None,
) -> BillFingerprint:
    """Write a trade ALL bill of ``rows`` detail rows to ``path`` (gzip) and fingerprint it.

    ``bad_amount_row`` (0-based detail row) prints that row's 应结订单金额 as ``3.315``; the
    fingerprint still describes the intended values. ``compresslevel`` is ISA-L's 0–3.
    """
    if rows < 0:
        raise ValueError("rows must be >= 0")
    if bad_amount_row is not None and not 0 <= bad_amount_row < rows:
        raise ValueError(f"bad_amount_row {bad_amount_row} is outside 0..{rows - 1}")
    rng = np.random.default_rng(seed)
    day = _Day(
        bill_date=bill_date,
        mchid=mchid,
        appid=appid,
        openids=_openid_pool(rng, 50_000),
        products=pa.array(PRODUCTS, pa.string()),
        rates=pa.array([f"{bp / 100:.2f}%" for bp in np.unique(RATES_BP)], pa.string()),
    )
    newline = "\r\n" if crlf else "\n"
    sha1 = hashlib.sha1()  # noqa: S324 - WeChat Pay's bill hash is SHA-1 (spec §5.3)
    size = 0
    totals = dict.fromkeys(_SUMS, 0)
    refund_rows = distinct = 0
    with igzip.open(path, "wb", compresslevel=compresslevel) as out:

        def write(data: bytes | memoryview) -> None:
            nonlocal size
            sha1.update(data)
            out.write(data)
            size += len(data)

        write(((BOM if bom else "") + ",".join(HEADERS[BillKind.TRADE_ALL]) + newline).encode())
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            lines, sums, refunds, uniq = _chunk(rng, day, start, n, refund_share, bad_amount_row)
            write(_line_bytes(lines, newline))
            for key, value in sums.items():
                totals[key] += value
            refund_rows += refunds
            distinct += uniq
        summary = {
            "总交易单数": str(rows),
            "应结订单总金额": format_yuan(totals["settlement_amount_fen"]),
            "退款总金额": format_yuan(totals["refund_amount_fen"]),
            "充值券退款总金额": format_yuan(totals["recharge_coupon_refund_fen"]),
            "手续费总金额": format_fee(totals["fee_millifen"]),
            "订单总金额": format_yuan(totals["order_amount_fen"]),
            "申请退款总金额": format_yuan(totals["requested_refund_fen"]),
        }
        titles = SUMMARY_HEADERS[BillKind.TRADE_ALL]
        write((",".join(titles) + newline + ",".join("`" + summary[t] for t in titles) + newline).encode())
    return BillFingerprint(
        row_count=rows,
        refund_rows=refund_rows,
        **totals,
        distinct_out_trade_no=distinct,
        sha1=sha1.hexdigest(),
        uncompressed_bytes=size,
        bad_line=None if bad_amount_row is None else bad_amount_row + 2,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wxpay.sim.billgen", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output .csv.gz")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20250310)
    parser.add_argument("--bad-amount-row", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    fp = generate_trade_bill(args.out, rows=args.rows, seed=args.seed, bad_amount_row=args.bad_amount_row)
    json.dump({**fp.as_dict(), "seconds": round(time.perf_counter() - started, 2)}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
