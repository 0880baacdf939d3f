"""Extractor registry: one name per encoder, built from the ``features`` config section."""

from __future__ import annotations

from typing import Callable

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.features.base import FeatureExtractor


def _mobilenet_v2(options: dict, common: dict) -> FeatureExtractor:
    from marsdiff.features.torchvision_models import MobileNetV2Features

    return MobileNetV2Features(**options, **common)


def _resnet18(options: dict, common: dict) -> FeatureExtractor:
    from marsdiff.features.torchvision_models import ResNet18Features

    return ResNet18Features(**options, **common)


def _clip(options: dict, common: dict) -> FeatureExtractor:
    from marsdiff.features.clip import ClipFeatures

    return ClipFeatures(**options, **common)


EXTRACTORS: dict[str, Callable[[dict, dict], FeatureExtractor]] = {
    "mobilenet_v2": _mobilenet_v2,
    "clip": _clip,
    "resnet18": _resnet18,
}


def build_extractor(name: str, features_cfg: dict | None = None) -> FeatureExtractor:
    """Build extractor ``name`` from (part of) the ``features`` config section, the keys left out
    filled from the schema.

    Its own options come from ``features_cfg[name]``; ``batch_size`` and ``device`` are shared.
    Torch and model code are imported only here, so importing marsdiff stays cheap.
    """
    if name not in EXTRACTORS:
        raise MarsdiffError(f"unknown feature extractor {name!r}; choose one of {', '.join(sorted(EXTRACTORS))}")
    features_cfg = filled_section("features", features_cfg)
    options = dict(features_cfg[name])
    common = {"batch_size": features_cfg["batch_size"], "device": features_cfg["device"]}
    try:
        return EXTRACTORS[name](options, common)
    except TypeError as err:
        raise MarsdiffError(f"features.{name}: {err}") from None
