"""Shared fixtures: the repository root, the default reference set (built once), one torch thread,
helpers that run Snakemake in a scratch working directory and Python in a fresh interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def pytest_collection_modifyitems(config, items):
    """Files with a ``slow`` test first, each file's tests in their order: make test's two xdist
    workers (--dist loadfile --no-loadscope-reorder) then start on the workflow runs that take
    minutes and fill in with the fast files, instead of ending on one of them alone."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture()
def one_torch_thread():
    """One torch thread for the test, restored afterwards: small models run many small kernels,
    and on a busy 2-core machine two threads per process oversubscribe the CPU (10-50x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_reference(tmp_path_factory):
    """The default HRSC reference set, built once per test session."""
    from marsdiff.stages.categorize_reference import prepare_reference

    out = tmp_path_factory.mktemp("reference") / "reference"
    manifest = prepare_reference({}, out)
    return out, manifest


@pytest.fixture(scope="session")
def tiny_evaluation(tmp_path_factory):
    """The tiny config run through every evaluation target and the report, once per session:
    tests/test_evaluation_workflow.py reads it, tests/test_kills.py compares a killed run with it.
    Read-only (dry runs only): copy it to change anything."""
    from test_evaluation_workflow import TINY, evaluation_targets

    workdir = make_workdir(tmp_path_factory.mktemp("evaluation"))
    run_snakemake(workdir, *evaluation_targets(), "--configfile", str(TINY))
    run_snakemake(workdir, *evaluation_targets(), "--report", "report.html", "--configfile", str(TINY))
    return workdir


def make_workdir(path: Path) -> Path:
    """A scratch working directory holding the default config, as a user's would."""
    (path / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config" / "config.yaml", path / "config" / "config.yaml")
    return path


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--cores", "2", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def run_python(code: str, timeout: int = 300) -> str:
    """stdout of ``code`` (dedented) run in a fresh interpreter with this checkout's src first on
    the path: what a stage's process imports cannot be seen from the test session, which has
    imported everything already."""
    import textwrap

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def option_value(words: list[str], name: str) -> str | None:
    """The value of option ``name`` in a command's words (``name value`` or ``name=value``), or None."""
    for i, word in enumerate(words):
        if word == name:
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None
