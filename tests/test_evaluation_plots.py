"""Every evaluation plot writes a non-empty PNG of the expected pixel size; bad inputs are one-line errors."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.evaluation import plots

#: The schema's evaluation.plots defaults, as the plot_evaluation stage passes them.
PLOTS = filled_section("evaluation.plots")
TSNE = {"seed": PLOTS["seed"], "perplexity": PLOTS["tsne_perplexity"], "max_iter": PLOTS["tsne_max_iter"]}


def check_png(path, width_inches, height_inches, dpi=plots.DPI):
    assert path.is_file() and path.stat().st_size > 5000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert abs(image.size[0] - width_inches * dpi) <= 1 and abs(image.size[1] - height_inches * dpi) <= 1
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5  # something was drawn


def test_tsne_of_reference_and_models(tmp_path):
    rng = np.random.default_rng(0)
    sets = {"held-out": rng.normal(size=(20, 8)), "base": rng.normal(size=(12, 8)), "tuned": rng.normal(1, 1, (12, 8))}
    path = plots.plot_tsne(sets, tmp_path / "tsne.png", **{**TSNE, "max_iter": 250})
    check_png(path, 7.0, 6.0)
    with pytest.raises(MarsdiffError, match="reference set 'real' is not among"):
        plots.plot_tsne(sets, tmp_path / "x.png", reference="real", **TSNE)


def test_reward_curves_per_experiment(tmp_path):
    curves = pd.DataFrame({"experiment": ["mmd"] * 3 + ["vendi"] * 3, "round": [0, 1, 2] * 2,
                           "reward_mean": [0.1, 0.3, 0.4, 0.1, 0.2, 0.2], "reward_std": [0.05] * 6})
    check_png(plots.plot_reward_curves(curves, tmp_path / "curves.png"), 7.0, 4.5)
    with pytest.raises(MarsdiffError, match="lacks column"):
        plots.plot_reward_curves(curves.drop(columns="reward_std"), tmp_path / "x.png")


def test_category_coverage_bars(tmp_path):
    rows = [dict(model=m, column=c, category=k, coverage=v, ci_low=v - 0.1, ci_high=min(1, v + 0.1), n_heldout=10)
            for m, v in (("base", 0.5), ("rl", 0.8)) for c in ("size_cat", "lighting_cat") for k in ("a", "b", "c")]
    path = plots.plot_category_coverage(pd.DataFrame(rows), tmp_path / "coverage.png")
    check_png(path, max(6.0, 3.5 * 2 + 0.4 * 2), 5.2)
    with pytest.raises(MarsdiffError, match="no per-category coverage rows"):
        plots.plot_category_coverage(pd.DataFrame(rows)[0:0], tmp_path / "x.png")


def test_sample_grid_grey_and_colour(tmp_path):
    rng = np.random.default_rng(1)
    images = {"base": rng.integers(0, 256, (6, 16, 16), dtype=np.uint8),
              "rl": rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)}
    path = plots.plot_sample_grid(images, tmp_path / "grid.png", n_columns=8)  # 5 columns: the smaller set
    check_png(path, 1.1 * 5 + 1.6, 1.1 * 2 + 0.8)
    with pytest.raises(MarsdiffError, match="must be uint8"):
        plots.plot_sample_grid({"base": np.zeros((3, 8, 8))}, tmp_path / "x.png", n_columns=PLOTS["grid_columns"])


def test_sample_grid_with_a_real_row_and_class_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = {"base": rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)}
    real = ("held-out crops", rng.integers(0, 256, (3, 16, 16), dtype=np.uint8), ["s1_4-10px", "s2_10-13px", "s3_13-79px"])
    path = plots.plot_sample_grid(images, tmp_path / "grid.png", n_columns=4, real=real,
                                  labels={"base": ["s1_4-10px"] * 4})
    check_png(path, 1.1 * 4 + 1.6, (1.1 + 0.2) * 2 + 0.8)  # the real row on top of the model's


def test_categories_come_in_their_natural_order():
    from marsdiff.data.category_order import category_sort_key

    names = ["s10_80-99px", "s2_10-13px", "s1_4-10px", "bright", "medium", "dark", "other"]
    assert sorted(names, key=category_sort_key) == [
        "s1_4-10px", "s2_10-13px", "s10_80-99px", "dark", "medium", "bright", "other"]
    assert sorted(["high", "low", "medium"], key=category_sort_key) == ["low", "medium", "high"]


def test_most_novel_and_most_redundant_images(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (9, 16, 16), dtype=np.uint8)
    path = plots.plot_extremes_by_credit(images, rng.normal(size=9), tmp_path / "extremes.png", n=3, ids=list("abcdefghi"))
    check_png(path, 1.3 * 3 + 1.8, 2 * 1.3 + 1.2)
    with pytest.raises(MarsdiffError, match="8 credits for 9 images"):
        plots.plot_extremes_by_credit(images, np.zeros(8), tmp_path / "x.png", n=PLOTS["extremes"])


def test_metric_intervals_forest_plot(tmp_path):
    table = pd.DataFrame([dict(model=m, metric=k, value=v, ci_low=v - 0.1, ci_high=v + 0.1, higher_is_better=k != "FD")
                          for m, v in (("base", 0.4), ("rl", 0.6)) for k in ("FD", "coverage", "recall", "vendi")])
    path = plots.plot_metric_intervals(table, tmp_path / "metrics.png")
    height = max(1.6, 0.35 * 2 + 0.9)
    check_png(path, 3.2 * 3 + 1.5, height * 2 + 0.6)


def test_placed_points_land_on_their_fitted_twins_and_between_close_pairs():
    fitted = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    embedding = np.array([[1.0, 1.0], [5.0, 1.0], [1.0, 5.0], [5.0, 5.0]])
    placed = plots.place_points(np.array([[10.0, 0.0], [5.0, 0.0], [0.1, 0.0]]), fitted, embedding, neighbours=4)
    assert placed[0] == pytest.approx([5.0, 1.0]), "an exact copy lands on its twin"
    assert placed[1][0] == pytest.approx(3.0), "equidistant from two: halfway between them"
    assert 1.0 < placed[1][1] < 2.0, "the two farther points pull a little, the near pair dominates"
    assert np.linalg.norm(placed[2] - [1.0, 1.0]) < 0.01, "the nearest dominates, far points barely count"


def test_tsne_fits_on_the_named_sets_only(tmp_path, monkeypatch):
    from sklearn import manifold

    rng = np.random.default_rng(0)
    reference, base = rng.normal(size=(30, 8)), rng.normal(size=(20, 8))
    policy = base + rng.normal(scale=1e-3, size=base.shape)  # same-seed near-copies
    fitted_sizes = []
    original = manifold.TSNE.fit_transform

    def recording(self, X, *args, **kwargs):
        fitted_sizes.append(len(X))
        return original(self, X, *args, **kwargs)

    monkeypatch.setattr(manifold.TSNE, "fit_transform", recording)
    path = plots.plot_tsne({"held-out": reference, "base": base, "policy": policy}, tmp_path / "tsne.png",
                           reference="held-out", fit=["held-out", "base"], **{**TSNE, "max_iter": 250})
    assert fitted_sizes == [50], "the policy's near-copies are placed, not fitted"
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(MarsdiffError, match="must be among the fitted sets"):
        plots.plot_tsne({"held-out": reference, "base": base}, tmp_path / "x.png", reference="held-out", fit=["base"], **TSNE)
