"""The evaluation's image generation: the base model's knob settings drawn in one job (one model
load) are exactly the images each setting draws alone, and the merged job's plan and re-runs."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from marsdiff.errors import MarsdiffError
from marsdiff.evalset.models import BASE, FINAL, FROZEN, KNOB
from tiny_models import CLASS_NAMES, ddpm_config, tiny_unet

MODEL_CFG = {"backend": "pixel", "pixel": {"device": "cpu"}}
SAMPLING = {"min_std": 0.01, "device": "cpu", "eta": 1.0, "batch_size": 3}
SPECS = [
    {"name": "base", "kind": BASE, "eta": 1.0, "noise_scale": 1.0, "class_weights": "uniform",
     "class_weights_name": "sampling.class_distribution"},
    {"name": "frozen_knob", "kind": FROZEN, "eta": 0.5, "noise_scale": 1.15, "class_weights": "uniform",
     "class_weights_name": "sampling.class_distribution"},
    {"name": "knob-eta1-ns1-tails", "kind": KNOB, "eta": 1.0, "noise_scale": 1.0, "class_weights": "tails",
     "class_weights_name": "tails"},
]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from diffusers import DDPMScheduler

    from marsdiff.diffusion.pixel import save_pixel_model
    from marsdiff.diffusion.shipped import record_weights_hash

    folder = tmp_path_factory.mktemp("model") / "base"
    meta = {"backend": "pixel", "image_size": 16, "channels": 1, "class_names": CLASS_NAMES, "class_key": "size_cat"}
    save_pixel_model(folder, tiny_unet(), DDPMScheduler.from_config(ddpm_config()), meta)
    record_weights_hash(folder)
    return folder


def test_one_load_draws_each_setting_exactly_as_alone(base_model, tmp_path, one_torch_thread):
    from marsdiff.evalset.generate import generate_model_samples, generate_samples_of

    common = dict(model_cfg=MODEL_CFG, sampling=SAMPLING, n_images=5, seed=3, steps=3, model_dir=base_model)
    merged = [(spec, tmp_path / "merged" / spec["name"] / "images", tmp_path / "merged" / spec["name"] / "samples.csv")
              for spec in SPECS]
    results = generate_samples_of(merged, **common)
    assert [r["images"] for r in results] == [5, 5, 5]
    # Alone, in the reverse order: a model loaded for one setting only, no earlier draw before it.
    for spec in reversed(SPECS):
        alone = tmp_path / "alone" / spec["name"]
        generate_model_samples(spec, images_dir=alone / "images", samples_csv=alone / "samples.csv", **common)
    for spec in SPECS:
        merged_dir, alone_dir = tmp_path / "merged" / spec["name"], tmp_path / "alone" / spec["name"]
        assert (merged_dir / "samples.csv").read_bytes() == (alone_dir / "samples.csv").read_bytes(), spec["name"]
        files = sorted(p.name for p in (alone_dir / "images").iterdir())
        assert files == sorted(p.name for p in (merged_dir / "images").iterdir()) and len(files) == 5
        match, mismatch, errors = filecmp.cmpfiles(alone_dir / "images", merged_dir / "images", files, shallow=False)
        assert mismatch == [] and errors == [], spec["name"]
    # the settings differ from each other: the comparison above could not pass on one shared draw
    base_csv = (tmp_path / "merged" / "base" / "samples.csv").read_text()
    assert all((tmp_path / "merged" / s["name"] / "samples.csv").read_text() != base_csv for s in SPECS[1:])


def test_a_policy_is_drawn_alone(base_model, tmp_path):
    from marsdiff.evalset.generate import generate_samples_of

    policy = {"name": "lora", "kind": FINAL, "experiment": "lora", "round": 0}
    models = [(spec, tmp_path / spec["name"] / "images", tmp_path / spec["name"] / "samples.csv")
              for spec in (SPECS[0], policy)]
    with pytest.raises(MarsdiffError, match="a policy is drawn alone"):
        generate_samples_of(models, MODEL_CFG, SAMPLING, 4, 0, 2, model_dir=base_model, policy_dir=tmp_path / "policy")
    assert not (tmp_path / "base").exists(), "refused before any image is drawn"


# ---------------------------------------------------------------------------- the workflow's plan
def test_the_base_model_and_its_knob_settings_are_one_job_per_stream(tmp_path):
    """tiny.yaml evaluates base, frozen_knob, two knob settings and two policies; two streams."""
    from marsdiff.config import load_config, read_config_file
    from marsdiff.workflow import params
    from marsdiff.workflow.plan import Plan

    config = load_config(None, overrides=read_config_file(REPO / "tests" / "config" / "tiny.yaml"))
    plan = Plan.from_config(config)
    assert plan.base_models == ["base", "frozen_knob", "knob-eta0.5-ns1-uniform", "knob-eta1-ns1-tails"]
    assert plan.policy_models == sorted(config["experiments"]) and plan.policy_models
    merged = params.generate_base_samples(config, plan)
    assert [spec["name"] for spec in merged["model_specs"]] == plan.base_models
    # what the settings share is exactly what one model's draw depends on (same images as before)
    alone = params.generate_samples(config, plan, "base")
    assert {k: v for k, v in merged.items() if k != "model_specs"} == {k: v for k, v in alone.items() if k != "model_spec"}
    assert "stream" not in merged and params.generate_base_samples(config, plan, 2)["stream"] == 2
