"""Presets of the embedded pixel model (the ``model.pixel.preset`` choices), torch-free.

They live apart from :mod:`marsdiff.diffusion.pixel` (which imports torch) because the workflow
resolves the generator's output size at parse time (:mod:`marsdiff.data.resolution`), and
parsing the Snakefile must not import torch.
"""

from __future__ import annotations

from typing import Any

# Presets fill every field the user leaves null. "small" is the default model: 13 min of training
# on 2 CPU cores, which the default run does not pay because the project ships the result
# (marsdiff.diffusion.shipped, docs/base_model.md); "large" is for a GPU.
PIXEL_PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "image_size": 32,
        # Width at the 8 px level: against (32, 64, 64) it raised the within-image contrast from
        # 0.69-0.76 to 0.84 of the real one at 1.2x the step time (docs/base_model.md)
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 1,
        "attention": False,
        "train_steps": 2000,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
        # plain v loss: against min-SNR 5 it raised precision, recall and coverage at 2000 steps
        "min_snr_gamma": 0.0,
        "prediction_type": "v_prediction",
        "shift_px": 1,
        # Photometric jitter: without it the model drew craters 24 % too uniform in brightness and
        # sat a little too close to its train crops (memorisation ratio 0.97); with it 0 to -3 %
        # and 1.005-1.02, at some precision (docs/base_model.md)
        "brightness_jitter": 25.0,
        "contrast_jitter": 0.3,
    },
    "large": {
        "image_size": 64,
        "block_out_channels": [64, 128, 128, 256],
        "layers_per_block": 2,
        "attention": True,
        "train_steps": 20000,
        "batch_size": 64,
        "learning_rate": 3e-4,
        "warmup_steps": 500,
        "ema_decay": 0.999,
    },
}
