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
#: Class-weight schemes resolved against the model's classes when its images are drawn:
#: inverse_frequency = 1 / the pixel model's training count per class; tails = weight 2 on the
#: first and last class (the smallest and largest craters: the pixel model orders its classes by size).
WEIGHT_SCHEMES = ("uniform", "inverse_frequency", "tails")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

DEFAULTS: dict[str, Any] = {
    "images": 64,
    "seed": 0,
    "steps": None,
    "every_k_rounds": 0,
    "streams": 1,
    "knobs": {"grid": "one_at_a_time", "eta": [1.0], "noise_scale": [1.0], "class_weights": {"uniform": "uniform"}},
    "baseline": {"grid": {"eta": [0.0, 0.5, 0.75, 1.0], "noise_scale": [1.0, 1.15]}, "images": 32, "steps": None, "k": 5,
                 "validation_fraction": 0.5, "maximise": "recall", "precision_margin": 0.03},
    "endpoints": {"primary": ["recall", "coverage"], "non_inferiority": {"precision": 0.03}, "alpha": 0.05},
    "metrics": {},
    "plots": {},
}
#: What the knob selection can maximise: the k-NN metrics it measures on the validation stream.
SELECTION_METRICS = ("precision", "recall", "density", "coverage")
GRIDS = ("one_at_a_time", "factorial")
#: Metric settings whose k-NN radius needs k other generated images (checked against M).
NEIGHBOUR_KEYS = {"k_precision_recall": 3, "k_density_coverage": 5}


def evaluation_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``evaluation`` section with every default filled (the schema fills the same ones)."""
    section = dict(cfg.get("evaluation") or {})
    out = {key: section.get(key, value) for key, value in DEFAULTS.items()}
    out["knobs"] = {**DEFAULTS["knobs"], **dict(section.get("knobs") or {})}
    out["baseline"] = {**DEFAULTS["baseline"], **dict(section.get("baseline") or {})}
    out["baseline"]["grid"] = {**DEFAULTS["baseline"]["grid"], **dict(out["baseline"]["grid"] or {})}
    out["endpoints"] = {**DEFAULTS["endpoints"], **dict(section.get("endpoints") or {})}
    out["metrics"] = dict(section.get("metrics") or {})
    out["plots"] = dict(section.get("plots") or {})
    return out


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
    return list(range(int(evaluation_section(cfg)["streams"])))


def base_knobs(cfg: Mapping[str, Any]) -> tuple[float, float]:
    """(eta, noise_scale) of the model ``base``: the point the selection rule's margin is measured from."""
    return float((cfg.get("sampling") or {}).get("eta", 1.0)), 1.0


