"""The package's layers point one way (docs/architecture.md).

:data:`LAYERS` is the declared order, lowest first; every module of ``src/marsdiff`` belongs to
exactly one unit (a subpackage or a top-level module), and every unit to one layer. A module may
import (at the top of the file or inside a function) its own unit and the units of lower layers;
within one layer, units import each other only where the layer says so, and then without a cycle.
:data:`PLACED` moves single modules out of their package's layer, each with its reason.

docs/architecture.md carries the diagram :func:`mermaid` draws from the table, so the picture in
the docs is the table this test checks.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "marsdiff"

#: (layer, its units, whether those units may import one another), lowest layer first.
LAYERS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    # The package root holds __version__ only; io and provenance write files, faults plants the
    # kill points the reliability tests fire, config reads and validates config files, logs holds
    # the rule logs' line format, lazy the packages' lazy exports.
    ("foundation", ("marsdiff", "errors", "faults", "devices", "config", "io", "provenance", "logs", "lazy"), True),
    ("data", ("data",), False),
    ("features", ("features",), False),
    # Two independent consumers of data and features: neither imports the other.
    ("rewards / diffusion", ("rewards", "diffusion"), False),
    ("rl", ("rl",), False),
    ("evaluation", ("evaluation",), False),
    ("evalset", ("evalset",), False),
    ("export / study", ("export", "study"), False),
    # Entry points and the stage modules that combine packages: nothing imports them but scripts.
    # config_checks runs every stage's parse-time checks; workflow is what common.smk computes.
    ("stages / cli", ("stages", "stage", "cli", "__main__", "config_checks", "workflow"), True),
)

#: Modules declared in another unit than their package's, with the reason (FROZEN modules cannot move).
PLACED: dict[str, tuple[str, str]] = {}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    target: str
    why: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}: {self.why}"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``src`` by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path], package: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``package`` anywhere in the file, relative
    imports resolved; ``from a import b`` names module ``a.b`` when that is a module, else ``a``."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in modules else base))
    ours = (item for item in found if item[1] == package or item[1].startswith(package + "."))
    return sorted(set(ours))


def unit_of(module: str, package: str, placed: dict[str, tuple[str, str]]) -> str:
    if module in placed:
        return placed[module][0]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def executed(target: str, modules: dict[str, Path], package: str) -> list[str]:
    """What importing ``target`` runs: the module and every enclosing package whose ``__init__``
    itself imports something of the package (an ``__init__`` that imports nothing adds nothing)."""
    chain = [target]
    parts = target.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if parent in modules and imports_of(parent, modules[parent], modules, package):
            chain.append(parent)
    return chain


def check_layers(src: Path, package: str, layers, placed) -> list[Violation]:
    """Every import that runs upward, sideways between independent units, or into no layer; and
    every cycle between units of one layer."""
    rank, mutual = {}, {}
    for index, (_, units, may_import) in enumerate(layers):
        for unit in units:
            rank[unit] = index
            mutual[unit] = may_import
    modules = module_files(src, package)
    problems = [Violation(m, 0, m, "declared in PLACED but no such module") for m in placed if m not in modules]
    unit_edges: dict[tuple[str, str], tuple[str, int]] = {}
    for name, path in modules.items():
        unit = unit_of(name, package, placed)
        if unit not in rank:
            problems.append(Violation(name, 0, name, f"unit {unit!r} is in no layer: add it to LAYERS"))
            continue
        for line, imported in imports_of(name, path, modules, package):
            for target in executed(imported, modules, package):
                other = unit_of(target, package, placed)
                if other == unit:
                    continue
                if other not in rank:
                    problems.append(Violation(name, line, target, f"unit {other!r} is in no layer"))
                elif rank[other] > rank[unit]:
                    problems.append(Violation(name, line, target, f"upward: {layers[rank[unit]][0]} -> "
                                                                  f"{layers[rank[other]][0]}"))
                elif rank[other] == rank[unit] and not mutual[unit]:
                    problems.append(Violation(name, line, target, f"sideways: {unit} and {other} are independent"))
                elif rank[other] == rank[unit]:
                    unit_edges.setdefault((unit, other), (name, line))
    for (a, b), (name, line) in sorted(unit_edges.items()):
        if (b, a) in unit_edges:
            problems.append(Violation(name, line, b, f"cycle: {a} and {b} import each other"))
    return problems


def mermaid(layers) -> str:
    """The docs' diagram of the layers, highest first; an arrow means "may import"."""
    lines = ["```mermaid", "flowchart TD"]
    for index, (name, units, may_import) in enumerate(reversed(layers)):
        note = " (import one another)" if may_import and len(units) > 1 else ""
        lines.append(f'    L{len(layers) - 1 - index}["{name}: {", ".join(units)}{note}"]')
    for index in range(len(layers) - 1, 0, -1):
        lines.append(f"    L{index} --> L{index - 1}")
    lines.append("```")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the project

