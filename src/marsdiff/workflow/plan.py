"""What a config asks the workflow to make, resolved once per parse.

:class:`Plan` holds the decisions every rule shares: the extractors and which one the rewards
and the evaluation use, the matched scoring resolution, each experiment's rounds and reward,
the evaluated models and test streams, and the exported models. Building it checks what the
config alone can refuse (bad evaluation settings, unknown export models) with a
:class:`~marsdiff.errors.MarsdiffError` naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError

#: Extractor names the {extractor} wildcard may take.
EXTRACTOR_CHOICES = ("mobilenet_v2", "clip", "resnet18")
#: What {exp} matches when no experiment is configured: nothing a path could hold by accident.
NO_EXPERIMENT = "no-experiment-configured"
#: What generate_samples' {model} matches when no policy is evaluated.
NO_POLICY = "no-policy-evaluated"


def name_pattern(names) -> str:
    """A wildcard constraint matching exactly ``names``."""
    return "|".join(re.escape(name) for name in names)


@dataclass(frozen=True)
class Plan:
    """The config's resolved plan (see the module docstring)."""

    config: Mapping[str, Any] = field(repr=False)
    extractors: tuple[str, ...]
    score_size: int
    experiments: tuple[str, ...]
    rounds: Mapping[str, tuple[str, ...]]
    rewards: Mapping[str, dict[str, Any]]
    eval_models: tuple[dict[str, Any], ...]
    eval_streams: tuple[int, ...]
    export_models: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Plan":
        from marsdiff.data.resolution import matched_size
        from marsdiff.evalset.models import check_evaluation, evaluation_streams
        from marsdiff.rl.experiments import experiment_settings, reward_config

        experiments = tuple(sorted(config.get("experiments") or {}))
        # Round labels 000 .. rounds-1, ascending: Snakemake walks long chains without recursion
        # when every round is requested in order.
        rounds = {
            exp: tuple(f"{r:03d}" for r in range(experiment_settings(config["experiments"], exp, config["sampling"])["rounds"]))
            for exp in experiments
        }
        # The reward each experiment is scored with: the top-level section with its override merged in.
        rewards = {exp: reward_config(config["reward"], config["experiments"][exp] or {}) for exp in experiments}
        eval_models = tuple(check_evaluation(config))
        plan = cls(
            config=config,
            extractors=tuple(config["features"]["extractors"]),
            score_size=matched_size(config),
            experiments=experiments,
            rounds=rounds,
            rewards=rewards,
            eval_models=eval_models,
            eval_streams=tuple(evaluation_streams(config)),
            export_models=tuple(config["export"]["models"]),
        )
        plan.check_export_models()
        return plan

    # ---------------------------------------------------------------- features and scoring
    @property
    def score_extractor(self) -> str:
        """The reward's extractor (the first of features.extractors), which the evaluation shares."""
        return self.extractors[0]

    # ---------------------------------------------------------------- RL
    @property
    def experiment_pattern(self) -> str:
        """Wildcard constraint of {exp}: only configured experiment names match."""
        return name_pattern(self.experiments) or NO_EXPERIMENT

    def pool_rounds(self, exp: str) -> int:
        """reward.pool.rounds of ``exp`` (its override merged in): how many previous rounds'
        features join a round's set for the credit (docs/rewards.md, "Pool")."""
        return int(self.rewards[exp]["pool"]["rounds"])

    # ---------------------------------------------------------------- evaluation
    @property
    def eval_model(self) -> dict[str, dict[str, Any]]:
        return {model["name"]: model for model in self.eval_models}

    @property
    def eval_model_pattern(self) -> str:
        return name_pattern(self.eval_model)

    @property
    def base_models(self) -> list[str]:
        """The models drawn from the base model's weights (base, frozen knob, knob settings), table
        order: one generate_base_samples job per stream draws them all with one model load."""
        from marsdiff.evalset.models import BASE_MODEL_KINDS

        return [m["name"] for m in self.eval_models if m["kind"] in BASE_MODEL_KINDS]

    @property
    def policy_models(self) -> list[str]:
        """The models drawn from a saved RL policy: one generate_samples job each."""
        base = set(self.base_models)
        return [name for name in self.eval_model if name not in base]

    @property
    def policy_model_pattern(self) -> str:
        """Wildcard constraint of generate_samples' {model}: only the policies (the base model's
        settings are generate_base_samples' outputs)."""
        return name_pattern(self.policy_models) or NO_POLICY

    @property
    def eval_sets(self) -> list[tuple[int, str]]:
        """Every (stream, model) image set, stream-major: one extraction job featurises all of them."""
        return [(stream, name) for stream in self.eval_streams for name in self.eval_model]

    @property
    def credit_models(self) -> list[str]:
        """Models whose most novel / redundant images are drawn: the base model and final policies."""
        return [m["name"] for m in self.eval_models if m["kind"] in ("base", "final")]

    def check_export_models(self) -> None:
        """export.models against the evaluated models (a frozen knob exists only at run time)."""
        exportable = [name for name, spec in self.eval_model.items() if spec["kind"] != "frozen"]
        unknown = [name for name in self.export_models if name not in exportable]
        if unknown and unknown[0] in self.eval_model:
            # its knob values exist only once select_knob has run; the dataset rule cannot wait for them
            raise MarsdiffError(
                f"export.models: {unknown[0]!r} is chosen by select_knob at run time: export the base model "
                "with `marsdiff sample --eta E --noise-scale S`, E and S from results/eval/knob_selection.json"
            )
        if unknown:
            raise MarsdiffError(
                f"export.models: {unknown[0]!r} is not an evaluated model (choose from {', '.join(exportable)})"
            )


def stream_set_label(stream: int | str, name: str) -> str:
    """How extract_sample_features names one (stream, model) set in its log and params."""
    return name if int(stream) == 0 else f"stream{int(stream)}/{name}"
