"""Advantages from per-image credit: group normalisation, clipping, and the optional value head.

The reward of an image is its exact leave-one-out credit in the round's set reward
(``rewards.csv``, column ``credit``), standardised as (credit - mean) / std:

* ``normalisation: batch`` (default): one mean and std for the whole round. A round of 32 images
  over the pixel model's size classes holds about 5 images per class; a std from 5 draws is
  off by about 35% (its relative standard error is 1/sqrt(2(n-1))) and a class whose 5 credits
  happen to agree gets its noise blown up to unit variance (docs/rl.md, "Advantages").
* ``normalisation: class``: per-condition statistics (credit may only be comparable within a
  condition), but only for a class with at least ``min_count`` images in the round; smaller
  classes use the batch statistics (DDPO's fallback for prompts with few samples).

The key ``min_group_size`` of earlier versions is refused with a line naming ``min_count``.
Advantages are clipped to +-``clip``.

Value head (optional, ``advantages.value_head``): the reward is terminal (one credit per image
after the last step), so the per-step TD errors are delta_k = gamma V(s_{k+1}) - V(s_k) and
delta_{T-1} = R - V(s_{T-1}), and GAE sums them with weights (gamma lambda)^j. The value of a
state is a learned table V(condition, step) (state aggregation: the latent itself is not
looked at). With gamma = lambda = 1 this is exactly R - V(condition, k): a per-step baseline;
lambda < 1 bootstraps from later steps' values. The table moves toward the observed returns
with rate ``value_lr`` after each round and is saved with the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.rl.settings import settings_from_mapping


NORMALISATIONS = ("batch", "class")


@dataclass(frozen=True)
class AdvantageSettings:
    """The ``advantages:`` section of an experiment (keys, defaults and ranges: the schema)."""

    clip: float
    normalisation: str
    min_count: int
    value_head: bool
    gamma: float
    gae_lambda: float
    value_lr: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "AdvantageSettings":
        """From the schema-filled section (:func:`marsdiff.rl.experiments.experiment_settings`)."""
        return settings_from_mapping(cls, cfg, "advantages")


def _standardise(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (values - mean) / std if std > 1e-12 else np.zeros_like(values)


def group_advantages(credit: np.ndarray, groups: np.ndarray, settings: AdvantageSettings) -> np.ndarray:
    """Per-image advantages: credit standardised with the batch statistics, or (``normalisation:
    class``) within each group of at least ``min_count`` images (batch fallback), clipped."""
    credit = np.asarray(credit, dtype=np.float64)
    groups = np.asarray(groups)
    if credit.ndim != 1 or len(credit) != len(groups):
        raise MarsdiffError(f"advantages: {credit.shape} credits for {groups.shape} group labels")
    if len(credit) < 2:
        raise MarsdiffError("advantages: a round needs at least 2 images to normalise credit")
    if not np.all(np.isfinite(credit)):
        raise MarsdiffError("advantages: non-finite credit in rewards.csv")
    batch_mean, batch_std = float(credit.mean()), float(credit.std())
    out = np.empty_like(credit)
    if settings.normalisation == "batch":
        return np.clip(_standardise(credit, batch_mean, batch_std), -settings.clip, settings.clip)
    for group in np.unique(groups):
        rows = groups == group
        if rows.sum() >= settings.min_count:
            out[rows] = _standardise(credit[rows], float(credit[rows].mean()), float(credit[rows].std()))
        else:
            out[rows] = _standardise(credit[rows], batch_mean, batch_std)
    return np.clip(out, -settings.clip, settings.clip)


def gae_advantages(reward: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """GAE for a terminal reward. ``reward`` (N,), ``values`` (N, T) = V(s_k) before step k.

    Returns (advantages (N, T), returns (N, T) = advantages + values).
    """
    reward = np.asarray(reward, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    n, steps = values.shape
    next_values = np.concatenate([values[:, 1:], np.zeros((n, 1))], axis=1)
    rewards = np.zeros((n, steps))
    rewards[:, -1] = reward
    # The last step ends the episode: no bootstrap after it.
    deltas = rewards + gamma * next_values * (np.arange(steps) < steps - 1) - values
    advantages = np.zeros((n, steps))
    running = np.zeros(n)
    for k in range(steps - 1, -1, -1):
        running = deltas[:, k] + gamma * lam * running
        advantages[:, k] = running
    return advantages, advantages + values


class ValueTable:
    """V(condition, step): the value head of the denoising chain (see the module docstring)."""

    def __init__(self, num_conditions: int, num_steps: int, table: np.ndarray | None = None):
        self.table = np.zeros((num_conditions, num_steps)) if table is None else np.asarray(table, dtype=np.float64)
        if self.table.shape != (num_conditions, num_steps):
            raise MarsdiffError(f"value table shape {self.table.shape} != {(num_conditions, num_steps)}")

    def values(self, condition: np.ndarray) -> np.ndarray:
        return self.table[np.asarray(condition, dtype=np.int64)]

    def update(self, condition: np.ndarray, returns: np.ndarray, lr: float) -> float:
        """Move each visited (condition, step) toward its mean return; returns the value loss before."""
        condition = np.asarray(condition, dtype=np.int64)
        loss = float(np.mean((self.values(condition) - returns) ** 2))
        for c in np.unique(condition):
            rows = condition == c
            self.table[c] += lr * (returns[rows].mean(axis=0) - self.table[c])
        return loss


def step_advantages(credit: np.ndarray, condition: np.ndarray, num_steps: int, settings: AdvantageSettings,
                    value_table: ValueTable | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Advantages per (image, step) for the denoising actions, shape (N, T).

    Without a value head every step of an image shares its group-normalised advantage (DDPO).
    With it, GAE on the normalised credit against the value table, then clipped.
    """
    normalised = group_advantages(credit, condition, settings)
    if not settings.value_head:
        return np.repeat(normalised[:, None], num_steps, axis=1), {}
    if value_table is None:
        raise MarsdiffError("advantages.value_head is on but no value table was given")
    values = value_table.values(condition)
    advantages, returns = gae_advantages(normalised, values, settings.gamma, settings.gae_lambda)
    value_loss = value_table.update(condition, returns, settings.value_lr)
    return np.clip(advantages, -settings.clip, settings.clip), {"value_loss": value_loss}
