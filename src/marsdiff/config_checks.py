"""Every check a stage would make of the config, made when the Snakefile is parsed.

Snakemake removes a job's outputs before the job starts, so a setting refused inside a job
costs that job's previous good results. This module owns the parse-time copies of those
checks; each failure is one :class:`MarsdiffError` line naming the config key:

* :func:`check_settings` needs the config alone (after schema validation and defaults):
  every experiment resolved (:func:`marsdiff.rl.experiments.experiment_settings`), the
  top-level reward and each experiment's merged ``reward`` override (schema keys and types,
  the term combination, the validation gate an override must pass), the class distributions'
  values, the policy knob ranges, TRPO's Fisher-vector method against the mode, and no NaN or
  infinity anywhere. (The evaluation metric and reward validation settings' checks are all the
  schema's.)
* :func:`check_data_settings` also needs the reference set's planned classes and split
  (:func:`marsdiff.data.reference.planned_split`, no image decoded): class distributions
  against the model's classes, ``images_per_round`` against the train split, the reward
  validation's and the evaluation's needs against the train and held-out sizes.

The stages keep their own checks (library use, and a safety net); these duplicates make sure
the workflow never reaches them with a bad value. Only torch-free modules are imported:
parsing must stay cheap (tests/test_workflow.py checks torch is never imported). No stage
imports this module, so editing a check changes no stage's code version.

``python -m marsdiff.config_checks FILE...`` checks config files as ``snakemake --configfile
FILE...`` would use them (overlaid on the embedded default), one line on the first problem; the
Makefile's ``make run CONFIG=...`` runs it first, because Snakemake reads ``--configfile`` files
before the Snakefile and reports a missing or malformed one with its own traceback.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from marsdiff.errors import MarsdiffError

# Reward validation refuses fewer train rows (marsdiff.rewards.validation, the in-job check).
MIN_VALIDATION_TRAIN = 8
# A z-scored reward draws n reference rows and scores them against the rest, which needs >= 2.
MIN_BASELINE_REST = 2


# ---------------------------------------------------------------------------- config alone

def check_settings(config: Mapping[str, Any], schema: Mapping[str, Any] | str | os.PathLike | None = None) -> None:
    """Refuse, with one line naming the key, every setting a stage would refuse (config only).

    ``config`` has passed :func:`marsdiff.config.check_config` (defaults filled); ``schema``
    (the loaded schema or its path; default: the project's) checks experiments' reward
    overrides, which the schema types only as mappings."""
    from marsdiff.config import SCHEMA_PATH, read_config_file
    from marsdiff.rl.experiments import experiment_settings, reward_config

    if not isinstance(schema, Mapping):
        schema = read_config_file(Path(schema or SCHEMA_PATH))

    check_finite(config)
    reward = dict(config["reward"])
    check_reward(reward, "reward")
    sampling = dict(config["sampling"])
    check_class_distribution(sampling["class_distribution"], "sampling.class_distribution")
    experiments = dict(config["experiments"])
    for name in sorted(experiments):
        settings = experiment_settings(experiments, name, sampling)
        where = f"experiments.{name}"
        own = dict(experiments[name] or {})
        if "class_distribution" in own:
            check_class_distribution(own["class_distribution"], f"{where}.class_distribution")
        if settings["mode"] != "lora_unet":  # only the plan policies read their knobs
            check_knobs(settings["policy"]["knobs"], f"{where}.policy.knobs")
        # The schema fills both algorithms' sections, so a section set by the user shows as one
        # that differs from the schema's defaults for this mode (a value equal to its default
        # changes nothing and passes).
        schema_only = _experiment_defaults(settings["mode"])
        for algorithm in ("ppo", "trpo"):
            # settings for the other algorithm are never read: a missing `algorithm:` would otherwise
            # run PPO with the TRPO section silently ignored
            if settings[algorithm] != schema_only[algorithm] and settings["algorithm"] != algorithm:
                raise MarsdiffError(
                    f"{where}.{algorithm} is set but {where}.algorithm is {settings['algorithm']}: "
                    f"add `algorithm: {algorithm}` or remove the {algorithm} section"
                )
        trpo = own.get("trpo") or {}
        if settings["algorithm"] == "trpo" and trpo.get("fvp_method") == "gauss_newton" and settings["mode"] != "lora_unet":
            raise MarsdiffError(
                f"{where}.trpo.fvp_method: gauss_newton needs fixed-sigma Gaussian actions (mode lora_unet), "
                f"this experiment's mode is {settings['mode']}; use kl_hessian or auto"
            )
        if own.get("reward"):
            override = f"{where}.reward"
            merged = reward_config(reward, own)
            # the merged section: an override's term may name only its weight (kind from the top)
            check_against_schema(merged, schema["properties"]["reward"], override)
            check_reward(merged, override)
            check_override_validated(reward, merged, override)


@functools.lru_cache(maxsize=None)
def _experiment_defaults(mode: str) -> dict[str, Any]:
    """An experiment of ``mode`` with nothing set but the schema's defaults (read only)."""
    from marsdiff.config import filled_section

    return filled_section("experiments.*", {"mode": mode})


def check_finite(node: Any, where: str = "") -> None:
    """No NaN or infinity anywhere (YAML's .nan / .inf pass the schema's ``type: number`` and
    its bounds, then a stage refuses or, worse, computes with them)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            check_finite(value, f"{where}.{index}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise MarsdiffError(f"config key {where}: must be a finite number, got {node!r}")


def check_against_schema(instance: Any, schema: Mapping[str, Any], prefix: str) -> None:
    """jsonschema validation of a sub-section, the first error named under ``prefix``."""
    import jsonschema

    from marsdiff.config import describe_error

    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise MarsdiffError(describe_error(errors[0], root=prefix))


def _renamed(err: MarsdiffError, where: str) -> MarsdiffError:
    """A reward message (which says ``reward...``) re-rooted at ``where`` (an override)."""
    text = str(err)
    if where != "reward" and text.startswith("reward"):
        text = where + text[len("reward"):]
    elif where != "reward":
        text = f"{where}: {text}"
    return MarsdiffError(text)


def check_reward(section: Mapping[str, Any], where: str) -> None:
    """The checks :class:`~marsdiff.rewards.combined.RewardConfig` and the validation settings
    make when a stage builds them (all-zero weights, options a kind does not take, ...)."""
    from marsdiff.rewards.combined import RewardConfig
    from marsdiff.rewards.terms import term_options

    # Term by term first, so a message names the term's key (RewardConfig's names the kind).
    for name, spec in sorted(dict(section.get("terms") or {}).items()):
        options = {k: v for k, v in dict(spec or {}).items() if k not in ("kind", "weight", "standardise")}
        try:
            term_options(dict(spec or {}).get("kind", name), options)
        except MarsdiffError as err:
            raise MarsdiffError(f"{where}.terms.{name}: {err}") from None
    # (the validation settings' own checks are the schema's: ladder names, set_size, repeats)
    try:
        RewardConfig.from_dict(dict(section))
    except MarsdiffError as err:
        raise _renamed(err, where) from None
    except (TypeError, ValueError) as err:
        raise MarsdiffError(f"{where}: {' '.join(str(err).split())}") from None


def _combination(section: Mapping[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    from marsdiff.rewards.combined import RewardConfig

    config = RewardConfig.from_dict(dict(section))
    terms = {t.name: (t.kind, t.weight, t.standardise) for t in config.terms}
    return terms, config.bandwidth, config.bandwidth_scale


def check_override_validated(top: Mapping[str, Any], merged: Mapping[str, Any], where: str) -> None:
    """What score_round's validation gate would refuse about an override, from the config alone.

    validate_rewards ranks the top-level reward. An experiment whose reward differs may still
    train when enforce is on, but only if its weights are positive, its bandwidth is the
    validated one and each weighted term is a validated term (same name and kind); whether those
    terms passed depends on the data and stays with score_round.
    """
    enforce = bool(merged["validation"]["enforce"])
    top_terms, top_bandwidth, top_scale = _combination(top)
    terms, bandwidth, scale = _combination(merged)
    if not enforce or (terms, bandwidth, scale) == (top_terms, top_bandwidth, top_scale):
        return
    problems = []
    weighted = {name: spec for name, spec in terms.items() if spec[1] != 0.0}
    negative = sorted(name for name, spec in weighted.items() if spec[1] < 0.0)
    if negative:
        problems.append(f"term {negative[0]!r} has a negative weight, so the terms' validation does not carry over")
    if (bandwidth, scale) != (top_bandwidth, top_scale):
        problems.append(f"its bandwidth {bandwidth} x {scale} is not the validated {top_bandwidth} x {top_scale}")
    for name, (kind, _, _) in sorted(weighted.items()):
        if top_terms.get(name, (None,))[0] != kind:
            problems.append(f"term {name!r} ({kind}) is not a term of the validated top-level reward")
            break
    if problems:
        raise MarsdiffError(
            f"{where}: {problems[0]}; validate_rewards validates only the top-level reward, so set "
            "reward.validation.enforce: false (or validation: {enforce: false} in this override)"
        )


def check_class_distribution(spec: Any, where: str, names: Sequence[str] | None = None) -> None:
    """The values :func:`marsdiff.diffusion.plan.condition_probabilities` accepts; with
    ``names`` (the model's classes), also the class names / number of weights."""
    if spec in (None, "uniform"):
        return
    if isinstance(spec, Mapping):
        weights = list(spec.values())
        if names is not None:
            unknown = sorted(set(map(str, spec)) - set(names))
            if unknown:
                raise MarsdiffError(f"{where}: unknown class(es) {unknown} (the reference classes are {list(names)})")
    elif isinstance(spec, (list, tuple)):
        weights = list(spec)
        if names is not None and len(weights) != len(names):
            raise MarsdiffError(f"{where}: {len(weights)} weights for {len(names)} classes ({', '.join(names)})")
    else:
        raise MarsdiffError(f"{where}: expected 'uniform', a list of weights or a class -> weight mapping, got {spec!r}")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise MarsdiffError(f"{where}: every weight must be a finite number >= 0, got {weight!r}")
    if names is not None and isinstance(spec, Mapping):
        total = sum(float(spec.get(name, 0.0)) for name in names)
    else:
        total = sum(float(w) for w in weights)
    if not total > 0:
        raise MarsdiffError(f"{where}: the weights are all zero; at least one class needs a positive weight")


def check_knobs(knobs: Mapping[str, Any], where: str) -> None:
    """Each knob of the resolved ``policy.knobs`` (schema-filled, the eta knob's init resolved)
    must keep low < init < high, and a log-scaled knob low > 0: relations between keys, which
    the schema cannot express (the stage's KnobRange makes the same check)."""
    for name, knob in sorted(dict(knobs).items()):
        if not knob["low"] < knob["init"] < knob["high"]:
            raise MarsdiffError(
                f"{where}.{name}: need low < init < high, got {knob['low']} < {knob['init']} < {knob['high']}"
            )
        if knob["log"] and knob["low"] <= 0:
            raise MarsdiffError(f"{where}.{name}: a log-scaled knob needs low > 0, got {knob['low']}")


# ---------------------------------------------------------------------------- with the data

def reference_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the checks need of the reference set: its classes (sorted), the train and held-out
    counts overall and per class, from :func:`marsdiff.data.reference.planned_split`."""
    from marsdiff.data.reference import planned_split

    table = planned_split(dict(config.get("reference") or {}))
    train = table[table["split"] == "train"]
    return {
        "classes": sorted(table["size_cat"].unique()),
        "train": int(len(train)),
        "heldout": int((table["split"] == "heldout").sum()),
        "train_per_class": {str(k): int(v) for k, v in train["size_cat"].value_counts().sort_index().items()},
    }


def _zscored(section: Mapping[str, Any]) -> bool:
    from marsdiff.rewards.combined import RewardConfig

    return any(t.standardise == "zscore" and t.weight != 0.0 for t in RewardConfig.from_dict(dict(section)).terms)


def check_data_settings(config: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """Refuse settings the reference set cannot serve, naming the key (see the module doc).

    ``config`` has passed :func:`marsdiff.config.check_config` (schema defaults filled: the
    defaults live only in the schema); ``summary`` is :func:`reference_summary`'s."""
    from marsdiff.rl.experiments import experiment_settings, reward_config

    pixel = config["model"]["backend"] == "pixel"
    # The pixel model's classes are the reference size classes; Stable Diffusion's conditions
    # are prompts (checked by value only).
    names = summary["classes"] if pixel else None
    sampling = dict(config["sampling"])
    check_class_distribution(sampling["class_distribution"], "sampling.class_distribution", names)
    train, heldout = summary["train"], summary["heldout"]
    reward = dict(config["reward"])
    experiments = dict(config["experiments"])
    for name in sorted(experiments):
        where = f"experiments.{name}"
        own = dict(experiments[name] or {})
        settings = experiment_settings(experiments, name, sampling)
        key = f"{where}.class_distribution" if "class_distribution" in own else "sampling.class_distribution"
        check_class_distribution(settings["class_distribution"], key, names)
        n = settings["images_per_round"]
        if _zscored(reward_config(reward, own)) and train - n < MIN_BASELINE_REST:
            key = f"{where}.images_per_round" if "images_per_round" in own else "sampling.images_per_round"
            raise MarsdiffError(
                f"{key}: {n} images per round, but the reference train split has {train} images; a z-scored "
                f"reward needs at least {n + MIN_BASELINE_REST} (lower it, add reference images, or use standardise: none)"
            )
    validation = dict(reward["validation"])
    if train < MIN_VALIDATION_TRAIN:
        raise MarsdiffError(
            f"reference: the train split has {train} images; reward validation (validate_rewards) needs at least "
            f"{MIN_VALIDATION_TRAIN} (add images or lower reference.heldout_fraction)"
        )
    set_size = int(validation["set_size"])
    ladders = list(validation["ladders"])
    # Smallest pool validate_rewards can draw: each class's train rows halved, rounded down.
    pool = sum(count // 2 for count in summary["train_per_class"].values())
    if "copies" in ladders and pool < set_size:
        raise MarsdiffError(
            f"reward.validation.set_size: {set_size} images per ladder set, but the pool (half the train split, "
            f"{pool} images) can be smaller; use at most {pool}"
        )
    if "size" in ladders and len(summary["classes"]) < 2:
        raise MarsdiffError(
            "reward.validation.ladders: the size ladder needs at least 2 size classes, the reference set has "
            f"{len(summary['classes'])}; remove 'size' or raise reference.size_bins"
        )
    evaluation = dict(config.get("evaluation") or {})
    for weights_name, spec in sorted(dict((evaluation.get("knobs") or {}).get("class_weights") or {}).items()):
        if not isinstance(spec, str):  # named schemes (uniform, tails, ...) fit any classes
            check_class_distribution(spec, f"evaluation.knobs.class_weights.{weights_name}", names)
    images = evaluation["images"]
    # plot_evaluation credits every base / final model's M images under its reward, against
    # the train split, as score_round does a round (marsdiff.stages.plot_evaluation).
    sections = [("reward", reward)] + [(f"experiments.{n}.reward", reward_config(reward, dict(experiments[n] or {})))
                                       for n in sorted(experiments)]
    for where, section in sections:
        if isinstance(images, int) and _zscored(section) and train - images < MIN_BASELINE_REST:
            raise MarsdiffError(
                f"evaluation.images: {images} images per model, but the reference train split has {train} images; "
                f"crediting them under the z-scored {where} needs at least {images + MIN_BASELINE_REST}"
            )
    metrics = dict(evaluation.get("metrics") or {})
    n_modes = metrics.get("n_modes")
    if isinstance(n_modes, int) and n_modes > heldout:
        raise MarsdiffError(
            f"evaluation.metrics.n_modes = {n_modes} must be at most the number of held-out images ({heldout})"
        )
    for key in ("k_precision_recall", "k_density_coverage"):
        k = metrics.get(key)
        if isinstance(k, int) and k >= heldout:
            raise MarsdiffError(f"evaluation.metrics.{key} = {k} must be smaller than the number of held-out images ({heldout})")


# ---------------------------------------------------------------------------- config files

def load_checked_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> dict:
    """:func:`marsdiff.config.load_config` plus every settings check of :func:`check_settings`."""
    from marsdiff.config import load_config

    config = load_config(path, overrides)
    check_settings(config)
    return config


def main(argv: list[str] | None = None) -> int:
    """Check config files as ``snakemake --configfile FILE...`` would use them (later files win);
    exit 0 silently when they are usable, else one ``marsdiff error:`` line and exit 1."""
    import sys

    from marsdiff.config import deep_merge, read_config_file

    paths = list(sys.argv[1:] if argv is None else argv)
    try:
        overlay: dict = {}
        for path in paths:
            overlay = deep_merge(overlay, read_config_file(path))
        load_checked_config(None, overrides=overlay)
    except MarsdiffError as err:
        print(f"marsdiff error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
