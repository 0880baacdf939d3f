"""Brightness spread and contrast against the held-out crops (marsdiff.evaluation.pixels): the
numbers, their intervals, the image path (grey, BOX-downsampled), the stage's file
(marsdiff.stages.pixel_statistics) and the summary's table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.pixels import (
    PIXEL_TABLE_COLUMNS,
    grey_images,
    pixel_statistics_markdown,
    pixel_statistics_table,
    read_pixel_statistics,
)
from marsdiff.stages.pixel_statistics import run_pixel_statistics


def images_with(means, spread_inside, size=8, seed=0):
    """uint8 images whose means are ``means`` (up to rounding) and a given within-image spread."""
    rng = np.random.default_rng(seed)
    out = []
    for m in means:
        noise = rng.standard_normal((size, size))
        noise = (noise - noise.mean()) / noise.std() * spread_inside
        out.append(np.clip(np.round(m + noise), 0, 255).astype(np.uint8))
    return np.stack(out)


def test_table_values_and_relative_difference():
    heldout = images_with(np.linspace(80, 180, 40), 30.0, seed=1)
    flat = images_with(np.full(30, 128.0), 15.0, seed=2)
    table = pixel_statistics_table({"flat": flat, "real-like": heldout[::2]}, heldout, replicates=200, seed=0, confidence=0.95)
    assert list(table.columns) == PIXEL_TABLE_COLUMNS and len(table) == 4
    rows = table.set_index(["model", "statistic"])
    h = heldout.reshape(40, -1).astype(float)
    assert rows.loc[("flat", "brightness_spread"), "heldout_value"] == pytest.approx(h.mean(axis=1).std())
    assert rows.loc[("flat", "contrast"), "heldout_value"] == pytest.approx(h.std(axis=1).mean())
    f = flat.reshape(30, -1).astype(float)
    assert rows.loc[("flat", "brightness_spread"), "value"] == pytest.approx(f.mean(axis=1).std())
    # a set drawn at one brightness has almost no spread and half the contrast: large negative differences
    assert rows.loc[("flat", "brightness_spread"), "relative_difference"] < -0.95
    assert rows.loc[("flat", "contrast"), "relative_difference"] == pytest.approx(-0.5, abs=0.05)
    assert abs(rows.loc[("real-like", "brightness_spread"), "relative_difference"]) < 0.1
    for r in table.itertuples():
        assert r.ci_low <= r.value <= r.ci_high and r.heldout_ci_low <= r.heldout_value <= r.heldout_ci_high
    # seeded: the same call gives the same intervals; another seed other ones
    again = pixel_statistics_table({"flat": flat, "real-like": heldout[::2]}, heldout, replicates=200, seed=0, confidence=0.95)
    pd.testing.assert_frame_equal(table, again)
    other = pixel_statistics_table({"flat": flat, "real-like": heldout[::2]}, heldout, replicates=200, seed=1, confidence=0.95)
    assert not np.allclose(other["ci_low"], table["ci_low"])


def test_too_few_images_are_user_errors():
    heldout = images_with([100, 150, 200], 20.0)
    with pytest.raises(MarsdiffError, match="model 'one': pixel statistics need at least 2 images"):
        pixel_statistics_table({"one": heldout[:1]}, heldout, replicates=10, seed=0, confidence=0.95)
    with pytest.raises(MarsdiffError, match="at least 2 held-out crops"):
        pixel_statistics_table({"m": heldout}, heldout[:1], replicates=10, seed=0, confidence=0.95)


def test_grey_images_take_the_box_path_and_refuse_smaller_images(tmp_path):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[:16, :, 0] = 200  # red top half
    rgb[16:, :, 2] = 100  # blue bottom half
    Image.fromarray(rgb).save(tmp_path / "big.png")
    grey = grey_images([tmp_path / "big.png"], 8)
    assert grey.shape == (1, 8, 8) and grey.dtype == np.uint8
    expected = np.asarray(Image.fromarray(rgb).convert("L").resize((8, 8), Image.BOX))
    np.testing.assert_array_equal(grey[0], expected)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(MarsdiffError, match=r"small.png: image is 4x4 px, below the matched resolution 8 px"):
        grey_images([tmp_path / "small.png"], 8)


def write_model(root, name, images):
    folder = root / name / "images"
    folder.mkdir(parents=True)
    rows = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"e{i:05d}.png")
        rows.append({"image_id": f"e{i:05d}", "file": f"e{i:05d}.png", "image_index": i})
    pd.DataFrame(rows).to_csv(root / name / "samples.csv", index=False)
    return root / name / "samples.csv", folder


def write_reference(root, heldout, train):
    (root / "images").mkdir(parents=True)
    rows = []
    for split, images in (("heldout", heldout), ("train", train)):
        for i, image in enumerate(images):
            name = f"{split}_{i}"
            Image.fromarray(image).save(root / "images" / f"{name}.png")
            rows.append({"id": name, "path": f"images/{name}.png", "split": split, "size_cat": "s1"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_stage_writes_the_table_and_the_summary_shows_it(tmp_path):
    heldout = images_with(np.linspace(60, 200, 12), 25.0, seed=3)
    manifest = write_reference(tmp_path / "reference", heldout, images_with([90, 120, 150], 20.0, seed=4))
    # a model drawing at 2x the matched size: its images come down by the BOX filter first
    big = np.repeat(np.repeat(images_with(np.linspace(100, 160, 6), 10.0, seed=5), 2, axis=1), 2, axis=2)
    sets = {"base": write_model(tmp_path / "samples", "base", images_with(np.linspace(90, 170, 6), 20.0, seed=6)),
            "rl": write_model(tmp_path / "samples", "rl", big)}
    out = tmp_path / "eval" / "pixel_statistics.csv"
    out.parent.mkdir()
    run_pixel_statistics(manifest, sets, 8, filled_section("evaluation.metrics", {"bootstrap_replicates": 50, "seed": 3}), out)
    table = read_pixel_statistics(out)
    rows = table.set_index(["model", "statistic"])
    assert rows.loc[("rl", "brightness_spread"), "n_images"] == 6
    small = big.reshape(6, 8, 2, 8, 2).astype(float).mean(axis=(2, 4))
    assert rows.loc[("rl", "brightness_spread"), "value"] == pytest.approx(small.reshape(6, -1).mean(axis=1).std(), abs=0.3)
    assert rows.loc[("base", "contrast"), "heldout_value"] == pytest.approx(heldout.reshape(12, -1).std(axis=1).mean())
    text = pixel_statistics_markdown(table, ["base", "rl"])
    lines = text.splitlines()
    assert lines[2].startswith("| held-out crops |") and lines[3].startswith("| base |") and lines[4].startswith("| rl |")
    assert lines[3].count("%") == 2
    with pytest.raises(MarsdiffError, match="no brightness_spread row for model 'knob'"):
        pixel_statistics_markdown(table, ["base", "knob"])


def test_stage_refuses_a_reference_at_another_size_and_a_broken_table(tmp_path):
    manifest = write_reference(tmp_path / "reference", images_with([50, 100, 150], 9.0, size=16), [])
    sets = {"base": write_model(tmp_path / "samples", "base", images_with([100, 120], 9.0, size=16))}
    out = tmp_path / "pixel_statistics.csv"
    with pytest.raises(MarsdiffError, match=r"held-out crops are 16x16 px, not the matched 8 px"):
        run_pixel_statistics(manifest, sets, 8, filled_section("evaluation.metrics"), out)
    assert not out.exists()
    out.write_text("model,statistic\nbase,contrast\n")
    with pytest.raises(MarsdiffError, match="no 'value' column"):
        read_pixel_statistics(out)
