"""The shape of the code, read from its imports: small public faces, no cycles, the simulator kept out.

Rules, for every module of ``flows/`` and ``wxpay/``:

* no module imports another module's underscore names (``from flows.x import _y``, or ``x._y`` on an
  imported module): what a sibling needs is public in its module, and a package's ``__init__`` says
  what the package offers;
* no import cycles (imports under ``if TYPE_CHECKING:`` are not run and do not count);
* production code never imports ``wxpay.sim``: only ``wxpay/sim`` itself, ``flows/demo.py`` and the
  ``sim`` command of ``flows/cli.py`` may (``tests/`` and ``bench/`` are not walked).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "wxpay")
SIM = "wxpay.sim"
SIM_ALLOWED_MODULES = ("wxpay.sim", "flows.demo")
SIM_ALLOWED_FUNCTIONS = {"flows.cli": ("sim",)}  # the CLI commands that are the simulator


@dataclass
class Tree:
    """The modules of some packages under ``root`` and what each imports (module → imported modules)."""

    root: Path
    packages: tuple[str, ...]
    modules: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for package in self.packages:
            for path in sorted((self.root / package).rglob("*.py")):
                parts = path.relative_to(self.root).with_suffix("").parts
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                self.modules[name] = path

    def is_package(self, name: str) -> bool:
        return self.modules.get(name, Path()).name == "__init__.py"

    def resolve(self, importer: str, node: ast.ImportFrom) -> str:
        """The absolute module of ``from <module> import ...`` (relative imports resolved)."""
        if not node.level:
            return node.module or ""
        base = importer.split(".")
        if not self.is_package(importer):
            base = base[:-1]
        base = base[: len(base) - node.level + 1]
        return ".".join([*base, *([node.module] if node.module else [])])

    def imports(self, name: str) -> Iterator[tuple[ast.AST, str, str | None, list[str]]]:
        """(node, imported module, the name taken from it or None, enclosing function names), outside
        ``if TYPE_CHECKING:`` blocks."""
        tree = ast.parse(self.modules[name].read_text(encoding="utf-8"))

        def walk(node: ast.AST, functions: list[str]) -> Iterator:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    for orelse in child.orelse:
                        yield from walk(orelse, functions)
                    continue
                inner = (
                    [*functions, child.name] if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else functions
                )
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        yield child, alias.name, None, inner
                elif isinstance(child, ast.ImportFrom):
                    module = self.resolve(name, child)
                    for alias in child.names:
                        yield child, module, alias.name, inner
                yield from walk(child, inner)

        yield from walk(tree, [])

    def ours(self, module: str) -> bool:
        return module.split(".")[0] in self.packages

    def edges(self, name: str) -> set[str]:
        """The modules of the tree that ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
        found = set()
        for _, module, taken, _ in self.imports(name):
            if not self.ours(module):
                continue
            target = f"{module}.{taken}" if taken and f"{module}.{taken}" in self.modules else module
            if target in self.modules and target != name:
                found.add(target)
        return found


def private_imports(tree: Tree) -> list[str]:
    bad = []
    for name, path in tree.modules.items():
        aliases: dict[str, str] = {}
        for node, module, taken, _ in tree.imports(name):
            if not tree.ours(module):
                continue
            if taken is not None and taken.startswith("_") and not taken.startswith("__"):
                bad.append(f"{path.relative_to(tree.root)}:{node.lineno}: from {module} import {taken}")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            elif taken is not None and f"{module}.{taken}" in tree.modules:
                bound = next(a.asname or a.name for a in node.names if a.name == taken)
                aliases[bound] = f"{module}.{taken}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                bad.append(f"{path.relative_to(tree.root)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return bad


def cycles(tree: Tree) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {name: tree.edges(name) for name in tree.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def simulator_imports(tree: Tree) -> list[str]:
    bad = []
    for name, path in tree.modules.items():
        if name.startswith(SIM_ALLOWED_MODULES):
            continue
        for node, module, taken, functions in tree.imports(name):
            target = f"{module}.{taken}" if taken and f"{module}.{taken}" in tree.modules else module
            if not (target == SIM or target.startswith(SIM + ".")):
                continue
            allowed = SIM_ALLOWED_FUNCTIONS.get(name, ())
            if functions and functions[0] in allowed:
                continue
            bad.append(f"{path.relative_to(tree.root)}:{node.lineno}: imports {target}")
    return bad


# --- the rules, on the real tree ---------------------------------------------------------------


def test_no_module_imports_another_modules_underscore_names():
    assert private_imports(Tree(ROOT, PACKAGES)) == []


def test_there_are_no_import_cycles():
    assert cycles(Tree(ROOT, PACKAGES)) == []


def test_production_code_never_imports_the_simulator():
    assert simulator_imports(Tree(ROOT, PACKAGES)) == []


def test_the_walk_sees_the_whole_tree():
    tree = Tree(ROOT, PACKAGES)
    assert {"flows.nightly", "flows.bills.loader", "flows.notifications.receiver", "wxpay.sim.simulator"} <= set(
        tree.modules
    )
    assert "flows.bills.lineage" in tree.edges("flows.bills.loader")
    assert "flows.warehouse" in tree.edges("flows.bills.loader")


# --- the rules can fail ------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Tree:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Tree(root, ("flows", "wxpay"))


def test_each_rule_reports_what_breaks_it(tmp_path):
    tree = _write(
        tmp_path,
        {
            "flows/__init__.py": "",
            "flows/a.py": "from flows.b import _hidden\nfrom flows import c\nc._secret()\n",
            "flows/b.py": "import flows.a\n_hidden = 1\n",
            "flows/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import flows.a\n",
            "flows/nightly.py": "from wxpay.sim.keys import public_pem\n",
            "flows/cli.py": "def sim():\n    from wxpay.sim.__main__ import main\n\ndef run():\n    import wxpay.sim\n",
            "flows/demo.py": "from wxpay.sim import Simulator\n",
            "wxpay/__init__.py": "",
            "wxpay/sim/__init__.py": "from wxpay.sim.keys import x\n",
            "wxpay/sim/keys.py": "x = 1\n",
        },
    )
    assert private_imports(tree) == ["flows/a.py:1: from flows.b import _hidden", "flows/a.py:3: flows.c._secret"]
    assert cycles(tree) == [["flows.a", "flows.b"]]  # c's TYPE_CHECKING import of a is not a cycle
    assert simulator_imports(tree) == [
        "flows/cli.py:5: imports wxpay.sim",
        "flows/nightly.py:1: imports wxpay.sim.keys",
    ]
