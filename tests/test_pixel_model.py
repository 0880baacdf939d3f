"""The embedded pixel-space base model: build, save/load, training, the stage's file contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from marsdiff.config import filled_section
from marsdiff.diffusion import pretrain as pretrain_mod
from marsdiff.diffusion import training_loss
from marsdiff.diffusion.pixel import (
    MODEL_META_NAME,
    PixelConfig,
    build_noise_scheduler,
    build_pixel_unet,
    load_pixel_model,
    load_train_set,
    save_pixel_model,
    size_class_order,
)
from marsdiff.diffusion.augmentation import choose_flip, jitter_photometry, shift_each
from marsdiff.diffusion.ema import EMA
from marsdiff.diffusion.pretrain import pretrain_base, train_pixel_model
from marsdiff.diffusion.training_loss import fixed_batch_loss
from marsdiff.diffusion.shipped import record_weights_hash
from marsdiff.errors import MarsdiffError
from marsdiff.stages.preview_base import write_preview

# A model small enough that the whole file runs in seconds on one shared CPU core.
TINY = {
    "image_size": 16,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "attention": False,
    "train_steps": 4,
    "batch_size": 8,
    "warmup_steps": 1,
    "grid_samples_per_class": 2,
    "grid_reference_per_class": 1,
    "grid_sampling_steps": 2,
    "log_every": 2,
    "device": "cpu",
    "seed": 0,
}
# TINY as the workflow hands it to training: filled by the schema (the small preset's other keys).
FILLED_TINY = filled_section("model.pixel", TINY)


def pixel_config(section: dict) -> PixelConfig:
    """A hand-written ``model.pixel`` section as training reads it: filled by the schema first."""
    return PixelConfig.from_section(filled_section("model.pixel", section))


# Deliberately out of size order and not named in order, to test the class ordering.
CLASSES = {"s2_10-20px": 15.0, "s1_3-9px": 6.0, "s3_20-40px": 30.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def crater_image(diameter: float, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A toy crater lit from the left: dark left inner wall, bright right wall, noisy terrain."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    r = np.hypot(xx, yy)
    inside = r < diameter / 2
    shade = np.where(inside, 60.0 * xx / max(diameter / 2, 1.0), 0.0)
    image = 128.0 + shade + rng.normal(0, 8, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_reference(root: Path, per_class: int = 6, splits: str = "mixed") -> Path:
    """A manifest + 64x64 PNGs in the layout prepare_reference writes.

    ``splits``: "mixed" holds out every third crater per class, "train" / "heldout" put all in one.
    """
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = ["id,path,split,size_cat,diameter_px,lighting_cat,contrast_cat"]
    n = 0
    for name, diameter in CLASSES.items():
        for k in range(per_class):
            split = splits if splits != "mixed" else ("heldout" if k % 3 == 2 else "train")
            image_id = f"crater_{n:04d}"
            Image.fromarray(crater_image(diameter, rng)).save(root / "images" / f"{image_id}.png")
            rows.append(f"{image_id},images/{image_id}.png,{split},{name},{diameter + k * 0.1},medium,low")
            n += 1
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_config_presets_and_overrides():
    small = pixel_config({})
    assert small.preset == "small" and small.image_size == 32 and small.block_out_channels == (32, 64, 128)
    assert small.shift_px == 1 and small.train_steps == 2000 and small.min_snr_gamma == 0.0
    large = pixel_config({"preset": "large", "train_steps": 7})
    assert large.image_size == 64 and large.train_steps == 7 and large.attention
    # every preset is written out in full: large's loss and augmentation are its own, not small's
    assert (large.min_snr_gamma, large.shift_px, large.brightness_jitter, large.contrast_jitter) == (5.0, 0, 0.0, 0.0)
    with pytest.raises(MarsdiffError, match="image_size"):
        pixel_config({"image_size": 30, "block_out_channels": [8, 16, 16]})
    with pytest.raises(MarsdiffError, match="unknown key"):
        pixel_config({"steps": 3})
    # null no longer means "the preset's": a key is either written or left out
    with pytest.raises(MarsdiffError, match="model.pixel.image_size"):
        pixel_config({"image_size": None})


def test_pixel_config_needs_a_filled_section():
    """No field has a default of its own: a section the schema did not fill is refused by name."""
    with pytest.raises(MarsdiffError, match="model.pixel.preset: missing"):
        PixelConfig.from_section(TINY)
    filled = filled_section("model.pixel", TINY)
    assert PixelConfig.from_section({**filled, "shipped_checkpoint": "never"}) == PixelConfig.from_section(filled)


def test_unet_shapes_and_class_conditioning():
    cfg = pixel_config(TINY)
    torch.manual_seed(0)
    unet = build_pixel_unet(cfg, num_classes=3).eval()
    assert unet.config.num_class_embeds == 3
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([10, 500, 900])
    with torch.no_grad():
        out_a = unet(x, t, class_labels=torch.tensor([0, 0, 0])).sample
        out_b = unet(x, t, class_labels=torch.tensor([2, 2, 2])).sample
    assert out_a.shape == x.shape and out_a.dtype == torch.float32
    assert not torch.allclose(out_a, out_b), "the class label must change the prediction"


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    cfg = pixel_config(TINY)
    torch.manual_seed(0)
    unet = build_pixel_unet(cfg, num_classes=3).eval()
    scheduler = build_noise_scheduler(cfg)
    save_pixel_model(tmp_path, unet, scheduler, {"backend": "pixel", "class_names": ["a", "b", "c"]})
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded, loaded_scheduler, meta = load_pixel_model(tmp_path)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(unet(x, t, class_labels=c).sample, loaded(x, t, class_labels=c).sample)
    assert torch.equal(loaded_scheduler.betas, scheduler.betas)
    assert loaded_scheduler.config.prediction_type == cfg.prediction_type == "v_prediction"
    assert meta["class_names"] == ["a", "b", "c"]


def test_load_rejects_non_model_dir(tmp_path):
    with pytest.raises(MarsdiffError, match=MODEL_META_NAME):
        load_pixel_model(tmp_path)


def test_train_set_uses_train_split_and_size_order(tmp_path):
    manifest = write_reference(tmp_path / "reference")
    train = load_train_set(manifest, 16)
    assert train.class_names == ["s1_3-9px", "s2_10-20px", "s3_20-40px"]
    assert train.images.shape[1:] == (1, 16, 16)
    assert float(train.images.min()) >= -1.0 and float(train.images.max()) <= 1.0
    assert len(train) == 3 * 4  # 6 per class, every third held out
    import pandas as pd

    table = pd.DataFrame({"size_cat": ["s10_50-60px", "s2_5-9px"]})  # no diameters: numbers in names
    assert size_class_order(table) == ["s2_5-9px", "s10_50-60px"]


def test_flip_auto_keeps_sun_direction(tmp_path):
    train = load_train_set(write_reference(tmp_path / "reference"), 32)
    # Toy craters are lit along x: only the top-bottom mirror leaves that unchanged.
    choice = choose_flip(train.images, "auto", train.labels)
    assert choice["flip"] == "top_bottom", choice
    assert abs(choice["sun_axis_deg"] - 0.0) < 5 or abs(choice["sun_axis_deg"] - 180.0) < 5
    rotated = train.images.transpose(-1, -2)  # now lit along y
    assert choose_flip(rotated, "auto", train.labels)["flip"] == "left_right"


def test_shift_each_moves_every_image_by_its_own_bounded_offset():
    images = torch.arange(6 * 10 * 10, dtype=torch.float32).reshape(6, 1, 10, 10)
    shifted = shift_each(images, 2, torch.Generator().manual_seed(3))
    assert shifted.shape == images.shape
    offsets = set()
    for original, moved in zip(images[:, 0], shifted[:, 0]):
        # Find the offset whose interior matches exactly; pixel values are unique.
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(moved[2:8, 2:8], original[2 - dy:8 - dy, 2 - dx:8 - dx])]
        assert len(matches) == 1
        dy, dx = matches[0]
        offsets.add((dy, dx))
        # The uncovered border repeats the edge (no wrap-around, no mirrored shading).
        for row in range(dy):
            assert torch.equal(moved[row], moved[dy])
        for column in range(10 + dx, 10):
            assert torch.equal(moved[:, column], moved[:, 9 + dx])
        assert set(moved.unique().tolist()) <= set(original.unique().tolist())
    assert len(offsets) > 1  # each image draws its own offset
    assert shift_each(images, 0, torch.Generator()) is images
    with pytest.raises(MarsdiffError, match="shift_px"):
        pixel_config({**TINY, "shift_px": 8})


def test_photometric_jitter_gives_each_image_its_own_brightness_and_contrast():
    torch.manual_seed(0)
    # mid-grey images with small deviations: nothing reaches the clip at these jitter sizes
    images = 0.1 * torch.randn(4000, 1, 4, 4)
    means = images.mean(dim=(1, 2, 3))
    deviations = images - means[:, None, None, None]
    bright = jitter_photometry(images, 0.2, 0.0, torch.Generator().manual_seed(1))
    offsets = bright.mean(dim=(1, 2, 3)) - means
    assert offsets.std().item() == pytest.approx(0.2, rel=0.05) and abs(offsets.mean().item()) < 0.01
    torch.testing.assert_close(bright - bright.mean(dim=(1, 2, 3), keepdim=True), deviations, atol=1e-5, rtol=0)
    contrast = jitter_photometry(images, 0.0, 0.3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(contrast.mean(dim=(1, 2, 3)), means, atol=1e-6, rtol=0)  # brightness kept
    log_gain = torch.log(contrast.std(dim=(1, 2, 3)) / images.std(dim=(1, 2, 3)))
    assert log_gain.std().item() == pytest.approx(0.3, rel=0.05)
    # every image keeps its own shading pattern: a gain, not a new image
    gains = (contrast - means[:, None, None, None]) / deviations
    assert torch.allclose(gains, gains[:, :1, :1, :1].expand_as(gains), atol=1e-3)
    # seeded, clipped to the value range, and a no-op when switched off
    again = jitter_photometry(images, 0.2, 0.3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(again, jitter_photometry(images, 0.2, 0.3, torch.Generator().manual_seed(5)))
    assert jitter_photometry(images + 0.95, 0.5, 0.5, torch.Generator()).abs().max() <= 1.0
    assert jitter_photometry(images, 0.0, 0.0, torch.Generator()) is images
    with pytest.raises(MarsdiffError, match="brightness_jitter"):
        pixel_config({**TINY, "brightness_jitter": -1})
    with pytest.raises(MarsdiffError, match="contrast_jitter"):
        pixel_config({**TINY, "contrast_jitter": 2.0})


def test_ema_warm_up_follows_the_live_model():
    live = torch.nn.Linear(2, 2)
    ema = EMA(live, decay=0.999)
    with torch.no_grad():
        live.weight.add_(1.0)
    ema.update(live)  # first update: effective decay 2/11, so mostly the live weights
    gap = (ema.model.weight - live.weight).detach().abs().max()
    assert 0 < float(gap) < 0.2


def test_tiny_training_run_decreases_loss(tmp_path):
    manifest = write_reference(tmp_path / "reference", per_class=8, splits="train")
    train = load_train_set(manifest, 16)
    cfg = pixel_config({**TINY, "train_steps": 60, "learning_rate": 3e-3, "warmup_steps": 5,
                                 "ema_decay": 0.0, "min_snr_gamma": 0.0})
    torch.manual_seed(cfg.seed)
    untrained = build_pixel_unet(cfg, num_classes=len(train.class_names))
    scheduler = build_noise_scheduler(cfg)
    before = fixed_batch_loss(untrained, scheduler, train.images, train.labels, cfg.min_snr_gamma)
    result = train_pixel_model(train, cfg)
    after = fixed_batch_loss(result.ema_unet, scheduler, train.images, train.labels, cfg.min_snr_gamma)
    assert after < 0.7 * before, (before, after)
    assert len(result.loss_rows) == 60 and result.loss_rows[-1][0] == 60


def test_batches_have_batch_size_and_cover_the_set(tmp_path, monkeypatch):
    train = load_train_set(write_reference(tmp_path / "reference"), 16)  # 12 train images
    seen = []
    real_loss = pretrain_mod.diffusion_loss

    def recording_loss(unet, scheduler, images, labels, *rest):
        seen.append(images.shape[0])
        return real_loss(unet, scheduler, images, labels, *rest)

    monkeypatch.setattr(pretrain_mod, "diffusion_loss", recording_loss)
    train_pixel_model(train, pixel_config({**TINY, "train_steps": 3, "batch_size": 5}))
    assert seen == [5, 5, 5]


def test_v_target_and_min_snr_weights_put_the_same_weight_on_the_x0_error():
    v_scheduler = build_noise_scheduler(pixel_config(TINY))
    eps_scheduler = build_noise_scheduler(pixel_config({**TINY, "prediction_type": "epsilon"}))
    assert v_scheduler.config.prediction_type == "v_prediction"
    images, noise = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    timesteps = torch.tensor([0, 10, 500, 999])
    abar = v_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * images
    torch.testing.assert_close(training_loss.training_target(v_scheduler, images, noise, timesteps), v)
    assert torch.equal(training_loss.training_target(eps_scheduler, images, noise, timesteps), noise)
    snr = (abar / (1 - abar)).flatten().float()
    w_v = training_loss.loss_weights(v_scheduler, timesteps, 5.0)
    w_eps = training_loss.loss_weights(eps_scheduler, timesteps, 5.0)
    # ||v error||^2 = (SNR + 1) ||x0 error||^2 and ||eps error||^2 = SNR ||x0 error||^2
    torch.testing.assert_close(w_v * (snr + 1), torch.clamp(snr, max=5.0))
    torch.testing.assert_close(w_eps * snr, torch.clamp(snr, max=5.0))
    assert float(w_v[-1]) == pytest.approx(float(snr[-1]), rel=1e-3)  # pure noise: weight SNR/(SNR+1) ~ 0+
    with pytest.raises(MarsdiffError, match="prediction_type"):
        pixel_config({**TINY, "prediction_type": "sample"})


def test_stage_writes_the_contract(tmp_path):
    manifest = write_reference(tmp_path / "reference")
    out = tmp_path / "models" / "base"
    meta = pretrain_base(manifest, out, FILLED_TINY, threads=1)
    # the stage (diffusion/shipped.py) records the weights' hash, which every loader checks
    meta["weights_sha256"] = record_weights_hash(out)["weights_sha256"]
    write_preview(out, manifest, TINY, out / "samples.png", device="cpu", threads=1)
    for name in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", MODEL_META_NAME, "samples.png", "loss.csv"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / MODEL_META_NAME).read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert on_disk["backend"] == "pixel" and on_disk["value_range"] == "[-1, 1]"
    assert on_disk["image_size"] == 16 and on_disk["channels"] == 1
    assert on_disk["class_names"] == ["s1_3-9px", "s2_10-20px", "s3_20-40px"]
    assert on_disk["train_config"]["train_steps"] == 4 and on_disk["seeds"]["train"] == 0
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr" and len(lines) == 5
    with Image.open(out / "samples.png") as grid:
        # one row per class; eta 0 and eta 1 panels side by side, then the real crops
        assert grid.height > 3 * 64 and grid.width > 2 * (2 * 64 + 110)
    scheduler_cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_cfg["_class_name"] == "DDPMScheduler"
    assert scheduler_cfg["beta_schedule"] == "squaredcos_cap_v2"
    unet, _, _ = load_pixel_model(out)
    assert unet.config.num_class_embeds == 3
    assert [p.name for p in out.parent.iterdir()] == ["base"], "no temporary directory left behind"


def test_failing_run_leaves_no_output(tmp_path, monkeypatch):
    manifest = write_reference(tmp_path / "reference")
    out = tmp_path / "models" / "base"

    def broken_writer(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pretrain_mod, "write_loss_csv", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        pretrain_base(manifest, out, FILLED_TINY, threads=1)
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "temporary directory must be removed"


def test_missing_manifest_is_a_user_error(tmp_path):
    with pytest.raises(MarsdiffError, match="manifest not found"):
        pretrain_base(tmp_path / "nope" / "manifest.csv", tmp_path / "out", FILLED_TINY)
    assert not (tmp_path / "out").exists()


def test_empty_train_split_is_a_user_error(tmp_path):
    manifest = write_reference(tmp_path / "reference", splits="heldout")
    with pytest.raises(MarsdiffError, match="train split is empty"):
        pretrain_base(manifest, tmp_path / "out", FILLED_TINY)
    assert not (tmp_path / "out").exists()


def test_missing_column_and_bad_config_are_user_errors(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,path,split\na,images/a.png,train\n")
    with pytest.raises(MarsdiffError, match="size_cat"):
        load_train_set(manifest, 16)
    with pytest.raises(MarsdiffError, match=r"model\.pixel\.preset: 'huge' is not one of"):
        filled_section("model.pixel", {"preset": "huge"})
    with pytest.raises(MarsdiffError, match=r"model\.pixel\.image_size: missing"):
        pretrain_base(manifest, tmp_path / "out", {"preset": "small"})


def test_script_is_thin_and_importable():
    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "pretrain_base.py"
    text = script.read_text()
    assert "def main(snakemake)" in text and 'if "snakemake" in globals()' in text
    assert os.path.getsize(script) < 2000