def selection_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``evaluation.baseline`` resolved: the grid points, images, steps, split fraction and the rule."""
    baseline = evaluation_section(cfg)["baseline"]
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
        "seed": int(evaluation_section(cfg)["seed"]),
        "class_weights": (cfg.get("sampling") or {}).get("class_distribution", "uniform"),
    }


def evaluation_steps(cfg: Mapping[str, Any]) -> int:
    """Denoising steps of every evaluated model (``evaluation.steps``, default ``sampling.steps``)."""
    steps = evaluation_section(cfg)["steps"]
    return int(steps if steps is not None else (cfg.get("sampling") or {}).get("steps", 50))


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def evaluation_models(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every evaluated model in table order: ``name, kind, eta, noise_scale, class_weights,
    class_weights_name, experiment, round`` (knob values None for policies: the policy decides)."""
    from marsdiff.rl.experiments import experiment_settings

    section = evaluation_section(cfg)
    sampling = dict(cfg.get("sampling") or {})
    base_eta = float(sampling.get("eta", 1.0))
    base_weights = sampling.get("class_distribution", "uniform")
    models = [dict(name=BASE_MODEL, kind=BASE, eta=base_eta, noise_scale=1.0, class_weights=base_weights,
                   class_weights_name="sampling.class_distribution", experiment=None, round=None)]
    # The knobs of the frozen knob are chosen by stage select_knob (its JSON is the model's input).
    models.append(dict(name=FROZEN_MODEL, kind=FROZEN, eta=None, noise_scale=None, class_weights=base_weights,
                       class_weights_name="sampling.class_distribution", experiment=None, round=None))
    knobs = section["knobs"]
    weights = list(dict(knobs.get("class_weights") or {}).items())
    if knobs.get("grid", "one_at_a_time") == "factorial":
        points = list(itertools.product(knobs["eta"], knobs["noise_scale"], weights))
    else:
        # One knob away from the base setting at a time; the base's class weights are the entry
        # equal to sampling.class_distribution (or the first entry).
        base_entry = next((w for w in weights if _same(w[1], base_weights)), weights[0] if weights else None)
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
    every = int(section["every_k_rounds"] or 0)
    for exp in sorted(cfg.get("experiments") or {}):
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

    Checked from the config alone (when the Snakefile is parsed): M >= 2, every k-NN ``k``
    below M, ``n_modes`` at least 1, model names unique and path-safe, class weights that fit
    the model's classes. What needs the data (k and ``n_modes`` against the held-out size, an
    empty held-out split) is checked by the evaluate stage before any metric is computed.
    """
    section = evaluation_section(cfg)
    images = section["images"]
    if isinstance(images, bool) or not isinstance(images, int) or images < 2:
        raise MarsdiffError(f"evaluation.images = {images!r}: evaluation needs at least 2 images per model (set M >= 2)")
    metrics = section["metrics"]
    for key, default in NEIGHBOUR_KEYS.items():
        k = metrics.get(key, default)
        if isinstance(k, int) and not isinstance(k, bool) and k >= images:
            raise MarsdiffError(
                f"evaluation.metrics.{key} = {k} must be smaller than the number of generated images "
                f"per model (evaluation.images = {images})"
            )
    every = section["every_k_rounds"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise MarsdiffError(f"evaluation.every_k_rounds must be an integer >= 0 (0: final policies only), got {every!r}")
    streams = section["streams"]
    if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= MAX_STREAMS:
        raise MarsdiffError(f"evaluation.streams must be an integer in 1..{MAX_STREAMS}, got {streams!r}")
    check_selection(cfg)
    check_endpoints(section["endpoints"])
    knobs = section["knobs"]
    if knobs.get("grid", "one_at_a_time") not in GRIDS:
        raise MarsdiffError(f"evaluation.knobs.grid: {knobs.get('grid')!r} is not one of {', '.join(GRIDS)}")
    for key in ("eta", "noise_scale"):
        values = knobs.get(key)
        if not isinstance(values, list) or not values:
            raise MarsdiffError(f"evaluation.knobs.{key} must be a non-empty list of values")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0]
        if bad:
            raise MarsdiffError(f"evaluation.knobs.{key}: every value must be a number > 0, got {bad[0]!r}")
        if key == "eta" and max(values) > 1.0:
            raise MarsdiffError(f"evaluation.knobs.eta: DDIM eta must be in (0, 1], got {max(values)!r}")
    weights = knobs.get("class_weights")
    if not isinstance(weights, Mapping) or not weights:
        raise MarsdiffError(
            "evaluation.knobs.class_weights must map a name to 'uniform', 'inverse_frequency', 'tails', a list or a mapping"
        )
    backend = (cfg.get("model") or {}).get("backend", "pixel")
    size_bins = (cfg.get("reference") or {}).get("size_bins")
    for name, spec in weights.items():
        where = f"evaluation.knobs.class_weights.{name}"
        if not NAME_PATTERN.fullmatch(str(name)):
            raise MarsdiffError(f"{where}: use letters, digits, '_', '.', '-' in the name (it becomes part of a path)")
        if isinstance(spec, str):
            if spec not in WEIGHT_SCHEMES:
                raise MarsdiffError(f"{where}: {spec!r} is not one of {', '.join(WEIGHT_SCHEMES)} (or give a list / mapping)")
            if spec == "inverse_frequency" and backend != "pixel":
                raise MarsdiffError(f"{where}: inverse_frequency needs the class counts only the pixel model records")
        elif isinstance(spec, list):
            # The pixel model has one class per size category (reference.size_bins).
            if backend == "pixel" and size_bins and len(spec) != int(size_bins):
                raise MarsdiffError(
                    f"{where}: {len(spec)} weights for {size_bins} size classes (reference.size_bins = {size_bins})"
                )
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
    """``evaluation.baseline``: a grid that holds the base setting, a known metric to maximise,
    a validation part that leaves train crops, enough images for the k-NN radius."""
    baseline = evaluation_section(cfg)["baseline"]
    where = "evaluation.baseline"
    for key in ("eta", "noise_scale"):
        values = baseline["grid"].get(key)
        if not isinstance(values, list) or not values:
            raise MarsdiffError(f"{where}.grid.{key} must be a non-empty list of values")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise MarsdiffError(f"{where}.grid.{key}: every value must be a number, got {bad[0]!r}")
    if not all(0.0 <= float(v) <= 1.0 for v in baseline["grid"]["eta"]):
        raise MarsdiffError(f"{where}.grid.eta: DDIM eta must be in [0, 1], got {baseline['grid']['eta']!r}")
    if not all(float(v) > 0.0 for v in baseline["grid"]["noise_scale"]):
        raise MarsdiffError(f"{where}.grid.noise_scale: every temperature must be > 0, got {baseline['grid']['noise_scale']!r}")
    base_eta, base_noise = base_knobs(cfg)
    if base_eta not in [float(v) for v in baseline["grid"]["eta"]] or base_noise not in [
            float(v) for v in baseline["grid"]["noise_scale"]]:
        raise MarsdiffError(
            f"{where}.grid must hold the base setting (eta {number_text(base_eta)} = sampling.eta, noise_scale 1): "
            "the rule's precision margin is measured from it"
        )
    if baseline["maximise"] not in SELECTION_METRICS:
        raise MarsdiffError(f"{where}.maximise: {baseline['maximise']!r} is not one of {', '.join(SELECTION_METRICS)}")
    margin = baseline["precision_margin"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
        raise MarsdiffError(f"{where}.precision_margin must be a number >= 0, got {margin!r}")
    fraction = baseline["validation_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise MarsdiffError(f"{where}.validation_fraction must be in (0, 1], got {fraction!r}")
    images, k = baseline["images"], baseline["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MarsdiffError(f"{where}.k must be an integer >= 1, got {k!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images <= k:
        raise MarsdiffError(f"{where}.images = {images!r} must be larger than {where}.k = {k}")


def check_endpoints(endpoints: Mapping[str, Any]) -> None:
    """``evaluation.endpoints``: a non-empty primary list, margins >= 0, no metric in two roles, 0 < alpha < 1.
    Whether each name is a metric the evaluation computes is checked by report_summary (the
    names depend on the extractor)."""
    primary = endpoints.get("primary")
    if not isinstance(primary, list) or not primary or not all(isinstance(m, str) for m in primary):
        raise MarsdiffError("evaluation.endpoints.primary must be a non-empty list of metric names")
    if len(set(primary)) != len(primary):
        raise MarsdiffError(f"evaluation.endpoints.primary names a metric twice: {primary!r}")
    margins = endpoints.get("non_inferiority") or {}
    if not isinstance(margins, Mapping):
        raise MarsdiffError("evaluation.endpoints.non_inferiority must map a metric name to its margin")
    for name, margin in margins.items():
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
            raise MarsdiffError(f"evaluation.endpoints.non_inferiority.{name}: the margin must be a number >= 0, got {margin!r}")
        if name in primary:
            raise MarsdiffError(f"evaluation.endpoints: {name!r} is both a primary and a non-inferiority endpoint")
    alpha = endpoints.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise MarsdiffError(f"evaluation.endpoints.alpha must be in (0, 1), got {alpha!r}")
