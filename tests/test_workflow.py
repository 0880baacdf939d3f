"""The Snakemake workflow: schema errors, lint, cheap parsing, a tiny end-to-end run of the
reference and feature stages, and re-runs triggered exactly by the stage a change touches."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

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
def test_tiny_end_to_end_run_and_rerun_triggers(tmp_path):
    workdir = make_workdir(tmp_path)
    tiny = ["--configfile", str(REPO / "tests" / "config" / "tiny.yaml")]
    run_snakemake(workdir, *tiny)

    manifest = pd.read_csv(workdir / "results/reference/manifest.csv")
    assert len(manifest) == 36
    assert manifest["size_cat"].nunique() == 3
    features = np.load(workdir / FEATURES)
    ids = (workdir / "results/features/reference/mobilenet_v2.ids.txt").read_text().split()
    assert features.shape == (36, 256) and features.dtype == np.float32
    assert ids == manifest["id"].tolist()
    for produced in ("results/validation/validation.json", "results/models/base/samples.png",
                     "results/runs/tiny/round_000/trajectories.h5", "results/runs/tiny/round_000/samples.csv"):
        assert (workdir / produced).stat().st_size > 0, produced
    for rule in ("prepare_reference", "extract_features/reference_mobilenet_v2", "validate_rewards", "pretrain_base"):
        assert (workdir / "logs" / f"{rule}.log").stat().st_size > 0, rule
        assert (workdir / "benchmarks-out" / f"{rule}.tsv").exists(), rule

    assert planned_jobs(run_snakemake(workdir, "-n", *tiny)) == {}, "an unchanged re-run has nothing to do"

    def plan_with(change: dict) -> dict[str, int]:
        override = tmp_path / "override.yaml"
        merged = yaml.safe_load((REPO / "tests/config/tiny.yaml").read_text())
        for section, values in change.items():
            merged.setdefault(section, {}).update(values)
        override.write_text(yaml.safe_dump(merged))
        jobs = planned_jobs(run_snakemake(workdir, "-n", "--configfile", str(override)))
        jobs.pop("all", None)
        return jobs

    assert plan_with({"reward": {"duplicate_factor": 0.3}}) == {"validate_rewards": 1}
    assert plan_with({"sampling": {"seed": 7}}) == {"sample_round": 1}
    assert plan_with({"features": {"mobilenet_v2": {"input_size": 64, "grid": 1}}}) == {
        "extract_features": 1, "validate_rewards": 1,
    }
    assert plan_with({"reference": {"seed": 5}}) == {
        "prepare_reference": 1, "extract_features": 1, "validate_rewards": 1, "pretrain_base": 1, "sample_round": 1,
    }


def test_check_config_fills_nested_defaults():
    config = check_config({"features": {"mobilenet_v2": {}}})
    assert config["features"]["mobilenet_v2"]["grid"] == 2
    assert config["reference"]["size_bins"] == 6


def test_slurm_profile_names_real_rules_and_dry_runs(tmp_path):
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    listed = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    rules = set(listed.stdout.split())
    for section in ("set-resources", "set-threads"):
        unknown = set(profile[section]) - rules
        assert not unknown, f"profiles/slurm {section} names rules that do not exist: {unknown}"
    for rule, resources in profile["set-resources"].items():
        assert not ("gpu" in resources and "gres" in resources), f"{rule}: gpu and gres are mutually exclusive"
    result = run_snakemake(make_workdir(tmp_path), "-n", "--profile", str(REPO / "profiles/slurm"))
    assert "prepare_reference" in result.stdout
