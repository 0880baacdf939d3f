"""The base-model check (marsdiff.evalset.assess): pixel statistics, the yardstick's rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from marsdiff.evalset.assess import HeldoutYardstick, format_table
from marsdiff.evaluation.pixels import (
    CHECK_CONFIDENCE, CHECK_REPLICATES, CHECK_SEED, brightness_and_contrast, brightness_and_contrast_intervals as intervals_at,
)
from marsdiff.evaluation.manifold import precision_recall_density_coverage
from marsdiff.errors import MarsdiffError
from marsdiff.io.feature_files import write_feature_set


def brightness_and_contrast_intervals(images):
    """The intervals at the base-model check's protocol, as pixel_statistics computes them."""
    return intervals_at(images, CHECK_SEED, CHECK_REPLICATES, CHECK_CONFIDENCE)


def test_brightness_spread_and_contrast_are_the_std_of_means_and_the_mean_std():
    flat = np.full((4, 4), 10, dtype=np.uint8)
    checker = np.indices((4, 4)).sum(axis=0) % 2 * 100  # values 0 and 100: std 50, mean 50
    images = np.stack([flat, flat + 20, checker.astype(np.uint8)])
    brightness, contrast = brightness_and_contrast(images)
    assert brightness == pytest.approx(np.std([10.0, 30.0, 50.0]))
    assert contrast == pytest.approx(50.0 / 3)


def test_pixel_intervals_bracket_the_value_and_narrow_with_more_images():
    rng = np.random.default_rng(2)

    def draw(n):  # image means ~ N(128, 30), within-image std about 20
        means = rng.normal(128, 30, size=n)
        return np.clip(means[:, None, None] + rng.normal(0, 20, size=(n, 8, 8)), 0, 255).astype(np.uint8)

    small, large = draw(40), draw(640)
    for images in (small, large):
        brightness, contrast = brightness_and_contrast(images)
        ci = brightness_and_contrast_intervals(images)
        assert ci["brightness_spread_ci"][0] < brightness < ci["brightness_spread_ci"][1]
        assert ci["contrast_ci"][0] < contrast < ci["contrast_ci"][1]
    width = lambda ci: ci[1] - ci[0]
    ci_small, ci_large = brightness_and_contrast_intervals(small), brightness_and_contrast_intervals(large)
    assert width(ci_large["brightness_spread_ci"]) < 0.5 * width(ci_small["brightness_spread_ci"])
    assert ci_small == brightness_and_contrast_intervals(small)  # seeded
    # identical images: no spread in any resample
    same = brightness_and_contrast_intervals(np.full((10, 4, 4), 7, dtype=np.uint8))
    assert same["brightness_spread_ci"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert same["contrast_ci"] == pytest.approx([0.0, 0.0], abs=1e-9)


@pytest.fixture()
def reference(tmp_path):
    """20 held-out and 30 train crops: features on two clusters, pixels of known brightness."""
    rng = np.random.default_rng(0)
    rows, features, ids = ["id,path,split,size_cat"], [], []
    (tmp_path / "images").mkdir()
    for i in range(50):
        split = "heldout" if i < 20 else "train"
        image_id = f"c{i:03d}"
        Image.fromarray(np.full((8, 8), 40 + 3 * i, dtype=np.uint8)).save(tmp_path / "images" / f"{image_id}.png")
        rows.append(f"{image_id},images/{image_id}.png,{split},s1")
        features.append(rng.normal(size=4) + (5.0 if i % 2 else 0.0))
        ids.append(image_id)
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    write_feature_set(np.array(features), ids, tmp_path / "features.npy")
    return tmp_path / "manifest.csv", tmp_path / "features.npy", np.array(features)


def test_a_row_scores_against_the_heldout_split_only(reference):
    manifest, features_path, features = reference
    yardstick = HeldoutYardstick(manifest, features_path, k=5)
    pixels = np.zeros((10, 8, 8), dtype=np.uint8)
    row = yardstick.row("near the first cluster", features[20:40:2], pixels)
    expected = precision_recall_density_coverage(features[20:40:2], features[:20], 5, 5)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value)
    assert row["recall"] < 0.6 < row["precision"]  # one of the two clusters: precise, half recalled
    # the held-out crops' own images: MMD^2 about 0 and no memorisation
    own = yardstick.row("held-out", features[:20], pixels)
    assert abs(own["mmd2"]) < 0.05 and own["coverage"] == 1.0
    assert row["brightness_spread"] == 0.0 and row["contrast"] == 0.0


def test_real_rows_are_train_draws_and_the_heldout_pixels(reference):
    manifest, features_path, _ = reference
    rows = HeldoutYardstick(manifest, features_path, k=5).real_rows(images=12, draws=2, seed=0)
    assert [r["set"] for r in rows] == ["real train crops, draw 1", "real train crops, draw 2", "held-out crops (the target)"]
    assert rows[-1]["brightness_spread"] == pytest.approx(np.std(40 + 3 * np.arange(20)))
    assert rows[0]["precision"] > 0.8 and rows[0]["memorisation_ratio"] is None
    table = format_table(rows)
    assert table.count("\n") == 4 and "held-out crops (the target)" in table
    low, high = rows[-1]["brightness_spread_ci"]
    assert low < rows[-1]["brightness_spread"] < high
    assert f"{rows[-1]['brightness_spread']:.1f} [{low:.1f}, {high:.1f}]" in table.splitlines()[-1]


def test_too_few_images_for_k_is_an_error(reference):
    manifest, features_path, features = reference
    yardstick = HeldoutYardstick(manifest, features_path, k=5)
    with pytest.raises(MarsdiffError, match="need more than k = 5"):
        yardstick.row("tiny", features[:4], np.zeros((4, 8, 8), dtype=np.uint8))
