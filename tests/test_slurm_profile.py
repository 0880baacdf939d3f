"""profiles/slurm: every cluster rule maps to a partition and a GPU request, the plugin's way.

The resources are the ones Snakemake resolves for each job of a dry run with the SLURM profile
(rule resources, the profile's default-resources and set-resources, and the workflow profile
profiles/default on top), handed to snakemake-executor-plugin-slurm's own functions that build
the sbatch call. A rule added to the workflow without a profile entry fails here. The GPU count
comes from the config (the rules' own `gpu` resource), so the tiny CPU config asks for none and a
CUDA config for one per GPU stage; memory and run time double on the retry. A real SLURM runs the
same profile in tests/cluster/run_cluster_test.sh (make test-cluster).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO, make_workdir, option_value, run_snakemake

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
TINY = REPO / "tests" / "config" / "tiny.yaml"

CUDA = REPO / "tests" / "config" / "cuda_devices.yaml"
# a second test stream, so the dry runs hold every rule of the evaluation
STREAMS = REPO / "tests" / "config" / "two_streams.yaml"

# rule -> (partition, --gpus value on a CUDA config or None, --mem in MB, -t in minutes, cpus per task)
# On the tiny CPU config no rule asks for a GPU.
EXPECTED = {
    "prepare_reference": ("cpu", None, 4000, 20, 1),
    "validate_rewards": ("cpu", None, 8000, 60, 4),
    "resize_reference": ("cpu", None, 4000, 30, 1),
    "plot_experiment": ("cpu", None, 2000, 15, 1),
    "report_summary": ("cpu", None, 4000, 30, 1),
    "pixel_statistics": ("cpu", None, 4000, 30, 1),
    "extract_features": ("gpu-v100", "1", 16000, 60, 4),
    "extract_resized_features": ("gpu-v100", "1", 16000, 60, 4),
    "score_round": ("gpu-v100", "1", 16000, 60, 4),
    "extract_sample_features": ("gpu-v100", "1", 16000, 60, 4),
    "evaluate": ("cpu", None, 16000, 120, 4),
    "evaluate_stream": ("cpu", None, 16000, 120, 4),
    "plot_evaluation": ("cpu", None, 4000, 30, 1),
    "generate_samples": ("gpu-h100", "1", 32000, 240, 8),
    "generate_stream_samples": ("gpu-h100", "1", 32000, 240, 8),
    "select_knob": ("gpu-h100", "1", 32000, 240, 8),
    "export_dataset": ("gpu-h100", "1", 32000, 240, 8),
    "pretrain_base": ("gpu-h100", "1", 32000, 240, 8),
    "preview_base": ("gpu-h100", "1", 16000, 30, 4),
    "sample_round": ("gpu-h100", "1", 32000, 240, 8),
    "update_round": ("gpu-h100", "1", 64000, 480, 8),
}

RULES_PROBE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

snakefile, workdir, *configfiles = sys.argv[1:]
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(
        snakefile=Path(snakefile), workdir=Path(workdir), resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
    )._workflow
    print("RULES " + json.dumps({rule.name: rule.name in workflow._localrules for rule in workflow.rules}))
"""


@pytest.fixture(scope="module")
def profile():
    return yaml.safe_load(PROFILE.read_text())


@pytest.fixture(scope="module")
def workflow_rules(tmp_path_factory):
    """rule name -> is it a localrule, for every rule Snakemake knows (all experiments configured)."""
    workdir = make_workdir(tmp_path_factory.mktemp("rules"))
    result = subprocess.run([sys.executable, "-c", RULES_PROBE, str(REPO / "Snakefile"), str(workdir), str(TINY)],
                            capture_output=True, text=True, timeout=300)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RULES ")), None)
    assert line, result.stdout + result.stderr
    return json.loads(line[len("RULES "):])


