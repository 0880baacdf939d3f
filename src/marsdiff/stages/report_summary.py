"""The workflow's evaluation stages on files: ``evaluate`` (tables) and ``report_summary`` (summary.md).

``evaluate``: every model's evaluation features against the **held-out** rows of the reference
features at the matched resolution (:func:`marsdiff.stages.evaluate.run_evaluation`); the train rows serve the category
classifier, the memorisation check and the real-vs-real baseline only.
``report_summary``: every RL policy against the frozen knob (chosen on the validation stream
before the test, :mod:`marsdiff.evalset.select`) and against the base model, on every test
stream, by the declared endpoints (:mod:`marsdiff.evaluation.endpoints`): ``comparisons.csv``
(the study's contract), ``summary.md`` (and the same text as HTML for ``snakemake --report``),
the report's ``comparison.csv`` and landing page, plus the brightness-and-contrast table of the
``pixel_statistics`` stage (:mod:`marsdiff.evaluation.pixels`) (:func:`write_report_summary`).
Figures are :mod:`marsdiff.stages.plot_evaluation`.
"""

from __future__ import annotations

import html
import logging
import math
import os
from typing import Any, Mapping, Sequence

import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.evalset.models import BASE, FINAL, FROZEN, KNOB, ROUND, number_text
from marsdiff.evaluation.endpoints import (
    BASE_BASELINE, DESCRIPTIVE, FROZEN_BASELINE, NON_INFERIORITY, PRIMARY, comparison_table, smallest_holm_p,
    verdict_line,
)
from marsdiff.evaluation.report import format_interval, format_number, metric_by_model_table
from marsdiff.evaluation.results import Evaluation

log = logging.getLogger(__name__)

SUMMARY_TITLE = "marsdiff evaluation: RL policies against the frozen knob"


# ---------------------------------------------------------------------------- summary


