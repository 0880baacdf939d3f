"""Pre-training of the embedded pixel-space base model (stage ``pretrain_base``).

Owns the training loop (AdamW, warm-up + cosine learning rate, min-SNR weighted v or epsilon loss,
EMA weights), the sun-aware augmentation and :func:`pretrain_base`, which writes the model
directory contract of :mod:`marsdiff.diffusion.pixel` atomically (nothing at the target unless
every file is written). This module and what it imports decide the trained weights: their code
version is recorded with the shipped model (:mod:`marsdiff.diffusion.shipped`), so the sample grid
lives apart, in :mod:`marsdiff.diffusion.preview`.

Augmentation. All reference craters come from one HRSC image, so they share one sun azimuth:
the bright and shadowed crater walls lie along it. A mirror changes that azimuth unless the
mirror line is parallel to the sun direction, so a left-right or top-bottom flip (or a 90 degree
rotation) would teach the model lighting that never occurs. ``flip: auto`` measures the sun
axis from the train images (:func:`sun_axis`) and uses the one pixel-grid mirror
whose line lies within :data:`SUN_AXIS_TOLERANCE_DEG` of it; if none does, or the dipole is
too weak to trust, no mirror is used. Translation keeps the azimuth: ``shift_px`` moves each
training image by up to that many whole pixels (a crater centre is only known to about a pixel),
so the model sees more than one window per crater and copies its 306 crops less. Intensity
jitter is not used: the brightness and contrast of the crops are categories the diversity
rewards measure.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from marsdiff.diffusion.pixel import (
    GREY_LEVELS_PER_UNIT,
    VALUE_BOUNDS,
    VALUE_RANGE,
    PixelConfig,
    TrainSet,
    build_noise_scheduler,
    build_pixel_unet,
    count_parameters,
    load_train_set,
    save_pixel_model,
)
from marsdiff.devices import resolve_device
from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_dir
from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS, PIXEL_PREVIEW_KEYS

log = logging.getLogger(__name__)

SUN_AXIS_TOLERANCE_DEG = 15.0
# Per-class sun axes agreeing less than this (mean resultant length): no trusted sun direction.
MIN_AXIS_CONSISTENCY = 0.8
# Direction (degrees, image coordinates: x = column to the right, y = row downwards) of the
# line each pixel-grid mirror leaves fixed.
MIRROR_LINES_DEG = {"top_bottom": 0.0, "transpose": 45.0, "left_right": 90.0, "antitranspose": 135.0}
LOSS_COLUMNS = ("step", "loss", "lr")
# Keys that never change the trained model (preview grid, log cadence): the workflow does not
# retrain when they change, and the model's metadata does not record them.
PREVIEW_KEYS, LOGGING_KEYS = PIXEL_PREVIEW_KEYS, PIXEL_LOGGING_KEYS


# ----------------------------------------------------------------------------------------------
# Augmentation


def sun_axis(images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[float, float]:
    """(axis in degrees [0, 180), consistency in [0, 1]) of the illumination in crater crops.

    The crops are centred on their craters, so the mean image of a size class is an average
    crater: a dark lobe (the wall in shadow) and a bright lobe (the wall facing the sun) along
    the sun direction, over terrain that averages to grey. Per class, the vector from the dark
    to the bright lobe centroid (lobes weighted by the 4th power of their contrast, within the
    central disc, so the strongest shading dominates over leftover terrain) gives the axis.
    Classes are combined as axes (doubled angles); consistency is the mean resultant length of
    the per-class axes, 1 when every class agrees.
    """
    x = images[:, 0].double()
    size = x.shape[-1]
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    col, row = coords[None, :], coords[:, None]
    central = torch.hypot(col, row) <= size / 4.0
    if labels is None:
        labels = torch.zeros(x.shape[0], dtype=torch.int64)
    doubled = []
    for cls in torch.unique(labels):
        mean = x[labels == cls].mean(dim=0)
        mean = mean - mean.median()
        bright = mean.clamp(min=0).pow(4) * central
        dark = (-mean).clamp(min=0).pow(4) * central
        if bright.sum() <= 0 or dark.sum() <= 0:
            continue
        dx = float((bright * col).sum() / bright.sum() - (dark * col).sum() / dark.sum())
        dy = float((bright * row).sum() / bright.sum() - (dark * row).sum() / dark.sum())
        if dx == 0 and dy == 0:
            continue
        doubled.append(2.0 * math.atan2(dy, dx))
    if not doubled:
        return 0.0, 0.0
    cx = float(np.mean(np.cos(doubled)))
    cy = float(np.mean(np.sin(doubled)))
    angle = math.degrees(math.atan2(cy, cx) / 2.0) % 180.0
    return angle, math.hypot(cx, cy)


def choose_flip(images: torch.Tensor, setting: str, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """The mirror to use (``setting`` unless 'auto') and the measured sun axis, for the metadata."""
    angle, consistency = sun_axis(images, labels)
    info = {"setting": setting, "sun_axis_deg": round(angle, 1), "axis_consistency": round(consistency, 3),
            "tolerance_deg": SUN_AXIS_TOLERANCE_DEG}
    if setting != "auto":
        return {**info, "flip": setting}
    chosen = "none"
    if consistency >= MIN_AXIS_CONSISTENCY:
        for name, line in MIRROR_LINES_DEG.items():
            gap = abs((angle - line + 90.0) % 180.0 - 90.0)
            if gap <= SUN_AXIS_TOLERANCE_DEG:
                chosen = name
    return {**info, "flip": chosen}


def apply_mirror(images: torch.Tensor, name: str) -> torch.Tensor:
    if name == "left_right":
        return images.flip(-1)
    if name == "top_bottom":
        return images.flip(-2)
    if name == "transpose":
        return images.transpose(-1, -2)
    if name == "antitranspose":
        return images.flip(-1, -2).transpose(-1, -2)
    return images


def mirror_half(batch: torch.Tensor, flip: str, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch with the sun-preserving mirror (or nothing)."""
    if flip == "none":
        return batch
    chosen = torch.rand(batch.shape[0], generator=generator) < 0.5
    return torch.where(chosen[:, None, None, None], apply_mirror(batch, flip), batch)


