"""Feature files are checked against the extractor that should have written them."""

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.io.feature_files import info_path_for, read_feature_set, write_feature_set

EXTRACTOR = SimpleNamespace(name="mobilenet_v2", dim=256, cache_key=lambda: "k1")
IDS = [f"crater_{i:04d}" for i in range(36)]


def replace_array(npy_path, array):
    """Put another array in a feature file and record its hash, as a writer that got it wrong would."""
    np.save(npy_path, array)
    info = json.loads(info_path_for(npy_path).read_text())
    info["sha256"] = hashlib.sha256(npy_path.read_bytes()).hexdigest()
    info_path_for(npy_path).write_text(json.dumps(info))


@pytest.fixture
def features_file(tmp_path):
    path = tmp_path / "mobilenet_v2.npy"
    write_feature_set(np.random.default_rng(0).normal(size=(36, 256)), IDS, path, extractor=EXTRACTOR)
    return path


def test_written_features_read_back_with_their_extractor(features_file):
    features, ids = read_feature_set(features_file, extractor="mobilenet_v2", expected_dim=256)
    assert features.shape == (36, 256) and features.dtype == np.float32 and ids == IDS
    info = json.loads(info_path_for(features_file).read_text())
    assert info == {"extractor": "mobilenet_v2", "dim": 256, "dtype": "float32", "rows": 36, "cache_key": "k1",
                    "sha256": hashlib.sha256(features_file.read_bytes()).hexdigest()}


def test_features_of_the_wrong_width_are_refused(features_file):
    # The case validate_rewards once accepted: 36 x 10 features in place of the extractor's 256-D.
    replace_array(features_file, np.zeros((36, 10), np.float32))
    with pytest.raises(MarsdiffError, match=r"mobilenet_v2\.npy: 10-D features but mobilenet_v2\.json says mobilenet_v2 writes 256-D"):
        read_feature_set(features_file, extractor="mobilenet_v2")


def test_expected_dimension_of_the_readers_extractor(features_file):
    with pytest.raises(MarsdiffError, match=r"256-D features, the extractor gives 512-D"):
        read_feature_set(features_file, expected_dim=512)


def test_features_of_another_extractor_are_refused(features_file):
    with pytest.raises(MarsdiffError, match=r"features of extractor mobilenet_v2, expected clip"):
        read_feature_set(features_file, extractor="clip")


def test_wrong_dtype_is_refused(features_file):
    replace_array(features_file, np.zeros((36, 256), np.float64))
    with pytest.raises(MarsdiffError, match=r"features are float64, expected float32"):
        read_feature_set(features_file)


def test_features_without_their_description_are_refused(features_file):
    # The description carries the hash: without it nothing says the array is intact.
    info_path_for(features_file).unlink()
    for extractor in ("mobilenet_v2", None):
        with pytest.raises(MarsdiffError, match=r"no mobilenet_v2\.json beside it .* snakemake --forcerun extract_features"):
            read_feature_set(features_file, extractor=extractor)


def test_validate_rewards_refuses_narrow_features(tmp_path, features_file):
    from marsdiff.stages.validate_rewards import validate_rewards

    replace_array(features_file, np.zeros((36, 10), np.float32))
    with pytest.raises(MarsdiffError, match=r"10-D features"):
        validate_rewards(features_path=features_file, manifest_path=tmp_path / "manifest.csv", reward_section={},
                         ladder_csv=tmp_path / "l.csv", validation_json=tmp_path / "v.json", plot_paths={},
                         extractor="mobilenet_v2")
    assert not (tmp_path / "v.json").exists()
