"""The embedded pixel-space base model: configuration, UNet, noise scheduler, data, save/load.

This module owns what the rest of marsdiff needs to know about the small class-conditional
``UNet2DModel`` trained by the ``pretrain_base`` stage:

* :class:`PixelConfig` (the ``model.pixel`` config section, filled by the schema's defaults);
* :func:`build_pixel_unet` and :func:`build_noise_scheduler`;
* :func:`load_train_set` (manifest + PNGs, train split only, class index from ``size_cat``);
* the on-disk model contract: :func:`save_pixel_model` / :func:`load_pixel_model`.

Model directory contract (``results/models/base/``)::

    unet/                  UNet2DModel.save_pretrained (safetensors)
    scheduler/             DDPMScheduler.save_pretrained: the training betas; samplers build
                           their DDIM scheduler with ``DDIMScheduler.from_config(...)``
    marsdiff_model.json    backend "pixel", image_size, channels, class_names (class index
                           order = size categories from small to large), value_range "[-1, 1]",
                           prediction_type, train config, seeds, training summary
    samples.png, loss.csv  written beside them by the training stage

Images are float32 in [-1, 1], shape (N, 1, S, S); class labels are int64 size-category indices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from marsdiff.errors import MarsdiffError

MODEL_META_NAME = "marsdiff_model.json"
UNET_SUBDIR = "unet"
SCHEDULER_SUBDIR = "scheduler"
SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' name for UNet weights
VALUE_RANGE = "[-1, 1]"
VALUE_BOUNDS = (-1.0, 1.0)
GREY_LEVELS_PER_UNIT = 127.5  # uint8 grey levels per unit of the model range


@dataclass(frozen=True)
class PixelConfig:
    """The ``model.pixel`` section as training reads it, built from the schema-filled section.

    No field has a default: the schema holds every default, the preset's included
    (``defaultsBy.preset``), and :func:`marsdiff.config.filled_section` fills a hand-written
    section. This module does not fill it itself because the training digest follows its
    imports, and the config loader trains nothing.
    """

    preset: str
    image_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: bool
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    ema_decay: float
    num_train_timesteps: int
    beta_schedule: str
    min_snr_gamma: float
    prediction_type: str
    flip: str
    shift_px: int
    brightness_jitter: float
    contrast_jitter: float
    grid_samples_per_class: int
    grid_reference_per_class: int
    grid_sampling_steps: int
    log_every: int
    seed: int
    device: str

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "PixelConfig":
        """From a filled ``model.pixel`` section (its other keys, e.g. shipped_checkpoint, ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in section]
        if missing:
            raise MarsdiffError(f"model.pixel.{missing[0]}: missing from the section (fill a hand-written "
                                "section with marsdiff.config.filled_section('model.pixel', ...))")
        values = {name: section[name] for name in names}
        values["block_out_channels"] = tuple(int(c) for c in values["block_out_channels"])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """The checks the schema cannot express: they relate two keys (its ranges are not repeated)."""
        levels = len(self.block_out_channels)
        if self.image_size % (2 ** (levels - 1)):
            raise MarsdiffError(
                f"model.pixel.image_size: {self.image_size} is not divisible by 2^{levels - 1} "
                f"(one halving per level of block_out_channels {list(self.block_out_channels)})"
            )
        if int(self.shift_px) >= self.image_size // 2:
            raise MarsdiffError(f"model.pixel.shift_px: must be in [0, {self.image_size // 2}) for "
                                f"{self.image_size} px images, got {self.shift_px}")

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["block_out_channels"] = list(self.block_out_channels)
        return out


def _norm_groups(channels: tuple[int, ...]) -> int:
    """Largest GroupNorm group count (<= 32) that divides every level's width."""
    for groups in (32, 16, 8, 4, 2, 1):
        if all(c % groups == 0 for c in channels):
            return groups
    return 1


def build_pixel_unet(cfg: PixelConfig, num_classes: int, channels: int = 1):
    """A fresh class-conditional ``UNet2DModel`` (class embedding added to the time embedding)."""
    from diffusers import UNet2DModel

    if num_classes < 1:
        raise MarsdiffError("the base model needs at least one size category")
    levels = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        # Self-attention only at the coarsest level: global context for the crater rim at a
        # fraction of the cost of attention at full resolution.
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        num_class_embeds=num_classes,
        norm_num_groups=_norm_groups(tuple(cfg.block_out_channels)),
        attention_head_dim=8,
    )


def build_noise_scheduler(cfg: PixelConfig):
    """The training DDPM noise scheduler (its config is what samplers rebuild DDIM from).

    ``timestep_spacing="trailing"`` makes a few-step DDIM start at the last training timestep
    (pure noise) instead of skipping the noisiest ones, which otherwise brightens samples.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing="trailing",
    )


def count_parameters(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


# ----------------------------------------------------------------------------------------------
# Training data


@dataclass
class TrainSet:
    """The train split in memory: images (N, 1, S, S) float32 in [-1, 1], labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
        return dict(zip(self.class_names, (int(c) for c in counts)))


