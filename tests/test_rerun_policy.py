"""The re-run policy (docs/workflow.md): a stage re-runs when its own output-changing config
values, its input data or its code's behaviour change, and for nothing else.

A finished tiny run of the reference, feature, reward-validation and base-model stages lives in
a copy of the project (Snakefile, workflow/, src/, profiles/) with the user's own tile and
labels; each slow test dry-runs a change on it (or on a copy of it) and asserts the exact set of
planned jobs. The code-digest tests at the end edit a copy of the code and compare every rule's
``code`` param (and the shipped model's training digest) before and after: which edit re-runs
which rules, without running them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from marsdiff.config import section_schema
from marsdiff.workflow import code
from marsdiff.workflow.paths import Layout

from conftest import REPO, SNAKEMAKE
from test_workflow import planned_jobs

slow = pytest.mark.slow

TARGETS = [
    "results/reference/manifest.csv",
    "results/reference/contact_sheet.png",
    "results/validation/validation.json",
    "results/models/base/samples.png",
]
REFERENCE_CHAIN = {
    "prepare_reference": 1, "categorize_reference": 1, "extract_features": 1, "validate_rewards": 1,
    "pretrain_base": 1, "preview_base": 1,
}


def snakemake(project, *args, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([str(SNAKEMAKE), "--cores", "2", *args], cwd=project, capture_output=True, text=True,
                            timeout=900, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def configs(project, *extra):
    return ["--configfile", str(REPO / "tests" / "config" / "tiny.yaml"), str(project / "config" / "data.yaml"), *map(str, extra)]


def plan(project, change=None, tmp_path=None, targets=TARGETS):
    extra = []
    if change:
        override = tmp_path / "change.yaml"
        override.write_text(yaml.safe_dump(change))
        extra.append(override)
    jobs = planned_jobs(snakemake(project, "-n", *targets, *configs(project, *extra)))
    jobs.pop("all", None)
    return jobs


def copy_project(source, target):
    """Copy without time stamps (as cp -r does) and give everything a random time of the last
    days: nothing about the copy's times or place may look like a change."""
    shutil.copytree(source, target, copy_function=shutil.copy, symlinks=True)
    rng = np.random.default_rng(1)
    now = time.time()
    for path in sorted(target.rglob("*")):
        stamp = now - float(rng.uniform(0, 3 * 86400))
        os.utime(path, (stamp, stamp), follow_symlinks=False)
    return target


def make_project(root):
    project = root / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in ("workflow", "profiles", "config"):
        shutil.copytree(REPO / part, project / part, ignore=ignore)
    shutil.copytree(REPO / "src" / "marsdiff", project / "src" / "marsdiff", ignore=ignore)
    shutil.copy(REPO / "Snakefile", project / "Snakefile")
    return project


