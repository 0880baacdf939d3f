"""Each rule's tracked params: plain flat dicts of exactly the config values its outputs depend on.

Snakemake re-runs a job when the text of one of its params changes (its params trigger), so a
rule's params must hold every value that changes its outputs and nothing else: the rule then
re-runs exactly when one of its own settings changes (docs/workflow.md, "Re-run policy"). The
rules pass these dicts through :func:`marsdiff.stage.param_text` (keys sorted) and the scripts
decode them with :func:`marsdiff.stage.params_json`; each dict's keys are the names the stage
takes, so no script picks a value out of a nested config section by key path.

Settings that change no output (batch sizes, devices, the feature cache, where user data lives)
are not here: each script reads them from ``snakemake.config`` (:func:`marsdiff.stage.untracked`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from marsdiff.workflow.plan import Plan

#: Option keys of the extractors that name files: their content is tracked, not their path.
EXTRACTOR_FILE_KEYS = {"mobilenet_v2": ("weights",), "resnet18": ("weights",), "clip": ("pretrained", "model_config")}
#: What sampling a round reads of its experiment (the update-only keys reach later rounds through
#: the previous policy's files). Neither RL stage reads `rounds` (a longer run keeps its finished
#: rounds) nor `reward` (it reaches the loop only through score_round's rewards.csv).
SAMPLE_KEYS = ("name", "mode", "steps", "eta", "seed", "class_distribution", "images_per_round", "lora", "policy")
UPDATE_SKIPS = ("rounds", "reward")
#: The sampling keys a recorded round is tracked by (the batch size changes no image: untracked).
ROUND_SAMPLING_KEYS = ("min_std", "device", "store")
#: The evaluation.metrics keys marsdiff.evaluation.pixels reads (its intervals' bootstrap).
PIXEL_STATISTICS_KEYS = ("bootstrap_replicates", "seed", "confidence")


# ---------------------------------------------------------------------------- reference
def prepare_reference(config: Mapping[str, Any]) -> dict[str, Any]:
    """The reference keys the images depend on. Data locations are left out (their content is the
    ``data`` param), so are the appearance bins (categorize_reference) and the limits that only
    refuse bad data."""
    from marsdiff.data.reference import APPEARANCE_KEYS, CHECK_KEYS, LOCATION_KEYS

    section = config["reference"]
    return {k: v for k, v in section.items() if k not in APPEARANCE_KEYS + LOCATION_KEYS + CHECK_KEYS}


def categorize_reference(config: Mapping[str, Any]) -> dict[str, Any]:
    from marsdiff.data.reference import APPEARANCE_KEYS

    return {k: config["reference"].get(k) for k in APPEARANCE_KEYS}


# ---------------------------------------------------------------------------- features
def extractor(config: Mapping[str, Any], name: str, file_digest: Callable[[str], str]) -> dict[str, Any]:
    """What one extractor's features depend on: its own options, weight files by content
    (``file_digest(path)``). Batch size, device, cache folder and the list of other extractors
    change no feature value (the feature cache reuses vectors across them too)."""
    options = dict(config["features"].get(name) or {})
    for key in EXTRACTOR_FILE_KEYS.get(name, ()):
        value = options.get(key)
        if value and Path(value).is_file():
            options[key] = f"sha256:{file_digest(value)}"
    return {"extractor": name, "options": options}


# ---------------------------------------------------------------------------- rewards
def validate_rewards(config: Mapping[str, Any]) -> dict[str, Any]:
    """The reward section as the stage reads it."""
    return dict(config["reward"])


def score_round(plan: Plan, exp: str) -> dict[str, Any]:
    """The reward ``exp`` is scored with: the top-level section with its override merged in."""
    return dict(plan.rewards[exp])


# ---------------------------------------------------------------------------- base model
def pretrain_base(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model.pixel training keys as the schema filled them (the preset's values included):
    what the weights depend on, whatever preset name produced them. Preview-grid and logging keys
    are left out (preview_base draws the grid; the script reads the preset's name and the log
    cadence untracked)."""
    from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS, PIXEL_PREVIEW_KEYS

    left_out = ("preset",) + PIXEL_PREVIEW_KEYS + PIXEL_LOGGING_KEYS
    return {k: v for k, v in config["model"]["pixel"].items() if k not in left_out}


def shipped_checkpoint(config: Mapping[str, Any], provenance: Path) -> str:
    """The shipped base model's weights hash where pretrain_base may install it, else 'never'."""
    import json

    if config["model"]["pixel"]["shipped_checkpoint"] == "never":
        return "never"
    return json.loads(provenance.read_text())["weights_sha256"] if provenance.is_file() else "none shipped"


def preview_base(config: Mapping[str, Any]) -> dict[str, Any]:
    from marsdiff.diffusion.pixel_keys import PIXEL_PREVIEW_KEYS

    return {k: config["model"]["pixel"][k] for k in PIXEL_PREVIEW_KEYS}


