"""Deployment: which marsdiff the jobs import, and the environment they inherit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import marsdiff
from conftest import REPO, make_workdir, run_snakemake

TINY = REPO / "tests" / "config" / "tiny.yaml"
WARNING = "marsdiff warning: running the marsdiff installed at"


def _copy_project(destination: Path) -> Path:
    destination.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "src"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, destination / name)
    return destination


def test_a_copied_project_says_which_installation_its_jobs_import(tmp_path):
    copy = _copy_project(tmp_path / "copy")
    workdir = make_workdir(tmp_path / "work")
    dry = run_snakemake(workdir, "-n", "-s", str(copy / "Snakefile"), "--configfile", str(TINY))
    lines = [line for line in dry.stderr.splitlines() if line.startswith(WARNING)]
    assert len(lines) == 1, dry.stderr[-2000:]
    assert str(Path(marsdiff.__file__).resolve().parent) in lines[0]
    assert str(copy / "src" / "marsdiff") in lines[0]


@pytest.mark.skipif(Path(marsdiff.__file__).resolve().parents[1] != (REPO / "src").resolve(),
                    reason="this checkout's marsdiff is not the one installed (a worktree)")
def test_the_project_itself_runs_its_own_marsdiff_without_a_warning(tmp_path):
    dry = run_snakemake(make_workdir(tmp_path), "-n", "--configfile", str(TINY))
    assert WARNING not in dry.stderr