def results_fingerprint(project):
    """Content and time stamp of every result file (to prove nothing was deleted or rewritten)."""
    out = {}
    for path in sorted((project / "results").rglob("*")):
        if path.is_file():
            out[str(path.relative_to(project))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run on the user's own tile and labels (the HRSC tile, copied)."""
    from marsdiff.data.assets import hrsc_tile_and_labels

    project = make_project(tmp_path_factory.mktemp("rerun"))
    tile, labels = hrsc_tile_and_labels()
    (project / "data").mkdir()
    shutil.copy(tile, project / "data" / "tile.pgm")
    shutil.copy(labels, project / "data" / "labels.csv")
    (project / "config" / "data.yaml").write_text(
        yaml.safe_dump({"reference": {"tile": "data/tile.pgm", "labels": "data/labels.csv"}})
    )
    snakemake(project, *TARGETS, *configs(project))
    assert plan(project) == {}, "a finished run has nothing to do"
    return project


@pytest.fixture
def copied(finished, tmp_path):
    return copy_project(finished, tmp_path / "copy")


# The small preset's defaults (the schema's model.pixel defaultsBy table)
SMALL_PRESET = section_schema("model.pixel")["defaultsBy"]["preset"]["small"]
CONFIG_CHANGES = [
    ("appearance categories retrain nothing", {"reference": {"contrast_bins": 2}},
     {"categorize_reference": 1, "validate_rewards": 1}),
    ("lighting categories", {"reference": {"lighting_bins": 2}}, {"categorize_reference": 1, "validate_rewards": 1}),
    ("held-out share", {"reference": {"heldout_fraction": 0.3}}, REFERENCE_CHAIN),
    ("crop window", {"reference": {"window_px": 48}}, REFERENCE_CHAIN),
    ("split seed", {"reference": {"seed": 5}}, REFERENCE_CHAIN),
    ("preview grid only", {"model": {"pixel": {"grid_samples_per_class": 3, "grid_sampling_steps": 3}}},
     {"preview_base": 1}),
    ("log cadence", {"model": {"pixel": {"log_every": 1}}}, {}),
    ("a training key", {"model": {"pixel": {"train_steps": 5}}}, {"pretrain_base": 1, "preview_base": 1}),
    ("the preset's own value, written out", {"model": {"pixel": {"ema_decay": SMALL_PRESET["ema_decay"]}}}, {}),
    ("the unused backend", {"model": {"stable_diffusion": {"guidance_scale": 3.0, "resolution": 256}}}, {}),
    ("feature batch size, device, cache", {"features": {"batch_size": 7, "device": "cpu", "cache_dir": "elsewhere"}}, {}),
    ("an extractor option", {"features": {"mobilenet_v2": {"grid": 1}}}, {"extract_features": 1, "validate_rewards": 1}),
    ("a reward setting", {"reward": {"duplicate_factor": 0.3}}, {"validate_rewards": 1}),
    ("sampling", {"sampling": {"seed": 7}}, {}),
]


@slow
@pytest.mark.parametrize("change,planned", [case[1:] for case in CONFIG_CHANGES], ids=[case[0] for case in CONFIG_CHANGES])
def test_a_config_change_reruns_exactly_the_stages_it_touches(finished, tmp_path, change, planned):
    assert plan(finished, change, tmp_path) == planned


@slow
def test_a_copied_touched_and_moved_project_has_nothing_to_do(copied, tmp_path):
    # every file of the copy (results, code, scripts, data, metadata) has a new random time
    assert plan(copied) == {}
    # the user's data moved elsewhere, the config following it
    shutil.move(copied / "data", tmp_path / "moved-data")
    (copied / "config" / "data.yaml").write_text(yaml.safe_dump(
        {"reference": {"tile": str(tmp_path / "moved-data" / "tile.pgm"), "labels": str(tmp_path / "moved-data" / "labels.csv")}}
    ))
    assert plan(copied) == {}


@slow
def test_new_user_data_reruns_the_reference_chain(copied):
    labels = copied / "data" / "labels.csv"
    labels.write_text(labels.read_text() + "850.5,850.5,30.0\n")
    assert plan(copied) == REFERENCE_CHAIN
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:-1]))  # back as it was
    assert plan(copied) == {}


@slow
def test_comments_and_docstrings_rerun_nothing_behaviour_does(copied):
    kernels = copied / "src" / "marsdiff" / "rewards" / "kernels.py"
    script = copied / "workflow" / "scripts" / "categorize_reference.py"
    original_kernels, original_script = kernels.read_text(), script.read_text()
    kernels.write_text("# A comment at the top.\n" + original_kernels.replace(
        '"""The RBF kernel and its bandwidth', '"""The RBF (Gaussian) kernel and its bandwidth'))
    script.write_text(original_script.replace('"""Stage categorize_reference:', '"""Stage categorize_reference (edited):')
                      + "# trailing comment\n")
    assert plan(copied) == {}

    kernels.write_text(original_kernels.replace("MEDIAN_MAX_ROWS = 4000", "MEDIAN_MAX_ROWS = 4001"))
    assert plan(copied) == {"validate_rewards": 1}
    kernels.write_text(original_kernels)
    script.write_text(original_script + "_EDITED = True\n")
    assert plan(copied) == {"categorize_reference": 1, "validate_rewards": 1}


