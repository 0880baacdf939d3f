"""Choosing and loading the configured diffusion backend (``model.backend``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from marsdiff.diffusion.backends import DiffusionBackend
from marsdiff.diffusion.pixel_backend import BASE_MODEL_DIR, load_pixel_backend
from marsdiff.errors import MarsdiffError


def load_backend(
    model_cfg: Mapping[str, Any], model_dir: str | Path = BASE_MODEL_DIR, device: str | None = "auto"
) -> DiffusionBackend:
    """The backend named by ``model.backend``: the pixel model in ``model_dir`` or Stable Diffusion."""
    backend = model_cfg.get("backend", "pixel")
    if backend == "pixel":
        return load_pixel_backend(model_dir, device=device)
    if backend == "stable_diffusion":
        from marsdiff.diffusion.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(model_cfg.get("stable_diffusion") or {})
    raise MarsdiffError(f"model.backend: unknown backend {backend!r} (use 'pixel' or 'stable_diffusion')")
