"""Every config check a stage makes is also made when the Snakefile is parsed
(marsdiff.config_checks), and the user's reference data is validated there too
(marsdiff.data.reference): one line naming the key or the file, before any job can delete a
previous result. Most cases run at the function level; a few go through `snakemake -n`."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, make_workdir, run_snakemake
from marsdiff.config import deep_merge, load_config, read_config_file
from marsdiff.config_checks import check_data_settings, load_checked_config, reference_summary
from marsdiff.config_checks import main as check_config_files
from marsdiff.data.reference import planned_split
from marsdiff.errors import MarsdiffError
from marsdiff.stages.categorize_reference import prepare_reference

TINY = read_config_file(REPO / "tests" / "config" / "tiny.yaml")
ALL_TERMS_ZERO = {name: {"weight": 0.0} for name in
                  ("mmd", "information_gain", "conditional_information_gain", "cmmd", "frechet", "vendi")}


def parse_time_error(change: dict, base: dict = TINY) -> str:
    """The message the parse-time checks give for ``change`` on top of the tiny config ('' if none)."""
    try:
        config = load_checked_config(None, overrides=deep_merge(base, change))
        check_data_settings(config, reference_summary(config))
    except MarsdiffError as err:
        return str(err)
    return ""


# Each row: a value a stage refuses (the stage and its check in the id), the key the parse-time
# message must name first, and the stage's own refusal of the same value where it is cheap to
# call (proof that the parse-time copy checks the same thing).
def _stage_reward(section):
    from marsdiff.rewards.combined import RewardConfig

    RewardConfig.from_dict(section)


def _stage_class_distribution(spec):
    from marsdiff.diffusion.plan import condition_probabilities

    condition_probabilities(spec, ["s1_4-12px", "s2_13-19px", "s3_19-79px"])


def _stage_knob(override):
    from marsdiff.rl.experiments import experiment_settings
    from marsdiff.rl.generation_policies import parse_knob_ranges

    experiment = experiment_settings({"x": {"mode": "scheduler_policy", "policy": {"knobs": {"eta": override}}}}, "x")
    parse_knob_ranges(["eta"], experiment["policy"]["knobs"])


IN_JOB_CHECKS = [
    # sample_round / generate_samples: condition_probabilities (diffusion/plan.py)
    ("class_distribution all zero", {"sampling": {"class_distribution": [0, 0, 0]}},
     r"^sampling\.class_distribution: the weights are all zero", lambda: _stage_class_distribution([0, 0, 0])),
    ("class_distribution unknown class", {"sampling": {"class_distribution": {"huge": 1.0}}},
     r"^sampling\.class_distribution: unknown class\(es\) \['huge'\]", lambda: _stage_class_distribution({"huge": 1.0})),
    ("class_distribution wrong length", {"sampling": {"class_distribution": [1, 2]}},
     r"^sampling\.class_distribution: 2 weights for 3 classes", lambda: _stage_class_distribution([1, 2])),
    ("class_distribution negative, per experiment", {"experiments": {"ppo_lora": {"class_distribution": [1, -1, 1]}}},
     r"^experiments\.ppo_lora\.class_distribution: every weight must be a finite number >= 0",
     lambda: _stage_class_distribution([1, -1, 1])),
    # score_round / validate_rewards: RewardConfig.from_dict (rewards/combined.py)
    ("reward weights all zero", {"reward": {"terms": ALL_TERMS_ZERO}},
     r"^reward\.terms: at least one term needs a non-zero weight", lambda: _stage_reward({"terms": {
         name: {"kind": name, "weight": 0.0} for name in ALL_TERMS_ZERO}})),
    ("reward option the kind does not take", {"reward": {"terms": {"vendi": {"kind": "vendi", "estimator": "biased"}}}},
     r"^reward\.terms\.vendi: reward kind 'vendi' has no option", lambda: _stage_reward({"terms": {
         "vendi": {"kind": "vendi", "estimator": "biased"}}})),
    # score_round: an experiment's reward override (deep-merged, RewardConfig and the validation gate)
    ("override weights all zero", {"experiments": {"ppo_lora": {"reward": {"terms": ALL_TERMS_ZERO}}}},
     r"^experiments\.ppo_lora\.reward\.terms: at least one term needs a non-zero weight", None),
    ("override unknown key", {"experiments": {"ppo_lora": {"reward": {"bandwith": 0.3}}}},
     r"^config key experiments\.ppo_lora\.reward\.bandwith: unknown key", None),
    ("override of wrong type", {"experiments": {"ppo_lora": {"reward": {"baseline_repeats": "many"}}}},
     r"^config key experiments\.ppo_lora\.reward\.baseline_repeats: expected integer", None),
    ("override not validated while enforced",
     {"reward": {"validation": {"enforce": True}},
      "experiments": {"ppo_lora": {"reward": {"terms": {"v": {"kind": "vendi", "weight": 1.0}}}}}},
     r"^experiments\.ppo_lora\.reward: term 'v' \(vendi\) is not a term of the validated top-level reward.*"
     r"reward\.validation\.enforce: false", None),
    ("override with another bandwidth while enforced",
     {"reward": {"validation": {"enforce": True}}, "experiments": {"ppo_lora": {"reward": {"bandwidth_scale": 2.0}}}},
     r"^experiments\.ppo_lora\.reward: its bandwidth median x 2\.0 is not the validated median x 0\.5", None),
    # score_round: the z-score baseline draws images_per_round train rows and scores the rest
    ("images_per_round above the train split", {"experiments": {"ppo_lora": {"images_per_round": 26}}},
     r"^experiments\.ppo_lora\.images_per_round: 26 images per round, but the reference train split has 27", None),
    ("shared images_per_round above the train split",
     {"sampling": {"images_per_round": 40}, "experiments": {"plain": {}}},
     r"^sampling\.images_per_round: 40 images per round", None),
    # sample_round / update_round: the experiment itself (rl/experiments.py, generation_policies.py, trpo.py)
    ("scheduler knob range", {"experiments": {"ppo_scheduler": {"policy": {"knobs": {"eta": {"low": 2.0}}}}}},
     r"^experiments\.ppo_scheduler\.policy\.knobs\.eta: need low < init < high", lambda: _stage_knob({"low": 2.0})),
    ("log knob at zero", {"experiments": {"ppo_scheduler": {"policy": {"knobs": {"noise_scale": {"low": 0.0}}}}}},
     r"^experiments\.ppo_scheduler\.policy\.knobs\.noise_scale: a log-scaled knob needs low > 0", None),
    ("gauss-newton without denoising actions",
     {"experiments": {"ppo_scheduler": {"algorithm": "trpo", "trpo": {"fvp_method": "gauss_newton"}}}},
     r"^experiments\.ppo_scheduler\.trpo\.fvp_method: gauss_newton needs fixed-sigma Gaussian actions", None),
    ("images_per_round below a set", {"experiments": {"ppo_lora": {"images_per_round": 2}}},
     r"^experiments\.ppo_lora\.images_per_round: 2 image\(s\) per round; a set reward needs >= 3", None),
    # validate_rewards: ladders and train rows (rewards/validation.py, ladders.py)
    ("ladder set larger than the pool", {"reward": {"validation": {"set_size": 20}}},
     r"^reward\.validation\.set_size: 20 images per ladder set, but the pool .* 12 images", None),
    ("size ladder with one class", {"reference": {"size_bins": 1}, "reward": {"validation": {"ladders": ["size"]}}},
     r"^reward\.validation\.ladders: the size ladder needs at least 2 size classes", None),
    # evaluate: k-means and k-NN on the held-out split (evaluation/modes.py, manifold.py)
    ("n_modes above the held-out split", {"evaluation": {"metrics": {"n_modes": 10}}},
     r"^evaluation\.metrics\.n_modes = 10 must be at most the number of held-out images \(9\)", None),
    ("k-NN k not below the held-out split", {"evaluation": {"images": 16, "metrics": {"k_density_coverage": 9}}},
     r"^evaluation\.metrics\.k_density_coverage = 9 must be smaller than the number of held-out images", None),
    # generate_samples: the knob grid's class weights (condition_probabilities)
    ("evaluation class weights naming no class", {"evaluation": {"knobs": {"class_weights": {"odd": {"tiny": 1.0}}}}},
     r"^evaluation\.knobs\.class_weights\.odd: unknown class\(es\) \['tiny'\]", lambda: _stage_class_distribution({"tiny": 1.0})),
    # plot_evaluation: each model's images credited under its reward against the train split
    ("evaluation images above the train split", {"evaluation": {"images": 26}},
     r"^evaluation\.images: 26 images per model, but the reference train split has 27 images", None),
    ("evaluation setting the stage refuses", {"evaluation": {"metrics": {"kid_subset_size": 1}}},
     # the schema holds the range (EvaluationSettings no longer repeats it)
     r"^config key evaluation\.metrics\.kid_subset_size: 1 is less than the minimum of 2", None),
    ("an infinite setting", {"evaluation": {"metrics": {"bandwidth_scale": float("inf")}}},
     r"^config key evaluation\.metrics\.bandwidth_scale: must be a finite number, got inf", None),
    ("a NaN reward weight", {"reward": {"terms": {"mmd": {"weight": float("nan")}}}},
     r"^config key reward\.terms\.mmd\.weight: must be a finite number, got nan", None),
]


@pytest.mark.parametrize("change,message,stage_check", [c[1:] for c in IN_JOB_CHECKS], ids=[c[0] for c in IN_JOB_CHECKS])
def test_every_in_job_check_stops_at_parse_time(change, message, stage_check):
    text = parse_time_error(change)
    assert re.search(message, text), text
    assert "\n" not in text
    if stage_check is not None:
        with pytest.raises(MarsdiffError):
            stage_check()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_every_shipped_config_passes_every_check(name):
    assert parse_time_error({}, base=read_config_file(REPO / "config" / name)) == ""


def test_the_tiny_config_passes_every_check():
    assert parse_time_error({}) == ""


@pytest.mark.parametrize("experiment, message", [
    # a trpo section without `algorithm: trpo` once ran PPO and ignored it, silently
    ({"mode": "lora_unet", "trpo": {"max_kl": 0.1}},
     "experiments.x.trpo is set but experiments.x.algorithm is ppo: add `algorithm: trpo` or remove the trpo section"),
    ({"algorithm": "trpo", "mode": "lora_unet", "ppo": {"epochs": 3}},
     "experiments.x.ppo is set but experiments.x.algorithm is trpo: add `algorithm: ppo` or remove the ppo section"),
])
def test_settings_of_the_other_algorithm_are_refused(experiment, message):
    assert parse_time_error({"experiments": {"x": experiment}}) == message


def test_an_override_that_keeps_the_validated_terms_passes_under_enforce():
    change = {"reward": {"validation": {"enforce": True}},
              "experiments": {"ppo_lora": {"reward": {"terms": {"mmd": {"weight": 1.0}, "information_gain": {"weight": 0.5}}}}}}
    assert parse_time_error(change) == ""


# ---------------------------------------------------------------------------- reference data

def _image(path, side, value=90, width=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, width or side), value, np.uint8)).save(path)


def _folder(root, per_class=4, classes=("small", "large"), side=24):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _image(root / "by_size" / name / f"{name}{i}.png", side, 30 + 40 * c + i)
    return root


def test_planned_split_is_the_split_prepare_reference_writes(tmp_path):
    cfg = {"max_craters": 36, "size_bins": 3}
    manifest = prepare_reference(cfg, tmp_path / "ref")
    planned = planned_split(cfg)
    assert list(planned["size_cat"]) == list(manifest["size_cat"].astype(str))
    assert list(planned["split"]) == list(manifest["split"])

    root = _folder(tmp_path / "craters", per_class=5)
    meta = root / "meta.csv"
    meta.write_text("file,diameter_px\nby_size/small/small0.png,12.5\n")
    folder = {"source": "folder", "folder": str(root), "metadata_csv": str(meta), "image_size": 16}
    manifest = prepare_reference(folder, tmp_path / "folder-ref")
    planned = planned_split(folder)
    assert sorted(zip(planned["size_cat"], planned["split"])) == sorted(zip(manifest["size_cat"], manifest["split"]))


@pytest.mark.parametrize("cell,shown", [("", "(empty)"), ("nan", "(empty)"), ("big", "'big'"), ("-68", "-68"),
                                        ("0", "0"), ("inf", "inf")])
def test_a_bad_diameter_is_refused_with_file_and_row(tmp_path, cell, shown):
    root = _folder(tmp_path / "craters")
    meta = tmp_path / "meta.csv"
    meta.write_text(f"file,diameter_px\nby_size/small/small0.png,12\nby_size/large/large1.png,{cell}\n")
    cfg = {"source": "folder", "folder": str(root), "metadata_csv": str(meta)}
    expected = rf"meta\.csv: row 3 \(by_size/large/large1\.png\) has diameter_px {re.escape(shown)}; diameters must be positive"
    with pytest.raises(MarsdiffError, match=expected):
        planned_split(cfg)
    out = tmp_path / "ref"
    with pytest.raises(MarsdiffError, match=expected):
        prepare_reference(cfg, out)
    assert not out.exists()


@pytest.mark.parametrize("side", [1, 3])
def test_tiny_images_are_refused_not_upscaled(tmp_path, side):
    from marsdiff.data.reference import check_reference_inputs

    root = _folder(tmp_path / "craters")
    _image(root / "by_size" / "small" / "speck.png", side)
    cfg = {"source": "folder", "folder": str(root)}
    expected = rf"speck\.png: image is {side}x{side} px, below reference\.min_image_px = 16"
    with pytest.raises(MarsdiffError, match=expected):
        check_reference_inputs(cfg)
    with pytest.raises(MarsdiffError, match=expected):
        prepare_reference(cfg, tmp_path / "ref")
    assert not (tmp_path / "ref").exists()
    # the limit is the user's: lowered, the same image is accepted
    check_reference_inputs({**cfg, "min_image_px": side})


def test_a_two_image_folder_is_refused_with_the_reason(tmp_path):
    root = tmp_path / "craters"
    _image(root / "pits" / "a.png", 32)
    _image(root / "pits" / "b.png", 32, 120)
    with pytest.raises(MarsdiffError, match=r"reference\.folder .*craters: size class 'pits' has 2 image\(s\), fewer than "
                                            r"reference\.min_images_per_class = 4"):
        planned_split({"source": "folder", "folder": str(root)})


def test_the_default_hrsc_set_has_enough_per_class():
    summary = reference_summary(load_config())
    assert len(summary["classes"]) == 6
    assert min(summary["train_per_class"].values()) >= 4


# ---------------------------------------------------------------------------- config files

def test_invalid_yaml_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward:\n  seed: 1\n   bad: 2\n")
    with pytest.raises(MarsdiffError, match=r"bad\.yaml, line 3, column 7: not valid YAML \(mapping values"):
        read_config_file(bad)


def test_config_file_check_is_one_line(tmp_path, capsys):
    assert check_config_files([str(REPO / "tests" / "config" / "tiny.yaml")]) == 0
    assert check_config_files([str(tmp_path / "missing.yaml")]) == 1
    assert capsys.readouterr().err == f"marsdiff error: {tmp_path / 'missing.yaml'}: config file not found\n"
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump({"sampling": {"class_distribution": [0, 0, 0, 0, 0, 0]}}))
    assert check_config_files([str(tmp_path / "zero.yaml")]) == 1
    assert capsys.readouterr().err.startswith("marsdiff error: sampling.class_distribution: the weights are all zero")


# ---------------------------------------------------------------------------- through snakemake

def _fake_results(workdir):
    results = workdir / "results" / "runs" / "ppo_lora" / "round_000"
    results.mkdir(parents=True)
    (results / "metrics.json").write_text('{"round": 0}\n')
    return {p: p.read_bytes() for p in (workdir / "results").rglob("*") if p.is_file()}


SNAKEMAKE_CASES = [
    ("class distribution", {"sampling": {"class_distribution": [0, 0, 0]}}, r"sampling\.class_distribution: the weights"),
    ("reward override", {"experiments": {"ppo_lora": {"reward": {"terms": ALL_TERMS_ZERO}}}},
     r"experiments\.ppo_lora\.reward\.terms: at least one term"),
    ("images_per_round", {"experiments": {"ppo_lora": {"images_per_round": 30}}},
     r"experiments\.ppo_lora\.images_per_round: 30 images per round"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in SNAKEMAKE_CASES], ids=[c[0] for c in SNAKEMAKE_CASES])
def test_snakemake_stops_at_parse_time_with_one_line(tmp_path, change, message):
    workdir = make_workdir(tmp_path / "work")
    before = _fake_results(workdir)
    (workdir / "change.yaml").write_text(yaml.safe_dump(change))
    result = run_snakemake(workdir, "-n", "--configfile", str(REPO / "tests" / "config" / "tiny.yaml"), "change.yaml",
                           check=False)
    text = result.stdout + result.stderr
    errors = [line for line in text.splitlines() if "marsdiff error" in line]
    assert result.returncode == 1 and "Traceback" not in text, text[-2000:]
    assert len(errors) == 1 and re.search(message, errors[0]), text[-2000:]
    assert {p: p.read_bytes() for p in (workdir / "results").rglob("*") if p.is_file()} == before


def test_snakemake_names_the_line_of_a_broken_default_config(tmp_path):
    workdir = make_workdir(tmp_path / "work")
    config = workdir / "config" / "config.yaml"
    config.write_text(config.read_text() + "sampling: [unclosed\n")
    result = run_snakemake(workdir, "-n", check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "marsdiff error" in line]
    lines = len(config.read_text().splitlines())
    assert result.returncode == 1
    assert errors and errors[0].startswith(f"marsdiff error: config/config.yaml, line {lines + 1}"), errors


def test_make_check_config_refuses_a_missing_file(tmp_path):
    # A fresh stamp, newer than the requirements files, so make installs nothing. (STAMP=Makefile
    # made the install rule a rule for the Makefile itself, which make runs whenever a
    # requirements file is newer, even under -n: it re-installed the venv's editable marsdiff.)
    stamp = tmp_path / "installed"
    stamp.touch()
    result = subprocess.run(["make", "-s", "check-config", "CONFIG=no/such.yaml", f"BIN={sys.executable.rsplit('/', 1)[0]}",
                             f"STAMP={stamp}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "marsdiff error: no/such.yaml: config file not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("parts", [
    ("rl", "diffusion", "io/trajectories.py", "scripts/sample_round.py"),
    ("evalset/generate.py", "scripts/generate_samples.py"),
    ("stages/report_summary.py", "scripts/report_summary.py"),
])
def test_no_stage_code_version_follows_the_parse_time_checks(parts):
    """Stages import marsdiff.config; the checks live apart so that editing one re-runs no stage."""
    from marsdiff.provenance import resolve_parts

    names = [name for name, _ in resolve_parts(REPO / "src" / "marsdiff", REPO / "workflow" / "scripts", parts)]
    assert "config.py" in names and "config_checks.py" not in names
