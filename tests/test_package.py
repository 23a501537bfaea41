"""The package boundary: an explicit sorted public API; wxpay imports neither Prefect nor DuckDB."""

from __future__ import annotations

import subprocess
import sys

import wxpay


def _isort_style(name: str) -> tuple[int, str]:
    # constants, then classes, then functions: the order ruff's RUF022 keeps __all__ in
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_public_api_is_explicit_and_sorted():
    assert wxpay.__all__ == sorted(wxpay.__all__, key=_isort_style)
    assert all(hasattr(wxpay, name) for name in wxpay.__all__)
    public = {n for n in dir(wxpay) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(wxpay, n)).__name__ == "module"}
    assert public - modules == set(wxpay.__all__)


def test_wxpay_imports_neither_prefect_nor_duckdb():
    code = (
        "import sys, pkgutil, importlib, wxpay\n"
        "for m in pkgutil.walk_packages(wxpay.__path__, 'wxpay.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('prefect', 'duckdb'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_library_error_is_a_wxpay_error():
    errors = [getattr(wxpay, n) for n in wxpay.__all__ if n.endswith("Error")]
    assert errors
    assert all(issubclass(e, wxpay.WxPayError) for e in errors)