def _one_line_error(result):
    text = result.stdout + result.stderr
    errors = [line for line in text.splitlines() if "marsdiff error" in line]
    assert result.returncode != 0
    assert "Traceback" not in text
    assert len(errors) == 1, text[-2000:]
    return errors[0]


@slow
def test_bad_reference_input_is_refused_before_anything_is_deleted(copied):
    before = results_fingerprint(copied)
    labels = copied / "data" / "labels.csv"
    labels.write_text(labels.read_text() + "5000,20,6\n")
    result = snakemake(copied, *TARGETS, *configs(copied), check=False)
    rows = len(labels.read_text().splitlines())
    assert _one_line_error(result) == (
        f"marsdiff error: data/labels.csv: row {rows} label at x=5000, y=20 lies outside the 1700x1700 image"
    )
    assert results_fingerprint(copied) == before, "previous results untouched"

    (copied / "config" / "data.yaml").write_text(yaml.safe_dump({"reference": {"tile": "data/tlie.pgm", "labels": "data/labels.csv"}}))
    result = snakemake(copied, *TARGETS, *configs(copied), check=False)
    assert _one_line_error(result) == "marsdiff error: reference.tile: data/tlie.pgm is not a file"
    assert results_fingerprint(copied) == before


# ---------------------------------------------------------------------------- folder source

def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """The reference stages only, on a folder tree with a metadata CSV."""
    project = make_project(tmp_path_factory.mktemp("folder"))
    root = project / "craters"
    for i in range(6):
        _image(root / "by_size" / "small" / f"a{i}.png", 20 + 10 * i)
        _image(root / "by_size" / "large" / f"b{i}.png", 120 + 10 * i)
    (root / "meta.csv").write_text("file,diameter_px\nby_size/small/a0.png,12.5\n")
    # Every stage's settings are checked against the data at parse time, whatever the targets, so
    # they are sized to 12 images: 8 train (a validation pool of 4; a z-scored reward credits at
    # most 6 images), 4 held out (k-NN k below 4), 2 size classes (not the tiny config's 3 weights).
    (project / "config" / "data.yaml").write_text(yaml.safe_dump(
        {"reference": {"source": "folder", "folder": "craters", "metadata_csv": "craters/meta.csv", "image_size": 32},
         "reward": {"validation": {"set_size": 4}},
         "evaluation": {"images": 6, "knobs": {"class_weights": {"tails": "tails"}},
                        "metrics": {"k_precision_recall": 3, "k_density_coverage": 3},
                        # the frozen knob's k-NN radius against 4 validation train crops
                        "baseline": {"images": 6, "k": 3}}}
    ))
    snakemake(project, "results/reference/manifest.csv", *configs(project))
    return project


@slow
def test_folder_content_not_its_times_decides(folder_run, tmp_path):
    project = copy_project(folder_run, tmp_path / "copy")
    targets = ["results/reference/manifest.csv"]
    assert plan(project, targets=targets) == {}
    _image(project / "craters" / "by_size" / "small" / "a9.png", 250)
    assert plan(project, targets=targets) == {"prepare_reference": 1, "categorize_reference": 1}
    (project / "craters" / "by_size" / "small" / "a9.png").unlink()
    assert plan(project, targets=targets) == {}
    (project / "craters" / "meta.csv").write_text("file,diameter_px\nby_size/small/a0.png,14.0\n")
    assert plan(project, targets=targets) == {"prepare_reference": 1, "categorize_reference": 1}


