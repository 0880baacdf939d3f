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

from marsdiff.rewards.combined import CombinedResult, PerImageCredit, RewardConfig, RewardModel
from marsdiff.rewards.frechet import Frechet, FrechetResult, frechet_distance
from marsdiff.rewards.information import (
    InformationGain,
    InformationGainResult,
    conditional_information_gain,
    information_gain,
)
from marsdiff.rewards.kernels import median_heuristic, rbf_kernel
from marsdiff.rewards.mmd import MMD, MMDResult, cmmd, mmd2
from marsdiff.rewards.per_image import per_image_table
from marsdiff.rewards.terms import TERM_KINDS, build_term
from marsdiff.rewards.vendi import Vendi, VendiResult, vendi_score

__all__ = [
    "CombinedResult",
    "Frechet",
    "FrechetResult",
    "InformationGain",
    "InformationGainResult",
    "MMD",
    "MMDResult",
    "PerImageCredit",
    "RewardConfig",
    "RewardModel",
    "TERM_KINDS",
    "Vendi",
    "VendiResult",
    "build_term",
    "cmmd",
    "conditional_information_gain",
    "frechet_distance",
    "information_gain",
    "median_heuristic",
    "mmd2",
    "per_image_table",
    "rbf_kernel",
    "vendi_score",
]
