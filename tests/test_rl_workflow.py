"""The RL round loop in Snakemake: a finished tiny run has nothing to do (also after a copy), a
change to one experiment re-runs that experiment only and only the stages that read the change,
more rounds add rounds, and a 200-round experiment builds its DAG in a dry run."""

from __future__ import annotations

import time

import pytest
import yaml

from conftest import REPO
from test_rerun_policy import copy_project, make_project, snakemake
from test_workflow import planned_jobs

pytestmark = pytest.mark.slow
EXPERIMENTS = ("ppo_lora", "ppo_scheduler")


def targets(rounds=1):
    out = []
    for exp in EXPERIMENTS:
        out += [f"results/runs/{exp}/round_{r:03d}/metrics.json" for r in range(rounds)]
        out += [f"results/runs/{exp}/metrics.csv", f"results/runs/{exp}/reward_curve.png"]
    return out


def plan(project, tmp_path, change=None, wanted=None):
    extra = []
    if change:
        override = tmp_path / "change.yaml"
        override.write_text(yaml.safe_dump(change))
        extra = [str(override)]
    result = snakemake(project, "-n", *(wanted or targets()), "--configfile", str(REPO / "tests" / "config" / "tiny.yaml"), *extra)
    jobs = planned_jobs(result)
    jobs.pop("all", None)
    return jobs, result.stdout


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("rl"))
    snakemake(project, *targets(), "--configfile", str(REPO / "tests" / "config" / "tiny.yaml"))
    return project


def test_finished_run_has_every_round_output(finished, tmp_path):
    for exp in EXPERIMENTS:
        round_dir = finished / "results" / "runs" / exp / "round_000"
        for name in ("trajectories.h5", "samples.csv", "rewards.csv", "reward_summary.json", "metrics.json",
                     "policy/policy.json", "policy/trainer_state.safetensors"):
            assert (round_dir / name).is_file(), (exp, name)
        assert (finished / "results" / "runs" / exp / "reward_curve.png").stat().st_size > 5000
    assert plan(finished, tmp_path)[0] == {}


def test_a_copied_project_has_nothing_to_do(finished, tmp_path):
    copied = copy_project(finished, tmp_path / "copy")
    assert plan(copied, tmp_path)[0] == {}


@pytest.mark.parametrize("change, planned", [
    # The optimiser is read by the update only; round 000's samples stay.
    ({"experiments": {"ppo_scheduler": {"optimiser": {"lr": 0.2}}}}, {"update_round": 1, "plot_experiment": 1}),
    # The chain length changes what is sampled: the whole round re-runs, for this experiment only.
    ({"experiments": {"ppo_lora": {"steps": 3}}},
     {"sample_round": 1, "score_round": 1, "update_round": 1, "plot_experiment": 1}),
    # The reward override re-scores, then updates; sampling is untouched.
    ({"experiments": {"ppo_lora": {"reward": {"duplicate_factor": 0.3}}}},
     {"score_round": 1, "update_round": 1, "plot_experiment": 1}),
    # Shared sampling batch size: no image changes.
    ({"sampling": {"batch_size": 2}}, {}),
])
def test_a_change_to_one_experiment_reruns_that_experiment_only(finished, tmp_path, change, planned):
    jobs, stdout = plan(finished, tmp_path, change)
    assert jobs == planned, stdout[-3000:]
    if planned:
        touched = next(iter(change.get("experiments", {})))
        other = next(e for e in EXPERIMENTS if e != touched)
        assert f"exp={other}" not in stdout


def test_more_rounds_add_rounds_and_keep_the_finished_ones(finished, tmp_path):
    change = {"experiments": {"ppo_lora": {"rounds": 3}}}
    jobs, _ = plan(finished, tmp_path, change, wanted=[f"results/runs/ppo_lora/round_{r:03d}/metrics.json" for r in range(3)])
    assert jobs == {"sample_round": 2, "score_round": 2, "update_round": 2}


def test_a_200_round_experiment_builds_its_dag(tmp_path):
    project = make_project(tmp_path)
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({"experiments": {"long": {"rounds": 200}}}))
    started = time.perf_counter()
    result = snakemake(project, "-n", "--configfile", str(REPO / "tests" / "config" / "tiny.yaml"), str(config),
                       "--replace-workflow-config")
    seconds = time.perf_counter() - started
    jobs = planned_jobs(result)
    # 200 rounds of "long" plus the tiny config's one-round experiments (configs merge).
    tiny = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())["experiments"]
    assert jobs["sample_round"] == jobs["update_round"] == jobs["score_round"] == 200 + len(tiny)
    assert jobs["plot_experiment"] == 1 + len(tiny)
    print(f"200-round dry run: {seconds:.1f} s")  # measured, not asserted


def test_an_unconfigured_experiment_name_matches_no_rule(finished, tmp_path):
    result = snakemake(finished, "-n", "results/runs/nobody/round_000/metrics.json",
                       "--configfile", str(REPO / "tests" / "config" / "tiny.yaml"), check=False)
    assert result.returncode != 0 and "MissingRuleException" in result.stdout + result.stderr
