"""Image features: encoders behind one interface, a registry, and a content-keyed cache.

Public API::

    extractor = build_extractor("mobilenet_v2", config["features"])
    vectors = extractor.extract(list_of_uint8_images)           # float32 (N, extractor.dim)
    extract_image_set(manifest_or_dir, "mobilenet_v2", config["features"], "out/mobilenet_v2.npy")
"""

from marsdiff.features.base import FeatureExtractor
from marsdiff.features.cache import extract_with_cache
from marsdiff.io.feature_files import read_feature_set, write_feature_set
from marsdiff.features.registry import EXTRACTORS, build_extractor
from marsdiff.features.image_sets import extract_image_set, list_image_set

__all__ = [
    "FeatureExtractor", "EXTRACTORS", "build_extractor", "extract_with_cache", "extract_image_set",
    "list_image_set", "read_feature_set", "write_feature_set",
]
