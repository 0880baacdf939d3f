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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

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


def write_resized_reference(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, size: int):
    """The reference set brought down to ``size`` px: ``out_dir/images/*.png`` + ``out_dir/manifest.csv``.

    ``manifest_path``: the reference's images.csv (what training reads) or manifest.csv. The new
    manifest has the same rows, ids and columns, ``path`` pointing at the resized PNGs (relative
    to it, same file names) and, when the source has a ``sha256`` column, the digests of the
    resized PNGs (so the file changes whenever the folder's content does: the workflow tracks
    the folder through it). Pixels: ``resize_to(load_image(f), size)``, grey files loaded as
    grey exactly as ``load_train_set`` does, so the pixel model's training images and this set
    are bit-identical. An image smaller than ``size`` is an error (the matched size never
    upsamples). Returns the new manifest.
    """
    from marsdiff.data.images import load_image, resize_to, save_png
    from marsdiff.data.manifest import read_manifest
    from marsdiff.io.digests import file_digest
    from marsdiff.io.atomic import atomic_dir, atomic_path

    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    if int(size) < 1:
        raise MarsdiffError(f"resized reference: size must be >= 1 px, got {size}")
    table = read_manifest(manifest_path)
    if table.empty:
        raise MarsdiffError(f"{manifest_path}: the reference manifest has no rows")
    names = [Path(rel).name for rel in table["path"]]
    if len(set(names)) != len(names):
        raise MarsdiffError(f"{manifest_path}: image file names are not unique; the resized set keeps one folder")
    root = manifest_path.parent
    digests = []
    with atomic_dir(out_dir / "images") as tmp_images:
        for rel, name in zip(table["path"], names):
            source = root / rel
            image = load_image(source, mode=file_mode(source))
            height, width = image.shape[:2]
            if min(height, width) < size:
                raise MarsdiffError(f"{source}: reference image is {width}x{height} px, smaller than the matched size {size} px")
            save_png(Path(tmp_images) / name, resize_to(image, int(size)))
            digests.append(file_digest(Path(tmp_images) / name))
    resized = table.copy()
    resized["path"] = [f"images/{name}" for name in names]
    if "sha256" in resized:
        resized["sha256"] = digests
    with atomic_path(out_dir / "manifest.csv") as tmp:
        resized.to_csv(tmp, index=False)
    log.info("resized %d reference images to %d px into %s", len(resized), size, out_dir)
    return resized
