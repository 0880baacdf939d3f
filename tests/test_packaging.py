"""Packaging: every third-party import is declared in pyproject.toml and pinned in the lock.

``requirements.txt`` is the pinned lock the Makefile installs and every rule's conda env uses;
``requirements-test.txt`` pins the test tools on top; ``pyproject.toml`` declares compatible
ranges (``dependencies`` and the extras ``sd``, ``cluster``, ``test``). These tests read the
imports of ``src/marsdiff`` and ``workflow/scripts`` (and of the tests) with ``ast``, map each to
its distribution through the installed metadata, and hold the three files to one another.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]

#: Pins no module imports, and why each is still needed.
NOT_IMPORTED = {
    "accelerate": "peft imports it when imported, and diffusers imports peft whenever it is installed",
    "snakemake": "the workflow engine: it runs the scripts, which receive its object without importing it",
    "snakemake-executor-plugin-slurm": "loaded by snakemake for profiles/slurm (executor: slurm)",
    "transformers": "diffusers' StableDiffusionPipeline loads its text encoder and tokenizer with it",
}
#: Extras the brief of the package promises, and a distribution each must hold.
EXTRAS = {"sd": ("transformers", "open-clip-torch"), "cluster": ("snakemake-executor-plugin-slurm",),
          "test": ("pytest",)}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (canonical names); anything else is refused."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"{path.name}:{number}: {line!r} is not an exact pin (name==version)"
        assert canonical(match[1]) not in pins, f"{path.name}:{number}: {match[1]} pinned twice"
        pins[canonical(match[1])] = match[2]
    return pins


def third_party_imports(roots: list[Path], local: set[str] = frozenset()) -> dict[str, set[str]]:
    """Top-level names of every import outside the standard library, marsdiff and ``local``
    (at the top of a file or inside a function), with the files that import them."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("__future__", "marsdiff") or top in local:
                        continue
                    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                    found.setdefault(top, set()).add(str(where))
    return found


def unpinned(imports: dict[str, set[str]], pins: dict[str, str], distributions: dict[str, list[str]]) -> list[str]:
    """An import whose module no pinned distribution provides, with where it is imported."""
    problems = []
    for name, files in sorted(imports.items()):
        providers = {canonical(d) for d in distributions.get(name, ())}
        if not providers:
            problems.append(f"{name} (imported by {sorted(files)[0]}): no installed distribution provides it")
        elif not providers & set(pins):
            problems.append(f"{name} (imported by {sorted(files)[0]}): {sorted(providers)[0]} is not pinned")
    return problems


