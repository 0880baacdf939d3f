"""The study summary: paired differences aggregated over training seeds, per arm and endpoint.

Inputs: the evaluation's ``results/eval/comparisons.csv`` (one row per stream, model, baseline
and metric: ``difference`` = model - baseline on the same evaluation seeds, higher is better,
with its image-bootstrap interval ``low``/``high``), each experiment's ``metrics.csv`` (the
round curves, :mod:`marsdiff.stages.plot_experiment`) and the study design
(:func:`marsdiff.study.pairing.study_design`: arm, training seed and control of each experiment).

The protocol (docs/rl.md, "Study"): per arm and endpoint the unit of replication is the training
seed. Each seed's value is its paired difference averaged over the evaluation streams; over the
seeds, the mean, a t-interval and a two-sided one-sample t-test against 0. Holm's correction
runs over the family arms x primary endpoints (arms with at least 2 seeds). Precision (any
``non_inferiority`` metric) is non-inferior when the lower end of its interval over seeds is
above -margin. An arm beats the frozen knob when at least one primary endpoint is better after
Holm, none is worse, and every non-inferiority metric is non-inferior.

Controls: the A/A arm (``control: zero_lr``) against the base (a pipeline check: every interval
must cover 0); each arm against the shuffled-credit control of its mode and algorithm on the
same training seeds (the part of the gain the credit's signal explains); the reward trend over
rounds of every arm and control (drift), the last round's paired improvement, and the policy's
movement in the last round (KLs, plan values) for explaining a null result.

Outputs: ``summary.csv`` (long form, one row per section x arm x comparison x metric),
``seeds.csv`` (the per-seed values behind it) and ``summary.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path
from marsdiff.io.reading import read_csv
from marsdiff.study.pairing import NO_CONTROL, SHUFFLED_CREDIT, ZERO_LR

COMPARISON_COLUMNS = ("stream", "model", "baseline", "metric", "role", "value", "baseline_value", "difference", "low",
                      "high", "p_value", "p_holm", "verdict")
FROZEN_KNOB = "frozen_knob"
BASE = "base"
PRIMARY = "primary"
NON_INFERIORITY = "non_inferiority"
SUMMARY_COLUMNS = ("section", "arm", "comparison", "metric", "seeds", "mean", "sd", "low", "high", "p_value", "p_holm",
                   "verdict", "detail")
#: last-round columns of metrics.csv that show how far the policy moved
MOVEMENT_COLUMNS = ("kl_post_update", "kl_to_base", "approx_kl", "kl")


#: Coverage of the t-intervals over training seeds: the declared protocol's 95 % (docs/rl.md,
#: "Study"), fixed when it was declared, before any run; not a config key.
SEED_INTERVAL_CONFIDENCE = 0.95


@dataclass(frozen=True)
class StudySettings:
    #: family-wise error rate of Holm's correction (``evaluation.endpoints.alpha``)
    alpha: float
    #: non-inferiority margin per metric, difference > -margin (``evaluation.endpoints.non_inferiority``)
    margins: Mapping[str, float]
    #: coverage of the intervals over training seeds
    confidence: float

    @classmethod
    def declared(cls, alpha: float, margins: Mapping[str, float]) -> "StudySettings":
        """The protocol's settings: the evaluation's declared alpha and margins (the study_summary
        params, :func:`marsdiff.study.pairing.study_settings`), intervals at
        :data:`SEED_INTERVAL_CONFIDENCE`."""
        return cls(alpha=float(alpha), margins={k: float(v) for k, v in margins.items()},
                   confidence=SEED_INTERVAL_CONFIDENCE)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN, outside the family):
    the evaluation's own correction, so the study and the per-run report cannot disagree."""
    from marsdiff.evaluation.endpoints import holm as holm_adjusted

    return np.asarray(holm_adjusted(p_values), dtype=float)


