"""Kill and resume in Snakemake: 11 seeded SIGKILLs across sample (one while writing the .h5),
score, the PPO and TRPO updates (one each while writing the policy's temporary folder),
generation and evaluate, on the tiny config. Each kill takes Snakemake down with the job (the
process group, as a node failure would), so the lock and the incomplete outputs stay behind;
`snakemake --unlock` and a re-run recover. After the chain, a run without kills must end with the
metrics of an uninterrupted run, byte for byte apart from timing fields.

Cost: the RL and evaluation stages of the tiny config once more, with the killed jobs on top: the
uninterrupted run is the session's (tests/conftest.py, shared with test_evaluation_workflow.py),
and the chain runs in a copy of it whose upstream stages (reference to base model) are done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO, SNAKEMAKE
from marsdiff.faults import ENV_AT, ENV_DIR, ENV_SCOPE, KILLED_FILE, SITES

pytestmark = pytest.mark.slow
TINY = REPO / "tests" / "config" / "tiny.yaml"
EXPERIMENTS = ("ppo_lora", "ppo_scheduler", "trpo_lora")
EVAL_TABLES = ("metrics.csv", "bootstrap.csv", "category_coverage.csv", "category_shares.csv", "reference.csv")
FINAL = ["results/eval/metrics.csv", *(f"results/runs/{exp}/round_000/metrics.json" for exp in EXPERIMENTS)]


def round_file(exp: str, name: str) -> str:
    return f"results/runs/{exp}/round_000/{name}"


# (kill point "site:count", the target of the killed run). The order follows the pipeline: each
# killed run asks for a target whose jobs are not finished yet, so its site is certainly reached.
KILLS = [
    ("trajectories.batch:1", round_file("ppo_lora", "samples.csv")),       # sample: inside the open .h5
    ("sample.done:1", round_file("trpo_lora", "samples.csv")),             # sample: outputs written, job not done
    ("score.done:1", round_file("ppo_lora", "rewards.csv")),               # score
    ("update.ppo.step:1", round_file("ppo_lora", "metrics.json")),         # PPO: after an optimiser step
    ("update.ppo.policy_folder:1", round_file("ppo_scheduler", "metrics.json")),  # PPO (plan policy): temporary folder
    ("update.trpo.line_search:1", round_file("trpo_lora", "metrics.json")),       # TRPO: a trial step applied
    ("update.trpo.policy_folder:1", round_file("trpo_lora", "metrics.json")),     # TRPO: temporary folder
    ("update.done:1", round_file("ppo_lora", "metrics.json")),             # update: outputs written, job not done
    ("generate.start:1", "results/eval/metrics.csv"),                      # generation
    ("generate.done:2", "results/eval/metrics.csv"),                       # generation: outputs written
    ("evaluate.done:1", "results/eval/metrics.csv"),                       # evaluate: every table written
]


def snakemake(workdir, *args, env=None):
    """Snakemake in its own session: a group kill takes it and its jobs down, never pytest."""
    command = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--cores", "2", *args, "--configfile", str(TINY)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MARSDIFF_KILL")}
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900, start_new_session=True,
                          env={**clean, "PYTHONWARNINGS": "ignore", **(env or {})})


def ok(result):
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def final_metrics(workdir):
    """Every evaluation table, and each experiment's round metrics and policy hash minus timing fields."""
    out = {f"eval/{name}": (workdir / "results" / "eval" / name).read_text() for name in EVAL_TABLES}
    for exp in EXPERIMENTS:
        metrics = json.loads((workdir / round_file(exp, "metrics.json")).read_text())
        out[f"{exp}/metrics.json"] = {k: v for k, v in metrics.items() if "seconds" not in k}
        out[f"{exp}/reward_summary.json"] = (workdir / round_file(exp, "reward_summary.json")).read_text()
        out[f"{exp}/policy_hash"] = json.loads((workdir / round_file(exp, "policy/policy.json")).read_text())["policy_hash"]
    return out


@pytest.fixture(scope="module")
def uninterrupted(tiny_evaluation):
    """The uninterrupted tiny run: the session's evaluated run (tests/conftest.py), never changed here."""
    return tiny_evaluation


def test_every_kill_point_is_a_known_site():
    assert len(KILLS) >= 10
    assert {spec.rpartition(":")[0] for spec, _ in KILLS} <= set(SITES)


def test_killed_runs_resume_to_the_metrics_of_an_uninterrupted_run(uninterrupted, tmp_path):
    expected = final_metrics(uninterrupted)
    # The chain starts from the finished upstream stages (reference, features, base model, reward
    # validation): the RL rounds and the evaluation are what it kills and re-runs.
    workdir = tmp_path / "killed"
    shutil.copytree(uninterrupted, workdir, symlinks=True)
    for part in ("runs", "eval"):
        shutil.rmtree(workdir / "results" / part)
    for number, (spec, target) in enumerate(KILLS):
        state = tmp_path / f"kill{number:02d}"
        result = snakemake(workdir, target, env={ENV_AT: spec, ENV_DIR: str(state), ENV_SCOPE: "group"})
        assert result.returncode != 0, f"{spec}: the run was not killed\n{result.stderr[-2000:]}"
        killed = (state / KILLED_FILE).read_text().split()
        assert killed[0] == spec, f"{spec}: killed at {killed[0]}"
        # Snakemake died with its job: its lock is still there, and --unlock is the recovery.
        assert any((workdir / ".snakemake" / "locks").iterdir()), f"{spec}: Snakemake was not killed with the job"
        ok(snakemake(workdir, "--unlock"))
    ok(snakemake(workdir, *FINAL))
    resumed = final_metrics(workdir)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert resumed[key] == expected[key], key
    # The killed writers' temporaries were cleared by the re-runs' writes.
    leftovers = [str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if ".tmp." in p.name]
    assert leftovers == []
