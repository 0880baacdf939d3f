"""Numerical faults of an RL update: what counts as one, how a skipped update is recorded, and
when too many skips in a row stop the run.

A NaN or inf in anything an update reads or computes (the round's set reward, an image's credit,
the loss, a gradient, the updated weights) would be written into the policy and poison every
later round. Such an update is skipped instead: the round writes the policy it started from,
unchanged, and its ``metrics.json`` says so (:data:`SKIPPED`, :data:`REASON`, :data:`STREAK`).
The streak is carried from round to round through the previous round's ``metrics.json`` (an
input of the update anyway), so a resumed run counts exactly as an uninterrupted one.
``experiments.<name>.max_skipped_updates`` skips in a row stop the run with one line.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marsdiff.errors import MarsdiffError

#: metrics.json fields: 1.0 when the round's update was skipped, why, and the skips in a row so far.
SKIPPED = "update_skipped"
REASON = "skip_reason"
STREAK = "skipped_updates_in_a_row"


class NonFiniteUpdate(Exception):
    """Raised inside an update when a value is NaN or inf; the round loop skips the update.

    Not a MarsdiffError: it must never reach the stage's error handler as a failure."""


def _kind(values: np.ndarray) -> str:
    return "NaN" if np.isnan(values).any() else "inf"


def require_finite(what: str, value: Any) -> None:
    """Raise :class:`NonFiniteUpdate` naming ``what`` when ``value`` (a number, array, tensor or a
    sequence of tensors) holds a NaN or inf."""
    if isinstance(value, (list, tuple)) and value and all(torch.is_tensor(v) for v in value):
        for v in value:
            require_finite(what, v)
        return
    if torch.is_tensor(value):
        if bool(torch.isfinite(value).all()):
            return
        values = value.detach().double().cpu().numpy()
    else:
        values = np.asarray(value, dtype=np.float64)
        if np.isfinite(values).all():
            return
    bad = int((~np.isfinite(values)).sum())
    where = f" ({bad} of {values.size} values)" if values.size > 1 else ""
    raise NonFiniteUpdate(f"{_kind(values)} in {what}{where}")


def previous_streak(previous_metrics: str | os.PathLike | None) -> int:
    """Skipped updates in a row up to and including the previous round (0 for round 000 or for
    metrics written before skips were recorded)."""
    if previous_metrics is None:
        return 0
    path = Path(previous_metrics)
    try:
        row = json.loads(path.read_text())
        streak = row.get(STREAK, 0) if isinstance(row, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MarsdiffError(f"{path}: unreadable round metrics ({' '.join(str(err).split())}); re-run update_round for that round") from None
    if not isinstance(streak, (int, float)) or isinstance(streak, bool) or not math.isfinite(streak) or streak < 0:
        raise MarsdiffError(f"{path}: {STREAK} must be a count >= 0, got {streak!r}; re-run update_round for that round")
    return int(streak)


def max_skipped_updates(experiment: dict[str, Any]) -> int:
    """The experiment's limit (an integer >= 1: the schema's range, its default filled)."""
    return int(experiment["max_skipped_updates"])


def stop_if_too_many(experiment: dict[str, Any], round_index: int, streak: int, reason: str) -> None:
    """One line and exit 1 once ``streak`` skips in a row reach the experiment's limit."""
    limit = max_skipped_updates(experiment)
    if streak >= limit:
        name = experiment["name"]
        raise MarsdiffError(
            f"experiments.{name}: {streak} updates in a row skipped for numerical faults (round {round_index:03d}: "
            f"{reason}); the run stops at max_skipped_updates {limit}: check the rewards and the learning rate"
        )