def seed_interval(values: Sequence[float], confidence: float) -> dict[str, float]:
    """Mean, sd, t-interval and two-sided one-sample t-test p against 0 over training seeds.

    Fewer than 2 seeds: mean only. Identical values (sd 0): the interval is the point and p is
    0 for a nonzero mean, 1 for zero (a deterministic difference; the t statistic is undefined)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = x.size
    out = {"seeds": float(n), "mean": float(x.mean()) if n else math.nan, "sd": math.nan, "low": math.nan,
           "high": math.nan, "p_value": math.nan}
    if n < 2:
        return out
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    if sd == 0.0:
        p = 0.0 if out["mean"] != 0.0 else 1.0
    else:
        p = float(stats.ttest_1samp(x, 0.0).pvalue)
    out.update(sd=sd, low=out["mean"] - half, high=out["mean"] + half, p_value=p)
    return out


TEXT_COLUMNS = ("stream", "model", "baseline", "metric", "role", "verdict")


def read_comparisons(path: str | os.PathLike) -> pd.DataFrame:
    # Names are text: pandas would read an experiment called "null" or "NA" as a missing value.
    table = read_csv(path, "evaluation comparisons", "evaluate", columns=COMPARISON_COLUMNS,
                     dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
    for column in set(COMPARISON_COLUMNS) - set(TEXT_COLUMNS):
        table[column] = pd.to_numeric(table[column].replace("", np.nan), errors="coerce")
    return table


def seed_differences(comparisons: pd.DataFrame, design: Mapping[str, Mapping[str, Any]],
                     baseline: str) -> pd.DataFrame:
    """One row per (experiment, metric) against ``baseline``: the difference averaged over the
    evaluation streams, and each stream's image-bootstrap interval (text) beside it."""
    rows = []
    for name, row in design.items():
        mine = comparisons[(comparisons["model"].astype(str) == name) & (comparisons["baseline"] == baseline)]
        if mine.empty:
            raise MarsdiffError(f"comparisons.csv has no rows for model {name!r} against {baseline!r}; "
                                "re-run the evaluation with every study experiment (snakemake --forcerun evaluate)")
        for metric, group in mine.groupby("metric", sort=True):
            group = group.sort_values("stream", key=lambda s: s.astype(str))
            boot = "; ".join(f"stream {s}: [{l:.3g}, {h:.3g}]" for s, l, h in
                             zip(group["stream"], group["low"], group["high"]))
            excluded = int(((group["low"] > 0) | (group["high"] < 0)).sum())
            rows.append({"arm": row["arm"], "experiment": name, "seed": int(row["seed"]), "control": row["control"],
                         "baseline": baseline, "metric": metric, "role": str(group["role"].iloc[0]),
                         "streams": int(len(group)), "difference": float(group["difference"].mean()),
                         "bootstrap": boot, "bootstrap_excluding_zero": excluded})
    return pd.DataFrame(rows)


def _row(section: str, arm: str, comparison: str, metric: str, stats_: Mapping[str, float], verdict: str = "",
         detail: str = "") -> dict[str, Any]:
    return {"section": section, "arm": arm, "comparison": comparison, "metric": metric, **{
        k: stats_.get(k, math.nan) for k in ("seeds", "mean", "sd", "low", "high", "p_value")},
        "p_holm": math.nan, "verdict": verdict, "detail": detail}


def _arms(design: Mapping[str, Mapping[str, Any]], control: str) -> dict[str, list[str]]:
    arms: dict[str, list[str]] = {}
    for name in sorted(design):
        if design[name]["control"] == control:
            arms.setdefault(design[name]["arm"], []).append(name)
    return arms


