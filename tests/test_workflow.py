"""The Snakemake workflow: schema errors, lint, cheap parsing, and a tiny end-to-end run of
every stage that a copied project then finds complete (the re-run policy: test_rerun_policy.py;
the SLURM profile: test_slurm_profile.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, make_workdir, run_snakemake
from marsdiff.config import check_config, load_config
from marsdiff.errors import MarsdiffError

FEATURES = "results/features/reference/mobilenet_v2.npy"


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> count from the 'Job stats' table of a dry run (empty when nothing to do)."""
    jobs, in_table = {}, False
    for line in result.stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return jobs


def test_embedded_default_config_is_valid():
    config = load_config()
    assert config["reference"]["source"] == "hrsc"
    assert config["features"]["extractors"][0] == "mobilenet_v2"
    assert config["features"]["cache_dir"] == "results/cache/features", "schema defaults are filled in"


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"reference": {"windw_px": 3}}, r"config key reference\.windw_px: unknown key"),
        ({"reference": {"window_px": "big"}}, r"config key reference\.window_px: expected integer"),
        ({"features": {"extractors": ["inception"]}}, r"config key features\.extractors\.0: 'inception' is not one of"),
        ({"colour": 1}, r"config key colour: unknown key"),
    ],
)
def test_schema_errors_name_the_key(bad, message):
    with pytest.raises(MarsdiffError, match=message):
        load_config(overrides=bad)


def test_workflow_stops_on_a_bad_config_with_the_key_named(tmp_path):
    workdir = make_workdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("features:\n  batch_size: many\n")
    result = run_snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    assert "config key features.batch_size: expected integer" in result.stdout + result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "batch_size" in line]
    assert errors == ["marsdiff error: config key features.batch_size: expected integer, got str 'many'"], errors


def test_lint_passes():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parsing_the_workflow_does_not_import_torch(tmp_path):
    workdir = make_workdir(tmp_path)
    probe = (
        "import sys\n"
        "from snakemake.cli import main\n"
        f"sys.argv = ['snakemake', '-s', {str(REPO / 'Snakefile')!r}, '-n', '--quiet', 'all']\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    code = stop.code\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_ABSENT', code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert "TORCH_ABSENT 0" in result.stdout, result.stdout + result.stderr


def test_default_dry_run_plans_every_stage(tmp_path):
    jobs = planned_jobs(run_snakemake(make_workdir(tmp_path), "-n"))
    assert jobs.get("prepare_reference") == 1
    assert jobs.get("extract_features") == 1
    assert jobs.get("all") == 1


@pytest.mark.slow
def test_tiny_end_to_end_run_then_a_copied_project_has_nothing_to_do(tmp_path):
    """Every stage on the tiny config; then the finished run, copied without its time stamps
    (as cp -r or a fresh clone plus copied results gives), dry-runs to nothing. The re-run
    policy itself is tested stage by stage in test_rerun_policy.py."""
    workdir = make_workdir(tmp_path / "run")
    tiny = ["--configfile", str(REPO / "tests" / "config" / "tiny.yaml")]
    run_snakemake(workdir, *tiny)

    manifest = pd.read_csv(workdir / "results/reference/manifest.csv")
    assert len(manifest) == 36
    assert manifest["size_cat"].nunique() == 3
    features = np.load(workdir / FEATURES)
    ids = (workdir / "results/features/reference/mobilenet_v2.ids.txt").read_text().split()
    assert features.shape == (36, 256) and features.dtype == np.float32
    assert ids == manifest["id"].tolist()
    for produced in ("results/validation/validation.json", "results/models/base/samples.png"):
        assert (workdir / produced).stat().st_size > 0, produced
    rounds = sorted((workdir / "results/runs").glob("*/round_000/trajectories.h5"))
    assert rounds and all(path.stat().st_size > 0 for path in rounds)
    for rule in ("prepare_reference", "categorize_reference", "extract_features/reference_mobilenet_v2",
                 "validate_rewards", "pretrain_base", "preview_base"):
        assert (workdir / "logs" / f"{rule}.log").stat().st_size > 0, rule
    for rule in ("prepare_reference", "validate_rewards", "pretrain_base", "preview_base"):
        assert (workdir / "benchmarks-out" / f"{rule}.tsv").exists(), rule

    assert planned_jobs(run_snakemake(workdir, "-n", *tiny)) == {}, "an unchanged re-run has nothing to do"

    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, copy_function=shutil.copy, symlinks=True)  # new time stamps
    scramble_times(copy)
    assert planned_jobs(run_snakemake(copy, "-n", *tiny)) == {}, "a copied finished run has nothing to do"


def scramble_times(root):
    """Give every file and folder below ``root`` a random time stamp of the last few days."""
    rng = np.random.default_rng(0)
    now = time.time()
    for path in sorted(root.rglob("*")):
        stamp = now - float(rng.uniform(0, 3 * 86400))
        os.utime(path, (stamp, stamp), follow_symlinks=False)


def test_check_config_fills_nested_defaults():
    config = check_config({"features": {"mobilenet_v2": {}}})
    assert config["features"]["mobilenet_v2"]["grid"] == 2
    assert config["reference"]["size_bins"] == 6


def test_a_run_dir_keeps_a_runs_results_logs_and_benchmarks_in_its_own_folder(tmp_path):
    workdir = make_workdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("run_dir: runs/mine\n")
    result = run_snakemake(workdir, "-n", "--configfile", "mine.yaml")
    paths = [p.strip() for line in result.stdout.splitlines()
             if line.strip().startswith(("output:", "log:", "benchmark:"))
             for p in line.split(":", 1)[1].split(",")]
    assert len(paths) > 50
    outside = [p for p in paths if not p.startswith("runs/mine/")]
    assert not outside, outside[:5]
    # the default run is untouched: its own plan writes to results/, logs/ and benchmarks-out/
    default = run_snakemake(workdir, "-n")
    assert "output: results/reference/images" in default.stdout and "runs/mine" not in default.stdout


def test_rule_params_are_key_sorted_literals_without_double_quotes():
    from types import SimpleNamespace

    from marsdiff.stage import param_text, params_json

    config = {"b": {"y": [1, 2.5, None], "x": "a b"}, "a": True}
    text = param_text(config)
    assert text == "{'a': True, 'b': {'x': 'a b', 'y': [1, 2.5, None]}}", "key order never changes the text"
    assert text == param_text({"a": True, "b": {"x": "a b", "y": [1, 2.5, None]}}) and '"' not in text
    assert params_json(SimpleNamespace(params=SimpleNamespace(cfg=text)), "cfg") == config
    # JSON (what tests and runs before this format pass) still decodes
    assert params_json(SimpleNamespace(params=SimpleNamespace(cfg='{"a": true, "n": null}')), "cfg") == {"a": True, "n": None}
