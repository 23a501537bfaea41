"""Money for people: integer fen (and fees in milli-fen) shown as yuan, exactly, never through ``float``.

One function per meaning: :func:`yuan` is the amount as a number (``Decimal``), :func:`fmt_yuan` the
amount as text (``¥1,234.56``), :func:`fmt_fee` a fee in milli-fen as text (``¥0.17998``). Alerts,
the command line, the Prefect artifact and the notebooks all show money with these.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def _missing(value: Any) -> bool:
    """None, or a missing value of a data frame (pandas' NA has no truth value; NaN is not equal to itself)."""
    try:
        return value is None or bool(value != value)
    except TypeError:  # pandas.NA
        return True


def _whole(value: Any, unit: str) -> int | None:
    if isinstance(value, float):
        raise TypeError(f"{unit} must be an integer, not float ({value!r})")
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise TypeError(f"{unit} must be an integer, not {type(value).__name__} ({value!r})")
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"{unit} must be whole, got {value}")
        return int(value)
    return int(value)  # int, numpy integer


def yuan(fen: Any) -> Decimal | None:
    """Integer fen -> exact yuan (``9900`` -> ``Decimal('99.00')``); ``None``/NA -> ``None``; floats refused."""
    whole = _whole(fen, "fen")
    return None if whole is None else Decimal(whole).scaleb(-2)


def fmt_yuan(fen: Any, *, signed: bool = False, empty: str = "") -> str:
    """``123456`` -> ``¥1,234.56``; ``-100`` -> ``-¥1.00``; ``signed`` puts ``+`` on positives; none -> ``empty``."""
    amount = yuan(fen)
    if amount is None:
        return empty
    sign = "-" if amount < 0 else ("+" if signed and amount > 0 else "")
    return f"{sign}¥{abs(amount):,.2f}"


def fmt_fee(millifen: Any, *, empty: str = "") -> str:
    """Milli-fen (fees) -> yuan with 2 to 5 decimals: ``99000`` -> ``¥0.99``, ``17998`` -> ``¥0.17998``."""
    whole = _whole(millifen, "millifen")
    if whole is None:
        return empty
    amount = Decimal(abs(whole)).scaleb(-5)
    text = f"{amount:,.5f}"
    text = text[:-3] + text[-3:].rstrip("0")
    return f"{'-' if whole < 0 else ''}¥{text}"
