"""The README says what the code does: its module map, archive layout, classes and marts are read from the code.

Each check parses a part of README.md and compares it with the code (as ``.env.example`` is compared with
the settings in test_settings.py), so the docs cannot drift without a failing test.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from flows.bills import BillArchive
from flows.notifications import NotificationLog
from flows.recon import CLASSES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[a-z_][a-z0-9_]*)(?P<kind>/|\.py)(?:\s+|$)")


def code_block_after(marker: str, text: str = README) -> str:
    start = text.index(marker)
    opening = text.index("```", start)
    body = text.index("\n", opening) + 1
    return text[body : text.index("```", body)]


def listed_tree(block: str) -> dict[str, set[str]]:
    """Directory path -> the entries listed under it (``name.py`` or ``name/``), from an indented map."""
    tree: dict[str, set[str]] = {}
    parents: list[tuple[int, str]] = []  # (indent, path) of the directories enclosing the current line
    for line in block.splitlines():
        match = ENTRY.match(line)
        if not match:
            continue  # a continuation of the description above
        indent = len(match["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        parent = parents[-1][1] if parents else ""
        entry = match["name"] + match["kind"]
        tree.setdefault(parent, set()).add(entry)
        if match["kind"] == "/":
            path = f"{parent}{match['name']}/"
            tree.setdefault(path, set())
            parents.append((indent, path))
    return tree


def actual_entries(directory: Path) -> set[str]:
    """The modules and subpackages of a package directory, as the map names them (no dunder or private ones)."""
    found = {p.name for p in directory.glob("*.py") if not p.name.startswith("_")}
    found |= {p.name + "/" for p in directory.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return found


def map_problems(tree: dict[str, set[str]], root: Path, packages: tuple[str, ...]) -> list[str]:
    """What the map gets wrong for ``packages``: entries that do not exist, modules it leaves out. A listed
    directory with nothing listed under it is a summary (``sim/``) and is not expanded."""
    problems = []
    for directory, listed in sorted(tree.items()):
        if not directory or not directory.startswith(tuple(p + "/" for p in packages)) or not listed:
            continue
        actual = actual_entries(root / directory)
        problems += [f"README lists {directory}{name}, which does not exist" for name in sorted(listed - actual)]
        problems += [f"README leaves out {directory}{name}" for name in sorted(actual - listed)]
    return problems


def test_the_module_map_lists_every_module_and_only_real_ones():
    tree = listed_tree(code_block_after("Layout (a test checks this map"))
    assert {"wxpay/", "flows/", "sql/", "notebooks/", "bench/", "tests/"} <= tree[""]
    assert tree["flows/"] >= {"bills/", "notifications/", "recon/", "sources/", "warehouse/", "nightly.py"}
    assert map_problems(tree, ROOT, ("wxpay", "flows")) == []


def test_the_map_check_notices_a_missing_and_an_invented_module(tmp_path):
    (tmp_path / "flows" / "bills").mkdir(parents=True)
    for name in ("__init__.py", "loader.py", "archive.py"):
        (tmp_path / "flows" / "bills" / name).write_text("")
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "flows" / "cli.py").write_text("")
    block = "flows/   the pipeline\n  bills/   bills\n    loader.py   the load\n    ingest.py   gone\n  cli.py   x\n"
    assert map_problems(listed_tree(block), tmp_path, ("flows",)) == [
        "README lists flows/bills/ingest.py, which does not exist",
        "README leaves out flows/bills/archive.py",
    ]


def test_the_archive_layout_is_the_archives(tmp_path):
    day, sha1 = date(2026, 11, 26), "0" * 40
    bill = BillArchive(tmp_path / "archive").target("1900000101", "trade_all", day, sha1)
    shown = code_block_after("The bill archive keeps every verified bill").split()
    assert shown == [str(p.relative_to(tmp_path)).replace(sha1, "<sha1>") for p in (bill.path, bill.sidecar)]
    diagram = code_block_after("## How it fits together")
    log_path = NotificationLog(Path("notifications")).path("1900000100", day)
    assert re.sub(r"1900000100", "<mchid>", re.sub(r"\d{4}-\d\d-\d\d", "<YYYY-MM-DD>", str(log_path))) in diagram


def test_the_class_table_is_the_engines_classes():
    section = README[README.index("## Reconciliation classes") :]
    table = section[section.index("| class |") :]
    table = table[: table.index("\n\n")]
    named = set(re.findall(r"`([a-z_]+)`", "\n".join(line.split("|")[1] for line in table.splitlines()[2:])))
    assert named == set(CLASSES)


def test_the_mart_table_is_the_marts():
    section = README[README.index("### The marts") :]
    table = section[section.index("| mart |") :]
    table = table[: table.index("\n\n")]
    named = set(re.findall(r"`marts\.([a-z_]+)`", table))
    assert named == {p.stem for p in (ROOT / "sql" / "marts").glob("*.sql")}


def test_the_exit_code_table_is_the_codes():
    from flows.outcome import SEVERITY, ExitCode

    start = README.index("`wxrecon` exit codes")
    table = README[start : README.index("\n\n", README.index("| code |", start))]
    rows = re.findall(r"^\| *(\d+) \| *([a-z]*) \|", table, re.M)
    assert [(int(code), kind or "ok") for code, kind in rows] == [(c.value, c.name.lower()) for c in ExitCode]
    order = README[start:].split("the code is the first of ", 1)[1].split(".", 1)[0]
    assert [int(n) for n in order.split(", ")] == [ExitCode[k.name].value for k in SEVERITY] + [1]