@pytest.mark.parametrize("breakage,message", [
    (lambda root: (root / "by_size" / "small" / "notes.txt").write_text("x"), r"craters/by_size/small/notes\.txt: not an image file"),
    (lambda root: (root / "by_size" / "small" / "a1.png").write_bytes(b"\x89PNG broken"), r"craters/by_size/small/a1\.png: "),
    (lambda root: _image(root / "loose.png", 9), r"craters/loose\.png: images must sit in category sub-folders"),
    (lambda root: (root / "meta.csv").write_text("file,diameter_px\nby_size/small/zz.png,1\n"), r"meta\.csv: metadata names 1 file\(s\) not in the folder"),
])
@slow
def test_bad_folder_input_is_refused_before_anything_is_deleted(folder_run, tmp_path, breakage, message):
    project = copy_project(folder_run, tmp_path / "copy")
    before = results_fingerprint(project)
    breakage(project / "craters")
    result = snakemake(project, "results/reference/manifest.csv", *configs(project), check=False)
    assert re.search(message, _one_line_error(result))
    assert results_fingerprint(project) == before


# ---------------------------------------------------------------------------- evaluation

EVAL_TARGETS = ["results/eval/metrics.csv", "results/eval/pixel_statistics.csv"]


@pytest.fixture(scope="module")
def evaluated(finished, tmp_path_factory):
    """The finished run (copied) evaluated: the base model only, no RL experiment (the project's
    own config.yaml is the tiny one without experiments or knob grid, so none is merged back)."""
    from marsdiff.config import deep_merge, read_config_file

    project = copy_project(finished, tmp_path_factory.mktemp("evaluated") / "project")
    config = deep_merge(read_config_file(REPO / "config" / "config.yaml"), read_config_file(REPO / "tests" / "config" / "tiny.yaml"))
    config = deep_merge(config, read_config_file(project / "config" / "data.yaml"))
    config["experiments"] = {}
    # the base model alone: one generate_samples job keeps the fixture short
    config["evaluation"]["knobs"] = {"eta": [1.0], "noise_scale": [1.0], "class_weights": {"uniform": "uniform"}}
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(project, *EVAL_TARGETS)
    return project


def eval_plan(project, change=None, tmp_path=None):
    extra = []
    if change:
        (tmp_path / "change.yaml").write_text(yaml.safe_dump(change))
        extra = ["--configfile", str(tmp_path / "change.yaml")]
    jobs = planned_jobs(snakemake(project, "-n", *EVAL_TARGETS, *extra))
    jobs.pop("all", None)
    return jobs


EVAL_CHANGES = [
    ("a k-NN k re-runs evaluate only", {"evaluation": {"metrics": {"k_precision_recall": 2}}}, {"evaluate": 1}),
    ("n_modes re-runs evaluate only", {"evaluation": {"metrics": {"n_modes": 2}}}, {"evaluate": 1}),
    ("the shared bootstrap re-runs both", {"evaluation": {"metrics": {"bootstrap_replicates": 30}}},
     {"evaluate": 1, "pixel_statistics": 1}),
]


@slow
@pytest.mark.parametrize("change,planned", [c[1:] for c in EVAL_CHANGES], ids=[c[0] for c in EVAL_CHANGES])
def test_evaluation_settings_rerun_only_the_stage_they_feed(evaluated, tmp_path, change, planned):
    assert eval_plan(evaluated) == {}
    assert eval_plan(evaluated, change, tmp_path) == planned


@slow
def test_pixel_and_summary_code_rerun_no_evaluation(evaluated):
    pixels = evaluated / "src" / "marsdiff" / "evaluation" / "pixels.py"
    stage = evaluated / "src" / "marsdiff" / "stages" / "report_summary.py"
    original_pixels, original_stage = pixels.read_text(), stage.read_text()
    try:
        pixels.write_text(original_pixels.replace("HELDOUT_SEED_OFFSET = 7919", "HELDOUT_SEED_OFFSET = 7920"))
        assert eval_plan(evaluated) == {"pixel_statistics": 1}
        pixels.write_text(original_pixels)
        stage.write_text(original_stage.replace('SUMMARY_TITLE = "marsdiff evaluation:', 'SUMMARY_TITLE = "Evaluation:'))
        assert eval_plan(evaluated) == {}
    finally:
        pixels.write_text(original_pixels)
        stage.write_text(original_stage)


