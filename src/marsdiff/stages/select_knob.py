"""Stage select_knob: the frozen knob, chosen on the validation stream before any test image is drawn.

One job loads the base model and the feature extractor once, then for every point of the
factorial grid ``evaluation.baseline.grid`` (eta x initial-noise temperature) draws
``evaluation.baseline.images`` images on the **validation stream** (round
:data:`~marsdiff.evalset.models.VALIDATION_ROUND`), writes them as PNG and featurises them
exactly like the evaluation images (:func:`marsdiff.rewards.round_scoring.round_features`, the
reward's extractor at the matched size). The validation crops are read by
:func:`validation_reference`: only the rows of the validation part of the train split
(:func:`marsdiff.evalset.select.validation_ids`) are read as numbers (:func:`read_rows`), so the
held-out rows are never touched (tests/test_evaluation_select.py poisons them with NaN). The
scores and the rule are :mod:`marsdiff.evalset.select`'s. Output: ``knob_selection.json`` (rule,
chosen setting, the whole table) and ``knob_selection.csv`` (the table, shown in the report).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from marsdiff.evalset.select import TABLE_COLUMNS, choose, score_setting, validation_ids

log = logging.getLogger(__name__)


def read_rows(npy_path: str | os.PathLike, wanted: Sequence[str], extractor: str) -> np.ndarray:
    """The feature rows of ``wanted`` ids (float64, in that order), checked like every feature
    set, except that only the wanted rows must be finite: the other rows' values are never read."""
    from marsdiff.io.feature_files import read_feature_set

    rows, _ = read_feature_set(npy_path, extractor=extractor, rows=wanted, rows_name="the validation crops")
    return np.asarray(rows, dtype=np.float64)


def validation_reference(manifest: str | os.PathLike, features: str | os.PathLike, extractor: str,
                         fraction: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """(features, ids) of the validation part of the train split; held-out rows are never read."""
    from marsdiff.data.manifest import read_manifest

    table = read_manifest(manifest)
    train = table.loc[table["split"].astype(str) == "train", "id"].astype(str).tolist()
    ids = validation_ids(train, fraction, seed)
    return read_rows(features, ids, extractor), ids


def select_knob(
    settings: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    sampling: Mapping[str, Any],
    features_cfg: Mapping[str, Any],
    extractor_name: str,
    resolution: int,
    manifest: str | os.PathLike,
    reference_features: str | os.PathLike,
    reference_seed: int,
    out_json: str | os.PathLike,
    out_csv: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    backend: Any = None,
    featurise: Callable[[list[Path]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Stage select_knob: draw, featurise and score every grid point, apply the rule, write JSON + CSV.

    ``settings``: :func:`marsdiff.evalset.models.selection_settings`. ``backend``: an already
    loaded one (tests), else loaded from ``model_cfg``. ``featurise``: image paths -> features
    (tests); else the evaluation images' path, the extractor ``extractor_name`` of
    ``features_cfg`` at ``resolution`` through the feature cache.
    """
    import pandas as pd

    from marsdiff.diffusion.plan import FixedGeneration
    from marsdiff.evalset.generate import class_weights, draw_images
    from marsdiff.evalset.models import VALIDATION_ROUND
    from marsdiff.io.atomic import atomic_path, write_json
    from marsdiff.rewards.round_scoring import round_features

    started = time.perf_counter()
    # The validation crops first: a bad split or damaged features stop the job before any image.
    validation, validation_ids_ = validation_reference(
        manifest, reference_features, extractor_name, settings["validation_fraction"], reference_seed)
    if backend is None:
        from marsdiff.diffusion.loading import load_backend

        device = str(sampling["device"])
        backend = load_backend(model_cfg, model_dir=model_dir, device=device) if model_dir else load_backend(
            model_cfg, device=device)
    if featurise is None:
        from marsdiff.features.registry import build_extractor

        extractor = build_extractor(extractor_name, dict(features_cfg))

        def featurise(paths: list[Path]) -> np.ndarray:
            return round_features(paths, extractor, features_cfg["cache_dir"], int(resolution))[0]
    weights = class_weights(settings["class_weights"], backend, "sampling.class_distribution")
    table = []
    with tempfile.TemporaryDirectory(prefix="marsdiff-select-") as scratch:
        for n, point in enumerate(settings["grid"]):
            folder = Path(scratch) / f"setting{n}"
            folder.mkdir()
            generation = FixedGeneration(backend.conditions(), weights,
                                         {"eta": point["eta"], "noise_scale": point["noise_scale"]})
            rows = draw_images(backend, generation, sampling, settings["images"], settings["seed"], settings["steps"],
                               folder, VALIDATION_ROUND, f"eta {point['eta']:g}, noise {point['noise_scale']:g}")
            paths = [folder / r["file"] for r in sorted(rows, key=lambda r: r["image_index"])]
            generated = featurise(paths)
            scores = score_setting(np.asarray(generated, dtype=np.float64), validation, int(settings["k"]))
            table.append({"eta": float(point["eta"]), "noise_scale": float(point["noise_scale"]), **scores})
            log.info("eta %g, noise %g: %s", point["eta"], point["noise_scale"],
                     ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    chosen, eligible = choose(table, settings["base"], settings["maximise"], settings["precision_margin"])
    for n, row in enumerate(table):
        row["eligible"] = eligible[n]
        row["chosen"] = n == chosen
    result = {
        "rule": {
            "maximise": settings["maximise"],
            "subject_to": f"precision >= base precision - {settings['precision_margin']:g}",
            "precision_margin": settings["precision_margin"],
            "base": dict(settings["base"]),
            "ties": "closest to the base (Euclidean in eta, noise_scale), then grid order",
        },
        "chosen": {"eta": table[chosen]["eta"], "noise_scale": table[chosen]["noise_scale"]},
        "validation": {"stream_round": VALIDATION_ROUND, "seed": settings["seed"], "images": settings["images"],
                       "steps": settings["steps"], "k": settings["k"], "train_crops": len(validation_ids_),
                       "fraction": settings["validation_fraction"], "reference_seed": int(reference_seed)},
        "table": table,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out_json, result)
    with atomic_path(out_csv) as tmp:
        pd.DataFrame(table, columns=list(TABLE_COLUMNS)).to_csv(tmp, index=False)
    log.info("frozen knob: eta %g, noise %g (%s %.3f) of %d settings in %.0f s", result["chosen"]["eta"],
             result["chosen"]["noise_scale"], settings["maximise"], table[chosen][settings["maximise"]], len(table),
             result["seconds"])
    return result
