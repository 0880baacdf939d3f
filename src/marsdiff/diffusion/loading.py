"""Choosing and loading the configured diffusion backend (``model.backend``).

The pixel base model is checked before it is loaded: ``marsdiff_model.json`` records the sha256
of the UNet weights (``weights_sha256``, added by the pretrain_base stage after training or when
installing the shipped model; :mod:`marsdiff.diffusion.shipped`), and weights that do not match
it, or a model directory whose metadata records no hash, are refused with the rule to re-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from marsdiff.diffusion.backends import DiffusionBackend
from marsdiff.diffusion.pixel_backend import BASE_MODEL_DIR, BASE_MODEL_META, BUILD_BASE_MODEL_HINT, load_pixel_backend
from marsdiff.errors import MarsdiffError

#: The UNet weights inside a pixel model directory (the layout of diffusion/pixel.py).
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
#: The rule that writes the base model.
BASE_MODEL_RULE = "pretrain_base"


def verify_pixel_model(model_dir: str | Path) -> None:
    """Refuse a pixel model directory whose UNet weights do not match the sha256 its
    ``marsdiff_model.json`` records (or that records none)."""
    from marsdiff.io.reading import read_json, verify_sha256

    model_dir = Path(model_dir)
    meta_path = model_dir / BASE_MODEL_META
    if not meta_path.is_file():
        raise MarsdiffError(f"no pixel diffusion model at {model_dir} (missing {BASE_MODEL_META}): {BUILD_BASE_MODEL_HINT}")
    meta = read_json(meta_path, "model metadata", BASE_MODEL_RULE)
    weights = model_dir / UNET_WEIGHTS
    if not weights.is_file():
        raise MarsdiffError(f"{weights}: UNet weights file missing; re-run its rule: snakemake --forcerun {BASE_MODEL_RULE}")
    verify_sha256(weights, meta.get("weights_sha256"), meta_path, BASE_MODEL_RULE)


def load_backend(
    model_cfg: Mapping[str, Any], model_dir: str | Path = BASE_MODEL_DIR, *, device: str | None
) -> DiffusionBackend:
    """The backend named by ``model.backend``: the pixel model in ``model_dir`` (its weights
    checked against their recorded hash) or Stable Diffusion."""
    # model.backend is one of the two (the schema's enum)
    if model_cfg["backend"] == "stable_diffusion":
        from marsdiff.diffusion.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(model_cfg["stable_diffusion"])
    verify_pixel_model(model_dir)
    return load_pixel_backend(model_dir, device=device)