# ---------------------------------------------------------------------------- code digests

SHIPPED = "shipped training code"


@pytest.fixture
def code_tree(tmp_path):
    """A copy of the code the digests read (src/marsdiff without its assets, workflow/scripts)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "assets")
    shutil.copytree(REPO / "src" / "marsdiff", tmp_path / "src" / "marsdiff", ignore=ignore)
    shutil.copytree(REPO / "workflow" / "scripts", tmp_path / "workflow" / "scripts", ignore=ignore)
    return Layout(tmp_path / "run", tmp_path)


def code_params(layout):
    """Every rule's code param (update_round once per algorithm) and the shipped training digest."""
    return {**code.rule_codes(layout), SHIPPED: code.shipped_training_code(layout)}


def changed_by(layout, module, edit=None):
    """The code params an edit of library ``module`` changes (default: a new module-level name,
    a change of behaviour whatever the file holds)."""
    before = code_params(layout)
    path = layout.library / module
    text = path.read_text()
    path.write_text(edit(text) if edit else text + "\n_EDITED_FOR_A_TEST = 1\n")
    after = code_params(layout)
    return {key for key in before if before[key] != after[key]}


def test_every_algorithm_has_its_entry_module():
    from marsdiff.rl.experiments import ALGORITHMS

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(code.ALGORITHM_ENTRIES) == set(ALGORITHMS) == set(
        schema["properties"]["experiments"]["additionalProperties"]["properties"]["algorithm"]["enum"])


def test_the_update_algorithms_rerun_only_their_own_experiments_updates(code_tree):
    assert changed_by(code_tree, "rl/trpo.py") == {"update_round[trpo]"}
    assert changed_by(code_tree, "rl/ppo.py") == {"update_round[ppo]"}
    # code both algorithms share re-runs both updates
    both = changed_by(code_tree, "rl/surrogate.py")
    assert {"update_round[ppo]", "update_round[trpo]"} <= both and SHIPPED not in both


def test_a_module_split_out_of_an_algorithm_goes_with_it(code_tree):
    """What only TRPO's entry module imports (its FVP, its line search, once split out) re-runs
    only TRPO's updates, like rl/trpo.py itself."""
    (code_tree.library / "rl" / "trpo_part.py").write_text("PART = 1\n")
    changed_by(code_tree, "rl/trpo.py", lambda text: text + "\nfrom marsdiff.rl.trpo_part import PART\n")
    assert changed_by(code_tree, "rl/trpo_part.py") == {"update_round[trpo]"}


def test_the_sampler_reruns_sampling_and_not_the_shipped_model(code_tree):
    changed = changed_by(code_tree, "diffusion/sampler.py")
    assert {"sample_round", "generate_samples"} <= changed
    # the update re-scores stored transitions (diffusion/rescoring.py) and runs no sampler: it
    # re-runs as the sampling's downstream job when the samples change, not for the code
    assert not {"update_round[ppo]", "update_round[trpo]"} & changed
    assert SHIPPED not in changed and "pretrain_base" not in changed


def test_weight_neutral_modules_keep_the_shipped_training_digest(code_tree):
    bumped = changed_by(code_tree, "__init__.py", lambda text: text.replace('__version__ = "', '__version__ = "9'))
    assert bumped and SHIPPED not in bumped  # the stages that import marsdiff re-run; the shipped model stays
    assert SHIPPED not in changed_by(code_tree, "errors.py", lambda text: text.replace(
        "is not installed: run", "is missing: run"))
    assert SHIPPED not in changed_by(code_tree, "io/atomic.py")
    assert SHIPPED not in changed_by(code_tree, "devices.py")