def roles(models: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(RL policies to judge, the final policies among them: the Holm family), in table order."""
    policies = [m["name"] for m in models if m["kind"] in (FINAL, ROUND)]
    finals = [m["name"] for m in models if m["kind"] == FINAL]
    return policies, finals


def _weights_text(model: Mapping[str, Any]) -> str:
    spec = model.get("class_weights")
    name = model.get("class_weights_name")
    if isinstance(spec, str):
        return spec if spec == name or model["kind"] == BASE else f"{name} ({spec})"
    if isinstance(spec, list):
        return f"{name} ({', '.join(number_text(w) for w in spec)})"
    if isinstance(spec, Mapping):
        return f"{name} ({', '.join(f'{k}: {number_text(v)}' for k, v in spec.items())})"
    return str(name)


def _knob_text(value: Any) -> str:
    return "select_knob" if value is None else number_text(value)


def models_markdown(models: Sequence[Mapping[str, Any]]) -> str:
    """What each column of the tables is: the base model's knob settings, the policies' rounds."""
    lines = ["| model | what it is | eta | initial-noise temperature | class weights |", "|---|---|---|---|---|"]
    for m in models:
        if m["kind"] == FROZEN:
            lines.append(f"| {m['name']} | base model, the frozen knob (chosen on the validation stream) | "
                         f"{_knob_text(m.get('eta'))} | {_knob_text(m.get('noise_scale'))} | {_weights_text(m)} |")
        elif m["kind"] in (BASE, KNOB):
            what = "base model, training-time knobs" if m["kind"] == BASE else "base model, knob setting (descriptive)"
            lines.append(f"| {m['name']} | {what} | {number_text(m['eta'])} | {number_text(m['noise_scale'])} | "
                         f"{_weights_text(m)} |")
        else:
            stage = "final policy" if m["kind"] == FINAL else "policy"
            lines.append(f"| {m['name']} | experiment {m['experiment']}, {stage} of round {int(m['round']):03d} | "
                         "policy | policy | policy |")
    return "\n".join(lines)


def pixel_section(pixels: pd.DataFrame, models: Sequence[Mapping[str, Any]]) -> str:
    """summary.md's brightness-and-contrast section (the pixel_statistics stage's table)."""
    from marsdiff.evaluation.pixels import pixel_statistics_markdown

    return "\n".join([
        "## Brightness and contrast",
        "",
        "Brightness spread is the standard deviation of the image means; contrast is the mean "
        "within-image standard deviation. Both are in grey levels at the matched resolution, with "
        "95 % bootstrap intervals. The difference is from the held-out crops' value.",
        "",
        pixel_statistics_markdown(pixels, [m["name"] for m in models]),
        "",
    ])


def selection_markdown(selection: Mapping[str, Any]) -> str:
    """The frozen knob's section: the rule, the validation set-up and the grid's table."""
    rule, chosen, validation = selection["rule"], selection["chosen"], selection["validation"]
    lines = [
        "## The frozen knob",
        "",
        f"Chosen before any test image was drawn (stage `select_knob`): the base model at every grid point drew "
        f"{validation['images']} images on its own validation seed stream (round {validation['stream_round']}), "
        f"scored with k-NN metrics (k = {validation['k']}) against {validation['train_crops']} crops of the **train** "
        f"split ({format_number(validation['fraction'])} of it, drawn with reference seed {validation['reference_seed']}; "
        f"the held-out crops were never read). Rule: maximise {rule['maximise']} subject to {rule['subject_to']} "
        f"(base: eta {number_text(rule['base']['eta'])}, noise {number_text(rule['base']['noise_scale'])}); ties: "
        f"{rule['ties']}. **Chosen: eta {number_text(chosen['eta'])}, noise temperature "
        f"{number_text(chosen['noise_scale'])}.**",
        "",
        "| eta | noise | precision | recall | density | coverage | eligible | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in selection["table"]:
        lines.append(f"| {number_text(r['eta'])} | {number_text(r['noise_scale'])} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | {'yes' if r['eligible'] else 'no'} | "
                     f"{'**yes**' if r['chosen'] else ''} |")
    return "\n".join(lines)


def _difference_text(r: pd.Series) -> str:
    text = f"{r['difference']:+.3g}"
    if math.isfinite(r["low"]) and math.isfinite(r["high"]):
        text += f" [{r['low']:+.3g}, {r['high']:+.3g}]"
    return text


def _p_text(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.3g}"


def comparison_markdown(table: pd.DataFrame, model: str) -> str:
    """One model's endpoint rows (primary and non-inferiority first), every stream and baseline."""
    rows = table[table["model"] == model]
    order = {PRIMARY: 0, NON_INFERIORITY: 1, DESCRIPTIVE: 2}
    rows = rows.assign(_order=rows["role"].map(order)).sort_values(["_order", "metric", "stream", "baseline"],
                                                                   kind="stable")
    lines = ["| metric | role | stream | baseline | model | baseline value | difference [interval] | p | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        lines.append(f"| {r['metric']} | {r['role']} | {r['stream']} | {r['baseline']} | {format_number(r['value'])} | "
                     f"{format_number(r['baseline_value'])} | {_difference_text(r)} | {_p_text(r['p_value'])} | "
                     f"{_p_text(r['p_holm'])} | {r['verdict']} |")
    return "\n".join(lines)


def verdict_lines(table: pd.DataFrame, policies: Sequence[str], endpoints: Mapping[str, Any]) -> list[str]:
    """One line per policy and stream: against the frozen knob, then against the base model."""
    alpha = float(endpoints["alpha"])
    lines = []
    streams = sorted(set(table["stream"])) if not table.empty else []
    for policy in policies:
        for stream in streams:
            part = table[(table["model"] == policy) & (table["stream"] == stream)]
            against = [verdict_line(part[part["baseline"] == b], b, alpha) for b in (FROZEN_BASELINE, BASE_BASELINE)]
            where = f" (stream {stream})" if len(streams) > 1 else ""
            lines.append(f"- **{policy}**{where}: {against[0]} Against the base model, it {against[1]}")
    return lines


