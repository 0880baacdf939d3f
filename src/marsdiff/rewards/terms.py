"""The catalogue of reward terms: a kind name from the config -> a reward object.

Every term object has ``value(X)`` (a result dataclass with ``.reward``, higher = better) and
``leave_one_out(X)`` (per-image credit ``reward(X) - reward(X without x_a)``), and caches what
depends on the reference only. Kinds:

==============================  ==========================================  ==================
kind                            reward                                      options
==============================  ==========================================  ==================
mmd                             -MMD^2, RBF kernel, shared bandwidth        estimator, scale
cmmd                            -CMMD (biased, unit norm, sigma 10, x1000)  (none)
information_gain                +0.5 log det(I + K_xx/s^2)                  noise_var
conditional_information_gain    +IG(X | reference)                          noise_var
frechet                         -FD between Gaussian fits                   (none)
vendi                           +order-1 Vendi score                        (none)
coverage                        +soft coverage of the reference crops       kernel_scale
==============================  ==========================================  ==================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marsdiff.config import fill_defaults, section_schema
from marsdiff.errors import MarsdiffError
from marsdiff.rewards.coverage import Coverage
from marsdiff.rewards.frechet import Frechet
from marsdiff.rewards.information import InformationGain
from marsdiff.rewards.kernels import kernel_from_sq_distances
from marsdiff.rewards.mmd import CMMD_BANDWIDTH, CMMD_SCALE, MMD
from marsdiff.rewards.vendi import Vendi

#: The options each kind takes; their defaults are the schema's (``reward.terms`` entries,
#: ``defaultsBy: kind``), so a term built outside a whole config gets the same ones.
TERM_OPTIONS: dict[str, tuple[str, ...]] = {
    "mmd": ("estimator", "scale"),
    "cmmd": (),
    "information_gain": ("noise_var",),
    "conditional_information_gain": ("noise_var",),
    "frechet": (),
    "vendi": (),
    "coverage": ("kernel_scale",),
}
TERM_KINDS = tuple(TERM_OPTIONS)
#: The keys of a term spec that are not options of its kind.
TERM_KEYS = ("kind", "weight", "standardise")
#: Kinds whose kernel uses the shared reward bandwidth (cmmd fixes its own; frechet has none).
BANDWIDTH_KINDS = ("mmd", "information_gain", "conditional_information_gain", "vendi", "coverage")


def term_options(kind: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The kind's options of a term spec (its kind, weight and standardise keys are ignored), the
    ones left out filled from the schema; unknown kinds or options are errors (the schema lists
    every kind's options on every term, so the one-kind check is made here)."""
    if kind not in TERM_OPTIONS:
        raise MarsdiffError(f"unknown reward kind {kind!r}; choose one of {', '.join(TERM_KINDS)}")
    allowed = TERM_OPTIONS[kind]
    options = {key: value for key, value in (options or {}).items() if value is not None and key not in TERM_KEYS}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise MarsdiffError(f"reward kind {kind!r} has no option(s) {unknown}; it takes {sorted(allowed) or 'none'}")
    spec = {**options, "kind": kind}
    fill_defaults(spec, section_schema("reward.terms.*"))
    return {key: spec[key] for key in allowed}


def build_term(
    kind: str,
    reference: np.ndarray,
    bandwidth: float,
    options: dict[str, Any] | None = None,
    reference_sq_distances: np.ndarray | None = None,
):
    """A reward object of ``kind`` against ``reference`` with a resolved (numeric) bandwidth.

    ``reference_sq_distances`` (the reference rows' squared-distance matrix) saves recomputing
    the reference kernel when many terms or baseline draws share one reference.
    """
    opts = term_options(kind, options)
    kyy = None
    if reference_sq_distances is not None and kind in ("mmd", "conditional_information_gain"):
        kyy = kernel_from_sq_distances(reference_sq_distances, bandwidth)
    if kind == "mmd":
        return MMD(reference, bandwidth, opts["estimator"], opts["scale"], reference_kernel=kyy)
    if kind == "cmmd":
        return MMD(reference, CMMD_BANDWIDTH, "biased", CMMD_SCALE, unit_norm=True)
    if kind == "information_gain":
        return InformationGain(reference, bandwidth, opts["noise_var"])
    if kind == "conditional_information_gain":
        return InformationGain(reference, bandwidth, opts["noise_var"], conditional=True, reference_kernel=kyy)
    if kind == "frechet":
        return Frechet(reference)
    if kind == "coverage":
        return Coverage(reference, bandwidth, opts["kernel_scale"])
    return Vendi(reference, bandwidth)
