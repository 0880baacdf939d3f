"""marsdiff.workflow's paths, plan, targets, code roots and resources, without Snakemake."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from marsdiff.config import deep_merge, load_config, read_config_file
from marsdiff.errors import MarsdiffError
from marsdiff.workflow import code, resources, targets
from marsdiff.workflow.paths import Layout
from marsdiff.workflow.plan import NO_EXPERIMENT, Plan

TINY = REPO / "tests" / "config" / "tiny.yaml"
HEAVY = ("torch", "diffusers", "h5py", "pandas")


@pytest.fixture(scope="module")
def tiny_config():
    return load_config(None, overrides=read_config_file(TINY))


@pytest.fixture(scope="module")
def plan(tiny_config):
    return Plan.from_config(tiny_config)


@pytest.fixture(scope="module")
def layout():
    return Layout(Path("run"), REPO)


def test_importing_the_package_imports_nothing_heavy():
    """The Snakefile is parsed again in every cluster job: no torch (seconds), diffusers, h5py or pandas."""
    probe = ("import sys, marsdiff.workflow, marsdiff.workflow.paths, marsdiff.workflow.plan, marsdiff.workflow.targets, "
             "marsdiff.workflow.params, marsdiff.workflow.code, marsdiff.workflow.resources, marsdiff.workflow.checks; "
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_planning_the_default_config_imports_no_torch():
    """Plan, params, targets and code digests of the default config: what every parse computes."""
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from marsdiff.config import load_config\n"
        "from marsdiff.workflow import code, params, targets\n"
        "from marsdiff.workflow.paths import Layout\n"
        "from marsdiff.workflow.plan import Plan\n"
        "config = load_config()\n"
        "plan, layout = Plan.from_config(config), Layout(Path('.'), Path(sys.argv[1]))\n"
        "targets.all_targets(layout, plan)\n"
        "code.rule_codes(layout)\n"
        "[params.sample_round(config, e) for e in plan.experiments]\n"
        "params.generate_samples(config, plan, 'base'); params.pretrain_base(config)\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'h5py') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(REPO)], capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_layout(layout):
    assert layout.results == Path("run/results") and layout.logs == Path("run/logs")
    assert layout.round_dir("e", 7) == layout.round_dir("e", "007") == Path("run/results/runs/e/round_007")
    # stream 0 lives in results/eval itself: the figures, pixel statistics and exports read it
    assert layout.stream_dir(0) == layout.eval and layout.stream_dir("2") == Path("run/results/eval/stream2")
    assert layout.stream_features(1, "base", "clip", "npy") == Path("run/results/eval/stream1/features/base/clip.npy")
    assert layout.resized_features(32) == Path("run/results/features/reference_32px")
    assert layout.library == REPO / "src" / "marsdiff" and (layout.scripts / "sample_round.py").is_file()


def test_plan_of_the_tiny_config(plan):
    assert plan.experiments == ("ppo_lora", "ppo_scheduler", "trpo_lora")
    assert plan.rounds["ppo_lora"] == ("000",)
    assert plan.score_extractor == "mobilenet_v2" and plan.score_size == 16
    assert [m["name"] for m in plan.eval_models][:2] == ["base", "frozen_knob"]
    assert plan.eval_sets[0] == (0, "base") and len(plan.eval_sets) == len(plan.eval_models) * len(plan.eval_streams)
    assert set(plan.credit_models) >= {"base"}


def test_wildcard_patterns_match_exactly_the_configured_names(plan, tiny_config):
    pattern = plan.experiment_pattern
    assert all(re.fullmatch(pattern, exp) for exp in plan.experiments)
    assert not re.fullmatch(pattern, "ppo_lora_x") and not re.fullmatch(pattern, "ppo")
    assert all(re.fullmatch(plan.eval_model_pattern, name) for name in plan.eval_model)
    assert not re.fullmatch(plan.eval_model_pattern, "base2")
    empty = Plan.from_config(deep_merge({**tiny_config, "experiments": {}}, {"export": {"models": ["base"]}}))
    assert empty.experiment_pattern == NO_EXPERIMENT and empty.experiments == ()


def test_pool_rounds_follow_the_experiments_override(tiny_config):
    config = deep_merge(tiny_config, {"reward": {"pool": {"rounds": 2}},
                                      "experiments": {"ppo_lora": {"reward": {"pool": {"rounds": 0}}}}})
    plan = Plan.from_config(config)
    assert plan.pool_rounds("ppo_lora") == 0 and plan.pool_rounds("ppo_scheduler") == 2


@pytest.mark.parametrize("models,message", [
    (["frozen_knob"], "chosen by select_knob at run time"),
    (["nobody"], "'nobody' is not an evaluated model"),
])
def test_export_models_are_refused_in_one_line(tiny_config, models, message):
    with pytest.raises(MarsdiffError, match=f"export.models: .*{message}"):
        Plan.from_config(deep_merge(tiny_config, {"export": {"models": models}}))


def test_targets_ask_for_every_round_in_order(plan, layout, tiny_config):
    config = deep_merge(tiny_config, {"experiments": {"ppo_lora": {"rounds": 12}}})
    longer = Plan.from_config(config)
    rounds = [t for t in targets.rl(layout, longer) if "/ppo_lora/round_" in t]
    assert rounds == [str(layout.runs / "ppo_lora" / f"round_{r:03d}" / "metrics.json") for r in range(12)]


def test_all_targets(plan, layout):
    every = targets.all_targets(layout, plan)
    assert len(every) == len(set(every))
    assert str(layout.reference / "manifest.csv") in every and str(layout.base_model / "samples.png") in every
    assert str(layout.validation / "ladder_copies.png") in every
    for exp in plan.experiments:
        assert str(layout.runs / exp / "reward_curve.png") in every
    assert str(layout.report / "summary.md") in every and str(layout.knob_selection) in every
    assert str(layout.eval_plots / "reward_curves.png") in every
    assert all(str(layout.eval_plots / f"novel_redundant_{name}.png") in every for name in plan.credit_models)


def test_more_streams_add_their_tables(tiny_config, layout):
    plan = Plan.from_config(deep_merge(tiny_config, {"evaluation": {"streams": 3}}))
    every = targets.evaluation(layout, plan)
    assert str(layout.eval / "stream2" / "bootstrap.csv") in every
    assert not any("stream0" in target for target in every)


def test_figure_captions_exist():
    rules = REPO / "workflow" / "rules"
    for key in (*targets.EVAL_FIGURES, "reward_curves", "novel_redundant_base"):
        caption, label = targets.figure_caption(key)
        assert (rules / caption).resolve().is_file(), caption
        assert label


def _rules_text() -> str:
    return "\n".join(path.read_text() for path in sorted((REPO / "workflow" / "rules").glob("*.smk")))


def _rule_names() -> set[str]:
    text = _rules_text()
    return set(re.findall(r"^rule (\w+):", text, re.M)) | set(re.findall(r"^use rule \w+ as (\w+) with:", text, re.M))


def test_every_rule_with_a_code_param_has_roots_and_they_resolve(layout):
    target_rules = {"all", "study", "export_datasets"}
    assert set(code.CODE_ROOTS) == _rule_names() - target_rules
    digests = code.rule_codes(layout)
    assert all(re.fullmatch(r"[0-9a-f]{16}", d) for d in digests.values())
    # one script behind two rules: one digest
    assert digests["extract_features"] == digests["extract_resized_features"]
    # an update's code depends on the experiment's algorithm (test_rerun_policy: which edits re-run what)
    assert len({digests["sample_round"], digests["update_round[ppo]"], digests["update_round[trpo]"]}) == 3
    with pytest.raises(MarsdiffError, match="depends on the experiment's algorithm"):
        code.rule_code(layout, "update_round")


def test_code_digests_follow_the_roots_not_the_rule(layout, tmp_path):
    """The digest of the same roots is the same whoever asks: a rule moved into the package keeps its
    digest (the shipped model's training digest above all: test_shipped_model)."""
    from marsdiff.diffusion import shipping

    assert code.shipped_training_code(layout) == shipping.training_code_version()
    assert code.rule_code(layout, "sample_round") == code.code_version(layout, "scripts/sample_round.py")


@pytest.mark.parametrize("overrides,expected", [
    ({}, {"extract_features": 0, "pretrain_base": 0, "sample_round": 0, "evaluate": 0}),
    ({"features": {"device": "cuda"}}, {"extract_features": 1, "score_round": 1, "pretrain_base": 0, "sample_round": 0}),
    ({"model": {"pixel": {"device": "cuda"}}}, {"pretrain_base": 1, "preview_base": 1, "sample_round": 0}),
    ({"sampling": {"device": "cuda"}}, {"sample_round": 1, "update_round": 1, "generate_samples": 1, "pretrain_base": 0,
                                        "generate_base_samples": 1, "generate_base_stream_samples": 1,
                                        "export_dataset": 1, "evaluate": 0}),
    ({"model": {"backend": "stable_diffusion"}}, {"sample_round": 1, "select_knob": 1, "generate_base_samples": 1,
                                                  "extract_features": 0}),
    # data-parallel rounds: one GPU per process for the round stages only
    ({"sampling": {"device": "cuda", "processes": 2}}, {"sample_round": 2, "update_round": 2, "generate_samples": 1,
                                                        "score_round": 0}),
    ({"sampling": {"processes": 2}}, {"sample_round": 0, "update_round": 0}),
])
def test_gpus(tiny_config, overrides, expected):
    config = deep_merge(tiny_config, overrides)
    assert {rule: resources.gpus(config, rule) for rule in expected} == expected


def test_round_groups_hold_blocks_of_rounds_per_experiment(tiny_config):
    assert [resources.round_group(tiny_config, "a", r) for r in (0, 1)] == ["rounds-a-000", "rounds-a-001"]
    packed = deep_merge(tiny_config, {"cluster": {"rounds_per_job": 3}})
    assert [resources.round_group(packed, "a", r) for r in range(7)] == (
        ["rounds-a-000"] * 3 + ["rounds-a-003"] * 3 + ["rounds-a-006"])
    assert resources.round_group(packed, "b", 4) == "rounds-b-003"


def rule_blocks() -> dict[str, str]:
    """Each rule of workflow/rules/*.smk -> its text (up to the next rule)."""
    parts = re.split(r"^rule (\w+):\n", _rules_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_rule_that_sizes_its_threads_takes_them_from_the_table():
    """A script that sizes its thread pools (torch's, BLAS') by its job's threads is scheduled with
    the threads of resources.THREADS (one table: the results of some rules depend on the thread
    count); a table entry names such a rule."""
    blocks = rule_blocks()
    setting = set()
    for rule, block in blocks.items():
        script = re.search(r'script:\n(?:\s*#.*\n)*\s+"\.\./scripts/(\w+\.py)"', block)
        if script and "snakemake.threads" in (REPO / "workflow" / "scripts" / script.group(1)).read_text():
            setting.add(rule)
            assert f'threads: resources.THREADS["{rule}"]' in block, rule
    # the stream rules (`use rule ... as`) inherit their parent's threads
    assert setting == set(resources.THREADS)
    assert set(resources.THREADS.values()) <= {1, 2}
