"""QR rendering of a Native code_url."""

from __future__ import annotations

import segno

from wxpay import qr

CODE_URL = "weixin://wxpay/bizpayurl/up?pr=NwY5Mz9&groupid=00"


def test_png_and_svg_files(tmp_path):
    png = qr.save_png(CODE_URL, tmp_path / "pay.png")
    svg = qr.save_svg(CODE_URL, tmp_path / "pay.svg")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert png.stat().st_size > 200
    assert b"<svg" in svg.read_bytes()


def test_terminal_rendering_is_the_same_matrix():
    text = qr.terminal(CODE_URL, compact=False)
    rows = [line for line in text.splitlines() if line.strip()]
    matrix = segno.make_qr(CODE_URL, error="m").matrix
    assert len(rows) == len(matrix) + 4  # two rows of border above and below
    assert "█" in qr.terminal(CODE_URL)


def test_empty_code_url_is_refused():
    import pytest

    with pytest.raises(ValueError, match="empty"):
        qr.terminal("")
