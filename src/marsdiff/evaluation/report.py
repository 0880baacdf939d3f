"""Comparison with the best of several knob settings, plain-language verdicts, and table formatting.

The workflow's verdict is **not** made here: it compares each policy with a knob setting frozen
before the test on declared endpoints (:mod:`marsdiff.evaluation.endpoints`). Picking the best
setting per metric on the test set (:func:`compare_to_baseline`) inflates the baseline and, over
many metrics, finds "wins" by chance; it stays a library helper for exploratory use, and the
formatting helpers and :func:`metric_by_model_table` serve the workflow's ``summary.md``.

The question the report answers: does an RL-tuned model cover the real variety of craters better
than the base model with its simplest diversity knobs (sampling noise eta, initial-noise
temperature, class weights), without losing realism?

:func:`compare_to_baseline` takes the metrics table, one model and the names of the knob
settings. For each metric it picks the **best** knob setting by point estimate (each metric
separately, which favours the baseline: the model has to beat the best setting of every metric
on its own), and reports the *improvement* ``model - best`` oriented so that positive = the model
is better. With the bootstrap replicates (``bootstrap.csv``) the improvement gets an interval
from the paired replicate differences (same resampling indices for both models, see
:mod:`.bootstrap`), with the metric's own interval rule. The verdict is "better" / "worse" when
the interval excludes 0 and "no clear difference" otherwise; without replicates it is only the
direction, marked "(no interval)".

:func:`experiment_verdict` turns one comparison into sentences (what improved, what got worse,
how sure), grouped into variety and realism; :func:`summary_markdown` / :func:`write_summary_markdown`
assemble ``results/report/summary.md``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import BIAS_SHIFTED, PERCENTILE, interval
from marsdiff.evaluation.metric import direction_symbol, is_check
from marsdiff.io.atomic import write_text

BETTER = "better"
WORSE = "worse"
UNCLEAR = "no clear difference"
NO_INTERVAL = " (no interval)"
CHECK_PASSES = "check passes"
CHECK_FAILS = "check fails"

#: What each metric speaks to, for the verdict sentences (names without a prefix match are "other").
ASPECTS = {
    "variety": ("recall", "coverage", "vendi", "modes_covered", "KL_", "near_duplicate_pairs"),
    "realism": ("FD_", "KID", "MMD2_rbf", "precision", "density"),
    "memorisation": ("memorisation_",),
    "downstream use": ("tstr_",),
}

COMPARISON_COLUMNS = [
    "metric", "higher_is_better", "model", "value", "ci_low", "ci_high", "best_baseline", "baseline_value",
    "baseline_ci_low", "baseline_ci_high", "improvement", "improvement_ci_low", "improvement_ci_high", "verdict",
]


def aspect_of(metric: str) -> str:
    for aspect, prefixes in ASPECTS.items():
        if any(metric == p or (p.endswith("_") and metric.startswith(p)) for p in prefixes):
            return aspect
    return "other"


def compare_to_baseline(
    table: pd.DataFrame,
    model: str,
    baseline_models: Sequence[str],
    replicates: pd.DataFrame | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per metric: did ``model`` beat the best of ``baseline_models``, by how much, how sure."""
    baseline_models = list(baseline_models)
    if not baseline_models:
        raise MarsdiffError("compare_to_baseline needs at least one baseline model (a noise-knob setting)")
    if model in baseline_models:
        raise MarsdiffError(f"model {model!r} is also listed among its baselines")
    known = set(table["model"])
    missing = [m for m in [model, *baseline_models] if m not in known]
    if missing:
        raise MarsdiffError(f"model(s) {missing} are not in the metrics table (models: {sorted(known)})")

    rows = []
    own = table[table["model"] == model].set_index("metric")
    others = table[table["model"].isin(baseline_models)]
    for metric, row in own.iterrows():
        candidates = others[others["metric"] == metric]
        if candidates.empty or not math.isfinite(row["value"]):
            continue
        if is_check(metric):
            # A check is passed or failed by the model itself: no best knob to compare with.
            rows.append(dict(metric=metric, higher_is_better=bool(row["higher_is_better"]), model=model,
                             value=row["value"], ci_low=row["ci_low"], ci_high=row["ci_high"], best_baseline="",
                             baseline_value=float("nan"), baseline_ci_low=float("nan"),
                             baseline_ci_high=float("nan"), improvement=float("nan"),
                             improvement_ci_low=float("nan"), improvement_ci_high=float("nan"), verdict=""))
            continue
        higher = bool(row["higher_is_better"])
        sign = 1.0 if higher else -1.0
        best = candidates.loc[(sign * candidates["value"]).idxmax()]
        improvement = sign * (row["value"] - best["value"])
        low, high = _difference_interval(
            replicates, model, str(best["model"]), metric, sign, improvement, str(row["interval"]), confidence
        )
        rows.append(
            dict(
                metric=metric,
                higher_is_better=higher,
                model=model,
                value=row["value"],
                ci_low=row["ci_low"],
                ci_high=row["ci_high"],
                best_baseline=best["model"],
                baseline_value=best["value"],
                baseline_ci_low=best["ci_low"],
                baseline_ci_high=best["ci_high"],
                improvement=improvement,
                improvement_ci_low=low,
                improvement_ci_high=high,
                verdict=_verdict(improvement, low, high),
            )
        )
    # Memorisation is a pass/fail check: a larger ratio than the baseline's is not "better".
    if "memorisation_pass" in own.index:
        check = CHECK_PASSES if own.loc["memorisation_pass", "value"] >= 1.0 else CHECK_FAILS
        for row in rows:
            if is_check(row["metric"]):
                row["verdict"] = check
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _difference_interval(
    replicates: pd.DataFrame | None,
    model: str,
    baseline: str,
    metric: str,
    sign: float,
    improvement: float,
    method: str,
    confidence: float,
) -> tuple[float, float]:
    if replicates is None or replicates.empty:
        return float("nan"), float("nan")
    selected = replicates[replicates["metric"] == metric]
    own = selected[selected["model"] == model].set_index("replicate")["value"]
    other = selected[selected["model"] == baseline].set_index("replicate")["value"]
    paired = own.index.intersection(other.index)
    if len(paired) < 10:
        return float("nan"), float("nan")
    differences = sign * (own.loc[paired].to_numpy() - other.loc[paired].to_numpy())
    bounds = interval(improvement, differences, confidence, BIAS_SHIFTED if method == BIAS_SHIFTED else PERCENTILE)
    return bounds.low, bounds.high


