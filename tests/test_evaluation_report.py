"""The report's number formatting and its metric x model table (summary.md)."""

import math

import pandas as pd

from marsdiff.evaluation.report import format_interval, format_number, metric_by_model_table


def row(model, metric, value, low, high, higher):
    return dict(model=model, metric=metric, value=value, ci_low=low, ci_high=high, higher_is_better=higher)


def test_numbers_keep_three_significant_digits_integers_and_mark_nan():
    assert format_number(0.123456) == "0.123"
    assert format_number(1234.5) == "1.23e+03"
    assert format_number(64.0) == "64"
    assert format_number(float("nan")) == "–"
    assert format_number(math.inf) == "–"


def test_an_interval_is_shown_only_when_both_ends_are_finite():
    assert format_interval(0.5, 0.4, 0.61) == "0.5 [0.4, 0.61]"
    assert format_interval(0.5, float("nan"), 0.61) == "0.5"


def test_metric_table_has_one_row_per_metric_one_column_per_model_and_the_direction():
    table = pd.DataFrame([
        row("base", "recall", 0.5, 0.4, 0.6, True),
        row("a|b", "recall", 0.7, 0.6, 0.8, True),
        row("base", "FD_mobilenet_v2", 40.0, 35.0, 45.0, False),
        row("base", "memorisation_pass", 1.0, 1.0, 1.0, True),
    ])
    lines = metric_by_model_table(table).splitlines()
    assert lines[0] == "| metric | better | base | a\\|b |"  # a pipe in a model name must not split a cell
    assert lines[2] == "| recall | ↑ | 0.5 [0.4, 0.6] | 0.7 [0.6, 0.8] |"
    assert lines[3] == "| FD_mobilenet_v2 | ↓ | 40 [35, 45] |  |"  # a model without the metric: empty cell
    assert lines[4].startswith("| memorisation_pass | check |")
    assert len(lines) == 5
    only_base = metric_by_model_table(table, models=["base"]).splitlines()
    assert only_base[0] == "| metric | better | base |"
