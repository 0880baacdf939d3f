"""The frozen knob (marsdiff.evalset.select; stage marsdiff.stages.select_knob): the validation
draw of train crops, the declared rule, and a selection that never depends on the held-out crops
(poisoned with NaN, it runs and chooses the same)."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marsdiff.config import load_config
from marsdiff.errors import MarsdiffError
from marsdiff.evalset.models import VALIDATION_ROUND, EVALUATION_ROUND, check_evaluation, selection_settings, stream_round
from marsdiff.evalset.select import choose, validation_ids
from marsdiff.io.feature_files import write_feature_set
from marsdiff.stages.select_knob import select_knob


def row(eta, noise, precision, recall):
    return {"eta": eta, "noise_scale": noise, "precision": precision, "recall": recall, "density": 1.0, "coverage": 0.5}


BASE = {"eta": 1.0, "noise_scale": 1.0}


def test_rule_maximises_recall_among_settings_within_the_precision_margin():
    table = [row(1.0, 1.0, 0.80, 0.30), row(0.5, 1.0, 0.78, 0.40), row(0.0, 1.0, 0.60, 0.90), row(1.0, 1.15, 0.76, 0.45)]
    chosen, eligible = choose(table, BASE, "recall", 0.03)
    assert eligible == [True, True, False, False], "0.76 is below 0.80 - 0.03; 0.60 far below"
    assert chosen == 1
    # a wider margin admits the higher recall
    assert choose(table, BASE, "recall", 0.05)[0] == 3


def test_rule_ties_go_to_the_setting_closest_to_the_base():
    table = [row(0.0, 1.0, 0.80, 0.50), row(0.75, 1.0, 0.80, 0.50), row(1.0, 1.0, 0.80, 0.40), row(0.5, 1.15, 0.9, 0.5)]
    assert choose(table, BASE, "recall", 0.03)[0] == 1


def test_the_base_setting_must_be_in_the_grid():
    with pytest.raises(MarsdiffError, match="base setting"):
        choose([row(0.5, 1.0, 0.8, 0.5)], BASE, "recall", 0.03)


def test_validation_ids_are_a_seeded_subset_of_train_independent_of_order():
    ids = [f"c{i:03d}" for i in range(40)]
    chosen = validation_ids(ids, 0.5, seed=0)
    assert len(chosen) == 20 and set(chosen) <= set(ids)
    assert validation_ids(list(reversed(ids)), 0.5, seed=0) == chosen
    assert validation_ids(ids, 0.5, seed=1) != chosen


def test_validation_stream_and_test_streams_never_share_a_round_with_each_other_or_training():
    rounds = [stream_round(s) for s in range(100)]
    assert rounds[0] == EVALUATION_ROUND and len(set(rounds)) == 100
    assert VALIDATION_ROUND not in rounds and 1001 not in rounds, "1001 is the exported datasets' round"
    assert min(rounds + [VALIDATION_ROUND]) > 998


def test_default_selection_settings_are_the_protocols_grid():
    settings = selection_settings(load_config())
    assert [(p["eta"], p["noise_scale"]) for p in settings["grid"]] == [
        (e, t) for e in (0.0, 0.5, 0.75, 1.0) for t in (1.0, 1.15)]
    assert settings["maximise"] == "recall" and settings["precision_margin"] == 0.03
    assert settings["base"] == {"eta": 1.0, "noise_scale": 1.0}


@pytest.mark.parametrize("change, message", [
    ({"grid": {"eta": [0.0, 0.5]}}, "must hold the base setting"),
    ({"images": 5}, "evaluation.baseline.images = 5 must be larger than evaluation.baseline.k = 5"),
])
def test_bad_selection_settings_are_refused_naming_the_key(change, message):
    cfg = load_config(overrides={"evaluation": {"baseline": change}})
    with pytest.raises(MarsdiffError, match=message):
        check_evaluation(cfg)


# ---------------------------------------------------------------------------- the stage itself


def reference_files(tmp: Path, poison_heldout: bool) -> tuple[Path, Path]:
    """A manifest of 30 train and 10 held-out crops and their 4-D features (held-out rows NaN if asked)."""
    rng = np.random.default_rng(0)
    ids = [f"c{i:03d}" for i in range(40)]
    split = ["train"] * 30 + ["heldout"] * 10
    manifest = tmp / "manifest.csv"
    pd.DataFrame({"id": ids, "path": [f"images/{i}.png" for i in ids], "size_cat": "s0", "split": split,
                  "lighting_cat": "l0"}).to_csv(manifest, index=False)
    features = rng.normal(size=(40, 4)) * 0.05 + 0.5
    if poison_heldout:
        features[30:] = np.nan

    class Named:
        name, dim = "pixels", 4

        def cache_key(self):
            return "pixels"

    write_feature_set(features, ids, tmp / "reference.npy", extractor=Named())
    return manifest, tmp / "reference.npy"


def pixel_features(paths):
    """Mean, spread and two quantiles of each image's grey levels: enough to tell knob settings apart."""
    from marsdiff.data.images import load_image

    images = [load_image(p, mode="L").astype(np.float64) / 255.0 for p in paths]
    return np.array([[x.mean(), x.std(), np.quantile(x, 0.1), np.quantile(x, 0.9)] for x in images])


