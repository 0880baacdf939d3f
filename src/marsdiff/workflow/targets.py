"""The files each stage's target asks for: what ``rule all`` (and ``study``, ``export_datasets``)
request of a plan.

Every round of an experiment is requested in ascending order: Snakemake walks long round chains
without recursion then (asking for the last round only hit Python's recursion limit).
"""

from __future__ import annotations

from pathlib import Path

from marsdiff.workflow.paths import Layout
from marsdiff.workflow.plan import Plan

#: The tables evaluate writes per stream.
EVAL_TABLES = ("metrics.csv", "bootstrap.csv", "category_coverage.csv", "category_shares.csv", "reference.csv")
#: Figures of plot_evaluation beside the novel / redundant images per credit model.
EVAL_FIGURES = ("tsne", "sample_grid", "category_coverage", "metric_intervals")
#: Report captions (paths relative to workflow/rules/) and labels of the figures.
FIGURE_CAPTIONS = {
    "tsne": ("../report/eval_tsne.rst", "t-SNE"),
    "sample_grid": ("../report/eval_sample_grid.rst", "sample grid"),
    "category_coverage": ("../report/eval_category_coverage.rst", "coverage by category"),
    "metric_intervals": ("../report/eval_metric_intervals.rst", "metric intervals"),
    "reward_curves": ("../report/eval_reward_curves.rst", "reward curves"),
}
NOVEL_REDUNDANT = "novel_redundant_"


def reference(layout: Layout) -> list[str]:
    return [str(layout.reference / name) for name in ("images", "images.csv", "manifest.csv", "contact_sheet.png")]


def features(layout: Layout, plan: Plan) -> list[str]:
    return [str(layout.features / "reference" / f"{name}.npy") for name in plan.extractors]


def rewards(layout: Layout, plan: Plan) -> list[str]:
    ladders = plan.config["reward"]["validation"]["ladders"]
    return [str(layout.validation / "ladder.csv"), str(layout.validation / "validation.json")] + [
        str(layout.validation / f"ladder_{name}.png") for name in ladders
    ]


def model(layout: Layout) -> list[str]:
    return [str(layout.base_model / name) for name in ("marsdiff_model.json", "samples.png", "loss.csv")]


def round_metrics(layout: Layout, plan: Plan, exp: str) -> list[str]:
    """Every round's metrics.json of ``exp``, in order."""
    return [str(layout.round_dir(exp, r) / "metrics.json") for r in plan.rounds[exp]]


def rl(layout: Layout, plan: Plan) -> list[str]:
    """Every round's metrics in order, each experiment's metrics table and reward curve."""
    targets = []
    for exp in plan.experiments:
        targets += round_metrics(layout, plan, exp)
        targets += [str(layout.runs / exp / "metrics.csv"), str(layout.runs / exp / "reward_curve.png")]
    return targets


def evaluation_figures(layout: Layout, plan: Plan) -> dict[str, Path]:
    """Figure name -> path (the reward curves only when experiments ran)."""
    figures = {name: layout.eval_plots / f"{name}.png" for name in EVAL_FIGURES}
    if plan.experiments:
        figures["reward_curves"] = layout.eval_plots / "reward_curves.png"
    for name in plan.credit_models:
        figures[f"{NOVEL_REDUNDANT}{name}"] = layout.eval_plots / f"{NOVEL_REDUNDANT}{name}.png"
    return figures


def figure_caption(key: str) -> tuple[str, str]:
    """(caption file, label) of one evaluation figure in the report."""
    if key.startswith(NOVEL_REDUNDANT):
        return "../report/eval_novel_redundant.rst", f"novel / redundant: {key[len(NOVEL_REDUNDANT):]}"
    return FIGURE_CAPTIONS[key]


def evaluation(layout: Layout, plan: Plan) -> list[str]:
    """Targets of the evaluation and report stages."""
    return (
        [str(layout.eval / name) for name in EVAL_TABLES]
        + [str(layout.stream_dir(s) / name) for s in plan.eval_streams[1:] for name in EVAL_TABLES]
        + [str(layout.knob_selection), str(layout.knob_selection_table), str(layout.comparisons)]
        + [str(layout.eval / "pixel_statistics.csv")]
        + [str(path) for path in evaluation_figures(layout, plan).values()]
        + [str(layout.report / name) for name in ("summary.md", "summary.html", "comparison.csv")]
    )


def all_targets(layout: Layout, plan: Plan) -> list[str]:
    """What ``rule all`` asks for: every stage of the study, in pipeline order."""
    return (reference(layout) + features(layout, plan) + rewards(layout, plan) + model(layout)
            + rl(layout, plan) + evaluation(layout, plan))


def datasets(layout: Layout, plan: Plan) -> list[str]:
    """The optional target export_datasets: one folder per export.models entry."""
    return [str(layout.datasets / name) for name in plan.export_models]
