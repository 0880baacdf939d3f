"""Arms, training seeds and paired bases of the configured experiments.

Read when the workflow is parsed (the plot_experiment inputs, the study_summary params), so it
imports neither pandas nor torch.

**Arms.** An experiment named ``<arm>_s<k>`` (k digits) belongs to arm ``<arm>``; any other
name is an arm of its own (so the default experiments ``ppo_lora`` ... are the seed-0 members
of the study's arms). The training seed is the experiment's resolved ``seed`` (the sampling seed
of its rounds), not the ``k`` of its name. Every experiment of an arm must have the same
``control``, ``mode`` and ``algorithm`` and a seed of its own.

**Paired base.** Experiment E's paired base is an experiment B with ``control: zero_lr`` (the
base model through the whole loop) that draws the same noise as E in every round: the same
``seed``, ``images_per_round``, ``steps`` and ``class_distribution``, and at least E's rounds.
Image i of round r then starts from the same x_T with the same step noise in both
(``diffusion/seeds.py``), and E's reward minus B's is E's paired improvement over the base.
Several candidates: a ``lora_unet`` one first (with lr 0 its adapter is exactly zero, i.e. the
base model; a zero-lr plan policy still draws random knobs), then by name. A zero_lr experiment
has no paired base (it is one). The pairing is derived, not configured: no key to keep in step
with the seeds, and it changes only when those settings change.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError
from marsdiff.rl.experiments import experiment_settings

ZERO_LR = "zero_lr"
SHUFFLED_CREDIT = "shuffled_credit"
NO_CONTROL = "none"
#: what must match for two experiments to draw the same images per round and image index
PAIRING_KEYS = ("seed", "images_per_round", "steps", "class_distribution")
SEED_SUFFIX = re.compile(r"^(?P<arm>.+)_s\d+$")


def arm_of(name: str) -> str:
    """The arm an experiment belongs to: its name without a trailing ``_s<digits>``."""
    match = SEED_SUFFIX.match(name)
    return match.group("arm") if match else name


def control_of(settings: Mapping[str, Any]) -> str:
    """The control arm of an experiment's resolved settings (``none`` for an RL arm)."""
    return str(settings["control"])


def _all_settings(experiments: Mapping[str, Any], sampling: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {name: experiment_settings(experiments, name, sampling) for name in sorted(experiments or {})}


def paired_base(experiments: Mapping[str, Any], name: str, sampling: Mapping[str, Any] | None = None) -> str | None:
    """The name of ``name``'s paired base experiment, or None (see the module docstring)."""
    settings = _all_settings(experiments, sampling)
    own = settings[name] if name in settings else experiment_settings(experiments, name, sampling)
    if control_of(own) == ZERO_LR:
        return None
    candidates = [
        other for other, theirs in settings.items()
        if other != name and control_of(theirs) == ZERO_LR and theirs["rounds"] >= own["rounds"]
        and all(theirs[key] == own[key] for key in PAIRING_KEYS)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda other: (settings[other]["mode"] != "lora_unet", other))


def study_design(experiments: Mapping[str, Any], sampling: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """name -> {arm, seed, control, mode, algorithm, rounds, paired_base} for every experiment.

    Refuses, in one line, an arm whose experiments differ in control, mode or algorithm, or
    share a training seed (their seed pairs would be ambiguous)."""
    settings = _all_settings(experiments, sampling)
    design: dict[str, dict[str, Any]] = {}
    for name, values in settings.items():
        design[name] = {
            "arm": arm_of(name), "seed": int(values["seed"]), "control": control_of(values),
            "mode": values["mode"], "algorithm": values["algorithm"], "rounds": int(values["rounds"]),
            "paired_base": paired_base(experiments, name, sampling),
        }
    by_arm: dict[str, list[str]] = {}
    for name, row in design.items():
        by_arm.setdefault(row["arm"], []).append(name)
    for arm, names in by_arm.items():
        first = design[names[0]]
        for other in names[1:]:
            for key in ("control", "mode", "algorithm"):
                if design[other][key] != first[key]:
                    raise MarsdiffError(
                        f"experiments.{other}.{key}: {design[other][key]!r}, but experiments.{names[0]} of the same "
                        f"study arm {arm!r} has {first[key]!r} (an arm's experiments differ only in seed)"
                    )
        seeds: dict[int, str] = {}
        for other in names:
            seed = design[other]["seed"]
            if seed in seeds:
                raise MarsdiffError(
                    f"experiments.{other}.seed: {seed}, the same as experiments.{seeds[seed]} of study arm {arm!r}; "
                    "each training seed of an arm needs its own seed"
                )
            seeds[seed] = other
    return design


def experiment_control(cfg: Mapping[str, Any], name: str) -> str:
    return control_of(experiment_settings(cfg["experiments"], name, cfg["sampling"]))


def curve_inputs(cfg: Mapping[str, Any], name: str, runs_dir) -> dict[str, list[str]]:
    """plot_experiment's inputs: every round's metrics.json and, with a paired base, both
    experiments' rewards.csv and the base's reward_summary.json of the same rounds."""
    from pathlib import Path

    runs_dir = Path(runs_dir)
    rounds = [f"{r:03d}" for r in range(experiment_settings(cfg["experiments"], name, cfg["sampling"])["rounds"])]
    inputs = {"metrics": [str(runs_dir / name / f"round_{r}" / "metrics.json") for r in rounds]}
    base = paired_base(cfg["experiments"], name, cfg["sampling"])
    if base:
        inputs["rewards"] = [str(runs_dir / name / f"round_{r}" / "rewards.csv") for r in rounds]
        inputs["base_rewards"] = [str(runs_dir / base / f"round_{r}" / "rewards.csv") for r in rounds]
        inputs["base_summaries"] = [str(runs_dir / base / f"round_{r}" / "reward_summary.json") for r in rounds]
    return inputs


def study_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the study summary reads of the config: the design and the evaluation's declared
    alpha and non-inferiority margins (``evaluation.endpoints``)."""
    endpoints = cfg["evaluation"]["endpoints"]
    return {"design": study_design(cfg["experiments"], cfg["sampling"]), "alpha": endpoints["alpha"],
            "margins": endpoints["non_inferiority"]}