def test_no_import_runs_upward():
    problems = check_layers(SRC, PACKAGE, LAYERS, PLACED)
    assert not problems, "imports against docs/architecture.md's layers:\n" + "\n".join(map(str, problems))


def test_docs_diagram_is_the_checked_table():
    docs = (REPO / "docs" / "architecture.md").read_text()
    assert mermaid(LAYERS) in docs, "docs/architecture.md must carry this diagram:\n" + mermaid(LAYERS)
    for module, (_, reason) in PLACED.items():
        assert module in docs, f"docs/architecture.md does not explain why {module} is placed apart"


# ------------------------------------------------------------------------------------------ the checker

TOY_LAYERS = (
    ("base", ("toy", "errors", "io"), True),
    ("low", ("low",), False),
    ("mid", ("left", "right"), False),
    ("top", ("top",), False),
)


def write_toy(root: Path, files: dict[str, str]) -> Path:
    """A package ``toy`` under ``root/src`` with the given files (relative path -> source)."""
    src = root / "src"
    for rel, text in files.items():
        path = src / "toy" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return src


CLEAN = {
    "__init__.py": "",
    "errors.py": "class ToyError(Exception):\n    pass\n",
    "io/__init__.py": "",
    "io/files.py": "from toy.errors import ToyError\n",
    "low/__init__.py": "",
    "low/a.py": "from ..io import files\nfrom . import b\n",
    "low/b.py": "import toy.errors\n",
    "left/__init__.py": "",
    "left/x.py": "from toy.low.a import files\n",
    "right/__init__.py": "",
    "right/y.py": "def f():\n    from toy.low import b\n    return b\n",
    "top/__init__.py": "",
    "top/run.py": "from toy.left import x\nfrom toy.right.y import f\n",
}


def test_checker_passes_a_clean_package(tmp_path):
    assert check_layers(write_toy(tmp_path, CLEAN), "toy", TOY_LAYERS, {}) == []


@pytest.mark.parametrize("rel, source, expected", [
    # an upward import hidden inside a function
    ("low/b.py", "def g():\n    from toy.top import run\n", ("low.b", "upward")),
    # a relative import that climbs two levels into a higher unit
    ("low/a.py", "from ..right import y\n", ("low.a", "upward")),
    # `from package import module` names the module
    ("io/files.py", "from toy.low import a\n", ("io.files", "upward")),
    # plain `import a.b.c`
    ("io/files.py", "import toy.left.x\n", ("io.files", "upward")),
    # two units of one layer that must stay independent
    ("left/x.py", "from toy.right.y import f\n", ("left.x", "sideways")),
    # a unit the table does not know
    ("extra.py", "x = 1\n", ("extra", "in no layer")),
    # a cycle between units of a layer whose units may import one another
    ("errors.py", "from toy.io import files\n", ("errors", "cycle")),
    # importing a module runs its package's __init__, and this one imports upward
    ("low/__init__.py", "from toy.top import run\n", ("low", "upward")),
])
def test_checker_finds_a_planted_import(tmp_path, rel, source, expected):
    src = write_toy(tmp_path, {**CLEAN, rel: source})
    problems = check_layers(src, "toy", TOY_LAYERS, {})
    module, kind = expected
    module = f"toy.{module}"
    assert any(p.module == module and kind in p.why for p in problems), problems


def test_checker_honours_a_placed_module(tmp_path):
    files = {**CLEAN, "top/table.py": "SIZES = (32, 64)\n", "low/b.py": "from toy.top.table import SIZES\n"}
    src = write_toy(tmp_path, files)
    assert any("upward" in p.why for p in check_layers(src, "toy", TOY_LAYERS, {}))
    placed = {"toy.top.table": ("low", "a table the low layer reads")}
    assert check_layers(src, "toy", TOY_LAYERS, placed) == []
    assert check_layers(src, "toy", TOY_LAYERS, {**placed, "toy.gone": ("low", "stale")})[0].why.startswith("declared")


def test_an_init_that_imports_nothing_is_transparent(tmp_path):
    # low/b.py reaches into top/ only through a module placed low; top/__init__.py is empty, so
    # importing toy.top.table runs nothing of top. With an __init__ that imports, it would.
    files = {**CLEAN, "top/table.py": "SIZES = (32, 64)\n", "low/b.py": "from toy.top.table import SIZES\n"}
    placed = {"toy.top.table": ("low", "a table")}
    assert check_layers(write_toy(tmp_path / "a", files), "toy", TOY_LAYERS, placed) == []
    files["top/__init__.py"] = "from toy.top import run\n"
    problems = check_layers(write_toy(tmp_path / "b", files), "toy", TOY_LAYERS, placed)
    assert [(p.module, p.target) for p in problems] == [("toy.low.b", "toy.top")]
