"""Which models the evaluation compares and how each one's images are drawn (no heavy imports).

The Snakefile calls :func:`evaluation_models` and :func:`check_evaluation` when it is parsed, so
this module imports only the standard library (``marsdiff.evaluation`` pulls scikit-learn, which
costs seconds per parse). The models, in table order:

* ``base``: the base model with the sampling section's knobs (eta = ``sampling.eta``, initial
  noise temperature 1, ``sampling.class_distribution``);
* ``knob-eta<e>-ns<t>-<w>``: the base model at one point of the noise-knob grid
  (``evaluation.knobs``: eta, noise_scale, class_weights). ``grid: one_at_a_time`` varies one
  knob at a time from the base setting (cost linear in the values); ``factorial`` takes every
  combination. The point equal to the base setting is ``base`` itself (same seeds, same knobs:
  the same images);
* ``<exp>``: the final policy of each experiment (round ``rounds - 1``);
* ``<exp>-r<NNN>``: the policy of round NNN, for every k-th round (``evaluation.every_k_rounds``).

Every model draws image i from the same per-image seed, derived from (``evaluation.seed``,
:data:`EVALUATION_ROUND`, i). Training rounds use round indices 0..998 (three digits), so no
evaluation image shares its random stream with an image any RL round trained on.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError

#: Round index of the evaluation seeds: above every training round (rounds have three digits).
EVALUATION_ROUND = 1000
BASE_MODEL = "base"
KNOB_PREFIX = "knob-"
#: Model kinds: the base model, a knob setting of it, an experiment's final policy, an earlier round's policy.
BASE, KNOB, FINAL, ROUND = "base", "knob", "final", "round"
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
    "knobs": {"grid": "one_at_a_time", "eta": [1.0], "noise_scale": [1.0], "class_weights": {"uniform": "uniform"}},
    "metrics": {},
    "plots": {},
}
GRIDS = ("one_at_a_time", "factorial")
#: Metric settings whose k-NN radius needs k other generated images (checked against M).
NEIGHBOUR_KEYS = {"k_precision_recall": 3, "k_density_coverage": 5}


def evaluation_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``evaluation`` section with every default filled (the schema fills the same ones)."""
    section = dict(cfg.get("evaluation") or {})
    out = {key: section.get(key, value) for key, value in DEFAULTS.items()}
    out["knobs"] = {**DEFAULTS["knobs"], **dict(section.get("knobs") or {})}
    out["metrics"] = dict(section.get("metrics") or {})
    out["plots"] = dict(section.get("plots") or {})
    return out


def number_text(value: float) -> str:
    """Shortest text of a knob value for a model name: 1.0 -> '1', 0.50 -> '0.5'."""
    return format(float(value), "g")


def knob_model_name(eta: float, noise_scale: float, weights_name: str) -> str:
    return f"{KNOB_PREFIX}eta{number_text(eta)}-ns{number_text(noise_scale)}-{weights_name}"


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


def model_names(models: list[Mapping[str, Any]], kinds: tuple[str, ...] | None = None) -> list[str]:
    return [m["name"] for m in models if kinds is None or m["kind"] in kinds]


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
