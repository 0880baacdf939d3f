"""Pre-training of the embedded pixel-space base model (stage ``pretrain_base``): the training loop.

Owns :func:`train_pixel_model` (AdamW on the min-SNR weighted v or epsilon loss of
:mod:`marsdiff.diffusion.training_loss`, the learning rate of :mod:`marsdiff.diffusion.lr_schedule`,
the EMA weights of :mod:`marsdiff.diffusion.ema`, batches augmented by
:mod:`marsdiff.diffusion.augmentation`) and :func:`pretrain_base`, which writes the model directory
contract of :mod:`marsdiff.diffusion.pixel` atomically (nothing at the target unless every file is
written). This module and what it imports decide the trained weights: their code version is
recorded with the shipped model (:mod:`marsdiff.diffusion.shipped`), so the sample grid lives
apart, in :mod:`marsdiff.diffusion.preview`.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from marsdiff.devices import resolve_device
from marsdiff.diffusion.augmentation import augment, choose_flip
from marsdiff.diffusion.ema import EMA
from marsdiff.diffusion.lr_schedule import learning_rate_at
from marsdiff.diffusion.pixel import (
    GREY_LEVELS_PER_UNIT,
    VALUE_RANGE,
    PixelConfig,
    TrainSet,
    build_noise_scheduler,
    build_pixel_unet,
    count_parameters,
    load_train_set,
    save_pixel_model,
)
from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS, PIXEL_PREVIEW_KEYS
from marsdiff.diffusion.training_loss import diffusion_loss
from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_dir

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("step", "loss", "lr")
# Keys that never change the trained model (preview grid, log cadence): the workflow does not
# retrain when they change, and the model's metadata does not record them.
PREVIEW_KEYS, LOGGING_KEYS = PIXEL_PREVIEW_KEYS, PIXEL_LOGGING_KEYS


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
            lr = learning_rate_at(step, cfg.learning_rate, cfg.warmup_steps, cfg.train_steps)
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


def pretrain_base(manifest: str | Path, out_dir: str | Path, section: Mapping[str, Any],
                  threads: int | None = None, code_version: str | None = None) -> dict[str, Any]:
    """Train the base model on the manifest's train split and write the model directory.

    ``section``: the filled ``model.pixel`` section (:class:`PixelConfig`).

    Everything goes to a temporary directory that replaces ``out_dir`` only when all files are
    written. The sample grid is :mod:`marsdiff.diffusion.preview`'s (stage preview_base), so
    grid settings never retrain. ``code_version``: the training code's digest, recorded in the
    metadata (the shipped model's provenance checks it). Returns the metadata written to
    ``marsdiff_model.json``.
    """
    cfg = PixelConfig.from_section(section)
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


