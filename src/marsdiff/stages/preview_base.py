"""Stage ``preview_base``: ``samples.png`` of the trained base model, on files.

Loads and verifies the model folder and the train split, checks that they agree on the size
classes and writes the grid atomically; the grid itself is
:func:`marsdiff.diffusion.preview.preview_grid`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from marsdiff.devices import resolve_device
from marsdiff.diffusion.pixel import load_train_set
from marsdiff.diffusion.preview import preview_grid
from marsdiff.errors import MarsdiffError


def write_preview(model_dir: str | Path, manifest: str | Path, section: Mapping[str, Any], out_png: str | Path,
                  device: str, threads: int | None = None) -> None:
    """Stage preview_base: samples.png of a trained model directory.

    The model's own training keys (image size, seeds) come from its metadata; ``section`` (the
    filled ``model.pixel`` section, or its grid keys) gives the grid settings; ``device``:
    ``model.pixel.device``.
    """
    from marsdiff.diffusion.loading import verify_pixel_model
    from marsdiff.diffusion.pixel import load_pixel_model
    from marsdiff.io.atomic import atomic_path

    verify_pixel_model(model_dir)  # a grid of damaged weights would look like a bad model, not a bad file
    if threads:
        torch.set_num_threads(int(threads))
    unet, scheduler, meta = load_pixel_model(model_dir, resolve_device(device, "model.pixel.device"))
    image_size = int(meta["image_size"])
    train = load_train_set(manifest, image_size)
    if list(train.class_names) != list(meta.get("class_names", train.class_names)):
        raise MarsdiffError(f"{manifest}: size classes {train.class_names} differ from the model's "
                            f"{meta.get('class_names')} (retrain the base model)")
    grid = preview_grid(unet, scheduler, train, section, meta["seeds"], image_size, int(meta["training"]["steps"]))
    with atomic_path(out_png, suffix=".png") as tmp:
        grid.save(tmp, format="PNG")
