"""Experiments: the ``experiments:`` config section, one entry per RL run.

``experiments`` maps a name to its settings (the schema lists every key and default):

    algorithm: ppo | trpo        mode: lora_unet | scheduler_policy | diversity_policy
    rounds, images_per_round, steps, eta, seed, class_distribution
    optimiser: {lr, weight_decay, betas}      ppo: {...} / trpo: {...}
    advantages: {clip, min_group_size, value_head, gamma, gae_lambda, value_lr}
    lora: {rank, alpha, dropout, target_modules}    policy: {distribution, init_std, knobs}
    reward: an optional override of the top-level reward section (deep-merged)
    max_skipped_updates: updates in a row skipped for a NaN/inf before the run stops

:func:`experiment_settings` resolves one experiment and refuses bad ones with one line that
names the experiment and the key.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from marsdiff.config import deep_merge
from marsdiff.errors import MarsdiffError

ALGORITHMS = ("ppo", "trpo")
MODES = ("lora_unet", "scheduler_policy", "diversity_policy")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
DEFAULTS: dict[str, Any] = {
    "algorithm": "ppo",
    "mode": "lora_unet",
    "rounds": 2,
    "images_per_round": 32,
    "steps": 20,
    "eta": 1.0,
    "seed": 0,
    "class_distribution": "uniform",
    "optimiser": {"lr": 3e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999]},
    "ppo": {},
    "trpo": {},
    "advantages": {},
    "lora": {},
    "policy": {},
    "reward": {},
    "max_skipped_updates": 3,
}


# Experiment keys whose default is the sampling section's value.
SAMPLING_DEFAULTS = ("images_per_round", "steps", "eta", "seed", "class_distribution")


def experiment_settings(experiments: Mapping[str, Any], name: str,
                        sampling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved settings of experiment ``name`` (defaults filled), validated.

    Defaults: :data:`DEFAULTS`, overlaid with the ``sampling`` section's shared values."""
    if name not in (experiments or {}):
        raise MarsdiffError(f"experiment {name!r} is not configured (configured: {', '.join(sorted(experiments or {})) or 'none'})")
    if not re.fullmatch(NAME_PATTERN, name):
        raise MarsdiffError(f"experiment name {name!r}: use letters, digits, '_', '.', '-' (not starting with a symbol)")
    shared = {k: v for k, v in dict(sampling or {}).items() if k in SAMPLING_DEFAULTS}
    settings = deep_merge(deep_merge(DEFAULTS, shared), dict(experiments[name] or {}))
    settings["name"] = name
    where = f"experiments.{name}"
    if settings["algorithm"] not in ALGORITHMS:
        raise MarsdiffError(f"{where}.algorithm: {settings['algorithm']!r} is not one of {', '.join(ALGORITHMS)}")
    if settings["mode"] not in MODES:
        raise MarsdiffError(f"{where}.mode: {settings['mode']!r} is not one of {', '.join(MODES)}")
    for key in ("rounds", "images_per_round", "steps"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise MarsdiffError(f"{where}.{key}: must be an integer >= 1, got {settings[key]!r}")
    if settings["rounds"] > 999:
        raise MarsdiffError(f"{where}.rounds: at most 999 (round numbers have three digits)")
    if settings["images_per_round"] < 3:
        # Leave-one-out credit of a set reward needs a set: with 1 image there is nothing to compare,
        # with 2 each image's credit is the other's complement.
        raise MarsdiffError(
            f"{where}.images_per_round: {settings['images_per_round']} image(s) per round; a set reward needs >= 3"
        )
    limit = settings["max_skipped_updates"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise MarsdiffError(f"{where}.max_skipped_updates: must be an integer >= 1, got {limit!r}")
    if not settings["optimiser"].get("lr", 0) > 0:
        raise MarsdiffError(f"{where}.optimiser.lr must be > 0")
    return settings


def reward_config(reward: Mapping[str, Any], experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The reward an experiment optimises: the top-level section with its override merged in."""
    return deep_merge(dict(reward), dict(experiment.get("reward") or {}))
