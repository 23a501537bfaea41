"""Masking of payer identifiers (openid and the like) in values, text and frames."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

__all__ = ["PAYER_KEYS", "mask_frame", "mask_id", "mask_text", "mask_value"]

PAYER_KEYS = frozenset({"openid", "sub_openid", "unionid", "payer", "payer_openid", "combine_payer_info", "用户标识"})
"""Names of fields and columns that hold payer identifiers: masked whole."""
_OPENID = re.compile(r"(?<![A-Za-z0-9_-])o[A-Za-z0-9_-]{27}(?![A-Za-z0-9_-])")


def mask_id(value: Any) -> Any:
    """``oLXjjlAFbVV6q9rXxtNDFyuzX9k1`` -> ``oLX***9k1``; short values -> ``***``; empty stays empty."""
    if value is None or value is pd.NA or value == "":
        return value
    text = str(value)
    return f"{text[:3]}***{text[-3:]}" if len(text) >= 12 else "***"


def mask_text(text: Any) -> Any:
    """Mask every openid-shaped token (``o`` + 27 URL-safe characters) inside a string."""
    return _OPENID.sub(lambda m: mask_id(m.group(0)), text) if isinstance(text, str) else text


def mask_value(key: str, value: Any) -> Any:
    """``value`` held under ``key`` (a field or column name), masked: payer fields whole, nested dicts and lists
    field by field, openid-shaped tokens in text."""
    if key.lower() in PAYER_KEYS:
        return {k: mask_id(v) for k, v in value.items()} if isinstance(value, dict) else mask_id(value)
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(key, v) for v in value]
    return mask_text(value)


def mask_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Payer columns masked whole; openid-shaped tokens masked in every text column."""
    out = frame.copy()
    for name in out.columns:
        if str(name).lower() in PAYER_KEYS:
            out[name] = [mask_id(v) for v in out[name]]
        elif pd.api.types.is_string_dtype(out[name]):
            out[name] = out[name].str.replace(_OPENID, lambda m: mask_id(m.group(0)), regex=True)
        elif out[name].dtype == object:
            out[name] = [mask_value(str(name), v) for v in out[name]]
    return out
