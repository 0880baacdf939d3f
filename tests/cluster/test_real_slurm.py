"""The workflow through profiles/slurm on a real SLURM (single node, accounting, fake GPUs).

Run by `make test-cluster`, which starts the cluster with tests/cluster/slurm_cluster.sh and
points SLURM_CONF at it; skipped without one. The tiny config and a short target list (the
reference, the base model and one RL round of one experiment) keep it within a few minutes.

What it checks, in order:
1. a stage that raises: SLURM reports the failure, the rule's own log holds the traceback, and the
   one retry asked for twice the memory and run time;
2. the run completes: every output is present and each rule's sbatch call carries the profile's
   partition, memory, run time and CPUs, and no GPU (a CPU config);
3. a second run plans nothing and submits nothing;
4. the plugin's squeue status command (sites without slurmdbd) sees a job through.

The plugin starts polling 2 s after a submission here (`--slurm-init-seconds-before-status-checks`,
40 s by default; the poll interval then grows by 10 s per poll while jobs run, up to 180 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_workdir, option_value

# Only against the cluster make test-cluster starts: never a user's real cluster by accident.
if os.environ.get("MARSDIFF_TEST_CLUSTER") != "1" or shutil.which("sbatch") is None:
    pytest.skip("needs the test cluster: make test-cluster", allow_module_level=True)

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PROFILE = REPO / "profiles" / "slurm"
TINY = REPO / "tests" / "config" / "tiny.yaml"
EXPERIMENT = "ppo_lora"
TARGETS = [f"results/runs/{EXPERIMENT}/metrics.csv"]
STATUS_SETTINGS = ["--slurm-init-seconds-before-status-checks", "2"]
SBATCH_WRAPPER = """#!/usr/bin/env python3
# Records each sbatch call's arguments, then submits it with the real sbatch.
import json, os, sys
with open(os.environ["SBATCH_CALLS"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
os.execv("/usr/bin/sbatch", ["sbatch", *sys.argv[1:]])
"""


class Cluster:
    def __init__(self, workdir: Path, bindir: Path):
        self.workdir = workdir
        self.calls_file = workdir / "sbatch_calls.jsonl"
        self.env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "SBATCH_CALLS": str(self.calls_file),
                    "PYTHONWARNINGS": "ignore"}

    def snakemake(self, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
        # targets and options before --configfile, which takes every following word as a config file
        command = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--profile", str(PROFILE), *STATUS_SETTINGS,
                   *args, "--configfile", str(TINY)]
        return subprocess.run(command, cwd=self.workdir, capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})

    def calls(self) -> list[dict]:
        """Every sbatch call so far: rule name and the options the profile controls."""
        if not self.calls_file.is_file():
            return []
        return [_options(json.loads(line)) for line in self.calls_file.read_text().splitlines()]


def _options(argv: list[str]) -> dict:
    def option(name: str) -> str | None:
        return option_value(argv, name)

    # the plugin's comment is rule_<name>, or rule_<name>_wildcards_<values>
    rule = (option("--comment") or "").removeprefix("rule_").split("_wildcards_")[0]
    return {"rule": rule, "partition": option("-p"),
            "mem": option("--mem"), "time": option("-t"), "cpus": option("--cpus-per-task"),
            "gpus": option("--gpus"), "gres": option("--gres")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = make_workdir(tmp_path_factory.mktemp("cluster"))
    bindir = workdir / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(SBATCH_WRAPPER)
    (bindir / "sbatch").chmod(0o755)
    return Cluster(workdir, bindir)


def _expected(rule: str, attempt: int) -> dict:
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    resources = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
    return {"partition": resources["slurm_partition"], "mem": str(eval(str(resources["mem_mb"]), {"attempt": attempt})),
            "time": str(eval(str(resources["runtime"]), {"attempt": attempt})), "cpus": str(resources["cpus_per_task"])}


def test_1_a_raising_stage_is_reported_with_its_traceback_in_the_rule_log(cluster):
    started = time.monotonic()
    fault = {"MARSDIFF_KILL_AT": "score.start:1", "MARSDIFF_FAULT_MODE": "raise"}
    result = cluster.snakemake(f"results/runs/{EXPERIMENT}/round_000/rewards.csv", env=fault)
    reported_after = time.monotonic() - started
    assert result.returncode != 0, result.stdout[-3000:]
    log = cluster.workdir / "logs" / "runs" / EXPERIMENT / "round_000" / "score_round.log"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: fault injected at score.start" in text, text
    attempts = [call for call in cluster.calls() if call["rule"] == "score_round"]
    assert [call["mem"] for call in attempts] == [_expected("score_round", 1)["mem"], _expected("score_round", 2)["mem"]]
    assert [call["time"] for call in attempts] == [_expected("score_round", 1)["time"], _expected("score_round", 2)["time"]]
    print(f"failure run (upstream jobs, then two failing attempts) reported after {reported_after:.0f} s")


def test_2_the_run_completes_with_the_profile_s_options_and_no_gpus(cluster):
    result = cluster.snakemake(*TARGETS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("trajectories.h5", "rewards.csv", "metrics.json"):
        assert (cluster.workdir / "results" / "runs" / EXPERIMENT / "round_000" / name).is_file(), name
    assert (cluster.workdir / "results" / "runs" / EXPERIMENT / "metrics.csv").is_file()
    calls = cluster.calls()
    rules = {call["rule"] for call in calls}
    assert {"prepare_reference", "pretrain_base", "sample_round", "score_round", "update_round", "plot_experiment"} <= rules
    first_attempts = {}
    for call in calls:
        first_attempts.setdefault(call["rule"], call)
    for rule, call in first_attempts.items():
        assert {key: call[key] for key in ("partition", "mem", "time", "cpus")} == _expected(rule, 1), rule
        assert call["gpus"] is None and call["gres"] is None, f"{rule}: the tiny CPU config asked for a GPU"


def test_3_a_second_run_plans_and_submits_nothing(cluster):
    before = len(cluster.calls())
    result = cluster.snakemake(*TARGETS)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
    assert len(cluster.calls()) == before


def test_4_the_squeue_status_command_sees_a_job_through(cluster):
    before = len(cluster.calls())
    result = cluster.snakemake(*TARGETS, "--forcerun", "plot_experiment", "--slurm-status-command", "squeue")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [call["rule"] for call in cluster.calls()[before:]] == ["plot_experiment"]
    assert "squeue" in result.stdout + result.stderr