def declared() -> tuple[dict[str, Requirement], dict[str, dict[str, Requirement]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def by_name(items):
        reqs = [Requirement(text) for text in items]
        return {canonical(r.name): r for r in reqs}

    extras = {name: by_name(items) for name, items in project.get("optional-dependencies", {}).items()}
    return by_name(project["dependencies"]), extras


LOCK = read_pins(REPO / "requirements.txt")
TEST_LOCK = read_pins(REPO / "requirements-test.txt")
DISTRIBUTIONS = importlib.metadata.packages_distributions()
LIBRARY_IMPORTS = third_party_imports([REPO / "src" / "marsdiff", REPO / "workflow" / "scripts"])


def test_every_library_and_script_import_is_pinned():
    problems = unpinned(LIBRARY_IMPORTS, LOCK, DISTRIBUTIONS)
    assert not problems, "pin these in requirements.txt:\n" + "\n".join(problems)


def test_every_test_and_benchmark_import_is_pinned():
    # the tests' helpers and the benchmarks' own modules (benchlib, summary) import as top-level names
    local = {p.stem for folder in ("tests", "benchmarks") for p in (REPO / folder).rglob("*.py")}
    imports = third_party_imports([REPO / "tests", REPO / "benchmarks"], local)
    problems = unpinned(imports, {**LOCK, **TEST_LOCK}, DISTRIBUTIONS)
    assert not problems, "pin these in requirements.txt or requirements-test.txt:\n" + "\n".join(problems)


def test_no_unused_pin():
    imported = {canonical(d) for name in LIBRARY_IMPORTS for d in DISTRIBUTIONS.get(name, ())}
    unused = sorted(set(LOCK) - imported - set(NOT_IMPORTED))
    assert not unused, f"requirements.txt pins {unused}, which nothing imports (or say why in NOT_IMPORTED)"
    stale = sorted(set(NOT_IMPORTED) - set(LOCK))
    assert not stale, f"NOT_IMPORTED names {stale}, which requirements.txt does not pin"
    stale = sorted(set(NOT_IMPORTED) & imported)
    assert not stale, f"NOT_IMPORTED names {stale}, which is imported after all"


def test_accelerate_is_needed_by_peft():
    # The reason NOT_IMPORTED gives: peft declares it (and imports it at import time).
    requires = [canonical(Requirement(r).name) for r in importlib.metadata.requires("peft") or []]
    assert "accelerate" in requires


def test_pyproject_declares_every_pin_in_a_range_that_holds_it():
    dependencies, extras = declared()
    everything = dict(dependencies)
    for name, reqs in extras.items():
        everything.update(reqs)
    for name, version in {**LOCK, **TEST_LOCK}.items():
        assert name in everything, f"{name} is pinned but pyproject.toml does not declare it"
        assert everything[name].specifier.contains(version, prereleases=True), (
            f"{name}=={version} (the lock) is outside pyproject.toml's {everything[name].specifier}")
        assert str(everything[name].specifier), f"pyproject.toml gives {name} no version range"
    for name in everything:
        assert name in LOCK or name in TEST_LOCK, f"pyproject.toml declares {name}, which no requirements file pins"


def test_extras_hold_what_they_promise():
    dependencies, extras = declared()
    for extra, members in EXTRAS.items():
        assert extra in extras, f"pyproject.toml has no extra {extra!r}"
        for member in members:
            assert member in extras[extra], f"extra {extra!r} does not hold {member}"
            assert member not in dependencies, f"{member} is an extra's ({extra}) and also a plain dependency"


def test_test_tools_stay_out_of_the_runtime_lock_and_the_rules_env():
    assert "pytest" in TEST_LOCK and "pytest" not in LOCK
    assert not set(TEST_LOCK) & set(LOCK), "requirements-test.txt repeats a runtime pin"
    env = (REPO / "workflow" / "envs" / "marsdiff.yaml").read_text()
    assert "pytest" not in env and "requirements-test" not in env
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -r requirements-test.txt" in makefile


def test_the_environment_has_the_locked_versions():
    wrong = []
    for name, version in {**LOCK, **TEST_LOCK}.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong.append(f"{name}: pinned {version}, installed {installed}")
    assert not wrong, "the lock and this environment differ (make re-installs on a changed lock):\n" + "\n".join(wrong)


# ------------------------------------------------------------------------------------------ the checker

def test_checker_finds_an_unpinned_import_inside_a_function(tmp_path):
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "a.py").write_text("import os\nimport numpy as np\n\ndef f():\n    from yaml import safe_load\n")
    imports = third_party_imports([pkg])
    assert set(imports) == {"numpy", "yaml"}
    distributions = {"numpy": ["numpy"], "yaml": ["PyYAML"]}
    assert unpinned(imports, {"numpy": "2.4.6", "pyyaml": "6.0.4"}, distributions) == []
    problems = unpinned(imports, {"numpy": "2.4.6"}, distributions)
    assert len(problems) == 1 and problems[0].startswith("yaml") and "pyyaml is not pinned" in problems[0]
    assert "no installed distribution" in unpinned({"nowhere": {"toy/a.py"}}, {}, distributions)[0]


@pytest.mark.parametrize("line", ["numpy>=2", "numpy", "-e .", "numpy==2.4.6\nNumPy==2.4.6"])
def test_a_lock_line_that_is_no_single_exact_pin_is_refused(tmp_path, line):
    path = tmp_path / "requirements.txt"
    path.write_text(line + "\n")
    with pytest.raises(AssertionError):
        read_pins(path)
