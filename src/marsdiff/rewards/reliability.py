"""Credit signal-to-noise: how much of an image's credit is the image's, how much its companions'.

An image's leave-one-out credit depends on the image (signal) and on the other images of its
set (noise, for RL: the policy cannot control its companions). Split-half measurement: for each
probe image x of a candidate pool, draw two *disjoint* companion sets A and B of the same size
from the rest of the pool and compute x's credit in ``{x} u A`` and in ``{x} u B`` against the
same reference. Across probes, the correlation r of the two credits is the share of credit
variance that belongs to the image: with credit = s(x) + e(companions), independent e,
``r = var s / (var s + var e)``, so the signal-to-noise ratio is ``snr = r / (1 - r)``.
Reported: Pearson r, Spearman rho, n (probes), snr from Pearson.

A pool of earlier rounds (``reward.pool.rounds``) adds ``pool_size`` companions to every set:
here, with one stand-in pool for both, that is simply a larger companion set (the earlier
rounds come from nearly the same generator), which is what the measurement compares.

The credit of a mix is ``sum_t w_t credit_t / std_t`` (std of the reference-vs-reference
baseline at the set size, as :class:`~marsdiff.rewards.combined.RewardModel` standardises), so
every mix of the measured terms is read off the same draws.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.rewards.combined import RewardModel


def split_half_credits(
    model: RewardModel, candidates: np.ndarray, companions: int, probes: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Raw credit of each term for ``probes`` probe rows in two disjoint companion sets.

    Returns the probe row indices and, per term of ``model``, an array (probes, 2).
    """
    if 2 * companions + 1 > len(candidates):
        raise MarsdiffError(
            f"split-half credit: {len(candidates)} candidate rows cannot hold a probe and two disjoint "
            f"companion sets of {companions}"
        )
    chosen = rng.choice(len(candidates), size=min(probes, len(candidates)), replace=False)
    credits = {name: np.empty((len(chosen), 2)) for name in model.terms}
    for row, probe in enumerate(chosen):
        rest = rng.permutation(np.delete(np.arange(len(candidates)), probe))
        for half, companion_rows in enumerate((rest[:companions], rest[companions:2 * companions])):
            # the probe is row 0 of its set; only its credit is kept
            credit = model.leave_one_out(candidates[np.concatenate([[probe], companion_rows])])
            for name, values in credit.terms.items():
                credits[name][row, half] = values[0]
    return chosen, credits


def agreement(pairs: np.ndarray) -> dict[str, Any]:
    """Pearson r, Spearman rho, n and snr = r / (1 - r) of a (n, 2) array of split-half credits."""
    a, b = pairs[:, 0], pairs[:, 1]
    if len(pairs) < 3 or np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        return {"pearson": None, "spearman": None, "n": int(len(pairs)), "snr": None}
    # imported here, as in validation._spearman: scipy.stats is seconds of start-up for stages
    # that import the validation module without validating
    from scipy import stats

    pearson = float(stats.pearsonr(a, b).statistic)
    spearman = float(stats.spearmanr(a, b).statistic)
    snr = None if pearson >= 1.0 else max(pearson, 0.0) / (1.0 - pearson)
    return {
        "pearson": pearson if math.isfinite(pearson) else None,
        "spearman": spearman if math.isfinite(spearman) else None,
        "n": int(len(pairs)),
        "snr": snr,
    }


def mix_credit(credits: Mapping[str, np.ndarray], weights: Mapping[str, float], std: Mapping[str, float]) -> np.ndarray:
    """Credit of a weighted mix from raw term credits (z-scored terms divided by their baseline std)."""
    total = None
    for name, weight in weights.items():
        if weight == 0.0:
            continue
        part = weight * credits[name] / std.get(name, 1.0)
        total = part if total is None else total + part
    if total is None:
        raise MarsdiffError("split-half credit: a mix needs at least one non-zero weight")
    return total
