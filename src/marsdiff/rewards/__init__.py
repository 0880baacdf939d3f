"""Diversity rewards on feature sets, with exact per-image (leave-one-out) credit.

Modules, one concept each:

* ``inputs``      - feature-matrix checks (float64, finite, 2-D, same dimension)
* ``kernels``     - RBF kernel and bandwidth (fixed or median heuristic)
* ``mmd``         - MMD^2 (unbiased / biased, CMMD conventions)
* ``information`` - GP information gain and the reference-conditioned gain
* ``frechet``     - Fréchet distance between Gaussian fits
* ``vendi``       - order-1 Vendi score
* ``terms``       - the catalogue of reward kinds used in configs
* ``combined``    - weighted, standardised combinations (``RewardModel``)
* ``per_image``   - the per-image reward table (rank, nearest neighbours, duplicate / novel)
* ``ladders``     - diversity ladders built from reference features
* ``validation``  - ladder validation, its outputs and ``require_validated``

Every reward is oriented "higher is better"; every result is a small frozen dataclass that
records the bandwidth (and estimator) it used.
"""

from marsdiff.lazy import lazy_exports

#: Each public name and the submodule that defines it. The submodules are imported on first
#: access (PEP 562), not here: importing any ``marsdiff.rewards.*`` module runs this file first,
#: and score_round needs neither scipy.stats (validation's ladders) nor every reward term, so
#: eager imports cost each scoring job seconds of start-up (docs/performance.md).
_EXPORTS = {
    "CombinedResult": "combined",
    "PerImageCredit": "combined",
    "RewardConfig": "combined",
    "RewardModel": "combined",
    "Frechet": "frechet",
    "FrechetResult": "frechet",
    "frechet_distance": "frechet",
    "InformationGain": "information",
    "InformationGainResult": "information",
    "conditional_information_gain": "information",
    "information_gain": "information",
    "median_heuristic": "kernels",
    "rbf_kernel": "kernels",
    "MMD": "mmd",
    "MMDResult": "mmd",
    "cmmd": "mmd",
    "mmd2": "mmd",
    "per_image_table": "per_image",
    "TERM_KINDS": "terms",
    "build_term": "terms",
    "Vendi": "vendi",
    "VendiResult": "vendi",
    "vendi_score": "vendi",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