def summary_text(evaluation: Evaluation, models: Sequence[Mapping[str, Any]], confidence: float,
                 n_images: int, steps: int, pixels: pd.DataFrame | None, table: pd.DataFrame | None,
                 selection: Mapping[str, Any] | None, endpoints: Mapping[str, Any], streams: Sequence[int] = (0,)) -> str:
    """summary.md; ``endpoints``: the schema-filled ``evaluation.endpoints``."""
    policies, finals = roles(models)
    alpha = float(endpoints["alpha"])
    margins = ", ".join(f"{m} (margin {format_number(v)})" for m, v in endpoints["non_inferiority"].items())
    level = f"{round(100 * confidence)} %"
    feature_space = ", ".join(sorted(set(evaluation.metrics["feature_space"].astype(str))))
    parts = [f"# {SUMMARY_TITLE}", ""]
    if policies and table is not None:
        parts += [
            "## Verdict",
            "",
            f"Declared endpoints: primary {', '.join(endpoints['primary'])} (paired bootstrap p-values on the same "
            f"seeds, Holm-corrected over primary endpoints x final policies at alpha {alpha:g}, per stream and "
            f"baseline); non-inferiority: {margins or 'none'}; everything else is descriptive. A policy **beats** a "
            "baseline when at least one primary endpoint is better after Holm, none is worse, and every "
            "non-inferiority metric is non-inferior (lower end of the paired interval above -margin).",
            "",
            *verdict_lines(table, policies, endpoints),
            "",
        ]
        replicates = int(evaluation.replicates["replicate"].nunique()) if evaluation.replicates is not None else 0
        floor = smallest_holm_p(len(endpoints["primary"]) * len(finals), replicates)
        if floor >= alpha:
            parts += [f"**Too few bootstrap replicates to decide**: with B = {replicates} the smallest Holm-adjusted "
                      f"p-value of this family is {floor:.3g} ≥ alpha {alpha:g}, so no primary endpoint can be called "
                      "better or worse; raise evaluation.metrics.bootstrap_replicates.", ""]
    elif not policies:
        parts += ["No RL experiment is configured: the tables describe the base model and the frozen knob only.", ""]
    if selection is not None:
        parts += [selection_markdown(selection), ""]
    parts += [
        f"Generated images against the **held-out** reference crops (never used for training, rewards, RL or the "
        f"knob selection), in {feature_space} feature space. Cells: value [{level} interval], stream 0"
        f"{' (the other streams: results/eval/stream<s>/metrics.csv)' if len(streams) > 1 else ''}. Intervals of "
        "models are percentile bootstraps over the generated images (the held-out set fixed); metrics that "
        "resampling biases (FD, recall, coverage, Vendi, KL, modes, train-on-synthetic accuracy) use the bootstrap "
        "spread centred on the value. `tstr_*`: a classifier of the size class trained on the model's images "
        "(labelled by their conditioning) and tested on the held-out crops; for `real` trained on equally many real "
        "train crops. `real` = random draws of train crops of the same size scored like a model (interval = middle "
        "of the draws): what real craters score at this N. `real (held-out halves)` = MMD² between halves of the "
        "held-out set.",
        "",
        "## Metrics",
        "",
        metric_by_model_table(evaluation.metrics),
        "",
    ]
    if policies and table is not None:
        parts += [
            "## Comparisons",
            "",
            f"Difference = model − baseline for ↑ metrics, baseline − model for ↓ ones (positive = the model is "
            f"better); interval: paired image bootstrap at {round(100 * (1 - alpha))} % (same seeds, same resampled "
            "images; bias-shifted metrics re-centred on the observed difference); p: two-sided paired bootstrap "
            "p-value; Holm only within the primary family. Descriptive rows carry no correction: read them as "
            "description, not as findings. Every row is in results/eval/comparisons.csv.",
            "",
        ]
        for policy in policies:
            parts += [f"### {policy}", "", comparison_markdown(table, policy), ""]
        parts += ["### frozen_knob against base (descriptive)", "", comparison_markdown(table, FROZEN_BASELINE), ""]
    reference_summary = evaluation.reference_summary
    if reference_summary is not None and not reference_summary.empty:
        parts += ["## Reference and classifier", "", "| quantity | value | note |", "|---|---|---|"]
        for _, r in reference_summary.iterrows():
            parts.append(f"| {r['quantity']} | {format_interval(r['value'], r['ci_low'], r['ci_high'])} | {r['detail']} |")
        parts.append("")
    return "\n".join([
        "\n".join(parts).rstrip(),
        "",
        *([pixel_section(pixels, models)] if pixels is not None else []),
        "## Models",
        "",
        f"Every model drew the same {n_images} seeds on each of {len(streams)} test stream(s) (image i of each model "
        f"from one random stream, never a training round's nor the validation stream's) with {steps} denoising "
        "steps. The frozen knob is the baseline to beat; the policies choose their own knobs.",
        "",
        models_markdown(models),
        "",
    ])


