"""Declared endpoints: each policy against the frozen knob and the base model, and the verdict rule.

Owns ``results/eval/comparisons.csv`` (the study's machine-readable contract): one row per
``(stream, model, baseline, metric)`` with the columns :data:`COMPARISON_COLUMNS`.

* ``baseline`` is ``frozen_knob`` (the knob setting chosen on the validation stream before the
  test, :mod:`marsdiff.evalset.select`) or ``base``. Compared models: every RL policy (final and
  every-k-th round) against both, and the frozen knob against the base (a descriptive row set).
* ``difference`` is oriented so that positive = the model is better: ``model - baseline`` for a
  higher-is-better metric, ``baseline - model`` for a lower-is-better one (FD, KID, MMD², KL,
  near-duplicate pairs). ``value`` and ``baseline_value`` are the metrics as measured (not signed).
* ``low, high``: the paired image-bootstrap interval of the difference at ``1 - alpha``. Both
  models drew the same seeds and the bootstrap resamples the same image indices in replicate b
  (:mod:`.bootstrap`), so replicate b's difference is a paired resample. Metrics whose resamples
  are biased (coverage, recall, ...: the ``bias-shifted percentile`` rule of metrics.csv) have the
  replicate differences re-centred on the observed difference first.
* ``p_value``: the two-sided paired bootstrap p-value of "no difference" from the same (re-centred)
  replicate differences, ``min(1, 2 min((1 + #{d_b <= 0}) / (B + 1), (1 + #{d_b >= 0}) / (B + 1)))``.
* ``role``: ``primary`` (``evaluation.endpoints.primary``), ``non_inferiority``
  (``evaluation.endpoints.non_inferiority``, metric -> margin) or ``descriptive`` (the rest).
* ``p_holm``: Holm's step-down adjustment over one family: the primary endpoints x the final
  policies, per (stream, baseline). Empty for other rows (round policies and the frozen knob's
  own row are outside the family: they are descriptive).
* ``verdict``: primary: ``better`` / ``worse`` when ``p_holm < alpha`` (by the sign of the
  difference), else ``no clear difference``; non-inferiority: ``non-inferior`` when ``low >
  -margin``, else ``not shown non-inferior``; descriptive (and primary rows outside the family):
  ``better`` / ``worse`` / ``no clear difference`` by whether the interval excludes 0, without
  any correction.

Resolution: B replicates cannot give a p-value below 2 / (B + 1), so a family of m tests needs
m x 2 / (B + 1) < alpha (:func:`smallest_holm_p`); the summary says so when it does not hold.

The rule (study protocol, docs/evaluation.md): a policy **beats** a baseline on a stream when at
least one primary endpoint is better after Holm, none is worse after Holm, and every
non-inferiority metric is non-inferior (:func:`beats`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import BIAS_SHIFTED
from marsdiff.evaluation.metric import is_check

COMPARISON_COLUMNS = [
    "stream", "model", "baseline", "metric", "role", "value", "baseline_value", "difference", "low", "high",
    "p_value", "p_holm", "verdict",
]
PRIMARY, NON_INFERIORITY, DESCRIPTIVE = "primary", "non_inferiority", "descriptive"
BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"
NON_INFERIOR, NOT_NON_INFERIOR = "non-inferior", "not shown non-inferior"
FROZEN_BASELINE, BASE_BASELINE = "frozen_knob", "base"
#: Fewer paired replicates than this give no interval and no p-value.
MIN_REPLICATES = 10


def paired_difference(own: np.ndarray, other: np.ndarray, difference: float, method: str,
                      alpha: float) -> tuple[float, float, float]:
    """(low, high, p) of the oriented paired difference from the two models' replicates
    (already multiplied by the orientation sign): see the module docstring."""
    d = np.asarray(own, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < MIN_REPLICATES or not math.isfinite(difference):
        return float("nan"), float("nan"), float("nan")
    if method == BIAS_SHIFTED:
        d = d - np.median(d) + difference
    low, high = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    below = (1 + np.count_nonzero(d <= 0.0)) / (len(d) + 1)
    above = (1 + np.count_nonzero(d >= 0.0)) / (len(d) + 1)
    return float(low), float(high), float(min(1.0, 2.0 * min(below, above)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order; NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    running = 0.0
    for rank, index in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out.tolist()


def role_of(metric: str, endpoints: Mapping[str, Any]) -> str:
    if metric in endpoints["primary"]:
        return PRIMARY
    if metric in endpoints["non_inferiority"]:
        return NON_INFERIORITY
    return DESCRIPTIVE


def _interval_verdict(low: float, high: float, difference: float) -> str:
    if math.isfinite(low) and math.isfinite(high):
        return BETTER if low > 0.0 else WORSE if high < 0.0 else UNCLEAR
    return UNCLEAR


def compare_stream(stream: int, metrics: pd.DataFrame, replicates: pd.DataFrame | None,
                   pairs: Sequence[tuple[str, str]], endpoints: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of one stream: every (model, baseline) pair on every scored metric (checks are left out)."""
    alpha = float(endpoints["alpha"])
    known = set(metrics["model"])
    missing = sorted({m for pair in pairs for m in pair} - known)
    if missing:
        raise MarsdiffError(f"stream {stream}: model(s) {missing} are not in metrics.csv; re-run the evaluate stage")
    names = set(metrics["metric"])
    declared = [*endpoints["primary"], *endpoints["non_inferiority"]]
    absent = [m for m in declared if m not in names]
    if absent:
        raise MarsdiffError(f"evaluation.endpoints: {absent[0]!r} is not a metric the evaluation computes "
                            f"(choose from {', '.join(sorted(n for n in names if not is_check(n)))})")
    table = metrics.set_index(["model", "metric"])
    reps = {}
    if replicates is not None and not replicates.empty:
        for (model, metric), part in replicates.groupby(["model", "metric"]):
            reps[(model, metric)] = part.set_index("replicate")["value"]
    rows = []
    for model, baseline in pairs:
        for metric in dict.fromkeys(metrics["metric"]):
            if is_check(metric) or (model, metric) not in table.index or (baseline, metric) not in table.index:
                continue
            own, other = table.loc[(model, metric)], table.loc[(baseline, metric)]
            sign = 1.0 if bool(own["higher_is_better"]) else -1.0
            difference = sign * (float(own["value"]) - float(other["value"]))
            low = high = p = float("nan")
            if (model, metric) in reps and (baseline, metric) in reps:
                a, b = reps[(model, metric)], reps[(baseline, metric)]
                paired = a.index.intersection(b.index)
                low, high, p = paired_difference(sign * a.loc[paired].to_numpy(), sign * b.loc[paired].to_numpy(),
                                                 difference, str(own["interval"]), alpha)
            rows.append(dict(stream=int(stream), model=model, baseline=baseline, metric=metric,
                             role=role_of(metric, endpoints), value=float(own["value"]),
                             baseline_value=float(other["value"]), difference=difference, low=low, high=high,
                             p_value=p, p_holm=float("nan"), verdict=""))
    return rows


