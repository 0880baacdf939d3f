"""Number formatting and the metric x model table of the report's ``summary.md``.

The verdict itself is made elsewhere: each policy against the base model and a knob setting
frozen before the test, on declared endpoints (:mod:`marsdiff.evaluation.endpoints`). This module
only turns numbers and intervals into Markdown.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from marsdiff.evaluation.metric import direction_symbol


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


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
