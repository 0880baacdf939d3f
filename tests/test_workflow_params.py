"""Each rule's params (marsdiff.workflow.params) and the "config reaches the stage" test.

The config-reaches-the-stage test parses the real Snakefile with a config whose keys are set to
distinctive non-default values, takes every rule's params as Snakemake resolved them, runs the
rule's script with them (and with the config, which untracked settings are read from) up to the
library call it makes, and checks that each config key the rule reads arrives there with its
value. A value lost on the way (as sampling.batch_size was: sample_round fell back to 16) fails
it, whether the loss is in the params or in the script.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO, make_workdir
from marsdiff.config import deep_merge, load_config, read_config_file
from marsdiff.stage import param_text, params_json
from marsdiff.workflow import params
from marsdiff.workflow.plan import Plan

TINY = REPO / "tests" / "config" / "tiny.yaml"
SCRIPTS = REPO / "workflow" / "scripts"

# Distinctive values (none of them a default, each number used once) on top of the tiny config.
DISTINCT = {
    "reference": {"seed": 101, "lighting_bins": 4, "contrast_bins": 2, "heldout_fraction": 0.3, "min_image_px": 9,
                  "min_images_per_class": 3},
    "features": {"batch_size": 11, "device": "cpu", "cache_dir": "cache-dir-x", "mobilenet_v2": {"input_size": 96}},
    "reward": {"seed": 109, "novel_factor": 2.5, "pool": {"rounds": 2}, "validation": {"seed": 139}},
    "model": {"pixel": {"train_steps": 5, "log_every": 3, "seed": 131, "grid_samples_per_class": 3,
                        "grid_sampling_steps": 3}},
    "sampling": {"batch_size": 13, "min_std": 0.0125, "seed": 103, "eta": 0.9, "store": {"compression_level": 6}},
    "experiments": {
        "ppo_lora": {"lora": {"rank": 3}, "optimiser": {"lr": 0.00077}, "ppo": {"minibatch_size": 8, "clip_denoise": 0.17}},
        "ppo_scheduler": {"reward": {"novel_factor": 3.5}, "control": "shuffled_credit"},
    },
    "evaluation": {"images": 9, "seed": 107, "streams": 2,
                   "baseline": {"images": 6, "k": 4, "grid": {"eta": [0.5, 0.9], "noise_scale": [1.0]}},
                   "metrics": {"n_modes": 2, "bootstrap_replicates": 21, "seed": 113},
                   "plots": {"tsne_max_iter": 260}, "endpoints": {"alpha": 0.04}},
    "export": {"seed": 127, "images": 5},
}

# rule -> (wildcards, the library call its script makes ("module:function"), and the config keys it
# reads as (key, the name the value arrives under, value)). Names are argument names of the call or
# keys / fields of what it is given, anywhere inside.
REACHES = {
    "prepare_reference": ({}, "marsdiff.stages.prepare_reference:build_reference_images", [
        ("reference.seed", "seed", 101), ("reference.heldout_fraction", "heldout_fraction", 0.3),
        ("reference.min_image_px", "min_image_px", 9), ("reference.min_images_per_class", "min_images_per_class", 3),
        ("reference.max_craters", "max_craters", 36)]),
    "categorize_reference": ({}, "marsdiff.stages.categorize_reference:write_manifest", [
        ("reference.lighting_bins", "lighting_bins", 4), ("reference.contrast_bins", "contrast_bins", 2)]),
    "extract_features": ({"extractor": "mobilenet_v2"}, "marsdiff.stages.extract_features:extract_image_set", [
        ("features.batch_size", "batch_size", 11), ("features.device", "device", "cpu"),
        ("features.cache_dir", "cache_dir", "cache-dir-x"), ("features.mobilenet_v2.input_size", "input_size", 96)]),
    "extract_resized_features": ({"extractor": "mobilenet_v2", "size": "16"}, "marsdiff.stages.extract_features:extract_image_set", [
        ("features.batch_size", "batch_size", 11), ("features.cache_dir", "cache_dir", "cache-dir-x"),
        ("features.mobilenet_v2.input_size", "input_size", 96)]),
    "validate_rewards": ({}, "marsdiff.stages.validate_rewards:validate_rewards", [
        ("reward.seed", "seed", 109), ("reward.novel_factor", "novel_factor", 2.5),
        ("reward.validation.seed", "seed", 139), ("reward.validation.set_size", "set_size", 8)]),
    "pretrain_base": ({}, "marsdiff.stages.pretrain_base:pretrain_or_install", [
        ("model.pixel.train_steps", "train_steps", 5), ("model.pixel.log_every", "log_every", 3),
        ("model.pixel.seed", "seed", 131), ("model.pixel.image_size", "image_size", 16)]),
    "preview_base": ({}, "marsdiff.stages.preview_base:write_preview", [
        ("model.pixel.grid_samples_per_class", "grid_samples_per_class", 3),
        ("model.pixel.grid_sampling_steps", "grid_sampling_steps", 3), ("model.pixel.device", "device", "cpu")]),
    "score_round": ({"exp": "ppo_scheduler", "round": "001"}, "marsdiff.stages.score_round:score_round", [
        ("experiments.ppo_scheduler.reward.novel_factor", "novel_factor", 3.5), ("reward.seed", "seed", 109),
        ("reward.pool.rounds", "rounds", 2), ("features.batch_size", "batch_size", 11),
        ("features.cache_dir", "cache_dir", "cache-dir-x")]),
    "sample_round": ({"exp": "ppo_lora", "round": "000"}, "marsdiff.stages.sample_round:sample_policy_round", [
        ("sampling.batch_size", "batch_size", 13), ("sampling.min_std", "min_std", 0.0125),
        ("sampling.seed", "seed", 103), ("sampling.eta", "eta", 0.9),
        ("sampling.store.compression_level", "compression_level", 6), ("experiments.ppo_lora.lora.rank", "rank", 3)]),
    "update_round": ({"exp": "ppo_lora", "round": "000"}, "marsdiff.stages.update_round:update_round_stage", [
        ("experiments.ppo_lora.optimiser.lr", "lr", 0.00077), ("experiments.ppo_lora.ppo.clip_denoise", "clip_denoise", 0.17),
        ("sampling.min_std", "min_std", 0.0125), ("sampling.seed", "seed", 103)]),
    "select_knob": ({}, "marsdiff.stages.select_knob:select_knob", [
        ("sampling.batch_size", "batch_size", 13), ("sampling.min_std", "min_std", 0.0125),
        ("features.cache_dir", "cache_dir", "cache-dir-x"), ("evaluation.baseline.images", "images", 6),
        ("evaluation.baseline.k", "k", 4), ("reference.seed", "reference_seed", 101)]),
    "generate_base_samples": ({}, "marsdiff.evalset.generate:generate_samples_of", [
        ("sampling.batch_size", "batch_size", 13), ("sampling.min_std", "min_std", 0.0125),
        ("evaluation.images", "n_images", 9), ("evaluation.seed", "seed", 107), ("sampling.eta", "eta", 0.9),
        ("evaluation.knobs.eta", "eta", 0.5)]),
    "generate_base_stream_samples": ({"stream": "1"}, "marsdiff.evalset.generate:generate_samples_of", [
        ("sampling.batch_size", "batch_size", 13), ("evaluation.images", "n_images", 9),
        ("evaluation.seed", "seed", 107)]),
    "generate_samples": ({"model": "ppo_lora"}, "marsdiff.evalset.generate:generate_samples_of", [
        ("sampling.batch_size", "batch_size", 13), ("sampling.min_std", "min_std", 0.0125),
        ("evaluation.images", "n_images", 9), ("evaluation.seed", "seed", 107), ("sampling.eta", "eta", 0.9)]),
    "generate_stream_samples": ({"model": "ppo_lora", "stream": "1"}, "marsdiff.evalset.generate:generate_samples_of", [
        ("sampling.batch_size", "batch_size", 13), ("evaluation.images", "n_images", 9),
        ("evaluation.seed", "seed", 107)]),
    "extract_sample_features": ({}, "marsdiff.stages.extract_sample_features:extract_sample_features", [
        ("features.batch_size", "batch_size", 11), ("features.cache_dir", "cache_dir", "cache-dir-x")]),
    "evaluate": ({}, "marsdiff.stages.evaluate:run_evaluation", [
        ("evaluation.metrics.n_modes", "n_modes", 2), ("evaluation.metrics.bootstrap_replicates", "bootstrap_replicates", 21),
        ("evaluation.metrics.seed", "seed", 113)]),
    "evaluate_stream": ({"stream": "1"}, "marsdiff.stages.evaluate:run_evaluation", [
        ("evaluation.metrics.n_modes", "n_modes", 2), ("evaluation.metrics.seed", "seed", 113)]),
    "pixel_statistics": ({}, "marsdiff.stages.pixel_statistics:run_pixel_statistics", [
        ("evaluation.metrics.bootstrap_replicates", "bootstrap_replicates", 21), ("evaluation.metrics.seed", "seed", 113)]),
    "plot_evaluation": ({}, "marsdiff.stages.plot_evaluation:draw_evaluation_figures", [
        ("evaluation.plots.tsne_max_iter", "tsne_max_iter", 260),
        ("experiments.ppo_scheduler.reward.novel_factor", "novel_factor", 3.5)]),
    "report_summary": ({}, "marsdiff.stages.report_summary:write_report_summary", [
        ("evaluation.endpoints.alpha", "alpha", 0.04), ("evaluation.images", "n_images", 9),
        ("evaluation.metrics.bootstrap_replicates", "bootstrap_replicates", 21)]),
    "export_dataset": ({"model": "base"}, "marsdiff.export.dataset:draw_dataset", [
        ("sampling.batch_size", "batch_size", 13), ("export.seed", "seed", 127), ("export.images", "n_images", 5)]),
    "study_summary": ({}, "marsdiff.study.summary:write_study_summary", [("evaluation.endpoints.alpha", "alpha", 0.04)]),
    "plot_experiment": ({"exp": "ppo_scheduler"}, "marsdiff.stages.plot_experiment:write_experiment_curves", [
        ("experiments.ppo_scheduler.control", "control", "shuffled_credit")]),
}
#: Rules that read no config value (what they make is named by their inputs and wildcards alone).
READS_NOTHING = {"resize_reference", "all", "study", "export_datasets"}

# Parses the Snakefile in a subprocess (as Snakemake would) and prints each rule's params, callables
# evaluated for the wildcards REACHES gives, and the config the jobs see.
PROBE = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

snakefile, workdir, wildcards, *configfiles = sys.argv[1:]
wildcards = json.loads(wildcards)
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(
        snakefile=Path(snakefile), workdir=Path(workdir), resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
    )._workflow
    out = {}
    for rule in workflow.rules:
        values = wildcards.get(rule.name, {})
        out[rule.name] = {name: (value(SimpleNamespace(**values)) if callable(value) else value)
                          for name, value in rule.params.items()}
    print("PROBE " + json.dumps({"params": out, "config": workflow.config}))
"""