def run_selection(tmp: Path, poison: bool, monkeypatch) -> dict:
    from tiny_models import tiny_pixel_backend

    tmp.mkdir()
    manifest, features = reference_files(tmp, poison)
    settings = {
        "grid": [{"eta": e, "noise_scale": t} for e in (0.0, 1.0) for t in (1.0, 1.15)],
        "images": 8, "steps": 2, "validation_fraction": 0.5, "maximise": "recall", "precision_margin": 0.03,
        "base": {"eta": 1.0, "noise_scale": 1.0}, "k": 3, "seed": 0, "class_weights": "uniform",
    }
    opened = []
    real_open = builtins.open

    def watching_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    try:
        result = select_knob(settings, {}, {"batch_size": 4, "device": "cpu"}, {}, "pixels", 16, manifest, features,
                             reference_seed=0, out_json=tmp / "selection.json", out_csv=tmp / "selection.csv",
                             backend=tiny_pixel_backend(), featurise=pixel_features)
    finally:
        monkeypatch.setattr(builtins, "open", real_open)
    assert not any("images/c03" in path for path in opened), "a held-out crop's image was opened"
    return result


def test_selection_never_reads_the_heldout_crops(tmp_path, monkeypatch, one_torch_thread):
    clean = run_selection(tmp_path / "clean", False, monkeypatch)
    poisoned = run_selection(tmp_path / "poisoned", True, monkeypatch)
    assert poisoned["chosen"] == clean["chosen"]
    assert poisoned["table"] == clean["table"], "held-out values changed a validation score"
    assert all(np.isfinite([r[m] for r in clean["table"] for m in ("precision", "recall", "coverage")]))
    assert clean["validation"]["train_crops"] == 15
    written = json.loads((tmp_path / "clean" / "selection.json").read_text())
    assert written["chosen"] == clean["chosen"] and len(written["table"]) == 4
    table = pd.read_csv(tmp_path / "clean" / "selection.csv")
    assert table["chosen"].sum() == 1 and table.loc[table["chosen"], "eligible"].all()


def test_selection_refuses_damaged_validation_features(tmp_path, monkeypatch, one_torch_thread):
    from marsdiff.stages.select_knob import validation_reference

    manifest, features = reference_files(tmp_path, False)
    values = np.load(features)
    values[:30] = np.nan  # every train row
    ids = (tmp_path / "reference.ids.txt").read_text().split()
    write_feature_set(values, ids, features)
    with pytest.raises(MarsdiffError, match="NaN or inf in the validation crops"):
        validation_reference(manifest, features, None, 0.5, 0)
