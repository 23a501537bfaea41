"""Values in WeChat Pay bill files: the exact text each kind accepts, parsed and formatted without ``float``.

Units, everywhere downstream of the bill parser:

* amounts (yuan with exactly 2 decimals in the file) are integer **fen**, BIGINT in DuckDB:
  ``"128.00" -> 12800``;
* fees (手续费, yuan with exactly 5 decimals) are integer **milli-fen** (1/1000 fen), BIGINT:
  ``"0.77000" -> 77000``, ``"-0.12000" -> -12000``;
* times (``yyyy-MM-dd HH:mm:ss``, Beijing time) are aware datetimes in Asia/Shanghai,
  TIMESTAMPTZ in DuckDB;
* fee rates (``0.60%``) are kept as printed and as an exact :class:`~decimal.Decimal` fraction
  (``Decimal("0.006")``).

Nothing here goes through ``float``. The loaders in ``flows/bill*.py`` turn the ``*_PATTERN``
regular expressions below into SQL, so Python and SQL accept exactly the same text. Every parser
raises :class:`~wxpay.errors.BillFormatError` naming the file, line and field.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from wxpay.errors import BillFormatError
from wxpay.models import BEIJING

__all__ = [
    "COUNT_PATTERN",
    "FEE_PATTERN",
    "RATE_PATTERN",
    "TIME_PATTERN",
    "YUAN_PATTERN",
    "ValueKind",
    "fee_fen",
    "fee_to_millifen",
    "format_count",
    "format_fee",
    "format_rate",
    "format_time",
    "format_yuan",
    "parse_count",
    "parse_rate",
    "parse_time",
    "yuan_to_fen",
]

# The exact text each value kind accepts. RE2 (DuckDB) and Python `re` read these the same way;
# `[0-9]` rather than `\d` because Python's `\d` also matches non-ASCII digits.
YUAN_PATTERN = r"-?[0-9]+\.[0-9]{2}"
FEE_PATTERN = r"-?[0-9]+\.[0-9]{5}"
RATE_PATTERN = r"[0-9]{1,3}(\.[0-9]{1,4})?%"
"""A fee rate in percent, at most 4 decimals (so DECIMAL(7,4) holds it exactly): ``0.60%``, ``0.375%``."""
TIME_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
COUNT_PATTERN = r"[0-9]+(\.0+)?"
"""Summary counts: ``20`` or ``20.0`` (the v2 fund-flow sample prints ``20.0``, spec §6.5)."""

_YUAN = re.compile(YUAN_PATTERN)
_FEE = re.compile(FEE_PATTERN)
_RATE = re.compile(RATE_PATTERN)
_TIME = re.compile(TIME_PATTERN)
_COUNT = re.compile(COUNT_PATTERN)

ValueKind = Literal["text", "time", "yuan", "fee", "rate", "count"]


def _where(file: str, line: int | None, field: str | None) -> dict:
    return {"file": file, "line": line, "field": field}


def yuan_to_fen(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> int:
    """``"128.00" -> 12800``. Exactly ``-?[0-9]+\\.[0-9]{2}``, else :class:`BillFormatError`."""
    if not _YUAN.fullmatch(text):
        raise BillFormatError(f"amount {text!r} is not yuan with exactly 2 decimals", **_where(file, line, field))
    return int(text.replace(".", "", 1))


def fee_to_millifen(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> int:
    """``"0.77000" -> 77000`` milli-fen (1/1000 fen). Exactly ``-?[0-9]+\\.[0-9]{5}``."""
    if not _FEE.fullmatch(text):
        raise BillFormatError(f"fee {text!r} is not yuan with exactly 5 decimals", **_where(file, line, field))
    return int(text.replace(".", "", 1))


def parse_rate(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> Decimal:
    """``"0.60%" -> Decimal("0.0060")``: the exact fraction."""
    if not _RATE.fullmatch(text):
        raise BillFormatError(f"fee rate {text!r} is not a percentage like 0.60%", **_where(file, line, field))
    return Decimal(text[:-1]) / 100


def parse_time(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> datetime:
    """``"2025-03-10 09:15:02"`` (Beijing) -> an aware datetime in Asia/Shanghai."""
    if not _TIME.fullmatch(text):
        raise BillFormatError(f"time {text!r} is not yyyy-MM-dd HH:mm:ss", **_where(file, line, field))
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except ValueError as exc:
        raise BillFormatError(f"time {text!r}: {exc}", **_where(file, line, field)) from None


def parse_count(text: str, *, file: str = "<bill>", line: int | None = None, field: str | None = None) -> int:
    """A summary count: ``"3" -> 3``; ``"20.0" -> 20`` (fund-flow v2 sample). ``"2.5"`` is an error."""
    if not _COUNT.fullmatch(text):
        raise BillFormatError(f"count {text!r} is not a whole number", **_where(file, line, field))
    return int(text.split(".", 1)[0])


def format_yuan(fen: int) -> str:
    """``12800 -> "128.00"``, ``-5 -> "-0.05"``."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"


def format_fee(millifen: int) -> str:
    """``77000 -> "0.77000"``, ``-12000 -> "-0.12000"``."""
    sign = "-" if millifen < 0 else ""
    whole, part = divmod(abs(millifen), 100_000)
    return f"{sign}{whole}.{part:05d}"


def format_rate(rate: Decimal | str) -> str:
    """``Decimal("0.006") -> "0.60%"`` (at least 2 decimals, more only when the rate needs them)."""
    pct = _rate_fraction(rate) * 100
    text = format(pct.normalize(), "f")
    whole, _, part = text.partition(".")
    return f"{whole}.{part.ljust(2, '0')}%"


def format_time(moment: datetime) -> str:
    """An aware datetime -> ``yyyy-MM-dd HH:mm:ss`` in Beijing time. Naive datetimes are refused."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no time zone; give an aware one (e.g. tzinfo=BEIJING)")
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def format_count(count: int) -> str:
    return str(count)


def _rate_fraction(rate: Decimal | str) -> Decimal:
    if isinstance(rate, str):
        return parse_rate(rate)
    if isinstance(rate, Decimal):
        return rate
    raise TypeError(f"a fee rate is a Decimal fraction or a '0.60%' string, not {type(rate).__name__}")


def fee_fen(amount_fen: int, rate: Decimal | str) -> int:
    """The fee of one row in fen: ``round_half_up(amount × rate)`` to the fen (spec §6.3, inferred rule).

    ``rate`` is an exact fraction (``Decimal("0.006")``) or the bill's percent text (``"0.60%"``);
    floats are refused. Half-up is symmetric, so a refund's (negative) fee is the negated fee of
    the same positive amount: ``fee_fen(12800, "0.60%") == 77``, ``fee_fen(-2000, "0.60%") == -12``.
    Multiply by 1000 for the milli-fen the bill prints (``format_fee(fee_fen(...) * 1000)``).
    """
    exact = Decimal(amount_fen) * _rate_fraction(rate)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