def markdown_to_html(text: str, title: str) -> str:
    """summary.md as a standalone HTML page (the report shows HTML inline, Markdown only as a download)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    style = (
        "body{font-family:sans-serif;max-width:80em;margin:1em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
        "th,td{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}"
        "th{background:#eee}code{background:#f4f4f4}"
    )
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def landing_page(intro: str, table: pd.DataFrame, policies: Sequence[str], endpoints: Mapping[str, Any]) -> str:
    """The report's landing page (reStructuredText): the workflow's description, then the verdict
    lines by the declared rule and links to the summary and the comparison table."""
    lines = [intro.rstrip(), "", "Verdict", "=======", ""]
    if policies:
        for line in verdict_lines(table, policies, endpoints):
            lines += [line, ""]
        lines.append("Baseline: the frozen knob, chosen on a validation stream against train crops before the test.")
    else:
        lines += ["No RL experiment is configured: the evaluation describes the base model and the frozen knob only.", ""]
    lines += ["", "The metric table with intervals and every comparison: summary.html_; per stream, metric, policy and "
              "baseline: comparison.csv_.", ""]
    return "\n".join(lines)


def write_report_summary(eval_dir: str | os.PathLike, models: Sequence[Mapping[str, Any]],
                         metrics_cfg: Mapping[str, Any], n_images: int, steps: int,
                         summary_md: str | os.PathLike, summary_html: str | os.PathLike,
                         comparison_csv: str | os.PathLike, pixel_csv: str | os.PathLike | None = None,
                         landing_rst: str | os.PathLike | None = None, intro: str = "",
                         stream_dirs: Mapping[int, str | os.PathLike] | None = None,
                         selection_json: str | os.PathLike | None = None,
                         *, endpoints: Mapping[str, Any],
                         comparisons_csv: str | os.PathLike | None = None) -> str:
    """Stage report_summary: comparisons.csv, summary.md, its HTML twin and the report's comparison.csv.

    ``metrics_cfg`` and ``endpoints``: the schema-filled ``evaluation.metrics`` and ``evaluation.endpoints``.

    ``stream_dirs``: stream -> the folder of its metrics.csv and bootstrap.csv (default: stream 0
    in ``eval_dir``); ``selection_json``: select_knob's choice; ``pixel_csv``: the pixel_statistics
    stage's table; ``landing_rst``: the report's landing page (:func:`landing_page`, after ``intro``)."""
    from marsdiff.evaluation.pixels import read_pixel_statistics
    from marsdiff.io.atomic import atomic_path, write_text
    from marsdiff.io.reading import read_json

    stream_dirs = dict(stream_dirs or {0: eval_dir})
    evaluations = {int(s): Evaluation.read(d) for s, d in stream_dirs.items()}
    evaluation = evaluations[min(evaluations)]
    confidence = float(metrics_cfg["confidence"])
    for stream, each in evaluations.items():
        known = set(each.metrics["model"])
        missing = [m["name"] for m in models if m["name"] not in known]
        if missing:
            raise MarsdiffError(f"{stream_dirs[stream]}: model(s) {missing} are not in metrics.csv; re-run the evaluate stage")
    selection = read_json(selection_json, "knob selection", "select_knob", keys=("chosen", "rule", "table")) \
        if selection_json is not None else None
    if selection is not None:
        models = [dict(m, eta=selection["chosen"]["eta"], noise_scale=selection["chosen"]["noise_scale"])
                  if m["kind"] == FROZEN else m for m in models]
    pixels = read_pixel_statistics(pixel_csv) if pixel_csv is not None else None
    policies, finals = roles(models)
    has_frozen = any(m["kind"] == FROZEN for m in models)
    table = comparison_table({s: (e.metrics, e.replicates) for s, e in evaluations.items()}, policies, finals,
                             endpoints) if has_frozen else None
    text = summary_text(evaluation, models, confidence, n_images, steps, pixels, table, selection, endpoints,
                        sorted(evaluations))
    write_text(summary_md, text)
    write_text(summary_html, markdown_to_html(text, SUMMARY_TITLE))
    for path in (comparison_csv, comparisons_csv):
        if path is not None:
            with atomic_path(path) as tmp:
                (table if table is not None else pd.DataFrame()).to_csv(tmp, index=False)
    if landing_rst is not None:
        write_text(landing_rst, landing_page(intro, table if table is not None else pd.DataFrame(), policies, endpoints))
    log.info("summary of %d policies against the frozen knob and the base on %d stream(s): %s", len(policies),
             len(evaluations), summary_md)
    return text
