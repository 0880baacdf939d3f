"""`marsdiff sample`: a labelled imagefolder dataset from the base model, a knob setting or a
policy, with its card; every refusal is one line and writes nothing."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
from PIL import Image

from marsdiff.cli import main
from marsdiff.config import load_config
from marsdiff.errors import MarsdiffError
from marsdiff.evalset.models import EVALUATION_ROUND
from marsdiff.export.dataset import EXPORT_ROUND, METADATA_COLUMNS, export_dataset, folder_digest
from tiny_models import CLASS_NAMES, ddpm_config, tiny_unet

EXPERIMENT = {"algorithm": "ppo", "mode": "lora_unet", "rounds": 2, "images_per_round": 4, "steps": 2}
SCHEDULER = {"algorithm": "ppo", "mode": "scheduler_policy", "rounds": 1, "images_per_round": 4, "steps": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run's results folder: a tiny base model, the reference index, a LoRA policy of round 0,
    and evaluation figures of the base model."""
    from diffusers import DDPMScheduler

    from marsdiff.diffusion.loading import load_backend
    from marsdiff.diffusion.pixel import save_pixel_model
    from marsdiff.diffusion.shipped import record_weights_hash
    from marsdiff.rl.experiments import experiment_settings
    from marsdiff.rl.policy import RoundPolicy

    root = tmp_path_factory.mktemp("run")
    results = root / "results"
    meta = {"backend": "pixel", "image_size": 16, "channels": 1, "class_names": CLASS_NAMES, "class_key": "size_cat"}
    save_pixel_model(results / "models" / "base", tiny_unet(), DDPMScheduler.from_config(ddpm_config()), meta)
    record_weights_hash(results / "models" / "base")  # as pretrain_base does after training
    (results / "reference").mkdir(parents=True)
    pd.DataFrame({
        "id": [f"c{i}" for i in range(6)],
        "size_cat": ["small", "small", "medium", "medium", "large", "large"],
        "diameter_px": [4.0, 6.5, 8.0, 12.0, 20.0, 41.5],
    }).to_csv(results / "reference" / "images.csv", index=False)
    config = load_config(overrides={"experiments": {"lora": EXPERIMENT, "sched": SCHEDULER},
                                    "sampling": {"steps": 2, "batch_size": 4}})
    for name in ("lora", "sched"):
        exp = experiment_settings(config["experiments"], name, config["sampling"])
        backend = load_backend(config["model"], results / "models" / "base", device="cpu")
        RoundPolicy.initial(exp["mode"], backend, exp).save(results / "runs" / name / "round_000" / "policy", 0)
    (results / "eval").mkdir()
    pd.DataFrame({"model": ["base", "knob-eta0.5-ns1-uniform"], "metric": ["recall", "recall"],
                  "value": [0.42, 0.5], "ci_low": [0.3, 0.4], "ci_high": [0.55, 0.6]}).to_csv(
        results / "eval" / "metrics.csv", index=False)
    return config, results


def metadata(folder):
    with open(folder / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_base_export_is_an_imagefolder_with_labels_and_a_card(run, tmp_path):
    config, results = run
    out = tmp_path / "craters"
    summary = export_dataset(config, out, 7, results=results, device="cpu", progress=False)
    assert summary["images"] == 7
    rows = metadata(out)
    assert list(rows[0]) == list(METADATA_COLUMNS) and METADATA_COLUMNS[0] == "file_name"
    assert len(rows) == 7 and len({r["file_name"] for r in rows}) == 7
    # imagefolder: every file_name is relative to the folder holding metadata.csv and exists
    for row in rows:
        with Image.open(out / row["file_name"]) as image:
            assert image.size == (16, 16)
        assert row["class"] in CLASS_NAMES and row["model_kind"] == "base" and row["model_id"] == "base"
        assert row["policy_round"] == "" and row["policy_sha256"] == ""
    # each class's diameter range from the reference, in metres at the HRSC tile's 12.5 m/px
    ranges = {"small": (4.0, 6.5), "medium": (8.0, 12.0), "large": (20.0, 41.5)}
    for row in rows:
        low, high = ranges[row["class"]]
        assert (float(row["diameter_min_px"]), float(row["diameter_max_px"])) == (low, high)
        assert (float(row["diameter_min_m"]), float(row["diameter_max_m"])) == pytest.approx((low * 12.5, high * 12.5), rel=1e-3)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "| recall | 0.42 | [0.3, 0.55] |" in card
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "images", "metadata.csv"]


def test_same_seed_same_bytes_and_the_seeds_are_neither_training_nor_evaluation_seeds(run, tmp_path):
    from marsdiff.diffusion.seeds import image_seeds

    config, results = run
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        export_dataset(config, out, 4, results=results, device="cpu", seed=3, progress=False)
    assert folder_digest(first) == folder_digest(second)
    seeds = {int(r["seed"]) for r in metadata(first)}
    assert seeds == set(image_seeds(3, EXPORT_ROUND, range(4)).tolist())
    assert not seeds & set(image_seeds(3, EVALUATION_ROUND, range(4)).tolist())