def _submissions(tmp_path_factory, *configfiles: Path) -> dict[str, dict]:
    """rule -> the sbatch options the plugin builds from the resources Snakemake resolved."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    workdir = make_workdir(tmp_path_factory.mktemp("slurm"))
    # the default target plus the optional dataset export
    dry = run_snakemake(workdir, "-n", "all", "export_datasets", "--profile", str(PROFILE.parent),
                        "--configfile", *map(str, configfiles))
    resolved: dict[str, dict] = {}
    rule = None
    for line in dry.stdout.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):", line):
            # several jobs of one rule resolve alike: keep the first
            rule = match.group(1) if match.group(1) not in resolved else None
            if rule:
                resolved[rule] = {}
        elif rule and (match := re.match(r"^\s+resources: (.*)$", line)):
            resolved[rule].update(item.split("=", 1) for item in match.group(1).split(", "))

    calls = {}
    for rule, resources in resolved.items():
        typed = {k: int(v) if re.fullmatch(r"\d+", v) else v for k, v in resources.items()}
        # threads=1: the dry run caps threads at its own core count; cpus_per_task decides.
        job = SimpleNamespace(resources=SimpleNamespace(**typed, get=typed.get), threads=1)
        params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": rule, "account": "",
                  "partition": f"-p {typed['slurm_partition']}" if "slurm_partition" in typed else "", "workdir": None}
        call = get_submit_command(job, params) + set_gres_string(job)
        calls[rule] = {
            "partition": _option(call, "-p"), "gpus": _option(call, "--gpus"), "mem": _option(call, "--mem"),
            "time": _option(call, "-t"), "cpus": _option(call, "--cpus-per-task"), "gres": _option(call, "--gres"),
        }
    return calls


@pytest.fixture(scope="module")
def submissions(tmp_path_factory):
    """The tiny CPU config: no rule may ask for a GPU."""
    return _submissions(tmp_path_factory, TINY, STREAMS)


@pytest.fixture(scope="module")
def cuda_submissions(tmp_path_factory):
    """The tiny config with every stage on CUDA: the GPU stages ask for one GPU each."""
    return _submissions(tmp_path_factory, TINY, STREAMS, CUDA)


def _option(call: str, name: str) -> str | None:
    return option_value(shlex.split(call), name)


def test_every_cluster_rule_of_the_workflow_has_a_profile_entry(profile, workflow_rules):
    cluster_rules = {rule for rule, local in workflow_rules.items() if not local}
    missing = cluster_rules - set(profile["set-resources"])
    assert not missing, f"profiles/slurm set-resources has no entry for rule(s) {sorted(missing)}: add partition, memory, run time, cpus"
    assert cluster_rules <= set(EXPECTED), f"add {sorted(cluster_rules - set(EXPECTED))} to EXPECTED in this test"
    unknown = (set(profile["set-resources"]) | set(profile.get("set-threads", {}))) - set(workflow_rules)
    assert not unknown, f"profiles/slurm names rules the workflow does not have: {sorted(unknown)}"


def test_each_rule_asks_slurm_for_the_cores_its_code_uses(profile):
    for rule, threads in profile["set-threads"].items():
        assert profile["set-resources"][rule]["cpus_per_task"] == threads, rule


def test_gpus_are_left_to_the_rules_and_the_partition(profile):
    # A `gpu` here would override the rules' config-aware count (CPU configs then waited for GPUs),
    # and a `gpu_model` makes the plugin ask for `--gpus=<model>:<n>` even when n is 0.
    for rule, resources in {"default-resources": profile["default-resources"], **profile["set-resources"]}.items():
        assert not {"gres", "gpu", "gpu_model"} & set(resources), f"{rule}: GPU counts come from the rules"
        assert not re.search(r"--(gres|gpus|partition)|-p ", str(resources.get("slurm_extra", ""))), rule


def test_memory_and_run_time_double_on_the_retry(profile):
    assert profile["retries"] == 1
    for rule, resources in {"default-resources": profile["default-resources"], **profile["set-resources"]}.items():
        first, second = (
            {key: eval(str(resources[key]), {"attempt": attempt}) for key in ("mem_mb", "runtime")} for attempt in (1, 2)
        )
        assert second["mem_mb"] == 2 * first["mem_mb"], rule
        assert second["runtime"] == 2 * first["runtime"], rule


def test_cpus_per_task_fit_common_nodes(profile):
    for rule, resources in profile["set-resources"].items():
        limit = 4 if resources["slurm_partition"] == "cpu" else 8
        assert resources["cpus_per_task"] <= limit, f"{rule}: {resources['cpus_per_task']} CPUs pend forever on smaller nodes"


@pytest.mark.parametrize("rule", sorted(EXPECTED))
def test_what_the_plugin_submits_per_rule(rule, workflow_rules, submissions, cuda_submissions):
    partition, gpus, mem, minutes, cpus = EXPECTED[rule]
    assert rule in submissions, f"rule {rule} is not in the dry run of the tiny config"
    for calls, expected_gpus in ((submissions, None), (cuda_submissions, gpus)):
        got = calls[rule]
        assert got["partition"] == partition
        assert got["gpus"] == expected_gpus, (rule, calls is cuda_submissions)
        assert got["gres"] is None
        assert got["mem"] == str(mem)
        assert got["time"] == str(minutes)
        assert got["cpus"] == str(cpus)


def test_the_workflow_profile_leaves_machine_settings_to_the_cluster_profile():
    # profiles/default is applied to every run and overrides whole keys of --profile: a
    # default-resources there once dropped the SLURM partition of every CPU rule.
    workflow_profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    clashing = {"default-resources", "set-resources", "set-threads", "executor", "jobs", "cores", "keep-going"}
    assert not clashing & set(workflow_profile), sorted(clashing & set(workflow_profile))