class Captured(Exception):
    """Raised by the patched library call: the stage got as far as calling it."""

    def __init__(self, arguments):
        super().__init__("captured")
        self.arguments = arguments


class Wildcards(dict):
    __getattr__ = dict.__getitem__


class Files:
    """snakemake.input / output: any named file; a list of files where the script zips them."""

    LISTS = ("features", "ids", "info", "samples", "images", "pool", "run_metrics", "stream_metrics",
             "stream_replicates", "tables", "plots")

    def __init__(self, count: int, **given):
        self._count, self._given = count, given

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._given:
            return self._given[name]
        if name in self.LISTS:
            return [f"{name}{i}.x" for i in range(self._count)]
        return f"{name}.x"

    def __getitem__(self, index):
        return f"output{index}.x"

    def items(self):
        return [(name, f"{name}.png") for name in ("tsne", "sample_grid")]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    workdir = make_workdir(tmp_path_factory.mktemp("reaches"))
    overlay = workdir / "distinct.yaml"
    overlay.write_text(yaml.safe_dump(DISTINCT))
    wildcards = {rule: values for rule, (values, _, _) in REACHES.items()}
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "Snakefile"), str(workdir), json.dumps(wildcards),
                             str(TINY), str(overlay)], capture_output=True, text=True, timeout=300, cwd=workdir)
    line = next((l for l in result.stdout.splitlines() if l.startswith("PROBE ")), None)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(line[len("PROBE "):])