def test_classes_and_proportions_choose_what_is_drawn(run, tmp_path):
    config, results = run
    out = tmp_path / "large_only"
    export_dataset(config, out, 6, classes=["large"], results=results, device="cpu", progress=False)
    assert {r["class"] for r in metadata(out)} == {"large"}
    out = tmp_path / "skewed"
    export_dataset(config, out, 40, classes=["small", "large"], proportions=[0.0, 1.0], results=results,
                   device="cpu", progress=False, steps=1)
    assert {r["class"] for r in metadata(out)} == {"large"}


def test_a_knob_setting_is_labelled_with_its_knobs_and_its_evaluated_name(run, tmp_path):
    config, results = run
    config = {**config, "evaluation": {**config["evaluation"], "knobs": {**config["evaluation"]["knobs"], "eta": [0.5]}}}
    out = tmp_path / "knob"
    export_dataset(config, out, 3, eta=0.5, results=results, device="cpu", progress=False)
    rows = metadata(out)
    assert {r["eta"] for r in rows} == {"0.5"} and {r["model_kind"] for r in rows} == {"knob"}
    assert {r["model_id"] for r in rows} == {"knob-eta0.5-ns1-uniform"}
    assert "| recall | 0.5 |" in (out / "README.md").read_text()


def test_a_policy_export_records_its_round_and_hash(run, tmp_path):
    config, results = run
    out = tmp_path / "policy"
    export_dataset(config, out, 3, model="lora", round_index=0, results=results, device="cpu", progress=False)
    rows = metadata(out)
    policy = results / "runs" / "lora" / "round_000" / "policy"
    assert {r["model_kind"] for r in rows} == {"round"} and {r["model_id"] for r in rows} == {"lora-r000"}
    assert {r["policy_round"] for r in rows} == {"0"}
    assert {r["policy_sha256"] for r in rows} == {folder_digest(policy)}
    assert "has not been evaluated" in (out / "README.md").read_text()


def test_the_scheduler_policy_draws_the_requested_classes(run, tmp_path):
    config, results = run
    out = tmp_path / "sched"
    export_dataset(config, out, 4, model="sched", classes=["small"], results=results, device="cpu", progress=False)
    rows = metadata(out)
    assert {r["class"] for r in rows} == {"small"} and {r["model_kind"] for r in rows} == {"final"}
    assert len({r["eta"] for r in rows}) > 1, "the policy draws each image's eta"


@pytest.mark.parametrize("kwargs, message", [
    ({"n_images": 0}, "-n 0: the number of images must be at least 1"),
    ({"model": "ppo_lorra"}, "--model 'ppo_lorra': not a configured model (choose one of base"),
    ({"model": "ppo_lora"}, "no trained policy of 'ppo_lora' round 3 (run the workflow first)"),
    ({"model": "lora", "round_index": 2}, "--round 2: experiment 'lora' has rounds 0..1"),
    ({"model": "lora"}, "no trained policy of 'lora' round 1"),
    ({"classes": ["huge"]}, "--classes: unknown class 'huge' (the model's classes: small, medium, large)"),
    ({"classes": ["small"], "proportions": [1, 2]}, "--proportions: 2 values for 1 classes"),
    ({"proportions": [0, 0, 0]}, "--proportions: values must be finite, >= 0 and not all zero"),
    ({"eta": 1.5}, "--eta 1.5: DDIM eta must be in [0, 1]"),
    ({"model": "lora", "round_index": 0, "eta": 0.5}, "the policy of 'lora' sets its own"),
    ({"round_index": 0}, "--round applies to an experiment's policy"),
])
def test_bad_requests_are_one_line_and_write_nothing(run, tmp_path, kwargs, message):
    config, results = run
    out = tmp_path / "never"
    arguments = {"n_images": 2, **kwargs}
    with pytest.raises(MarsdiffError) as err:
        export_dataset(config, out, arguments.pop("n_images"), results=results, device="cpu", progress=False, **arguments)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_a_non_empty_output_folder_is_refused(run, tmp_path):
    config, results = run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(MarsdiffError, match="exists and is not an empty folder"):
        export_dataset(config, tmp_path / "full", 2, results=results, device="cpu", progress=False)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_the_command_line_draws_and_refuses_in_one_line(run, tmp_path, capsys):
    config, results = run
    overlay = tmp_path / "run.yaml"
    overlay.write_text(json.dumps({"experiments": {"lora": EXPERIMENT}, "sampling": {"steps": 2}}))
    out = tmp_path / "cli"
    assert main(["sample", str(out), "-n", "2", "--config", str(overlay), "--results", str(results),
                 "--device", "cpu", "--classes", "small,large", "--proportions", "1,1"]) == 0
    assert len(metadata(out)) == 2 and "2 images of base" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "x"), "-n", "2", "--config", str(tmp_path / "missing.yaml"),
                 "--results", str(results)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("marsdiff sample: ") and "config file not found" in error and "\n" not in error
    assert main(["sample", str(tmp_path / "y"), "-n", "2", "--proportions", "a,b", "--results", str(results)]) == 1
    assert "--proportions 'a,b': expected comma-separated numbers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
