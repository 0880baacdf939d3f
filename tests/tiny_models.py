"""Tiny randomly initialised models the RL tests build in code (nothing is downloaded)."""

from __future__ import annotations

import torch

CLASS_NAMES = ["small", "medium", "large"]


def tiny_unet(seed: int = 0, size: int = 16, classes: int = len(CLASS_NAMES)):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=classes,
        norm_num_groups=4,
    )


def ddpm_config(**overrides):
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=1000, **overrides).config)


def tiny_pixel_backend(seed: int = 0, size: int = 16):
    from marsdiff.diffusion.pixel_backend import PixelBackend

    meta = {"backend": "pixel", "image_size": size, "channels": 1, "class_names": CLASS_NAMES}
    return PixelBackend(tiny_unet(seed, size), ddpm_config(), meta, device="cpu")
