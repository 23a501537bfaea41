"""Money for notebooks: fee rates, and money columns of a data frame made readable.

Fen and fees as yuan (:func:`yuan`, :func:`fmt_yuan`, :func:`fmt_fee`) are :mod:`flows.money`, the one
formatter every part of the product uses (re-exported here). Nothing goes through ``float``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

import pandas as pd

from flows.money import fmt_fee, fmt_yuan, yuan

__all__ = ["fmt_fee", "fmt_rate", "fmt_yuan", "for_display", "parse_rate", "yuan"]

_MONEY = re.compile(r"(_fen|_millifen)$")


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
