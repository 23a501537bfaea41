"""What each exception class means, in Chinese and English, from ``notebooks/exception_classes.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from flows.finance.errors import MartNotAllowed
from flows.finance.paths import PROJECT_ROOT
from flows.recon import CLASSES

__all__ = ["EXPLANATIONS", "Explanation", "class_label", "explain"]


@dataclass(frozen=True)
class Explanation:
    code: str
    label_zh: str
    zh: str
    en: str

    def __str__(self) -> str:
        return f"{self.label_zh} ({self.code})\n{self.zh}\n{self.en}"


EXPLANATIONS_FILE = PROJECT_ROOT / "notebooks" / "exception_classes.toml"
EXPLANATIONS: dict[str, Explanation] = {
    code: Explanation(code, text["label_zh"], text["zh"], text["en"])
    for code, text in tomllib.loads(EXPLANATIONS_FILE.read_text(encoding="utf-8")).items()
}
"""Every class's label and explanation, from ``notebooks/exception_classes.toml`` (finance may edit the wording)."""


def explain(cls: str) -> Explanation:
    """The plain-language explanation of an exception class."""
    try:
        return EXPLANATIONS[cls]
    except KeyError:
        raise MartNotAllowed(f"unknown class {cls!r}; classes: {CLASSES}") from None


def class_label(cls: str) -> str:
    """``金额不一致 amount_mismatch``: chart and table label."""
    return f"{explain(cls).label_zh} {cls}"
