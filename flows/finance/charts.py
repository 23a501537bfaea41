"""Charts for people: matplotlib with a Chinese font, axes read in yuan, PNGs saved under the project."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.finance.errors import FinanceError
from flows.finance.money import fmt_yuan
from flows.finance.paths import PROJECT_ROOT, project_path

__all__ = ["save_chart", "use_cjk_font", "yuan_axis"]

CJK_FAMILIES = (
    "WenQuanYi Micro Hei",
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "Noto Sans SC",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
)
CJK_FILES = frozenset({"wqy-microhei.ttc", "wqy-zenhei.ttc", "notosanscjk-regular.ttc", "notosanscjksc-regular.otf"})
SYSTEM_FONTS = Path("/usr/share/fonts")
FONT_DIR = PROJECT_ROOT / "notebooks" / "fonts"
FONT_HINT = "install one: apt-get install fonts-wqy-microhei (Debian), or put a .ttf/.ttc/.otf in notebooks/fonts/"


def use_cjk_font() -> str:
    """Make matplotlib draw Chinese: returns the family used. Looks in ``notebooks/fonts/``, then at
    the fonts matplotlib knows, then asks fontconfig (``fc-list :lang=zh``), then looks for Debian's
    CJK font files (fonts installed after matplotlib built its font cache are found that way). Raises
    :class:`FinanceError` if there is none: charts would show boxes instead of Chinese."""
    from matplotlib import font_manager, rcParams

    files = (
        sorted(p for p in FONT_DIR.glob("*") if p.suffix.lower() in (".ttf", ".ttc", ".otf"))
        if FONT_DIR.is_dir()
        else []
    )
    known = {f.name for f in font_manager.fontManager.ttflist}
    if not files and not known.intersection(CJK_FAMILIES):
        try:
            command = ["fc-list", ":lang=zh", "file"]  # fontconfig, if the machine has it
            listed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout  # noqa: S603
        except (OSError, subprocess.SubprocessError):
            listed = ""
        files = sorted(Path(line.split(":")[0].strip()) for line in listed.splitlines() if line.strip())
        if not files and SYSTEM_FONTS.is_dir():  # no fontconfig: look where Debian's font packages put them
            files = sorted(p for p in SYSTEM_FONTS.glob("**/*") if p.name.lower() in CJK_FILES)
    for file in files:
        font_manager.fontManager.addfont(str(file))
    names = [f.name for f in font_manager.fontManager.ttflist]
    bundled = [font_manager.FontProperties(fname=str(f)).get_name() for f in files]
    family = next((n for n in [*bundled, *CJK_FAMILIES] if n in names), None)
    if family is None:
        raise FinanceError(f"no font with Chinese characters found: {FONT_HINT}")
    rcParams["font.family"] = "sans-serif"
    rcParams["font.sans-serif"] = [family, "DejaVu Sans"]
    rcParams["axes.unicode_minus"] = False
    return family


class _YuanTicks:
    """Tick text for an axis plotted in fen or milli-fen: ``¥1,200`` or, if any tick needs cents, ``¥1,200.00``."""

    def __init__(self, scale: int):
        self.scale = scale

    def fen(self, value: float) -> int:
        return round(value / self.scale)  # chart geometry only: where a tick sits, shown to the fen

    def texts(self, values: Sequence[float]) -> list[str]:
        fens = [self.fen(v) for v in values]
        cents = any(f % 100 for f in fens)
        return [fmt_yuan(f) if cents else fmt_yuan(f)[:-3] for f in fens]


def yuan_axis(ax: Any, axis: str = "y", label: str = "金额 (元) amount (yuan)", *, unit: str = "fen") -> None:
    """Plot integer ``unit`` (``fen`` or ``millifen``), read yuan: the ticks of ``axis`` become ¥ text."""
    from matplotlib.ticker import Formatter, MaxNLocator

    ticks = _YuanTicks({"fen": 1, "millifen": 1000}[unit])

    class YuanFormatter(Formatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return ticks.texts([x])[0]

        def format_ticks(self, values: Sequence[float]) -> list[str]:
            return ticks.texts(values)

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], integer=True))
    target.set_major_formatter(YuanFormatter())
    (ax.set_ylabel if axis == "y" else ax.set_xlabel)(label)


def save_chart(fig: Any, output_dir: str | Path, name: str) -> Path:
    """``<output_dir>/<name>.png`` (output_dir relative to the project root unless absolute)."""
    folder = project_path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    fig.savefig(target, dpi=110, bbox_inches="tight")
    return target