# ---------------------------------------------------------------------------- sampling backends
def backend(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model a sampling stage loads, beyond its file inputs: the backend, Stable Diffusion's
    whole section, or the pixel model's device (the pixel weights are an input)."""
    model = {"backend": config["model"]["backend"]}
    if config["model"]["backend"] == "stable_diffusion":
        model["stable_diffusion"] = config["model"]["stable_diffusion"]
    else:
        model["pixel"] = {"device": config["model"]["pixel"]["device"]}
    return model


def _sampling(config: Mapping[str, Any], keys) -> dict[str, Any]:
    return {k: v for k, v in config["sampling"].items() if k in keys}


# ---------------------------------------------------------------------------- RL rounds
def sample_round(config: Mapping[str, Any], exp: str) -> dict[str, Any]:
    """sample_round of ``exp``: the experiment keys sampling reads, the sampling setup that changes
    a recorded round, and the backend. Other experiments, the batch size (images do not depend on
    it) and the unused backend's keys are left out, so editing them re-runs no round."""
    from marsdiff.rl.experiments import experiment_settings

    settings = experiment_settings(config["experiments"], exp, config["sampling"])
    return {"experiment": {k: v for k, v in settings.items() if k in SAMPLE_KEYS},
            "sampling": _sampling(config, ROUND_SAMPLING_KEYS), "model": backend(config)}


def update_round(config: Mapping[str, Any], exp: str) -> dict[str, Any]:
    """update_round of ``exp``: every experiment key but the round count and the reward."""
    from marsdiff.rl.experiments import experiment_settings

    settings = experiment_settings(config["experiments"], exp, config["sampling"])
    return {"experiment": {k: v for k, v in settings.items() if k not in UPDATE_SKIPS},
            "sampling": _sampling(config, ROUND_SAMPLING_KEYS), "model": backend(config)}


def plot_experiment(config: Mapping[str, Any], exp: str) -> dict[str, Any]:
    """The A/A base paired with ``exp`` on the same seeds ('' when none) and its control."""
    from marsdiff.study.pairing import experiment_control, paired_base

    return {"paired_base": paired_base(config["experiments"], exp, config["sampling"]) or "",
            "control": experiment_control(config, exp)}


# ---------------------------------------------------------------------------- evaluation
def evaluation_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The schema-filled evaluation section with its steps resolved (null: sampling.steps)."""
    from marsdiff.evalset.models import evaluation_steps

    return {**config["evaluation"], "steps": evaluation_steps(config)}


def select_knob(config: Mapping[str, Any]) -> dict[str, Any]:
    """The frozen knob's choice: the resolved evaluation.baseline settings (grid, images, steps,
    fraction, rule, k, evaluation seed, base knobs and class weights), the reference seed (the
    validation draw of train crops), the chain's floor and the backend."""
    from marsdiff.evalset.models import selection_settings

    return {"selection": selection_settings(config), "reference_seed": int(config["reference"]["seed"]),
            "sampling": _sampling(config, ("min_std", "device")), "model": backend(config)}


def generate_samples(config: Mapping[str, Any], plan: Plan, name: str, stream: int = 0) -> dict[str, Any]:
    """What one evaluated model's images depend on: its spec (knobs, or experiment and round: the
    policy's content is an input; the frozen knob's knobs are select_knob's JSON, an input), M,
    the evaluation seed, stream and steps, the chain's floor and eta, and the backend. The grid's
    other points, the metric and plot settings and the batch size are left out, so editing them
    re-draws no image. Stream 0 has no stream key: adding streams re-draws none of its images."""
    section = evaluation_settings(config)
    params = {"model_spec": plan.eval_model[name], "images": section["images"], "seed": section["seed"],
              "steps": section["steps"], "sampling": _sampling(config, ("min_std", "device", "eta")), "model": backend(config)}
    if int(stream) > 0:
        params["stream"] = int(stream)
    return params


def generate_base_samples(config: Mapping[str, Any], plan: Plan, stream: int = 0) -> dict[str, Any]:
    """What the base model's settings' images on one stream depend on: each one's spec (the
    frozen knob's knobs are select_knob's JSON, an input) and what they share with a policy's
    draw (:func:`generate_samples`). One job draws them all, so a change to any spec re-draws
    every one of them on that stream (docs/evaluation.md, "Re-runs")."""
    shared = generate_samples(config, plan, plan.base_models[0], stream)
    del shared["model_spec"]
    return {"model_specs": [plan.eval_model[name] for name in plan.base_models], **shared}


def extract_sample_features(plan: Plan) -> list[str]:
    """The (stream, model) sets in the order of the rule's inputs and outputs."""
    from marsdiff.workflow.plan import stream_set_label

    return [stream_set_label(s, name) for s, name in plan.eval_sets]


def evaluate(config: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """The models in the order of the inputs, the extractor and the metric settings."""
    return {"models": list(plan.eval_models), "extractor": plan.score_extractor,
            "metrics": evaluation_settings(config)["metrics"]}


def pixel_statistics(config: Mapping[str, Any]) -> dict[str, Any]:
    """The bootstrap settings pixel_statistics shares with evaluate, nothing else (a k-NN k or
    n_modes re-runs evaluate only)."""
    metrics = evaluation_settings(config)["metrics"]
    return {k: metrics[k] for k in PIXEL_STATISTICS_KEYS}


def evaluation_rewards(config: Mapping[str, Any], plan: Plan) -> dict[str, dict[str, Any]]:
    """The reward each credit figure uses: the experiment's (override merged), the top-level one for base."""
    rewards = {}
    for name in plan.credit_models:
        exp = plan.eval_model[name]["experiment"]
        rewards[name] = dict(plan.rewards[exp]) if exp else dict(config["reward"])
    return rewards


def plot_evaluation(config: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    return {"models": list(plan.eval_models), "extractor": plan.score_extractor,
            "plots": evaluation_settings(config)["plots"], "rewards": evaluation_rewards(config, plan)}


def report_summary(config: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    section = evaluation_settings(config)
    return {"models": list(plan.eval_models), "metrics": section["metrics"], "images": section["images"],
            "steps": section["steps"], "streams": list(plan.eval_streams), "endpoints": section["endpoints"]}


# ---------------------------------------------------------------------------- export and study
def export_dataset(config: Mapping[str, Any]) -> dict[str, Any]:
    """The whole config: a dataset's labels carry its digest."""
    return dict(config)


def study_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    from marsdiff.study.pairing import study_settings

    return study_settings(config)
