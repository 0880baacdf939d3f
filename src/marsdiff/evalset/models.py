"""Which models the evaluation compares and how each one's images are drawn (no heavy imports).

The Snakefile calls :func:`evaluation_models` and :func:`check_evaluation` when it is parsed, so
this module imports only the standard library (``marsdiff.evaluation`` pulls scikit-learn, which
costs seconds per parse). The models, in table order:

* ``base``: the base model with the sampling section's knobs (eta = ``sampling.eta``, initial
  noise temperature 1, ``sampling.class_distribution``);
* ``frozen_knob``: the base model at the knob setting stage ``select_knob`` chose on the
  validation stream (:mod:`marsdiff.evalset.select`) before any test image is drawn: the
  baseline every policy's verdict is judged against (its knobs come from that stage's JSON);
* ``knob-eta<e>-ns<t>-<w>``: descriptive only, off by default: the base model at one point of
  the noise-knob grid (``evaluation.knobs``: eta, noise_scale, class_weights). ``grid: one_at_a_time`` varies one
  knob at a time from the base setting (cost linear in the values); ``factorial`` takes every
  combination. The point equal to the base setting is ``base`` itself (same seeds, same knobs:
  the same images);
* ``<exp>``: the final policy of each experiment (round ``rounds - 1``);
* ``<exp>-r<NNN>``: the policy of round NNN, for every k-th round (``evaluation.every_k_rounds``).

Every model draws image i of stream s from the same per-image seed, derived from
(``evaluation.seed``, :func:`stream_round` (s), i). Round indices: training rounds 0..998 (three
digits), test stream 0 :data:`EVALUATION_ROUND` (1000), the exported datasets 1001, the knob
selection's validation stream :data:`VALIDATION_ROUND` (1002), test streams 1..99 at 1101..1199. So
no evaluation image shares its random stream with an image any RL round trained on, the
validation stream shares none with any test stream, and the streams share none with each other.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError

#: Round index of the evaluation seeds (test stream 0): above every training round (rounds have three digits).
EVALUATION_ROUND = 1000
#: Round index of the frozen knob's validation stream (1001 is the exported datasets').
VALIDATION_ROUND = 1002
#: Test streams 1.. draw at STREAM_ROUND_BASE + s (stream 0 keeps EVALUATION_ROUND).
STREAM_ROUND_BASE = 1100
MAX_STREAMS = 99
BASE_MODEL = "base"
FROZEN_MODEL = "frozen_knob"
KNOB_PREFIX = "knob-"
#: Model kinds: the base model, the frozen knob, a (descriptive) knob setting of it, an
#: experiment's final policy, an earlier round's policy.
BASE, FROZEN, KNOB, FINAL, ROUND = "base", "frozen", "knob", "final", "round"
#: The kinds drawn from the base model's own weights at a knob setting: one job loads the model
#: once and draws all of them (stage generate_base_samples); the policies load their own round.
BASE_MODEL_KINDS = (BASE, FROZEN, KNOB)
#: Names the evaluation library gives its real-vs-real rows.
RESERVED_NAMES = ("real", "real (held-out halves)")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

#: The evaluation.metrics keys whose k-NN radius needs k other generated images (checked against M).
NEIGHBOUR_KEYS = ("k_precision_recall", "k_density_coverage")


def number_text(value: float) -> str:
    """Shortest text of a knob value for a model name: 1.0 -> '1', 0.50 -> '0.5'."""
    return format(float(value), "g")


def knob_model_name(eta: float, noise_scale: float, weights_name: str) -> str:
    return f"{KNOB_PREFIX}eta{number_text(eta)}-ns{number_text(noise_scale)}-{weights_name}"


def stream_round(stream: int) -> int:
    """Round index of test stream ``stream`` (see the module docstring for the whole layout)."""
    stream = int(stream)
    if not 0 <= stream <= MAX_STREAMS:
        raise MarsdiffError(f"evaluation stream {stream} is outside 0..{MAX_STREAMS}")
    return EVALUATION_ROUND if stream == 0 else STREAM_ROUND_BASE + stream


def evaluation_streams(cfg: Mapping[str, Any]) -> list[int]:
    """The test streams 0 .. ``evaluation.streams`` - 1."""
    return list(range(int(cfg["evaluation"]["streams"])))


def base_knobs(cfg: Mapping[str, Any]) -> tuple[float, float]:
    """(eta, noise_scale) of the model ``base``: the point the selection rule's margin is measured
    from (the sampling section's eta, and the untempered initial noise, temperature 1)."""
    return float(cfg["sampling"]["eta"]), 1.0


def selection_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``evaluation.baseline`` resolved: the grid points, images, steps, split fraction and the rule."""
    baseline = cfg["evaluation"]["baseline"]
    steps = baseline["steps"] if baseline["steps"] is not None else evaluation_steps(cfg)
    points = [(float(e), float(t)) for e, t in itertools.product(baseline["grid"]["eta"], baseline["grid"]["noise_scale"])]
    return {
        "grid": [{"eta": e, "noise_scale": t} for e, t in dict.fromkeys(points)],
        "images": int(baseline["images"]),
        "steps": int(steps),
        "validation_fraction": float(baseline["validation_fraction"]),
        "maximise": str(baseline["maximise"]),
        "precision_margin": float(baseline["precision_margin"]),
        "base": dict(zip(("eta", "noise_scale"), base_knobs(cfg))),
        "k": int(baseline["k"]),
        "seed": int(cfg["evaluation"]["seed"]),
        "class_weights": cfg["sampling"]["class_distribution"],
    }


def evaluation_steps(cfg: Mapping[str, Any]) -> int:
    """Denoising steps of every evaluated model (``evaluation.steps``; null: ``sampling.steps``)."""
    steps = cfg["evaluation"]["steps"]
    return int(steps if steps is not None else cfg["sampling"]["steps"])


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def evaluation_models(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every evaluated model in table order: ``name, kind, eta, noise_scale, class_weights,
    class_weights_name, experiment, round`` (knob values None for policies: the policy decides)."""
    from marsdiff.rl.experiments import experiment_settings

    section = cfg["evaluation"]
    sampling = cfg["sampling"]
    base_eta = float(sampling["eta"])
    base_weights = sampling["class_distribution"]
    models = [dict(name=BASE_MODEL, kind=BASE, eta=base_eta, noise_scale=1.0, class_weights=base_weights,
                   class_weights_name="sampling.class_distribution", experiment=None, round=None)]
    # The knobs of the frozen knob are chosen by stage select_knob (its JSON is the model's input).
    models.append(dict(name=FROZEN_MODEL, kind=FROZEN, eta=None, noise_scale=None, class_weights=base_weights,
                       class_weights_name="sampling.class_distribution", experiment=None, round=None))
    knobs = section["knobs"]
    weights = list(knobs["class_weights"].items())
    if knobs["grid"] == "factorial":
        points = list(itertools.product(knobs["eta"], knobs["noise_scale"], weights))
    else:
        # One knob away from the base setting at a time; the base's class weights are the entry
        # equal to sampling.class_distribution (or the first entry: the schema asks for one at least).
        base_entry = next((w for w in weights if _same(w[1], base_weights)), weights[0])
        points = [(eta, 1.0, base_entry) for eta in knobs["eta"]]
        points += [(base_eta, t, base_entry) for t in knobs["noise_scale"]]
        points += [(base_eta, 1.0, w) for w in weights]
    seen = set()
    for eta, noise_scale, (weights_name, spec) in points:
        # The grid point with the base model's own knobs is the base model: same seeds, same images.
        if float(eta) == base_eta and float(noise_scale) == 1.0 and _same(spec, base_weights):
            continue
        if (float(eta), float(noise_scale), weights_name) in seen:
            continue
        seen.add((float(eta), float(noise_scale), weights_name))
        models.append(dict(name=knob_model_name(eta, noise_scale, weights_name), kind=KNOB, eta=float(eta),
                           noise_scale=float(noise_scale), class_weights=spec, class_weights_name=str(weights_name),
                           experiment=None, round=None))
    every = int(section["every_k_rounds"])
    for exp in sorted(cfg["experiments"]):
        rounds = experiment_settings(cfg["experiments"], exp, sampling)["rounds"]
        policy = dict(kind=FINAL, eta=None, noise_scale=None, class_weights=None, class_weights_name=None, experiment=exp)
        models.append(dict(name=exp, round=rounds - 1, **policy))
        if every > 0:
            for r in range(every - 1, rounds - 1, every):
                models.append(dict(policy, name=f"{exp}-r{r:03d}", kind=ROUND, round=r))
    return models


def frozen_spec(spec: Mapping[str, Any], selection: Mapping[str, Any]) -> dict[str, Any]:
    """The frozen knob's spec with the knobs stage select_knob chose (its JSON, read)."""
    chosen = selection.get("chosen") or {}
    if "eta" not in chosen or "noise_scale" not in chosen:
        raise MarsdiffError("the knob selection names no chosen setting; re-run stage select_knob")
    return {**dict(spec), "eta": float(chosen["eta"]), "noise_scale": float(chosen["noise_scale"])}


def check_evaluation(cfg: Mapping[str, Any], models: list[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Refuse evaluation settings that cannot work, with one line naming the key; return the models.

    ``cfg`` is the schema-checked config (its types, ranges, enums and name patterns are the
    schema's). Checked here, from the config alone (when the Snakefile is parsed), is what the
    schema cannot express, a relation between keys: every k-NN ``k`` below M, the selection grid
    holding the base setting and its images above its k, no metric in two endpoint roles, class
    weights that fit the model's classes, model names unique and path-safe. What needs the data
    (k and ``n_modes`` against the held-out size, an empty held-out split) is checked by the
    evaluate stage before any metric is computed.
    """
    section = cfg["evaluation"]
    images = section["images"]
    for key in NEIGHBOUR_KEYS:
        k = section["metrics"][key]
        if k >= images:
            raise MarsdiffError(
                f"evaluation.metrics.{key} = {k} must be smaller than the number of generated images "
                f"per model (evaluation.images = {images})"
            )
    check_selection(cfg)
    check_endpoints(section["endpoints"])
    backend = cfg["model"]["backend"]
    size_bins = cfg["reference"]["size_bins"]
    for name, spec in section["knobs"]["class_weights"].items():
        where = f"evaluation.knobs.class_weights.{name}"
        if spec == "inverse_frequency" and backend != "pixel":
            raise MarsdiffError(f"{where}: inverse_frequency needs the class counts only the pixel model records")
        # The pixel model has one class per size category (reference.size_bins).
        if isinstance(spec, list) and backend == "pixel" and len(spec) != int(size_bins):
            raise MarsdiffError(f"{where}: {len(spec)} weights for {size_bins} size classes (reference.size_bins = {size_bins})")
    models = list(models) if models is not None else evaluation_models(cfg)
    seen: dict[str, str] = {}
    for model in models:
        name = model["name"]
        if name in RESERVED_NAMES:
            raise MarsdiffError(f"model name {name!r} is reserved for the real-vs-real baselines; rename the experiment")
        if not NAME_PATTERN.fullmatch(name):
            raise MarsdiffError(f"evaluation model name {name!r} is not path-safe (letters, digits, '_', '.', '-')")
        if name in seen:
            raise MarsdiffError(
                f"evaluation model name {name!r} is used twice ({seen[name]} and {model['kind']}): rename the "
                "experiment or the class_weights entry"
            )
        seen[name] = model["kind"]
    return models


def check_selection(cfg: Mapping[str, Any]) -> None:
    """``evaluation.baseline`` beyond the schema: a grid that holds the base setting and more
    validation images than the k-NN k."""
    baseline = cfg["evaluation"]["baseline"]
    where = "evaluation.baseline"
    base_eta, base_noise = base_knobs(cfg)
    if base_eta not in [float(v) for v in baseline["grid"]["eta"]] or base_noise not in [
            float(v) for v in baseline["grid"]["noise_scale"]]:
        raise MarsdiffError(
            f"{where}.grid must hold the base setting (eta {number_text(base_eta)} = sampling.eta, noise_scale 1): "
            "the rule's precision margin is measured from it"
        )
    images, k = baseline["images"], baseline["k"]
    if images <= k:
        raise MarsdiffError(f"{where}.images = {images!r} must be larger than {where}.k = {k}")


def check_endpoints(endpoints: Mapping[str, Any]) -> None:
    """``evaluation.endpoints`` beyond the schema: no metric both primary and non-inferiority.
    Whether each name is a metric the evaluation computes is checked by report_summary (the
    names depend on the extractor)."""
    for name in endpoints["non_inferiority"]:
        if name in endpoints["primary"]:
            raise MarsdiffError(f"evaluation.endpoints: {name!r} is both a primary and a non-inferiority endpoint")
