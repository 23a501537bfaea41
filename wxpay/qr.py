"""Render a Native ``code_url`` as a QR code (PNG, SVG, or text for a terminal), via segno."""

from __future__ import annotations

import io
from pathlib import Path

import segno


def _qr(code_url: str) -> segno.QRCode:
    if not code_url:
        raise ValueError("code_url is empty")
    return segno.make_qr(code_url, error="m")


def save_png(code_url: str, path: str | Path, *, scale: int = 8) -> Path:
    """Write a PNG the payer can scan; returns the path."""
    target = Path(path)
    _qr(code_url).save(target, kind="png", scale=scale, border=4)
    return target


def save_svg(code_url: str, path: str | Path, *, scale: int = 8) -> Path:
    target = Path(path)
    _qr(code_url).save(target, kind="svg", scale=scale, border=4)
    return target


def terminal(code_url: str, *, compact: bool = True) -> str:
    """The QR code as text for a terminal (half-block characters when ``compact``)."""
    out = io.StringIO()
    _qr(code_url).terminal(out=out, compact=compact, border=2)
    return out.getvalue()
