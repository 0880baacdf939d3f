"""Feature extractors (shapes, determinism, real weight loading) and the content-keyed cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from marsdiff.errors import MarsdiffError
from marsdiff.features import build_extractor, read_feature_set, write_feature_set
from marsdiff.features.cache import extract_with_cache
from marsdiff.stages.extract_features import extract_image_set

SMALL = {"batch_size": 8, "device": "cpu", "mobilenet_v2": {"input_size": 64, "layer": 7, "grid": 2}}


@pytest.fixture(scope="module")
def crater_images(default_reference):
    out, manifest = default_reference
    return [np.asarray(Image.open(out / p)) for p in manifest["path"][:10]]


def test_mobilenet_shape_dtype_and_determinism(crater_images):
    extractor = build_extractor("mobilenet_v2", SMALL)
    first = extractor.extract(crater_images)
    second = extractor.extract(crater_images[::-1])[::-1]
    assert first.shape == (10, extractor.dim) == (10, 64 * 2 * 2)
    assert first.dtype == np.float32
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)  # batch order must not matter
    assert np.linalg.norm(first[0] - first[1]) > 0, "different craters give different features"


def test_grey_equals_replicated_rgb(crater_images):
    extractor = build_extractor("mobilenet_v2", SMALL)
    grey = crater_images[0]
    assert grey.ndim == 2
    rgb = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(extractor.extract([grey]), extractor.extract([rgb]))


def test_layer_and_grid_change_identity_and_dim():
    base = build_extractor("mobilenet_v2", SMALL)
    deeper = build_extractor("mobilenet_v2", {**SMALL, "mobilenet_v2": {"input_size": 64, "layer": 13, "grid": 1}})
    assert deeper.dim == 96
    assert base.cache_key() != deeper.cache_key()


def test_mobilenet_uses_the_offline_imagenet_weights(crater_images, tmp_path):
    import torch
    import torchvision

    random_weights = tmp_path / "random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), random_weights)
    trained = build_extractor("mobilenet_v2", SMALL)
    untrained = build_extractor("mobilenet_v2", {**SMALL, "mobilenet_v2": {**SMALL["mobilenet_v2"], "weights": str(random_weights)}})
    assert trained.cache_key() != untrained.cache_key()
    assert not np.allclose(trained.extract(crater_images[:2]), untrained.extract(crater_images[:2]))


def test_bad_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(MarsdiffError, match=r"bad\.pth: cannot read MobileNetV2 weights"):
        build_extractor("mobilenet_v2", {**SMALL, "mobilenet_v2": {"weights": str(bad)}})


def test_unknown_extractor_and_option():
    with pytest.raises(MarsdiffError, match="unknown feature extractor 'inception'"):
        build_extractor("inception", {})
    with pytest.raises(MarsdiffError, match=r"config key features\.mobilenet_v2\.depth: unknown key"):
        build_extractor("mobilenet_v2", {"mobilenet_v2": {"depth": 3}})


def test_resnet18_loads_a_local_state_dict(crater_images, tmp_path):
    import torch
    import torchvision

    with pytest.raises(MarsdiffError, match="resnet18 needs features.resnet18.weights"):
        build_extractor("resnet18", {"device": "cpu"})
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    extractor = build_extractor("resnet18", {"device": "cpu", "resnet18": {"weights": str(weights)}})
    features = extractor.extract(crater_images[:3])
    assert features.shape == (3, 512)
    np.testing.assert_array_equal(features, extractor.extract(crater_images[:3]))


def test_clip_from_a_local_checkpoint(crater_images, tmp_path):
    import open_clip
    import torch

    config = tmp_path / "marsdiff-tiny-clip.json"
    config.write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("marsdiff-tiny-clip", pretrained=None)
    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    cfg = {"device": "cpu", "clip": {"model": "marsdiff-tiny-clip", "pretrained": str(checkpoint), "model_config": str(config)}}
    extractor = build_extractor("clip", cfg)
    features = extractor.extract(crater_images[:4])
    assert features.shape == (4, 24)
    with torch.inference_mode():
        expected = model.eval().encode_image(torch.stack([extractor.preprocess(Image.fromarray(np.repeat(crater_images[0][..., None], 3, 2)))]))
    np.testing.assert_allclose(features[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(MarsdiffError, match="cannot load CLIP"):
        build_extractor("clip", {"device": "cpu", "clip": {"model": "ViT-B-32", "pretrained": "no-such-tag"}})
    with pytest.raises(MarsdiffError, match="missing.pt: features.clip.pretrained checkpoint file not found"):
        build_extractor("clip", {"device": "cpu", "clip": {"model": "ViT-B-32", "pretrained": str(tmp_path / "missing.pt")}})


def test_cache_reuses_unchanged_images_and_recomputes_changed_ones(default_reference, tmp_path):
    out, manifest = default_reference
    images = tmp_path / "images"
    images.mkdir()
    for path in manifest["path"][:12]:
        shutil.copy(out / path, images)
    cfg = {**SMALL, "cache_dir": str(tmp_path / "cache")}
    target = tmp_path / "features" / "mobilenet_v2.npy"
    first = extract_image_set(images, "mobilenet_v2", cfg, target, progress=False)
    assert (first.hits, first.misses) == (0, 12)
    features_before, ids = read_feature_set(target)
    assert len(ids) == 12 and features_before.shape == (12, 256)

    second = extract_image_set(images, "mobilenet_v2", cfg, target, progress=False)
    assert (second.hits, second.misses) == (12, 0)
    np.testing.assert_array_equal(read_feature_set(target)[0], features_before)

    changed = sorted(images.iterdir())[3]
    Image.fromarray(255 - np.asarray(Image.open(changed))).save(changed)
    third = extract_image_set(images, "mobilenet_v2", cfg, target, progress=False)
    assert (third.hits, third.misses) == (11, 1)
    features_after, _ = read_feature_set(target)
    unchanged = np.arange(12) != 3
    np.testing.assert_array_equal(features_after[unchanged], features_before[unchanged])
    assert not np.allclose(features_after[3], features_before[3])

    other_config = {**cfg, "mobilenet_v2": {"input_size": 64, "layer": 10, "grid": 1}}
    _, stats = extract_with_cache(sorted(images.iterdir()), build_extractor("mobilenet_v2", other_config), cfg["cache_dir"], progress=False)
    assert stats.misses == 12, "a different extractor config must not reuse cached vectors"


def test_feature_set_errors(tmp_path):
    with pytest.raises(MarsdiffError, match="feature file not found"):
        read_feature_set(tmp_path / "none.npy")
    write_feature_set(np.zeros((3, 4), np.float32), ["a", "b", "c"], tmp_path / "f.npy")
    (tmp_path / "f.ids.txt").write_text("a\nb\n")
    with pytest.raises(MarsdiffError, match=r"do not match 2 ids"):
        read_feature_set(tmp_path / "f.npy")