def _numbers_in(name: str) -> list[float]:
    # Skip a leading bin number like "s3_" so "s10_..." does not sort before "s2_..." by text.
    body = re.sub(r"^[A-Za-z]+\d*_", "", str(name))
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", body)]


def size_class_order(table) -> list[str]:
    """Size categories from small to large craters.

    Ordered by the median ``diameter_px`` of each category when the manifest has diameters
    (robust to any naming scheme), else by the numbers in the name (``s1_4-10px`` -> 4, 10),
    then by name.
    """
    import pandas as pd

    names = sorted(table["size_cat"].astype(str).unique())
    medians: dict[str, float] = {}
    if "diameter_px" in table.columns:
        diam = pd.to_numeric(table["diameter_px"], errors="coerce")
        for name in names:
            value = diam[table["size_cat"].astype(str) == name].median()
            medians[name] = float(value) if pd.notna(value) else math.inf

    def key(name: str):
        nums = _numbers_in(name)
        return (medians.get(name, math.inf), nums or [math.inf], name)

    return sorted(names, key=key)


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1, 1]."""
    return torch.from_numpy(images_uint8.astype(np.float32) / GREY_LEVELS_PER_UNIT - 1.0).unsqueeze(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 1, H, W) in [-1, 1] -> uint8 (N, H, W)."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * GREY_LEVELS_PER_UNIT).round().to(torch.uint8)
    return arr[:, 0].numpy()


def load_train_set(manifest_path: str | os.PathLike, image_size: int) -> TrainSet:
    """The reference train split as tensors; class index = position in :func:`size_class_order`.

    The class list comes from the whole manifest (both splits), so a size category that happens
    to have no training image still gets an index and the model's class count matches the
    reference's categories. Raises MarsdiffError naming the culprit for a missing or malformed
    manifest, an empty train split or an unreadable image.
    """
    from marsdiff.data.images import load_image, resize_to
    from marsdiff.data.manifest import read_manifest

    manifest_path = Path(manifest_path)
    table = read_manifest(manifest_path)
    if table["size_cat"].isna().any():
        raise MarsdiffError(f"{manifest_path}: {int(table['size_cat'].isna().sum())} row(s) have no size_cat")
    class_names = size_class_order(table)
    train = table[table["split"] == "train"].reset_index(drop=True)
    if train.empty:
        raise MarsdiffError(f"{manifest_path}: the train split is empty (no row with split == 'train')")
    root = manifest_path.parent
    index_of = {name: i for i, name in enumerate(class_names)}
    # resize_to is also how score_round's reference set is made: the reward sees what training saw
    pixels = np.stack([resize_to(load_image(root / rel, mode="L"), image_size) for rel in train["path"]])
    labels = torch.tensor([index_of[str(c)] for c in train["size_cat"]], dtype=torch.int64)
    return TrainSet(to_model_range(pixels), labels, class_names, train["id"].astype(str).tolist())


# ----------------------------------------------------------------------------------------------
# Save / load


def save_pixel_model(out_dir: str | os.PathLike, unet, scheduler, meta: dict[str, Any]) -> None:
    """Write ``unet/``, ``scheduler/`` and ``marsdiff_model.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    unet.save_pretrained(out_dir / UNET_SUBDIR, safe_serialization=True)
    scheduler.save_pretrained(out_dir / SCHEDULER_SUBDIR)
    (out_dir / MODEL_META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_pixel_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(unet, scheduler, meta)`` from a model directory written by :func:`save_pixel_model`.

    The UNet is in eval mode, float32, on ``device``; the scheduler is the training
    ``DDPMScheduler`` (build a DDIM sampler with ``DDIMScheduler.from_config(scheduler.config)``).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    meta_path = path / MODEL_META_NAME
    if not meta_path.is_file():
        raise MarsdiffError(f"{path}: not a marsdiff pixel model ({MODEL_META_NAME} missing; run pretrain_base)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise MarsdiffError(f"{meta_path}: corrupt model metadata ({err})") from None
    if meta.get("backend") != "pixel":
        raise MarsdiffError(f"{meta_path}: backend is {meta.get('backend')!r}, expected 'pixel'")
    for sub in (UNET_SUBDIR, SCHEDULER_SUBDIR):
        if not (path / sub).is_dir():
            raise MarsdiffError(f"{path / sub}: missing from the model directory")
    # Weights load from safetensors only: a pickled .bin runs code on load, and diffusers
    # would silently fall back to one when the .safetensors file is missing.
    weights = path / UNET_SUBDIR / SAFETENSORS_WEIGHTS
    if not weights.is_file():
        found = sorted(p.name for p in (path / UNET_SUBDIR).iterdir() if p.is_file())
        raise MarsdiffError(f"{weights}: UNet weights file missing (found: {', '.join(found) or 'nothing'}); "
                            "marsdiff loads safetensors only, rerun pretrain_base")
    unet = UNet2DModel.from_pretrained(path / UNET_SUBDIR, torch_dtype=torch.float32, use_safetensors=True)
    unet.to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(path / SCHEDULER_SUBDIR)
    return unet, scheduler, meta
