"""The base model's sample grid: plain DDIM samples per size class (stage ``preview_base``,
:mod:`marsdiff.stages.preview_base`, writes it).

Kept apart from :mod:`marsdiff.diffusion.pretrain`, whose code version the shipped model records
(:mod:`marsdiff.diffusion.shipped`): editing the grid must not invalidate the shipped weights.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping, Sequence

import numpy as np
import torch

from marsdiff.diffusion.pixel import TrainSet, to_uint8
from marsdiff.diffusion.pixel_keys import PIXEL_PREVIEW_KEYS

log = logging.getLogger(__name__)

# Deterministic DDIM, and the stochastic chain RL samples with: side by side on the same seeds.
PREVIEW_ETAS = (0.0, 1.0)
#: Images per UNet call of the grid's chains. Fixed, not a config key (the grid is a few dozen
#: images): the chunks draw their noise in turn from one seeded generator, so another size could
#: change the grid's pixels.
PREVIEW_BATCH_SIZE = 64


@torch.no_grad()
def ddim_sample(unet, scheduler, labels: torch.Tensor, steps: int, seed: int, image_size: int, batch_size: int,
                channels: int = 1, eta: float = 0.0) -> torch.Tensor:
    """DDIM samples in [-1, 1], one per label, ``batch_size`` per UNet call (eta 0: deterministic
    given the seed)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    device = next(unet.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for begin in range(0, len(labels), batch_size):
        chunk = labels[begin:begin + batch_size].to(device)
        x = torch.randn((len(chunk), channels, image_size, image_size), generator=gen, device=device)
        for t in ddim.timesteps:
            output = unet(x, t, class_labels=chunk).sample
            x = ddim.step(output, t, x, eta=eta, generator=gen).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def sample_grid(samples: np.ndarray, class_names: Sequence[str], reference: np.ndarray | None = None,
                title: str = "", tile: int = 64) -> "Image.Image":
    """A labelled grid: one row per class, generated tiles, then (optionally) real ones.

    ``samples``: uint8 (n_classes, per_class, H, W); ``reference``: uint8 (n_classes, k, H, W)
    with blank (all-zero) tiles allowed where a class has fewer real images.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n_classes, per_class = samples.shape[:2]
    n_ref = 0 if reference is None else reference.shape[1]
    pad, label_w, header_h, gap = 2, 110, 18, 12
    width = label_w + per_class * (tile + pad) + (gap + n_ref * (tile + pad) if n_ref else 0)
    height = header_h + n_classes * (tile + pad)
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title or "generated", fill=0, font=font)
    ref_x0 = label_w + per_class * (tile + pad) + gap
    if n_ref:
        draw.text((ref_x0, 3), "real (train)", fill=0, font=font)

    def paste(arr: np.ndarray, x: int, y: int) -> None:
        canvas.paste(Image.fromarray(arr).resize((tile, tile), Image.Resampling.NEAREST), (x, y))

    for row, name in enumerate(class_names):
        y = header_h + row * (tile + pad)
        draw.text((4, y + tile // 2 - 6), str(name), fill=0, font=font)
        for col in range(per_class):
            paste(samples[row, col], label_w + col * (tile + pad), y)
        for col in range(n_ref):
            if reference[row, col].any():
                paste(reference[row, col], ref_x0 + col * (tile + pad), y)
    return canvas


def reference_examples(train: TrainSet, per_class: int, seed: int) -> np.ndarray:
    """uint8 (n_classes, per_class, H, W) real train images per class (zeros where too few)."""
    rng = np.random.default_rng(seed)
    size = train.images.shape[-1]
    out = np.zeros((len(train.class_names), per_class, size, size), dtype=np.uint8)
    labels = train.labels.numpy()
    for cls in range(len(train.class_names)):
        members = np.flatnonzero(labels == cls)
        picks = rng.permutation(members)[:per_class]
        if len(picks):
            out[cls, :len(picks)] = to_uint8(train.images[torch.as_tensor(picks)])
    return out




def preview_grid(unet, scheduler, train: TrainSet, grid: Mapping[str, int], seeds: Mapping[str, int],
                 image_size: int, steps_trained: int) -> "Image.Image":
    """samples.png: EMA samples per size class at eta 0 and at eta 1 (the same seeds), then real
    train crops of each class. ``grid``: the ``model.pixel`` grid keys (PIXEL_PREVIEW_KEYS);
    ``seeds``: the model metadata's (``train`` picks the real crops, ``grid`` draws the samples)."""
    from PIL import Image

    start = time.perf_counter()
    n_classes = len(train.class_names)
    per_class, reference_per_class, steps = (int(grid[k]) for k in PIXEL_PREVIEW_KEYS)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    reference = reference_examples(train, reference_per_class, seeds["train"]) if reference_per_class else None
    panels = []
    for eta in PREVIEW_ETAS:
        samples = ddim_sample(unet, scheduler, labels, steps, seed=seeds["grid"], image_size=image_size,
                              batch_size=PREVIEW_BATCH_SIZE, eta=eta)
        samples_u8 = to_uint8(samples).reshape(n_classes, per_class, image_size, image_size)
        title = f"DDIM eta {eta:g}, {steps} steps, {steps_trained} training steps"
        panels.append(sample_grid(samples_u8, train.class_names, reference if eta == PREVIEW_ETAS[-1] else None,
                                  title=title))
    gap = 16
    canvas = Image.new("L", (sum(p.width for p in panels) + gap * (len(panels) - 1), max(p.height for p in panels)), 255)
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    log.info("sample grid: %d images in %.1f s", len(labels) * len(PREVIEW_ETAS), time.perf_counter() - start)
    return canvas
