"""``python -m marsdiff doctor``: exit status 0 with every line printed when the pipeline can run,
1 with a one-line message naming the fix when something is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO
from marsdiff.cli import main
from marsdiff.io.digests import file_digest

from test_sampler import CLASS_NAMES, ddpm_config, tiny_unet


def write_tiny_pixel_model(model_dir):
    """A base-model directory in the documented layout (unet/, scheduler/, marsdiff_model.json)."""
    from diffusers import DDPMScheduler

    tiny_unet(size=16).save_pretrained(model_dir / "unet")
    DDPMScheduler.from_config(ddpm_config()).save_pretrained(model_dir / "scheduler")
    meta = {"backend": "pixel", "image_size": 16, "channels": 1, "class_names": CLASS_NAMES,
            # pretrain_base records the weights' hash; loaders refuse a model without it
            "weights_sha256": file_digest(model_dir / "unet" / "diffusion_pytorch_model.safetensors")}
    (model_dir / "marsdiff_model.json").write_text(json.dumps(meta))


@pytest.fixture
def small_config(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["sampling"].update(steps=2, images_per_round=4)
    config["features"]["mobilenet_v2"].update(input_size=32, layer=3)
    config["features"]["cache_dir"] = str(tmp_path / "cache")
    # the tiny test model generates 16 px images; the config must say so (matched resolution)
    config["model"]["pixel"]["image_size"] = 16
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def test_doctor_without_base_model_exits_1_naming_the_command(tmp_path, capsys, small_config):
    path, _ = small_config
    status = main(["doctor", "--config", str(path), "--model-dir", str(tmp_path / "none")])
    out, err = capsys.readouterr()
    assert status == 1
    assert "device" in out and "trajectory length" in out and "2 denoising steps" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pretrain_base" in lines[0] and str(tmp_path / "none") in lines[0]


def test_doctor_without_reference_features_exits_1(tmp_path, capsys, small_config):
    path, _ = small_config
    write_tiny_pixel_model(tmp_path / "base")
    status = main(["doctor", "--config", str(path), "--model-dir", str(tmp_path / "base"), "--results", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert status == 1, err
    assert "features" in out and "mobilenet_v2: vectors of shape" in out
    assert "no reference features" in err and "snakemake" in err and len(err.strip().splitlines()) == 1


def _write_reference(results, config, size):
    """Reference features at ``size`` px (random 64 px crops box-downsampled) and a manifest."""
    from marsdiff.data.images import resize_to
    from marsdiff.features import build_extractor, write_feature_set

    extractor = build_extractor("mobilenet_v2", config["features"])
    rng = np.random.default_rng(0)
    crops = [resize_to(rng.integers(0, 255, (64, 64), dtype=np.uint8), size) for _ in range(12)]
    path = results / f"features/reference_{size}px/mobilenet_v2.npy"
    write_feature_set(extractor.extract(crops), [f"ref{i}" for i in range(12)], path, extractor=extractor)
    # Only train rows count: the two held-out rows must not reach the reward.
    manifest = results / "reference/manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("id,path,size_cat,split\n" + "".join(
        f"ref{i},images/ref{i}.png,s1,{'heldout' if i < 2 else 'train'}\n" for i in range(12)
    ))
    return path


def test_doctor_full_check_prints_reward(tmp_path, capsys, small_config):
    path, config = small_config
    write_tiny_pixel_model(tmp_path / "base")
    _write_reference(tmp_path / "r", config, 16)
    status = main(["doctor", "--config", str(path), "--model-dir", str(tmp_path / "base"), "--results", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "diversity reward" in out and "combined" in out and "mmd" in out and "status" in out
    assert "vs 10 train reference images at 16 px" in out


def test_doctor_reward_uses_the_matched_resolution(tmp_path, capsys, small_config):
    """Reference features at the reference crop size (64 px) are not what a 16 px model is scored
    against: the doctor asks for the reference at 16 px, the path score_round reads."""
    from marsdiff.data.resolution import matched_size

    path, config = small_config
    assert matched_size(config) == 16
    write_tiny_pixel_model(tmp_path / "base")
    _write_reference(tmp_path / "r", config, 64)
    status = main(["doctor", "--config", str(path), "--model-dir", str(tmp_path / "base"), "--results", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert status == 1
    assert "at 16 px" in out
    assert str(tmp_path / "r/features/reference_16px/mobilenet_v2.npy") in err and len(err.strip().splitlines()) == 1


def test_doctor_refuses_a_model_smaller_than_the_configured_size(tmp_path, capsys, small_config):
    path, config = small_config
    config["model"]["pixel"]["image_size"] = 32
    path.write_text(yaml.safe_dump(config))
    write_tiny_pixel_model(tmp_path / "base")
    status = main(["doctor", "--config", str(path), "--model-dir", str(tmp_path / "base"), "--results", str(tmp_path / "r")])
    _, err = capsys.readouterr()
    assert status == 1
    assert "16 px" in err and "32 px" in err and "pretrain_base" in err and len(err.strip().splitlines()) == 1


def test_doctor_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  stepz: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "marsdiff", "doctor", "--config", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "sampling.stepz" in result.stderr