def comparison_table(streams: Mapping[int, tuple[pd.DataFrame, pd.DataFrame | None]],
                     policies: Sequence[str], family: Sequence[str], endpoints: Mapping[str, Any],
                     frozen: str = FROZEN_BASELINE, base: str = BASE_BASELINE) -> pd.DataFrame:
    """comparisons.csv: ``streams`` maps a stream to its (metrics, bootstrap replicates) tables;
    ``policies`` every RL policy compared; ``family`` the final policies of the Holm family."""
    pairs = [(p, frozen) for p in policies] + [(p, base) for p in policies] + [(frozen, base)]
    rows = []
    for stream in sorted(streams):
        metrics, replicates = streams[stream]
        rows += compare_stream(stream, metrics, replicates, pairs, endpoints)
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    if table.empty:
        return table
    alpha = float(endpoints["alpha"])
    margins = dict(endpoints["non_inferiority"])
    in_family = (table["role"] == PRIMARY) & table["model"].isin(list(family))
    for _, index in table[in_family].groupby(["stream", "baseline"]).groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p_value"].tolist())
    verdicts = []
    for n, r in table.iterrows():
        if r["role"] == PRIMARY and in_family[n]:
            significant = math.isfinite(r["p_holm"]) and r["p_holm"] < alpha
            verdicts.append((BETTER if r["difference"] > 0 else WORSE) if significant else UNCLEAR)
        elif r["role"] == NON_INFERIORITY:
            ok = math.isfinite(r["low"]) and r["low"] > -float(margins[r["metric"]])
            verdicts.append(NON_INFERIOR if ok else NOT_NON_INFERIOR)
        else:
            verdicts.append(_interval_verdict(r["low"], r["high"], r["difference"]))
    table["verdict"] = verdicts
    return table


def smallest_holm_p(family_size: int, replicates: int) -> float:
    """The smallest Holm-adjusted p-value B bootstrap replicates can give in a family of m tests:
    m x 2 / (B + 1). At or above alpha, no primary endpoint can be called better or worse."""
    return min(1.0, int(family_size) * 2.0 / (int(replicates) + 1)) if replicates > 0 else 1.0


def beats(rows: pd.DataFrame) -> bool:
    """The protocol's rule on one (stream, model, baseline): a primary endpoint better after Holm,
    none worse after Holm, every non-inferiority metric non-inferior."""
    primary = rows[rows["role"] == PRIMARY]
    non_inferiority = rows[rows["role"] == NON_INFERIORITY]
    return bool((primary["verdict"] == BETTER).any() and not (primary["verdict"] == WORSE).any()
                and (non_inferiority["verdict"] == NON_INFERIOR).all())


def verdict_line(rows: pd.DataFrame, baseline: str, alpha: float) -> str:
    """One sentence for one (stream, model, baseline): beats or not, and why, by the declared rule."""
    if rows.empty:
        return f"no comparison with {baseline}."
    primary = rows[rows["role"] == PRIMARY]
    non_inferiority = rows[rows["role"] == NON_INFERIORITY]
    better = primary.loc[primary["verdict"] == BETTER, "metric"].tolist()
    worse = primary.loc[primary["verdict"] == WORSE, "metric"].tolist()
    failed = non_inferiority.loc[non_inferiority["verdict"] != NON_INFERIOR, "metric"].tolist()
    if beats(rows):
        return (f"**beats {baseline}**: better on {', '.join(better)} (Holm, alpha {alpha:g}), no primary endpoint "
                f"worse, {', '.join(non_inferiority['metric']) or 'nothing'} non-inferior.")
    reasons = []
    if not better:
        reasons.append("no primary endpoint better after Holm")
    if worse:
        reasons.append(f"worse on {', '.join(worse)}")
    if failed:
        reasons.append(f"{', '.join(failed)} not shown non-inferior")
    return f"does not beat {baseline}: {'; '.join(reasons)}."
