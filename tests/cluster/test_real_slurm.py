"""The workflow through profiles/slurm on a real SLURM (single node, accounting, fake GPUs).

Run by `make test-cluster`, which starts the cluster with tests/cluster/slurm_cluster.sh and
points SLURM_CONF at it; skipped without one. The tiny config and a short target list (the
reference, the base model and one RL round of one experiment) keep it within a few minutes.

What it checks, in order:
1. a stage that raises: SLURM reports the failure, the rule's own log holds the traceback, and the
   one retry asked for twice the memory and run time;
2. the run completes: every output is present and each rule's sbatch call carries the profile's
   partition, memory, run time and CPUs, and no GPU (a CPU config); a round's rules go as one
   group job with their largest memory and CPUs and the sum of their run times;
3. a second run plans nothing and submits nothing;
4. the plugin's squeue status command (sites without slurmdbd) sees a job through;
5. a round run with sampling.processes 2 goes as one group job of 2 gloo processes per stage
   (docs/rl.md, "Multi-GPU"), asks for no GPU on the CPU config, and samples the same images.

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
ROUND_RULES = ("sample_round", "score_round", "update_round")  # one group job per round
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

    def snakemake(self, *args: str, env: dict | None = None, timeout: int = 900,
                  configfiles: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
        # targets and options before --configfile, which takes every following word as a config file
        command = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--profile", str(PROFILE), *STATUS_SETTINGS,
                   *args, "--configfile", str(TINY), *map(str, configfiles)]
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

    # the plugin's comment is rule_<name>, or rule_<name>_wildcards_<values>; for a group job
    # rule_<group id>_<its rules, sorted and joined by _> (round groups: rounds-<exp>-<round>)
    rule = (option("--comment") or "").removeprefix("rule_").split("_wildcards_")[0]
    rules = [name for name in ROUND_RULES if name in rule] if rule.startswith("rounds-") else [rule]
    return {"rule": rule, "rules": rules, "partition": option("-p"),
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


def _expected(rules: list[str], attempt: int) -> dict:
    """The sbatch options of a job of these rules (one rule, or a group run one after another):
    the profile's values, the largest memory and CPUs and the summed run time of a group."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    each = [{**profile["default-resources"], **profile["set-resources"].get(rule, {})} for rule in rules]
    (partition,) = {resources["slurm_partition"] for resources in each}
    return {"partition": partition,
            "mem": str(max(eval(str(resources["mem_mb"]), {"attempt": attempt}) for resources in each)),
            "time": str(sum(eval(str(resources["runtime"]), {"attempt": attempt}) for resources in each)),
            "cpus": str(max(resources["cpus_per_task"] for resources in each))}


def test_1_a_raising_stage_is_reported_with_its_traceback_in_the_rule_log(cluster):
    started = time.monotonic()
    fault = {"MARSDIFF_KILL_AT": "score.start:1", "MARSDIFF_FAULT_MODE": "raise"}
    result = cluster.snakemake(f"results/runs/{EXPERIMENT}/round_000/rewards.csv", env=fault)
    reported_after = time.monotonic() - started
    assert result.returncode != 0, result.stdout[-3000:]
    log = cluster.workdir / "logs" / "runs" / EXPERIMENT / "round_000" / "score_round.log"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: fault injected at score.start" in text, text
    # score_round runs in its round's group job (with sample_round: the target needs no update)
    attempts = [call for call in cluster.calls() if "score_round" in call["rules"]]
    assert [call["rules"] for call in attempts] == [["sample_round", "score_round"]] * 2
    rules = attempts[0]["rules"]
    assert [call["mem"] for call in attempts] == [_expected(rules, 1)["mem"], _expected(rules, 2)["mem"]]
    assert [call["time"] for call in attempts] == [_expected(rules, 1)["time"], _expected(rules, 2)["time"]]
    print(f"failure run (upstream jobs, then two failing attempts) reported after {reported_after:.0f} s")


def test_2_the_run_completes_with_the_profile_s_options_and_no_gpus(cluster):
    result = cluster.snakemake(*TARGETS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("trajectories.h5", "rewards.csv", "metrics.json"):
        assert (cluster.workdir / "results" / "runs" / EXPERIMENT / "round_000" / name).is_file(), name
    assert (cluster.workdir / "results" / "runs" / EXPERIMENT / "metrics.csv").is_file()
    calls = cluster.calls()
    rules = {rule for call in calls for rule in call["rules"]}
    assert {"prepare_reference", "pretrain_base", "sample_round", "score_round", "update_round", "plot_experiment"} <= rules
    # the update went in one job with the scoring before it (and the sampling, unless test 1's
    # failed group kept its outputs)
    updates = [call["rules"] for call in calls if "update_round" in call["rules"]]
    assert updates and all({"score_round", "update_round"} <= set(rules) for rules in updates), updates
    first_attempts = {}
    for call in calls:
        first_attempts.setdefault(call["rule"], call)
    for rule, call in first_attempts.items():
        assert {key: call[key] for key in ("partition", "mem", "time", "cpus")} == _expected(call["rules"], 1), rule
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


def test_5_a_round_job_runs_two_data_parallel_processes(cluster):
    round_dir = cluster.workdir / "results" / "runs" / EXPERIMENT / "round_000"
    images_before = {path.name: path.read_bytes() for path in (round_dir / "images").iterdir()}
    samples_before = (round_dir / "samples.csv").read_bytes()
    before = len(cluster.calls())
    # processes is a resource, not a param: only the forced sampling (and what follows it) re-runs
    two_processes = cluster.workdir / "two_processes.yaml"
    two_processes.write_text("sampling:\n  processes: 2\n")
    result = cluster.snakemake(f"results/runs/{EXPERIMENT}/round_000/metrics.json", "--forcerun", "sample_round",
                               configfiles=(two_processes,))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    calls = cluster.calls()[before:]
    assert [call["rules"] for call in calls] == [list(ROUND_RULES)], calls
    assert calls[0]["gpus"] is None and calls[0]["gres"] is None, "a CPU config asked for a GPU"
    logs = cluster.workdir / "logs" / "runs" / EXPERIMENT / "round_000"
    for stage in ("sample_round", "update_round"):
        text = (logs / f"{stage}.log").read_text()
        assert "starting 2 processes (cpu, gloo" in text and "[rank 1]" in text, f"{stage}: {text[-2000:]}"
    # per-image seeds: the images of 2 processes are the images of 1
    assert {path.name: path.read_bytes() for path in (round_dir / "images").iterdir()} == images_before
    assert (round_dir / "samples.csv").read_bytes() == samples_before