def leaves(value, name=None):
    """Every (name, value) pair inside ``value``: mapping keys, dataclass fields, argument names."""
    found = [(name, value)] if name is not None else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += leaves(item, key)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += leaves(item, name)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found += leaves(getattr(value, f.name), f.name)
    return found


def run_script(rule: str, probed, monkeypatch) -> dict:
    """Run ``rule``'s script on the probed params and config; the arguments of its library call."""
    import importlib

    wildcards, target, _ = REACHES[rule]
    module_name, function_name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)

    def capture(*args, **kwargs):
        raise Captured(dict(inspect.signature(original).bind(*args, **kwargs).arguments))

    monkeypatch.setattr(module, function_name, capture)
    if rule == "sample_round":
        # the policy needs a base model; the sampling settings are what the round stage reads
        monkeypatch.setattr(module, "build_policy", lambda *args, **kwargs: SimpleNamespace())
    script_path = SCRIPTS / _script_of(rule)
    spec = importlib.util.spec_from_file_location(f"script_{rule}", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if hasattr(script, function_name):  # imported at the script's top
        monkeypatch.setattr(script, function_name, capture)
    models = params_json(SimpleNamespace(params=SimpleNamespace(**probed["params"]["evaluate"])), "cfg")["models"]
    inputs, outputs = Files(len(models), intro=str(REPO / "workflow" / "report" / "workflow.rst")), Files(len(models))
    if rule.startswith("generate_"):
        # one image folder and table per model the job draws; the frozen knob's choice as select_knob writes it
        drawn = params_json(SimpleNamespace(params=SimpleNamespace(**probed["params"][rule])), "cfg")
        count = len(drawn.get("model_specs", [None]))
        outputs = Files(count) if count > 1 else Files(1, images="images.x", samples="samples.x")
        selection = Path(tempfile.mkdtemp()) / "knob_selection.json"
        selection.write_text(json.dumps({"chosen": {"eta": 0.75, "noise_scale": 1.25}}))
        inputs = Files(len(models), selection=str(selection))
    snakemake = SimpleNamespace(
        params=SimpleNamespace(**probed["params"][rule]), config=copy.deepcopy(probed["config"]),
        wildcards=Wildcards(wildcards), threads=1, resources=SimpleNamespace(processes=1), log=[], rule=rule,
        input=inputs, output=outputs,
    )
    with pytest.raises(Captured) as captured:
        script.main(snakemake)
    return captured.value.arguments


def _script_of(rule: str) -> str:
    aliases = {"extract_resized_features": "extract_features", "generate_stream_samples": "generate_samples",
               "generate_base_samples": "generate_samples", "generate_base_stream_samples": "generate_samples",
               "evaluate_stream": "evaluate"}
    return f"{aliases.get(rule, rule)}.py"


def test_every_rule_is_in_the_table(probed):
    """A new rule must say what it reads (REACHES) or that it reads nothing."""
    assert set(probed["params"]) == set(REACHES) | READS_NOTHING


@pytest.mark.parametrize("rule", sorted(REACHES))
def test_config_reaches_the_stage(rule, probed, monkeypatch):
    arguments = run_script(rule, probed, monkeypatch)
    found = leaves(arguments)
    for key, name, value in REACHES[rule][2]:
        assert (name, value) in found, f"{rule}: config key {key} = {value!r} does not reach the stage"


def test_the_batch_size_reaches_the_sampler_settings(probed, monkeypatch):
    """The bug this test was written for: sample_round fell back to SamplingSettings' own 16."""
    from marsdiff.config import section_schema
    from marsdiff.diffusion.sampler import SamplingSettings

    settings = run_script("sample_round", probed, monkeypatch)["settings"]
    default = section_schema("sampling")["properties"]["batch_size"]["default"]
    assert isinstance(settings, SamplingSettings) and settings.batch_size == 13 != default


# ---------------------------------------------------------------------------- the params themselves
@pytest.fixture(scope="module")
def tiny_config():
    return load_config(None, overrides=read_config_file(TINY))


def test_params_are_flat(tiny_config):
    """The stage's values at the top: no config section wrapped around them for the script to unpick."""
    assert set(params.prepare_reference(tiny_config)) <= set(tiny_config["reference"])
    assert params.categorize_reference(tiny_config) == {"lighting_bins": 3, "contrast_bins": 3}
    assert "train_steps" in params.pretrain_base(tiny_config) and "model" not in params.pretrain_base(tiny_config)
    assert set(params.sample_round(tiny_config, "ppo_lora")) == {"experiment", "sampling", "model"}
    assert set(params.pixel_statistics(tiny_config)) == {"bootstrap_replicates", "seed", "confidence"}


def test_param_text_does_not_depend_on_key_order(tiny_config):
    reordered = {key: tiny_config[key] for key in reversed(list(tiny_config))}
    reordered["sampling"] = dict(reversed(list(tiny_config["sampling"].items())))
    assert param_text(params.update_round(reordered, "ppo_lora")) == param_text(params.update_round(tiny_config, "ppo_lora"))


@pytest.mark.parametrize("rule,change,same", [
    # the batch size changes no image: it must stay out of every sampling stage's params
    ("sample_round", {"sampling": {"batch_size": 2}}, True),
    ("sample_round", {"sampling": {"min_std": 0.02}}, False),
    ("sample_round", {"experiments": {"ppo_lora": {"rounds": 5}}}, True),
    ("sample_round", {"experiments": {"ppo_scheduler": {"steps": 3}}}, True),
    ("sample_round", {"experiments": {"ppo_lora": {"optimiser": {"lr": 0.001}}}}, True),
    ("update_round", {"experiments": {"ppo_lora": {"optimiser": {"lr": 0.001}}}}, False),
    ("update_round", {"experiments": {"ppo_lora": {"reward": {"novel_factor": 3.0}}}}, True),
    ("prepare_reference", {"reference": {"contrast_bins": 4}}, True),
    ("prepare_reference", {"reference": {"min_image_px": 20}}, True),
    ("prepare_reference", {"reference": {"seed": 3}}, False),
    ("pretrain_base", {"model": {"pixel": {"log_every": 7}}}, True),
    ("pretrain_base", {"model": {"pixel": {"grid_samples_per_class": 7}}}, True),
    ("pretrain_base", {"model": {"pixel": {"preset": "small"}}}, True),
    ("pretrain_base", {"model": {"pixel": {"train_steps": 7}}}, False),
    ("pixel_statistics", {"evaluation": {"metrics": {"n_modes": 2}}}, True),
    ("generate_samples", {"sampling": {"batch_size": 2}}, True),
    ("generate_samples", {"evaluation": {"plots": {"extremes": 2}}}, True),
    ("generate_samples", {"evaluation": {"images": 9}}, False),
    # the merged job of the base model's settings: any setting's spec, not the policies'
    ("generate_base_samples", {"sampling": {"batch_size": 2}}, True),
    ("generate_base_samples", {"evaluation": {"knobs": {"eta": [0.25, 1.0]}}}, False),
    ("generate_base_samples", {"experiments": {"ppo_lora": {"rounds": 3}}}, True),
])
def test_params_follow_only_what_changes_the_outputs(tiny_config, rule, change, same):
    changed = deep_merge(tiny_config, change)

    def text(config):
        if rule in ("sample_round", "update_round"):
            return param_text(getattr(params, rule)(config, "ppo_lora"))
        if rule == "generate_samples":
            return param_text(params.generate_samples(config, Plan.from_config(config), "base"))
        if rule == "generate_base_samples":
            return param_text(params.generate_base_samples(config, Plan.from_config(config)))
        return param_text(getattr(params, rule)(config))

    assert (text(changed) == text(tiny_config)) is same


def test_extractor_weight_files_are_tracked_by_content(tiny_config, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    config = deep_merge(tiny_config, {"features": {"mobilenet_v2": {"weights": str(weights)}}})
    seen = []
    got = params.extractor(config, "mobilenet_v2", lambda path: seen.append(path) or "abc")
    assert got == {"extractor": "mobilenet_v2", "options": {**config["features"]["mobilenet_v2"], "weights": "sha256:abc"}}
    assert seen == [str(weights)]


def test_the_scripts_decode_what_the_rules_encode(tiny_config):
    """params_json(param_text(x)) == x for every rule's params (the report shows the text)."""
    plan = Plan.from_config(tiny_config)
    for value in (params.evaluate(tiny_config, plan), params.report_summary(tiny_config, plan),
                  params.select_knob(tiny_config), params.score_round(plan, "ppo_lora")):
        assert params_json(SimpleNamespace(params=SimpleNamespace(cfg=param_text(value))), "cfg") == json.loads(
            json.dumps(value))


def test_untracked_reads_the_jobs_config_and_names_a_missing_key():
    from marsdiff.errors import MarsdiffError
    from marsdiff.stage import untracked

    job = SimpleNamespace(config={"sampling": {"batch_size": 5, "store": {"dtype": "float16"}}})
    assert untracked(job, "sampling.batch_size") == 5 and untracked(job, "sampling.store.dtype") == "float16"
    assert untracked(job, "sampling") == {"batch_size": 5, "store": {"dtype": "float16"}}
    with pytest.raises(MarsdiffError, match="config key sampling.device: not in the workflow's config"):
        untracked(job, "sampling.device")
