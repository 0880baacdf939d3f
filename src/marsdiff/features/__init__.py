"""Image features: encoders behind one interface, a registry, and a content-keyed cache.

Public API::

    extractor = build_extractor("mobilenet_v2", config["features"])
    vectors = extractor.extract(list_of_uint8_images)           # float32 (N, extractor.dim)

The feature stage (an image set to a ``.npy`` file) is :mod:`marsdiff.stages.extract_features`.
"""

from marsdiff.features.base import FeatureExtractor
from marsdiff.features.cache import extract_with_cache
from marsdiff.io.feature_files import read_feature_set, write_feature_set
from marsdiff.features.registry import EXTRACTORS, build_extractor

__all__ = [
    "FeatureExtractor", "EXTRACTORS", "build_extractor", "extract_with_cache", "read_feature_set",
    "write_feature_set",
]
