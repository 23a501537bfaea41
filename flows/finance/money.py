"""Money as exact text and numbers: fen and milli-fen to yuan, fee rates, money columns for display.

Nothing goes through ``float``: :func:`yuan` turns integer fen into a :class:`~decimal.Decimal`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pandas as pd

__all__ = ["amount_involved", "fmt_fee", "fmt_rate", "fmt_yuan", "for_display", "parse_rate", "yuan"]

_MONEY = re.compile(r"(_fen|_millifen)$")


def _integer(value: Any, unit: str) -> int | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (bool, float)):
        raise TypeError(f"{unit} must be an integer, not {type(value).__name__} ({value!r})")
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"{unit} must be whole, got {value}")
        return int(value)
    return int(value)  # int, numpy integer


def yuan(fen: Any) -> Decimal | None:
    """Integer fen -> exact yuan (``9900`` -> ``Decimal('99.00')``); ``None``/NA -> ``None``; floats refused."""
    whole = _integer(fen, "fen")
    return None if whole is None else Decimal(whole).scaleb(-2)


def fmt_yuan(fen: Any, *, signed: bool = False, empty: str = "") -> str:
    """``123456`` -> ``¥1,234.56``; ``-100`` -> ``-¥1.00``; ``signed`` puts ``+`` on positives."""
    amount = yuan(fen)
    if amount is None:
        return empty
    sign = "-" if amount < 0 else ("+" if signed and amount > 0 else "")
    return f"{sign}¥{abs(amount):,.2f}"


def fmt_fee(millifen: Any, *, empty: str = "") -> str:
    """Milli-fen (fees) -> yuan with 2 to 5 decimals: ``99000`` -> ``¥0.99``, ``17998`` -> ``¥0.17998``."""
    whole = _integer(millifen, "millifen")
    if whole is None:
        return empty
    amount = Decimal(abs(whole)).scaleb(-5)
    text = f"{amount:,.5f}"
    text = text[:-3] + text[-3:].rstrip("0")
    return f"{'-' if whole < 0 else ''}¥{text}"


def parse_rate(rate: str | Decimal) -> Decimal:
    """A fee rate as a percentage: ``"0.60%"`` or ``Decimal("0.60")`` -> ``Decimal("0.60")``."""
    if isinstance(rate, Decimal):
        return rate
    if not isinstance(rate, str) or not re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*%\s*", rate):
        raise ValueError(f"a fee rate is written like '0.60%', got {rate!r}")
    return Decimal(rate.strip().removesuffix("%").strip())


def fmt_rate(percent: Decimal | None, places: int = 4) -> str:
    """``Decimal("0.6")`` -> ``0.6000%``."""
    return "" if percent is None else f"{percent:.{places}f}%"


def for_display(frame: pd.DataFrame, *, keep: Iterable[str] = ()) -> pd.DataFrame:
    """A copy for people: ``x_fen`` -> ``x_yuan`` text (¥1,234.56), ``x_millifen`` -> ``x_yuan`` (fee text)."""
    shown = frame.copy()
    keep = set(keep)
    for name in list(shown.columns):
        if name in keep or not _MONEY.search(name):
            continue
        fmt = fmt_fee if name.endswith("_millifen") else fmt_yuan
        shown[name] = [fmt(v) for v in shown[name]]
        shown = shown.rename(columns={name: _MONEY.sub("_yuan", name)})
    return shown


def amount_involved(frame: pd.DataFrame) -> pd.Series:
    """Per row of items or exceptions: the largest of |bill|, |local|, |notified| fen (0 if none), Int64.
    For a fee item that is the amount the fee is charged on."""
    parts = [frame[c].fillna(0).abs() for c in ("bill_fen", "local_fen", "notified_fen")]
    biggest = parts[0]
    for part in parts[1:]:
        biggest = biggest.where(biggest >= part, part)
    return biggest.astype("Int64")
