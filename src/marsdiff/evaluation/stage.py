"""The workflow's evaluation stages on files: ``evaluate`` (tables) and ``report_summary`` (summary.md).

``evaluate``: every model's evaluation features against the **held-out** rows of the reference
features at the matched resolution (:func:`marsdiff.evaluation.run.run_evaluation`); the train rows serve the category
classifier, the memorisation check and the real-vs-real baseline only.
``report_summary``: the comparison of every RL policy with the best noise-knob setting of each
metric, and the brightness-and-contrast table of the ``pixel_statistics`` stage
(:mod:`marsdiff.evaluation.pixels`), written as ``summary.md`` (and the same text as HTML for
``snakemake --report``) plus ``comparison.csv`` (:func:`write_report_summary`). Figures are
:mod:`marsdiff.evaluation.figures`.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Any, Mapping, Sequence

import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.evalset.models import BASE, FINAL, KNOB, ROUND, number_text
from marsdiff.evaluation.report import COMPARISON_COLUMNS, compare_to_baseline, summary_markdown
from marsdiff.evaluation.results import Evaluation
from marsdiff.evaluation.settings import EvaluationSettings
# The evaluate stage itself lives in marsdiff.evaluation.run, apart from the summary code, so that
# its code version does not follow the pixel statistics this module's summary reads.
from marsdiff.evaluation.run import evaluation_settings, load_generated, load_reference, run_evaluation  # noqa: F401

log = logging.getLogger(__name__)

SUMMARY_TITLE = "marsdiff evaluation: RL policies against the noise knobs"


# ---------------------------------------------------------------------------- summary


def roles(models: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(RL policies to judge, baseline settings of the base model), in table order."""
    policies = [m["name"] for m in models if m["kind"] in (FINAL, ROUND)]
    baselines = [m["name"] for m in models if m["kind"] in (BASE, KNOB)]
    return policies, baselines


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


def models_markdown(models: Sequence[Mapping[str, Any]]) -> str:
    """What each column of the tables is: the base model's knob settings, the policies' rounds."""
    lines = ["| model | what it is | eta | initial-noise temperature | class weights |", "|---|---|---|---|---|"]
    for m in models:
        if m["kind"] in (BASE, KNOB):
            what = "base model, training-time knobs" if m["kind"] == BASE else "base model, knob setting"
            lines.append(f"| {m['name']} | {what} | {number_text(m['eta'])} | {number_text(m['noise_scale'])} | "
                         f"{_weights_text(m)} |")
        else:
            stage = "final policy" if m["kind"] == FINAL else "policy"
            lines.append(f"| {m['name']} | experiment {m['experiment']}, {stage} of round {int(m['round']):03d} | "
                         "policy | policy | policy |")
    return "\n".join(lines)


def comparisons(evaluation: Evaluation, policies: Sequence[str], baselines: Sequence[str],
                confidence: float) -> pd.DataFrame:
    frames = [compare_to_baseline(evaluation.metrics, p, baselines, evaluation.replicates, confidence) for p in policies]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)


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


def summary_text(evaluation: Evaluation, models: Sequence[Mapping[str, Any]], confidence: float,
                 n_images: int, steps: int, pixels: pd.DataFrame | None = None) -> str:
    policies, baselines = roles(models)
    if not baselines:
        raise MarsdiffError("the evaluation has no base-model setting to compare the policies with")
    text = summary_markdown(
        evaluation.metrics, policies, baselines, evaluation.replicates, evaluation.reference_summary, confidence,
        title=SUMMARY_TITLE,
    )
    if not policies:
        text += "\nNo RL experiment is configured: the table compares the base model's knob settings only.\n"
    return "\n".join([
        text.rstrip(),
        "",
        *([pixel_section(pixels, models)] if pixels is not None else []),
        "## Models",
        "",
        f"Every model drew the same {n_images} seeds (image i of each model from one random stream, never a "
        f"training round's) with {steps} denoising steps. The knob settings are the baseline to beat; the "
        "policies choose their own knobs.",
        "",
        models_markdown(models),
        "",
    ])


def markdown_to_html(text: str, title: str) -> str:
    """summary.md as a standalone HTML page (the report shows HTML inline, Markdown only as a download)."""
    try:
        from markdown_it import MarkdownIt

        body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    except ImportError:  # markdown-it-py comes with transformers' CLI; without it the text is still readable
        body = f"<pre>{html.escape(text)}</pre>"
    style = (
        "body{font-family:sans-serif;max-width:80em;margin:1em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
        "th,td{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}"
        "th{background:#eee}code{background:#f4f4f4}"
    )
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def landing_page(intro: str, table: pd.DataFrame, policies: Sequence[str]) -> str:
    """The report's landing page (reStructuredText): the workflow's description, then one verdict
    line per experiment and links to the summary and the comparison table."""
    from marsdiff.evaluation.report import one_line_verdict

    lines = [intro.rstrip(), "", "Verdict", "=======", ""]
    if policies:
        for policy in policies:
            lines += [f"- **{policy}**: {one_line_verdict(table[table['model'] == policy])}", ""]
        lines.append("Baseline: the best knob setting of each metric.")
    else:
        lines += ["No RL experiment is configured: the evaluation compares the base model's knob settings only.", ""]
    lines += ["The metric table with intervals and every comparison: summary.html_; per metric and policy: "
              "comparison.csv_.", ""]
    return "\n".join(lines)


def write_report_summary(eval_dir: str | os.PathLike, models: Sequence[Mapping[str, Any]],
                         metrics_cfg: Mapping[str, Any] | None, n_images: int, steps: int,
                         summary_md: str | os.PathLike, summary_html: str | os.PathLike,
                         comparison_csv: str | os.PathLike, pixel_csv: str | os.PathLike | None = None,
                         landing_rst: str | os.PathLike | None = None, intro: str = "") -> str:
    """Stage report_summary: summary.md, its HTML twin and comparison.csv (all policies vs the knobs).

    ``pixel_csv``: the pixel_statistics stage's table, shown as the brightness-and-contrast section.
    ``landing_rst``: the report's landing page (:func:`landing_page`, after ``intro``)."""
    from marsdiff.evaluation.pixels import read_pixel_statistics
    from marsdiff.io.atomic import atomic_path, write_text

    evaluation = Evaluation.read(eval_dir)
    confidence = EvaluationSettings.from_config(dict(metrics_cfg or {})).confidence
    known = set(evaluation.metrics["model"])
    missing = [m["name"] for m in models if m["name"] not in known]
    if missing:
        raise MarsdiffError(f"{eval_dir}: model(s) {missing} are not in metrics.csv; re-run the evaluate stage")
    pixels = read_pixel_statistics(pixel_csv) if pixel_csv is not None else None
    text = summary_text(evaluation, models, confidence, n_images, steps, pixels)
    policies, baselines = roles(models)
    table = comparisons(evaluation, policies, baselines, confidence)
    write_text(summary_md, text)
    write_text(summary_html, markdown_to_html(text, SUMMARY_TITLE))
    with atomic_path(comparison_csv) as tmp:
        table.to_csv(tmp, index=False)
    if landing_rst is not None:
        write_text(landing_rst, landing_page(intro, table, policies))
    log.info("summary of %d policies against %d knob settings: %s", len(policies), len(baselines), summary_md)
    return text
