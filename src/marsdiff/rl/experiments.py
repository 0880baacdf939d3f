"""Experiments: the ``experiments:`` config section, one entry per RL run.

``experiments`` maps a name to its settings (the schema lists every key and default):

    algorithm: ppo | trpo        mode: lora_unet | scheduler_policy | diversity_policy
    rounds, images_per_round, steps, eta, seed, class_distribution
    optimiser: {lr, weight_decay, betas}      ppo: {...} / trpo: {...}
    advantages: {clip, normalisation, min_count, value_head, gamma, gae_lambda, value_lr}
    kl_to_base: weight of the KL penalty to the base model (LoRA mode; null = the mode's default)
    control: none | shuffled_credit | zero_lr (the study's control arms)
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
    "kl_to_base": None,
    "control": "none",
}

# The plan policies' own defaults (docs/rl.md, "Reaching the knob settings"): eta 0.5 and noise
# temperature 1.15 lie about 1.5 raw action units (before the sigmoid squashing) from the start,
# so a round must move the location about 0.4. init_std 1.0 explores that far (at 0.3 the PPO
# clip stopped each round's move at ~0.05); 8 epochs of 4 minibatches of 8 images give 32 Adam
# steps of lr 0.05 per round (a reach of 1.6), which the clip (0.2 nats) and the reward's noise
# cut to the measured 0.1-0.2 eta per round. TRPO's radius in nats per image: 0.1 (the mean may
# move sqrt(2 * 0.1) = 0.45 scales per round).
# LoRA: lr 1.5e-3 gave a post-update KL of 1.04e-5 mean_per_dim_nats on the default run's round 000
# (3e-4: 5.9e-7, 3e-3: 4.6e-5; config.yaml's 2 epochs of 64, timestep fraction 0.5): the rule is a
# round's KL of the order of TRPO's radius, 1e-5 (docs/rl.md, "Step size of the LoRA policy").
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora_unet": {"optimiser": {"lr": 1.5e-3}},
    **{mode: {"optimiser": {"lr": 0.05}, "ppo": {"epochs": 8, "minibatch_size": 8}, "trpo": {"max_kl": 0.1},
              "policy": {"init_std": 1.0}}
       for mode in ("scheduler_policy", "diversity_policy")},
}

CONTROLS = ("none", "shuffled_credit", "zero_lr")
# kl_to_base per mode when the experiment leaves it null. LoRA: 0.1 (docs/rl.md, "KL to the base
# model": on the default run's round 000 it cost 9% of the round's movement, 1.0 cost 59%; the
# penalty should hold a long run near the base, not stop the first rounds). The plan policies
# have no base distribution to stay near: 0.
KL_TO_BASE_DEFAULT = {"lora_unet": 0.1, "scheduler_policy": 0.0, "diversity_policy": 0.0}


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
    own = dict(experiments[name] or {})
    defaults = deep_merge(DEFAULTS, MODE_DEFAULTS.get(own.get("mode", DEFAULTS["mode"]), {}))
    settings = deep_merge(deep_merge(defaults, shared), own)
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
    lr = settings["optimiser"].get("lr", 0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise MarsdiffError(f"{where}.optimiser.lr must be > 0 (an A/A run with learning rate 0 is control: zero_lr)")
    if settings["control"] not in CONTROLS:
        raise MarsdiffError(f"{where}.control: {settings['control']!r} is not one of {', '.join(CONTROLS)}")
    coef = settings["kl_to_base"]
    if coef is None:
        coef = KL_TO_BASE_DEFAULT[settings["mode"]]
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not coef >= 0 or coef == float("inf"):
        raise MarsdiffError(f"{where}.kl_to_base must be a number >= 0, got {coef!r}")
    if coef > 0 and settings["mode"] != "lora_unet":
        raise MarsdiffError(f"{where}.kl_to_base: {settings['mode']} has no base distribution to stay near; "
                            "use 0 (or leave it out)")
    settings["kl_to_base"] = float(coef)
    return settings


def reward_config(reward: Mapping[str, Any], experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The reward an experiment optimises: the top-level section with its override merged in."""
    return deep_merge(dict(reward), dict(experiment.get("reward") or {}))
