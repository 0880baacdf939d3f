"""Matched resolution: generated and reference images meet the encoder at one image size.

An encoder scores resolution as well as content: 64 real train crops box-downsampled to 32 px
scored precision 0.41 / coverage 0.26 against the 64 px held-out crops (0.89 / 0.85 at 64 px),
so a 32 px generator compared with 64 px references would be rewarded for sharpness, not for
diversity. Both sides of a reward therefore pass through the same downsampling
(:func:`marsdiff.data.images.resize_to`, PIL BOX) to one common size::

    matched size = min(generator output size, reference image size)

* pixel model (32 px by default, reference 64 px): the reference set is brought down to 32 px,
  exactly as the model's training set is (``load_train_set``), and generated images are used
  as written.
* Stable Diffusion (512 px): the reference is already the smaller side, so the common size is
  the reference size; generated images are brought down to it at scoring time with the same
  function (never the reference up: upsampling invents no detail and only blurs).

:func:`generator_size` reads only the schema-filled config (no torch), so the workflow can name
the resized reference set (``results/reference/at_{size}px/``) when it parses the Snakefile.
That set is written by stage resize_reference (:mod:`marsdiff.stages.resize_reference`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping


def generator_size(model_cfg: Mapping[str, Any]) -> int:
    """Side in pixels of the images the configured generator writes (the filled ``model`` section).

    pixel: ``model.pixel.image_size`` (the schema fills it from the preset when the config does
    not set it); stable_diffusion: ``model.stable_diffusion.resolution``.
    """
    if model_cfg["backend"] == "stable_diffusion":
        return int(model_cfg["stable_diffusion"]["resolution"])
    return int(model_cfg["pixel"]["image_size"])


def reference_size(config: Mapping[str, Any]) -> int:
    """Side of the reference crops (``reference.image_size``; prepare_reference writes every crop at it)."""
    return int(config["reference"]["image_size"])


def matched_size(config: Mapping[str, Any]) -> int:
    """The common scoring resolution of a filled config: min(generator size, reference size)."""
    return min(generator_size(config["model"]), reference_size(config))


def file_mode(path: str | os.PathLike) -> str:
    """'L' for a single-band file (the reference writer saves colourless crops as grey), else 'RGB'.

    Grey files must be loaded as grey: that is what ``load_train_set`` does, and converting them
    through RGB would round differently.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            # palette images are single-band too, but load_image expands them to RGB
            return "L" if len(img.getbands()) == 1 and img.mode != "P" else "RGB"
    except OSError:
        return "RGB"  # load_image then gives the one-line error naming the file

