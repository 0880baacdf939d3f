"""The frozen knob: the baseline setting chosen before the test stream is read, its validation
crops, scores and rule (stage ``select_knob``: :mod:`marsdiff.stages.select_knob`).

The stage draws ``evaluation.baseline.images`` images at every point of the factorial grid
``evaluation.baseline.grid`` (eta x initial-noise temperature) on the **validation stream**
(round :data:`~marsdiff.evalset.models.VALIDATION_ROUND`: no test stream and no RL round shares
its seeds) and featurises them exactly like the evaluation images.

Each setting is scored with k-NN precision, recall, density and coverage (k =
``evaluation.baseline.k``, :func:`score_setting`) against the **validation part of the train
split**: ``validation_fraction`` of the train crops, a draw fixed by ``reference.seed``
(:func:`validation_ids`). Only those rows of the reference feature file are read as numbers
(:func:`marsdiff.stages.select_knob.read_rows`): the held-out rows are never touched, so the
choice cannot depend on them (tests/test_evaluation_select.py poisons them with NaN).

The rule (:func:`choose`): among the settings whose precision is at least the base setting's
(eta = ``sampling.eta``, noise 1) minus ``precision_margin``, the one with the highest
``maximise`` metric; ties go to the setting closest to the base (Euclidean distance in
(eta, noise_scale)), then to grid order. :data:`TABLE_COLUMNS` are the columns of the stage's
``knob_selection.csv``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from marsdiff.errors import MarsdiffError

TABLE_COLUMNS = ("eta", "noise_scale", "precision", "recall", "density", "coverage", "eligible", "chosen")
#: Stream salt of the validation draw of train crops (any fixed number; keeps it apart from the split's own draw).
VALIDATION_SALT = 20261203


def validation_ids(train_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The validation part of the train split: ``round(fraction x n)`` ids (at least 2), a draw
    seeded by ``seed`` over the sorted ids, so it does not depend on the manifest's row order."""
    ordered = sorted(str(i) for i in train_ids)
    if len(ordered) < 2:
        raise MarsdiffError(f"the train split has {len(ordered)} crop(s): the knob selection needs at least 2")
    count = min(len(ordered), max(2, int(round(float(fraction) * len(ordered)))))
    rng = np.random.default_rng([int(seed), VALIDATION_SALT])
    chosen = np.sort(rng.choice(len(ordered), size=count, replace=False))
    return [ordered[i] for i in chosen]


def score_setting(generated: np.ndarray, validation: np.ndarray, k: int) -> dict[str, float]:
    """k-NN precision, recall, density and coverage of one setting's images against the validation crops."""
    from marsdiff.evaluation.manifold import precision_recall_density_coverage

    if len(validation) <= k:
        raise MarsdiffError(
            f"the validation part of the train split has {len(validation)} crops, need more than "
            f"evaluation.baseline.k = {k} (raise evaluation.baseline.validation_fraction or lower the k)"
        )
    return precision_recall_density_coverage(generated, validation, k, k)


def choose(table: Sequence[Mapping[str, Any]], base: Mapping[str, float], maximise: str,
           margin: float) -> tuple[int, list[bool]]:
    """Index of the chosen row and each row's eligibility under the declared rule (module docstring)."""
    rows = list(table)
    is_base = [math.isclose(r["eta"], base["eta"]) and math.isclose(r["noise_scale"], base["noise_scale"]) for r in rows]
    if sum(is_base) != 1:
        raise MarsdiffError("evaluation.baseline.grid must hold the base setting exactly once")
    floor = rows[is_base.index(True)]["precision"] - float(margin)
    # A tiny tolerance: the base setting itself is always eligible despite rounding.
    eligible = [bool(r["precision"] >= floor - 1e-12) for r in rows]

    def key(n: int) -> tuple[float, float, int]:
        r = rows[n]
        distance = math.hypot(r["eta"] - base["eta"], r["noise_scale"] - base["noise_scale"])
        return (-float(r[maximise]), distance, n)

    chosen = min((n for n in range(len(rows)) if eligible[n]), key=key)
    return chosen, eligible
