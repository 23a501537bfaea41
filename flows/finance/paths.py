"""Where the notebooks' files are: the project root and the default paths relative to it."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEFAULT_ARCHIVE",
    "DEFAULT_CHARTS",
    "DEFAULT_NOTIFICATIONS",
    "DEFAULT_WAREHOUSE",
    "PROJECT_ROOT",
    "project_path",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # flows/finance/paths.py -> the repository root
DEFAULT_WAREHOUSE = "var/warehouse.duckdb"
DEFAULT_ARCHIVE = "var/archive"
DEFAULT_NOTIFICATIONS = "var/notifications"
DEFAULT_CHARTS = "build/notebook-charts"


def project_path(path: str | Path) -> Path:
    """``path`` as given if absolute, else relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
