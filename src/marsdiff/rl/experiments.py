"""Experiments: the ``experiments:`` config section, one entry per RL run.

``experiments`` maps a name to its settings; the schema (``workflow/schemas/config.schema.yaml``,
``experiments.additionalProperties``) lists every key, its default and the reason for it:

    algorithm: ppo | trpo        mode: lora_unet | scheduler_policy | diversity_policy
    rounds, images_per_round, steps, eta, seed, class_distribution
    optimiser: {lr, weight_decay, betas}      ppo: {...} / trpo: {...}
    advantages: {clip, normalisation, min_count, value_head, gamma, gae_lambda, value_lr}
    kl_to_base: weight of the KL penalty to the base model (LoRA mode)
    control: none | shuffled_credit | zero_lr (the study's control arms)
    lora: {rank, alpha, dropout, target_modules, init_seed}    policy: {distribution, init_std, knobs}
    reward: an optional override of the top-level reward section (deep-merged)
    max_skipped_updates: updates in a row skipped for a NaN/inf before the run stops

Defaults that depend on the mode (the learning rate, PPO's epochs, TRPO's radius...) are the
schema's ``defaultsBy: {mode: ...}``. :func:`experiment_settings` resolves one experiment: the
schema's defaults filled, the keys that default to the sampling section taken from it, and the
checks the schema cannot express; a bad experiment is refused with one line naming
``experiments.<name>.<key>``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

from marsdiff.config import deep_merge, filled_section, section_schema
from marsdiff.errors import MarsdiffError


def _choices(key: str) -> tuple[str, ...]:
    return tuple(section_schema("experiments.*")["properties"][key]["enum"])


# The schema's choices (the code branches on them; the schema is their one copy).
ALGORITHMS = _choices("algorithm")
MODES = _choices("mode")
CONTROLS = _choices("control")

# Experiment keys with no schema default: an experiment that leaves them out takes the sampling
# section's value (a reference to another section, which the schema's defaults cannot express).
SAMPLING_DEFAULTS = ("images_per_round", "steps", "eta", "seed", "class_distribution")

# Keys of earlier versions: the schema refuses them as unknown; a library caller gets the line
# that names the new key.
RENAMED = {
    ("ppo", "kl_coef"): "ppo.kl_coef was replaced by the experiment key kl_to_base (shared by PPO and TRPO); "
                        "move the value there",
    ("advantages", "min_group_size"): "advantages.min_group_size was replaced by advantages.min_count "
                                      "(with advantages.normalisation: class); rename the key",
}


def experiment_settings(experiments: Mapping[str, Any], name: str,
                        sampling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved settings of experiment ``name``: validated against the schema, its defaults
    filled (the mode's first), the sampling section's values for the keys the experiment leaves
    out (``sampling`` is filled with its own schema defaults first), ``name`` added."""
    if name not in (experiments or {}):
        raise MarsdiffError(f"experiment {name!r} is not configured (configured: {', '.join(sorted(experiments or {})) or 'none'})")
    own = dict(experiments[name] or {})
    if own.get("name") == name:
        # settings resolved before and passed back (a stage's params hold the resolved experiment):
        # resolving is idempotent, the name is the only key it adds
        del own["name"]
    # Parsing the workflow resolves each experiment many times (targets, every rule's params) and
    # the schema validation costs milliseconds: resolved once per content, a copy each call.
    key = repr(_canonical([name, own, dict(sampling or {})]))
    if key not in _RESOLVED:
        if len(_RESOLVED) >= 256:
            _RESOLVED.clear()
        _RESOLVED[key] = _resolve(name, own, sampling)
    return copy.deepcopy(_RESOLVED[key])


_RESOLVED: dict[str, dict[str, Any]] = {}


def _canonical(value: Any) -> Any:
    """A form of a config value whose repr is equal exactly when the values are (key order aside;
    types kept: 1, 1.0, True and '1' differ)."""
    if isinstance(value, Mapping):
        return sorted((repr(k), _canonical(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return type(value).__name__, repr(value)


def _resolve(name: str, own: dict[str, Any], sampling: Mapping[str, Any] | None) -> dict[str, Any]:
    where = f"experiments.{name}"
    for (section, key), message in RENAMED.items():
        if key in dict(own.get(section) or {}):
            raise MarsdiffError(f"{where}.{message}")
    # Validated as an entry of the experiments map: the name's pattern too, and messages name
    # experiments.<name>.<key>.
    settings = filled_section("experiments", {name: own})[name]
    shared = filled_section("sampling", sampling)
    for shared_key in SAMPLING_DEFAULTS:
        settings.setdefault(shared_key, shared[shared_key])
    # The eta knob starts at the experiment's eta unless the experiment sets its init.
    settings["policy"]["knobs"]["eta"].setdefault("init", settings["eta"])
    settings["name"] = name

    # What the schema cannot express follows: a bound on a value that may come from the sampling
    # section (which allows 2), finiteness (YAML's .inf passes `type: number`) and cross-key rules.
    if settings["images_per_round"] < 3:
        # Leave-one-out credit of a set reward needs a set: with 1 image there is nothing to compare,
        # with 2 each image's credit is the other's complement.
        raise MarsdiffError(
            f"{where}.images_per_round: {settings['images_per_round']} image(s) per round; a set reward needs >= 3"
        )
    coef = settings["kl_to_base"]
    if not math.isfinite(coef):
        raise MarsdiffError(f"{where}.kl_to_base must be a finite number >= 0, got {coef!r}")
    if coef > 0 and settings["mode"] != "lora_unet":
        raise MarsdiffError(f"{where}.kl_to_base: {settings['mode']} has no base distribution to stay near; "
                            "use 0 (or leave it out)")
    settings["kl_to_base"] = float(coef)
    return settings


def reward_config(reward: Mapping[str, Any], experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The reward an experiment optimises: the top-level section with its override (the schema's
    default: none, ``{}``) merged in."""
    return deep_merge(dict(reward), dict(experiment["reward"]))