def _verdict(improvement: float, low: float, high: float) -> str:
    if math.isfinite(low) and math.isfinite(high):
        if low > 0.0:
            return BETTER
        if high < 0.0:
            return WORSE
        return UNCLEAR
    if improvement > 0.0:
        return BETTER + NO_INTERVAL
    if improvement < 0.0:
        return WORSE + NO_INTERVAL
    return UNCLEAR + NO_INTERVAL


# --------------------------------------------------------------------------------------------
# Plain-language verdicts
# --------------------------------------------------------------------------------------------


def format_number(value: float) -> str:
    """Three significant digits; integers stay integers; NaN as an en dash."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    value = float(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def format_interval(value: float, low: float, high: float) -> str:
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return format_number(value)
    return f"{format_number(value)} [{format_number(low)}, {format_number(high)}]"


def _signed(value: float) -> str:
    text = format_number(value)
    return text if text.startswith("-") or text == "–" else f"+{text}"


def _describe(row: pd.Series) -> str:
    interval_text = ""
    if math.isfinite(row["improvement_ci_low"]) and math.isfinite(row["improvement_ci_high"]):
        interval_text = f" [{_signed(row['improvement_ci_low'])}, {_signed(row['improvement_ci_high'])}]"
    return f"{row['metric']} ({_signed(row['improvement'])}{interval_text} vs {row['best_baseline']})"


def experiment_verdict(comparison: pd.DataFrame, confidence: float = 0.95) -> str:
    """A short paragraph: what improved, what got worse, how sure, and the overall reading."""
    if comparison.empty:
        return "No metric could be compared with the baseline settings."
    model = str(comparison["model"].iloc[0])
    level = f"{round(100 * confidence)} %"
    # Memorisation is a pass/fail check, not a score to push up: it gets its own line.
    scored = comparison[comparison["metric"].map(aspect_of) != "memorisation"]
    better = scored[scored["verdict"] == BETTER]
    worse = scored[scored["verdict"] == WORSE]
    unclear = scored[~scored["verdict"].isin([BETTER, WORSE])]
    lines = [
        f"**{model}** against the best noise-knob setting of each metric "
        f"(improvement = model − best setting, positive = better; {level} paired bootstrap interval):"
    ]
    for aspect in ("variety", "realism", "downstream use", "other"):
        for label, part in (("clearly better", better), ("clearly worse", worse)):
            chosen = part[part["metric"].map(aspect_of) == aspect]
            if not chosen.empty:
                described = "; ".join(_describe(r) for _, r in chosen.iterrows())
                lines.append(f"- {aspect.capitalize()}, {label} on {described}.")
    if not unclear.empty:
        lines.append(
            "- No clear difference (interval includes 0, or no interval) on "
            + ", ".join(unclear["metric"]) + "."
        )
    memorisation = comparison[comparison["metric"] == "memorisation_pass"]
    if not memorisation.empty:
        passed = memorisation["verdict"].iloc[0] == CHECK_PASSES
        ratio = comparison.loc[comparison["metric"] == "memorisation_ratio", "value"]
        ratio_text = f" (ratio {format_number(ratio.iloc[0])})" if not ratio.empty else ""
        outcome = "passes" if passed else "**fails**: images sit closer to train crops than new real crops do"
        lines.append(f"- Memorisation check {outcome}{ratio_text}.")
    lines.append(f"- Overall: {_overall(better, worse)}")
    return "\n".join(lines)


def one_line_verdict(comparison: pd.DataFrame) -> str:
    """The overall sentence of one experiment's comparison (the report's landing page quotes it)."""
    if comparison.empty:
        return "no metric could be compared with the baseline settings."
    scored = comparison[comparison["metric"].map(aspect_of) != "memorisation"]
    line = _overall(scored[scored["verdict"] == BETTER], scored[scored["verdict"] == WORSE])
    memorisation = comparison[comparison["metric"] == "memorisation_pass"]
    if not memorisation.empty and memorisation["verdict"].iloc[0] == CHECK_FAILS:
        line += " Memorisation check **fails**."
    return line


def _overall(better: pd.DataFrame, worse: pd.DataFrame) -> str:
    variety_up = better["metric"].map(aspect_of).eq("variety").sum()
    realism_down = worse["metric"].map(aspect_of).eq("realism").sum()
    if better.empty and worse.empty:
        return "only matches the best knob setting: no metric differs clearly."
    if worse.empty:
        return f"beats the best knob setting on {len(better)} metric(s) ({variety_up} of variety) with no clear loss."
    if better.empty:
        return f"worse than the best knob setting on {len(worse)} metric(s) and better on none."
    return (
        f"a trade-off: better on {len(better)} metric(s) ({variety_up} of variety), worse on {len(worse)} "
        f"({realism_down} of realism)."
    )


# --------------------------------------------------------------------------------------------
# summary.md
# --------------------------------------------------------------------------------------------


def metric_by_model_table(table: pd.DataFrame, models: Sequence[str] | None = None) -> str:
    """Markdown table: one row per metric, one column per model, cells ``value [low, high]``."""
    models = list(models) if models is not None else list(dict.fromkeys(table["model"]))
    metrics = list(dict.fromkeys(table["metric"]))
    cells = {(r.model, r.metric): format_interval(r.value, r.ci_low, r.ci_high) for r in table.itertuples()}
    directions = table.drop_duplicates("metric").set_index("metric")["higher_is_better"]
    lines = [
        "| metric | better | " + " | ".join(_escape(m) for m in models) + " |",
        "|---|:-:|" + "---|" * len(models),
    ]
    for metric in metrics:
        arrow = direction_symbol(metric, bool(directions[metric]))
        row = [cells.get((model, metric), "") for model in models]
        lines.append(f"| {metric} | {arrow} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def comparison_table(comparison: pd.DataFrame) -> str:
    """Markdown table of one comparison: value, best setting, improvement with interval, verdict."""
    lines = [
        "| metric | model | best knob setting | improvement [interval] | verdict |",
        "|---|---|---|---|---|",
    ]
    for _, r in comparison.iterrows():
        if is_check(r["metric"]):
            lines.append(f"| {r['metric']} | {format_interval(r['value'], r['ci_low'], r['ci_high'])} | "
                         f"n/a (a check, not a score) | n/a | {r['verdict']} |")
            continue
        improvement = _signed(r["improvement"])
        if math.isfinite(r["improvement_ci_low"]) and math.isfinite(r["improvement_ci_high"]):
            improvement += f" [{_signed(r['improvement_ci_low'])}, {_signed(r['improvement_ci_high'])}]"
        lines.append(
            f"| {r['metric']} | {format_interval(r['value'], r['ci_low'], r['ci_high'])} | "
            f"{_escape(str(r['best_baseline']))}: {format_number(r['baseline_value'])} | {improvement} | {r['verdict']} |"
        )
    return "\n".join(lines)


def summary_markdown(
    table: pd.DataFrame,
    experiments: Sequence[str],
    baseline_models: Sequence[str],
    replicates: pd.DataFrame | None = None,
    reference_summary: pd.DataFrame | None = None,
    confidence: float = 0.95,
    title: str = "marsdiff evaluation summary",
) -> str:
    """The whole ``summary.md`` text (see :func:`write_summary_markdown`)."""
    level = f"{round(100 * confidence)} %"
    feature_space = ", ".join(sorted(set(table["feature_space"].astype(str)))) if "feature_space" in table else "?"
    compared = {e: compare_to_baseline(table, e, baseline_models, replicates, confidence) for e in experiments}
    parts = [f"# {title}", ""]
    if experiments:
        parts += [
            "## Verdict",
            "",
            f"Each RL policy against the best of the knob settings ({', '.join(f'`{m}`' for m in baseline_models)}) "
            "on each metric; details under *Verdicts* below.",
            "",
            *[f"- **{e}**: {one_line_verdict(compared[e])}" for e in experiments],
            "",
        ]
    parts += [
        f"Generated images against the **held-out** reference crops (never used for training, rewards or RL), "
        f"in {feature_space} feature space. Cells: value [{level} interval]. Intervals of models are percentile "
        "bootstraps over the generated images (the held-out set fixed); metrics that resampling biases "
        "(FD, recall, coverage, Vendi, KL, modes, train-on-synthetic accuracy) use the bootstrap spread centred on "
        "the value. `tstr_*`: a classifier of the size class trained on the model's images (labelled by their "
        "conditioning) and tested on the held-out crops; for `real` trained on equally many real train crops. "
        "`real` = random draws of train crops of the same size scored like a model (interval = middle of the draws): "
        "what real craters score at this N, the yardstick for FD's sample-size bias. "
        "`real (held-out halves)` = MMD² between halves of the held-out set.",
        "",
        "## Metrics",
        "",
        metric_by_model_table(table),
        "",
        "## Verdicts",
        "",
        f"Baseline to beat: the best of {', '.join(f'`{m}`' for m in baseline_models)} on each metric separately.",
        "",
    ]
    for experiment in experiments:
        comparison = compared[experiment]
        parts += [f"### {experiment}", "", experiment_verdict(comparison, confidence), "", comparison_table(comparison), ""]
    if reference_summary is not None and not reference_summary.empty:
        parts += ["## Reference and classifier", "", "| quantity | value | note |", "|---|---|---|"]
        for _, r in reference_summary.iterrows():
            parts.append(f"| {r['quantity']} | {format_interval(r['value'], r['ci_low'], r['ci_high'])} | {r['detail']} |")
        parts.append("")
    return "\n".join(parts)


def write_summary_markdown(
    path: str | os.PathLike,
    table: pd.DataFrame,
    experiments: Sequence[str],
    baseline_models: Sequence[str],
    replicates: pd.DataFrame | None = None,
    reference_summary: pd.DataFrame | None = None,
    confidence: float = 0.95,
    title: str = "marsdiff evaluation summary",
) -> Path:
    """Write ``summary.md``: metric x model table, one verdict and comparison table per experiment."""
    text = summary_markdown(table, experiments, baseline_models, replicates, reference_summary, confidence, title)
    write_text(path, text)
    return Path(path)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
