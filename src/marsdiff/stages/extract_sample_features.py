"""Stage extract_sample_features: the features of every evaluated model's images.

The same path as a scored round (:func:`marsdiff.rewards.round_scoring.round_features`): images
at the matched size are read as written, larger ones (Stable Diffusion) are brought down with the
BOX filter the reference took, so generated and held-out crops meet the encoder at one size, and
every vector goes through the content-keyed feature cache.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

log = logging.getLogger(__name__)


def extract_sample_features(
    sets: Mapping[str, tuple[str | os.PathLike, str | os.PathLike, str | os.PathLike]],
    extractor_name: str,
    features_cfg: Mapping[str, Any],
    resolution: int,
) -> dict[str, dict[str, Any]]:
    """Stage extract_sample_features: ``sets`` maps a model to (samples.csv, images
    folder, output .npy); each output gets its ``.ids.txt`` and ``.json``, rows in image-index order.

    One job for all models: the extractor loads once, and the content-keyed cache turns the
    images of models that did not change into cache hits when one model is re-drawn.
    """
    from marsdiff.features.registry import build_extractor
    from marsdiff.io.feature_files import write_feature_set
    from marsdiff.io.reading import read_samples
    from marsdiff.rewards.round_scoring import round_features

    extractor = build_extractor(extractor_name, dict(features_cfg))
    infos = {}
    for name, (samples_csv, images_dir, out_npy) in sets.items():
        ids, paths = read_samples(samples_csv, images_dir)
        features, info = round_features(paths, extractor, features_cfg["cache_dir"], int(resolution))
        write_feature_set(features, ids, out_npy, extractor=extractor)
        log.info("%s: %s features of %d images at %d px (cache hits %d, misses %d)", name, extractor_name, len(ids),
                 resolution, info["cache_hits"], info["cache_misses"])
        infos[name] = info
    return infos