def summarise(comparisons: pd.DataFrame, design: Mapping[str, Mapping[str, Any]],
              metrics: Mapping[str, pd.DataFrame], settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, seeds): the long-form summary table and the per-seed values behind it."""
    conf = settings.confidence
    arms = _arms(design, NO_CONTROL)
    if not arms:
        raise MarsdiffError("the study has no RL arm: every experiment is a control")
    vs_frozen = seed_differences(comparisons, design, FROZEN_KNOB)
    seeds = [vs_frozen]
    rows: list[dict[str, Any]] = []

    def values(frame, arm, metric):
        part = frame[(frame["arm"] == arm) & (frame["metric"] == metric)].sort_values("seed")
        return part, part["difference"].to_numpy(dtype=float)

    primary = sorted(vs_frozen.loc[vs_frozen["role"] == PRIMARY, "metric"].unique())
    non_inferior = sorted(vs_frozen.loc[vs_frozen["role"] == NON_INFERIORITY, "metric"].unique())
    if not primary:
        raise MarsdiffError("comparisons.csv has no primary endpoint (role 'primary'); check evaluation.endpoints")
    # primary endpoints, Holm over arms (>= 2 seeds) x endpoints
    first = len(rows)
    for arm in sorted(arms):
        for metric in primary:
            part, x = values(vs_frozen, arm, metric)
            stats_ = seed_interval(x, conf)
            detail = " | ".join(f"seed {s}: {d:+.3g} ({b})" for s, d, b in
                                zip(part["seed"], part["difference"], part["bootstrap"]))
            rows.append(_row("primary", arm, f"{arm} - {FROZEN_KNOB}", metric, stats_, detail=detail))
    block = rows[first:]
    for row, adjusted in zip(block, holm([r["p_value"] for r in block])):
        row["p_holm"] = adjusted
        if not np.isfinite(adjusted):
            row["verdict"] = f"no test ({int(row['seeds'])} training seed(s); the study needs >= 2)"
        elif adjusted < settings.alpha:
            row["verdict"] = "better" if row["mean"] > 0 else "worse"
        else:
            row["verdict"] = "no difference"
    # precision non-inferiority
    for arm in sorted(arms):
        for metric in non_inferior:
            if metric not in settings.margins:
                raise MarsdiffError(f"non-inferiority metric {metric!r} has no margin "
                                    "(evaluation.endpoints.non_inferiority)")
            margin = float(settings.margins[metric])
            _, x = values(vs_frozen, arm, metric)
            stats_ = seed_interval(x, conf)
            shown = np.isfinite(stats_["low"]) and stats_["low"] > -margin
            rows.append(_row("non_inferiority", arm, f"{arm} - {FROZEN_KNOB}", metric, stats_,
                             "non-inferior" if shown else "not shown non-inferior",
                             f"margin {margin:g}: lower end of the interval over seeds must be above {-margin:g}"))
    # one verdict line per arm
    for arm in sorted(arms):
        mine = [r for r in rows if r["arm"] == arm and r["section"] in ("primary", "non_inferiority")]
        ends = [r for r in mine if r["section"] == "primary"]
        nis = [r for r in mine if r["section"] == "non_inferiority"]
        tested = all(np.isfinite(r["p_holm"]) for r in ends)
        beats = (tested and any(r["verdict"] == "better" for r in ends) and not any(r["verdict"] == "worse" for r in ends)
                 and bool(nis) and all(r["verdict"] == "non-inferior" for r in nis))
        reasons = [f"{r['metric']} {r['verdict']} (mean {r['mean']:+.3g}, p_holm {r['p_holm']:.3g})" for r in ends]
        reasons += [f"{r['metric']} {r['verdict']}" for r in nis] or ["non-inferiority not evaluated"]
        line = (f"{arm} {'beats' if beats else 'does not beat'} the frozen knob on the primary endpoints"
                + ("" if tested else " (too few training seeds to test)"))
        rows.append(_row("verdict", arm, f"{arm} - {FROZEN_KNOB}", "", {"seeds": len(arms[arm])},
                         "beats" if beats else "does not beat", f"{line}: {'; '.join(reasons)}"))
    # A/A against the base: a pipeline check
    aa = {name: design[name] for name in design if design[name]["control"] == ZERO_LR}
    if aa:
        aa_vs_base = seed_differences(comparisons, aa, BASE)
        seeds.append(aa_vs_base)
        for arm in sorted({row["arm"] for row in aa.values()}):
            checked = aa_vs_base[(aa_vs_base["arm"] == arm)
                                 & aa_vs_base["role"].isin([PRIMARY, NON_INFERIORITY])]
            for metric in sorted(checked["metric"].unique()):
                _, x = values(aa_vs_base, arm, metric)
                stats_ = seed_interval(x, conf)
                covers = not np.isfinite(stats_["low"]) or stats_["low"] <= 0 <= stats_["high"]
                rows.append(_row("aa_vs_base", arm, f"{arm} - {BASE}", metric, stats_,
                                 "no difference" if covers else "differs: check the pipeline"))
            everything = aa_vs_base[aa_vs_base["arm"] == arm]
            largest = float(everything["difference"].abs().max())
            rows.append(_row("aa_vs_base", arm, f"{arm} - {BASE}", "all metrics", {"seeds": everything["seed"].nunique()},
                             "identical" if largest == 0 else "", f"largest |difference| over {everything['metric'].nunique()} "
                             f"metrics and {everything['seed'].nunique()} seeds (stream means): {largest:.3g}"))
    # each arm against the shuffled-credit control of its mode and algorithm, seed by seed
    shuffled = _arms(design, SHUFFLED_CREDIT)
    for arm in sorted(arms):
        kind = (design[arms[arm][0]]["mode"], design[arms[arm][0]]["algorithm"])
        for control, members in sorted(shuffled.items()):
            if (design[members[0]]["mode"], design[members[0]]["algorithm"]) != kind:
                continue
            for metric in primary:
                a = vs_frozen[(vs_frozen["arm"] == arm) & (vs_frozen["metric"] == metric)].set_index("seed")["difference"]
                c = vs_frozen[(vs_frozen["arm"] == control) & (vs_frozen["metric"] == metric)].set_index("seed")["difference"]
                common = sorted(set(a.index) & set(c.index))
                x = (a.loc[common] - c.loc[common]).to_numpy(dtype=float)
                rows.append(_row("arm_vs_shuffled", arm, f"{arm} - {control}", metric, seed_interval(x, conf),
                                 detail=f"training seeds {common}: the part of the gain the credit's signal explains"))
    # reward trend over rounds (drift of the controls, learning of the arms) and policy movement
    for arm, members in sorted({**arms, **_arms(design, ZERO_LR), **shuffled}.items()):
        tables = {name: metrics[name] for name in members if name in metrics}
        if not tables:
            continue
        role = design[members[0]]["control"]
        slopes = [_slope(t["round"], t["set_reward"]) for t in tables.values()]
        rows.append(_row("reward_trend", arm, role, "set_reward per round", seed_interval(slopes, conf),
                         detail="least-squares slope of the raw set reward over rounds, per training seed"))
        paired = [t for t in tables.values() if "paired_improvement" in t and t["paired_improvement"].notna().all()]
        if paired and len(paired) == len(tables):
            bases = sorted({str(t["paired_base"].iloc[0]) for t in paired})
            rows.append(_row("reward_trend", arm, role, "paired improvement, last round",
                             seed_interval([t.sort_values("round")["paired_improvement"].iloc[-1] for t in paired], conf),
                             detail=f"set reward minus the A/A base's on the same seeds ({', '.join(bases)})"))
            rows.append(_row("reward_trend", arm, role, "paired improvement per round",
                             seed_interval([_slope(t["round"], t["paired_improvement"]) for t in paired], conf),
                             detail="least-squares slope over rounds, per training seed"))
        last = [t.sort_values("round").iloc[-1] for t in tables.values()]
        columns = [c for c in MOVEMENT_COLUMNS if any(c in r.index and pd.notna(r.get(c)) for r in last)]
        columns += sorted({c for r in last for c in r.index if str(c).startswith("plan/") and pd.notna(r.get(c))})
        for column in columns:
            x = [float(r[column]) for r in last if column in r.index and pd.notna(r[column])]
            rows.append(_row("movement", arm, role, column, seed_interval(x, conf),
                             detail="last round's value, mean over training seeds (interval: t over seeds)"))
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return summary, pd.concat(seeds, ignore_index=True)


def _slope(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if not np.isfinite(value) else f"{value:.3g}"
    return str(value)


def _interval(row: Mapping[str, Any]) -> str:
    return "–" if not np.isfinite(row["low"]) else f"[{row['low']:.3g}, {row['high']:.3g}]"


def summary_markdown(summary: pd.DataFrame, settings: StudySettings) -> str:
    """summary.md: the verdict lines first, then the tables behind them."""
    conf = f"{settings.confidence:.0%}"
    out = ["# Study summary", "",
           f"Paired differences against the frozen knob, one value per training seed (mean over the evaluation "
           f"streams); {conf} t-intervals over seeds, two-sided one-sample t-tests, Holm over arms x primary "
           f"endpoints at alpha {settings.alpha:g}. Image-bootstrap intervals per (seed, stream) beside them.", "",
           "## Verdicts", ""]
    for row in summary[summary["section"] == "verdict"].to_dict("records"):
        out.append(f"- {row['detail']}")
    sections = [
        ("primary", "Primary endpoints (arm - frozen knob)", True),
        ("non_inferiority", "Non-inferiority (arm - frozen knob)", False),
        ("aa_vs_base", "Control: A/A against the base (must not differ)", False),
        ("arm_vs_shuffled", "Control: arm against the shuffled-credit arm (same training seeds)", False),
        ("reward_trend", "Reward over rounds (drift of the controls, learning of the arms)", False),
        ("movement", "Policy movement in the last round", False),
    ]
    for section, title, holm_column in sections:
        part = summary[summary["section"] == section]
        if part.empty:
            continue
        out += ["", f"## {title}", ""]
        header = ["arm", "comparison", "metric", "seeds", "mean", f"{conf} interval over seeds", "p"]
        header += ["p (Holm)"] * holm_column + ["verdict", "detail"]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in part.to_dict("records"):
            cells = [row["arm"], row["comparison"], row["metric"], _fmt(row["seeds"]), _fmt(row["mean"]),
                     _interval(row), _fmt(row["p_value"])]
            cells += [_fmt(row["p_holm"])] * holm_column + [row["verdict"], row["detail"]]
            out.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(out) + "\n"


def write_study_summary(comparisons_csv: str | os.PathLike, design: Mapping[str, Mapping[str, Any]],
                        metrics_csvs: Mapping[str, str | os.PathLike], summary_csv: str | os.PathLike,
                        seeds_csv: str | os.PathLike, summary_md: str | os.PathLike,
                        settings: StudySettings) -> pd.DataFrame:
    comparisons = read_comparisons(comparisons_csv)
    metrics = {name: read_csv(path, "experiment metrics", "plot_experiment", columns=("round", "set_reward"))
               for name, path in metrics_csvs.items()}
    summary, seeds = summarise(comparisons, design, metrics, settings)
    with atomic_path(summary_csv) as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(seeds_csv) as tmp:
        seeds.to_csv(tmp, index=False)
    with atomic_path(summary_md) as tmp:
        with open(tmp, "w") as handle:
            handle.write(summary_markdown(summary, settings))
    return summary