def shift_each(batch: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own whole-pixel offset in [-max_px, max_px] on both axes.

    The uncovered border repeats the edge pixels: a reflection would mirror the shading there,
    and a wrap-around would put the opposite edge's terrain beside it.
    """
    if max_px == 0:
        return batch
    count, _, height, width = batch.shape
    padded = torch.nn.functional.pad(batch, (max_px,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_px + 1, (count, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, top:top + height, left:left + width] for i, (top, left) in enumerate(offsets)])


def jitter_photometry(batch: torch.Tensor, brightness_sd: float, contrast_sd: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Give each image its own contrast and brightness, clipped to the value range.

    The deviations from the image's mean are scaled by exp(N(0, contrast_sd)) (haze and dust
    opacity flatten or sharpen a scene), then an offset N(0, brightness_sd) in model units is
    added (albedo and exposure). Neither moves a shadow, so the sun direction is kept. Without
    it the model draws craters 24 % too uniform in brightness (docs/base_model.md).
    """
    if brightness_sd == 0 and contrast_sd == 0:
        return batch
    shape = (batch.shape[0],) + (1,) * (batch.dim() - 1)
    gain = torch.exp(torch.randn(shape, generator=generator) * contrast_sd)
    offset = torch.randn(shape, generator=generator) * brightness_sd
    mean = batch.mean(dim=tuple(range(1, batch.dim())), keepdim=True)
    low, high = VALUE_BOUNDS
    return (mean + gain * (batch - mean) + offset).clamp(low, high)


def augment(batch: torch.Tensor, flip: str, shift_px: int, generator: torch.Generator,
            brightness_sd: float = 0.0, contrast_sd: float = 0.0) -> torch.Tensor:
    """The training batch's augmentation: the sun-preserving mirror, the crater-centre jitter,
    then the photometric jitter (``brightness_sd`` in model units)."""
    moved = shift_each(mirror_half(batch, flip, generator), shift_px, generator)
    return jitter_photometry(moved, brightness_sd, contrast_sd, generator)


# ----------------------------------------------------------------------------------------------
# EMA and schedules


class EMA:
    """Exponential moving average of a model's weights with a warm-up.

    The effective decay min(decay, (1 + n) / (10 + n)) keeps the average from being dominated
    by the random initial weights when training runs only a few thousand steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for shadow, live in zip(self.model.parameters(), model.parameters()):
            shadow.lerp_(live.detach(), 1.0 - decay)
        for shadow, live in zip(self.model.buffers(), model.buffers()):
            shadow.copy_(live)


def learning_rate_at(step: int, cfg: PixelConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak (step counts from 0)."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.train_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def loss_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for the scheduler's prediction type.

    Caps the weight of the nearly clean timesteps, whose gradients conflict with those of the
    noisy ones and slow convergence; gamma 0 gives plain MSE. The weight on the x0 error is
    min(SNR, gamma) in both cases, which is min(SNR, gamma) / SNR on an epsilon loss and
    min(SNR, gamma) / (SNR + 1) on a v loss (||v error||^2 = (SNR + 1) ||x0 error||^2).
    """
    if gamma <= 0:
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = abar / (1.0 - abar)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1.0)
    return torch.clamp(snr, max=gamma) / snr