@pytest.mark.parametrize("module", ["diffusion/pixel.py", "diffusion/pretrain.py", "diffusion/ema.py",
                                    "data/images.py"])
def test_weight_relevant_modules_change_the_shipped_training_digest(code_tree, module):
    changed = changed_by(code_tree, module)
    assert {SHIPPED, "pretrain_base"} <= changed


def test_the_categories_stage_reruns_nothing_training_reads(code_tree):
    """stages/categorize_reference.py also holds prepare_reference() (both reference stages in one
    call, for tests and library use): prepare_reference's digest does not reach it, so editing the
    categories' stage re-runs that stage alone, not the images training reads."""
    assert changed_by(code_tree, "stages/categorize_reference.py") == {"categorize_reference"}
    assert {"prepare_reference", "categorize_reference"} <= changed_by(code_tree, "stages/prepare_reference.py")


def test_the_update_stage_reruns_no_sampling(code_tree):
    """The round loop's two stages have a module each (stages/sample_round.py, stages/update_round.py)
    over one of rl each (rl/round_sampling.py, rl/round_update.py): the update's modules re-run the
    updates only, the sampling's the sampling only (the update and scoring follow as its downstream
    jobs: test_a_round_reruns_from_the_stage_edited)."""
    assert changed_by(code_tree, "stages/update_round.py") == {"update_round[ppo]", "update_round[trpo]"}
    assert changed_by(code_tree, "rl/round_update.py") == {"update_round[ppo]", "update_round[trpo]"}
    assert changed_by(code_tree, "rl/movement.py") == {"update_round[ppo]", "update_round[trpo]"}
    assert changed_by(code_tree, "stages/sample_round.py") == {"sample_round"}
    assert changed_by(code_tree, "rl/round_sampling.py") == {"sample_round"}
    # what both stages build the same way (the policy of round r-1) re-runs both
    assert {"sample_round", "update_round[ppo]", "update_round[trpo]"} <= changed_by(code_tree, "rl/rounds.py")


def digest_files(rule, algorithm=None):
    """The library files (relative to src/marsdiff) a rule's code digest covers."""
    from marsdiff.provenance import resolve_parts

    layout = Layout(REPO / "results", REPO)
    roots, stops = code.rule_parts(rule, algorithm)
    return {name for name, _ in resolve_parts(layout.library, layout.scripts, roots, stops) if not name.startswith("scripts/")}


def module_file(name):
    """marsdiff.rl.rounds -> rl/rounds.py; a package -> its __init__.py."""
    relative = name.split(".", 1)[1].replace(".", "/") if "." in name else ""
    package = REPO / "src" / "marsdiff" / relative / "__init__.py"
    return f"{relative}/__init__.py".lstrip("/") if package.exists() else f"{relative}.py"


SAMPLING_PROBE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tiny_models import tiny_pixel_backend
from marsdiff.config import filled_section
from marsdiff.rl.experiments import experiment_settings
from marsdiff.rl.policy import RoundPolicy
before = {name for name in sys.modules if name.startswith("marsdiff")}
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round

out = Path(sys.argv[1])
for mode in ("lora_unet", "scheduler_policy", "diversity_policy"):
    experiment = experiment_settings({"e": {"mode": mode, "images_per_round": 3, "steps": 2}}, "e", {"device": "cpu"})
    # a later round's policy, saved and loaded, as the stage builds it (the initial one is the same
    # object before saving)
    RoundPolicy.initial(mode, tiny_pixel_backend(), experiment).save(out / mode / "policy", 0)
    policy = RoundPolicy.load(out / mode / "policy", tiny_pixel_backend())
    settings = round_sampling_settings({"batch_size": 2, "device": "cpu"}, experiment)
    sample_policy_round(policy, settings, experiment, 1, out / mode / "round", store=filled_section("sampling", {})["store"])