def training_target(scheduler, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to output: the noise, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(images, noise, timesteps)
    return noise


def diffusion_loss(unet, scheduler, images, labels, noise, timesteps, gamma: float) -> torch.Tensor:
    noisy = scheduler.add_noise(images, noise, timesteps)
    predicted = unet(noisy, timesteps, class_labels=labels).sample
    per_sample = (predicted - training_target(scheduler, images, noise, timesteps)).pow(2).mean(dim=(1, 2, 3))
    return (per_sample * loss_weights(scheduler, timesteps, gamma)).mean()


@torch.no_grad()
def fixed_batch_loss(unet, scheduler, images, labels, seed: int = 0, gamma: float = 0.0) -> float:
    """Deterministic loss on given images (fixed noise and timesteps): for tests and reports."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), generator=gen)
    device = next(unet.parameters()).device
    was_training = unet.training
    unet.eval()
    value = diffusion_loss(unet, scheduler, images.to(device), labels.to(device), noise.to(device),
                           timesteps.to(device), gamma)
    unet.train(was_training)
    return float(value)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    ema_unet: torch.nn.Module
    scheduler: Any
    loss_rows: list[tuple[int, float, float]]
    augmentation: dict[str, Any]
    seconds: float
    device: str

    def final_loss(self, window: int = 100) -> float:
        tail = [row[1] for row in self.loss_rows[-window:]]
        return float(np.mean(tail)) if tail else float("nan")


def _progress(total: int):
    from tqdm.auto import tqdm

    # A bar only on a terminal; log files get the periodic logging lines instead.
    return tqdm(total=total, desc="pretrain_base", unit="step", disable=not sys.stderr.isatty(), leave=False)


def train_pixel_model(train: TrainSet, cfg: PixelConfig) -> TrainResult:
    """Train the class-conditional UNet on ``train``; returns the EMA model and the loss log."""
    device = resolve_device(cfg.device, "model.pixel.device")
    torch.manual_seed(cfg.seed)
    unet = build_pixel_unet(cfg, num_classes=len(train.class_names)).to(device).train()
    scheduler = build_noise_scheduler(cfg)
    ema = EMA(unet, cfg.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    flip = choose_flip(train.images, cfg.flip, train.labels)
    augmentation = {**flip, "shift_px": cfg.shift_px, "brightness_jitter": cfg.brightness_jitter,
                    "contrast_jitter": cfg.contrast_jitter}
    brightness_sd = cfg.brightness_jitter / GREY_LEVELS_PER_UNIT
    log.info("training %d images in %d size classes %s; %d parameters; flip %s (sun axis %.0f deg, "
             "consistency %.2f), shift up to %d px, brightness jitter %g grey levels, contrast jitter %g; "
             "device %s, %d threads", len(train), len(train.class_names), train.class_counts(),
             count_parameters(unet), flip["flip"], flip["sun_axis_deg"], flip["axis_consistency"], cfg.shift_px,
             cfg.brightness_jitter, cfg.contrast_jitter, device, torch.get_num_threads())

    # Batch order and flips on a CPU generator, noise on the training device: reproducible per device.
    order_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    images, labels = train.images, train.labels
    order = torch.randperm(len(train), generator=order_gen)
    cursor = 0
    rows: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    running = 0.0
    with _progress(cfg.train_steps) as bar:
        for step in range(cfg.train_steps):
            # Epoch-wise shuffling: every image is seen once per pass, even with a tiny set.
            picks, picked = [], 0
            while picked < cfg.batch_size:
                if cursor == len(order):
                    order, cursor = torch.randperm(len(train), generator=order_gen), 0
                take = min(cfg.batch_size - picked, len(order) - cursor)
                picks.append(order[cursor:cursor + take])
                cursor += take
                picked += take
            index = torch.cat(picks) if len(picks) > 1 else picks[0]
            batch = augment(images[index], flip["flip"], cfg.shift_px, order_gen, brightness_sd,
                            cfg.contrast_jitter).to(device)
            batch_labels = labels[index].to(device)
            noise = torch.randn(batch.shape, generator=noise_gen, device=device)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch.shape[0],),
                                      generator=noise_gen, device=device)
            lr = learning_rate_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = diffusion_loss(unet, scheduler, batch, batch_labels, noise, timesteps, cfg.min_snr_gamma)
            if not torch.isfinite(loss):
                raise MarsdiffError(f"model.pixel: training diverged at step {step} (loss {float(loss)}); "
                                    "lower model.pixel.learning_rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update(unet)
            value = float(loss.detach())
            rows.append((step + 1, value, lr))
            running += value
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.train_steps:
                count = (step % cfg.log_every) + 1
                elapsed = time.perf_counter() - start
                log.info("step %d/%d loss %.4f lr %.2e (%.3f s/step)", step + 1, cfg.train_steps,
                         running / count, lr, elapsed / (step + 1))
                running = 0.0
    seconds = time.perf_counter() - start
    return TrainResult(ema.model.eval(), scheduler, rows, augmentation, seconds, str(device))


def write_loss_csv(path: Path, rows: Sequence[tuple[int, float, float]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOSS_COLUMNS)
        for step, loss, lr in rows:
            writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}"])


# ----------------------------------------------------------------------------------------------
# The stage


def model_metadata(cfg: PixelConfig, train: TrainSet, result: TrainResult, threads: int | None) -> dict[str, Any]:
    import diffusers

    return {
        "backend": "pixel",
        "image_size": cfg.image_size,
        "channels": 1,
        "class_names": list(train.class_names),
        "num_classes": len(train.class_names),
        "class_key": "size_cat",
        "value_range": VALUE_RANGE,
        "prediction_type": cfg.prediction_type,
        "weights": "ema",
        # Training keys only: the preview grid is drawn (and re-drawn) by its own stage.
        "train_config": {k: v for k, v in cfg.as_dict().items() if k not in PREVIEW_KEYS + LOGGING_KEYS},
        "seeds": {"train": cfg.seed, "noise": cfg.seed + 1, "grid": cfg.seed + 2},
        "augmentation": result.augmentation,
        "training": {
            "images": len(train),
            "class_counts": train.class_counts(),
            "steps": len(result.loss_rows),
            "final_loss": round(result.final_loss(), 6),
            "seconds": round(result.seconds, 1),
            "seconds_per_step": round(result.seconds / max(1, len(result.loss_rows)), 4),
            "device": result.device,
            "threads": threads,
            "parameters": count_parameters(result.ema_unet),
        },
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }


def pretrain_base(manifest: str | Path, out_dir: str | Path, section: dict | None,
                  threads: int | None = None, code_version: str | None = None) -> dict[str, Any]:
    """Train the base model on the manifest's train split and write the model directory.

    Everything goes to a temporary directory that replaces ``out_dir`` only when all files are
    written. The sample grid is :mod:`marsdiff.diffusion.preview`'s (stage preview_base), so
    grid settings never retrain. ``code_version``: the training code's digest, recorded in the
    metadata (the shipped model's provenance checks it). Returns the metadata written to
    ``marsdiff_model.json``.
    """
    cfg = PixelConfig.from_dict(section)
    if threads:
        torch.set_num_threads(int(threads))
    train = load_train_set(manifest, cfg.image_size)
    result = train_pixel_model(train, cfg)
    meta = model_metadata(cfg, train, result, threads)
    if code_version:
        meta["training_code_version"] = code_version

    with atomic_dir(out_dir) as tmp:
        save_pixel_model(tmp, result.ema_unet, result.scheduler, meta)
        write_loss_csv(tmp / "loss.csv", result.loss_rows)
    log.info("base model written to %s (final loss %.4f, %.0f s training)", out_dir,
             meta["training"]["final_loss"], result.seconds)
    return meta