print(" ".join(sorted(name for name in sys.modules if name.startswith("marsdiff") and name not in before)))
"""


@slow
def test_sampling_runs_only_code_its_digest_covers(tmp_path):
    """sample_round's digest covers none of the update's code (stages/update_round.py,
    rl/round_update.py, PPO, TRPO, the update's statistics), and everything a sampling run imports
    is in it: an edit to the update cannot change a sample, and an edit that can change one re-runs
    sample_round."""
    sampling = digest_files("sample_round")
    update_only = (digest_files("update_round", "ppo") | digest_files("update_round", "trpo")) - sampling
    assert {"stages/update_round.py", "rl/round_update.py", "rl/movement.py", "rl/actions.py",
            *code.ALGORITHM_ENTRIES.values()} <= update_only
    assert {"stages/sample_round.py", "rl/round_sampling.py", "rl/rounds.py"} <= sampling
    result = subprocess.run([sys.executable, "-c", SAMPLING_PROBE, str(tmp_path), str(REPO / "tests")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {module_file(name) for name in result.stdout.split()}
    assert "rl/round_sampling.py" in imported and "diffusion/sampler.py" in imported
    assert imported <= sampling, f"sampling ran code its digest does not cover: {sorted(imported - sampling)}"


# ---------------------------------------------------------------------------- a finished RL round

ROUND_TARGETS = ["results/runs/ppo_lora/round_000/metrics.json"]


@pytest.fixture(scope="module")
def finished_round(finished, tmp_path_factory):
    """The finished run (copied) with one tiny RL round of ppo_lora: sampled, scored, updated."""
    project = copy_project(finished, tmp_path_factory.mktemp("round") / "project")
    snakemake(project, *ROUND_TARGETS, *configs(project))
    assert plan(project, targets=ROUND_TARGETS) == {}
    return project


ROUND_EDITS = [
    ("the update stage", "stages/update_round.py", {"update_round": 1}),
    ("the update algorithm", "rl/ppo.py", {"update_round": 1}),
    ("the sampling stage", "stages/sample_round.py", {"sample_round": 1, "score_round": 1, "update_round": 1}),
    ("the sampler", "diffusion/sampler.py", {"sample_round": 1, "score_round": 1, "update_round": 1}),
]


@slow
@pytest.mark.parametrize("module,planned", [edit[1:] for edit in ROUND_EDITS], ids=[edit[0] for edit in ROUND_EDITS])
def test_a_round_reruns_from_the_stage_edited(finished_round, module, planned):
    """Editing the update's code plans the update alone; editing the sampling's plans the whole
    round (its score and update read the new samples)."""
    path = finished_round / "src" / "marsdiff" / module
    original = path.read_text()
    try:
        path.write_text(original + "\n_EDITED_FOR_A_TEST = 1\n")
        assert plan(finished_round, targets=ROUND_TARGETS) == planned
    finally:
        path.write_text(original)
    assert plan(finished_round, targets=ROUND_TARGETS) == {}


def round_log(project, rule):
    return next(project.rglob(f"logs/runs/ppo_lora/round_000/{rule}.log")).read_text()


@slow
def test_round_jobs_run_torch_with_their_rules_threads(finished_round, tmp_path):
    """What Snakemake schedules a round job with (the rule's threads) is what its torch uses: the
    defaults (resources.THREADS) and a --set-threads override."""
    from marsdiff.workflow.resources import THREADS

    for rule in ("sample_round", "update_round"):
        assert f"torch threads: {THREADS[rule]}\n" in round_log(finished_round, rule)
    project = copy_project(finished_round, tmp_path / "copy")
    other = THREADS["sample_round"] % 2 + 1  # the other of 1 and 2
    snakemake(project, *ROUND_TARGETS, *configs(project), "--forcerun", "sample_round",
              "--set-threads", f"sample_round={other}")
    assert f"torch threads: {other}\n" in round_log(project, "sample_round")
