"""Weighted combinations of reward terms, configured by the ``reward:`` config section.

``R(X) = sum_t w_t * z_t(X)`` over the configured terms, each oriented so that higher is better.
A term's standardisation is either

* ``none``: ``z_t = r_t`` (raw reward), or
* ``zscore``: ``z_t = (r_t - mean_t(n)) / std_t(n)``, where mean and std come from the
  reference-vs-reference baseline at the same set size n: ``baseline_repeats`` times, n
  reference rows are drawn without replacement and scored against the remaining reference
  rows. So z = 0 means "as good as a fresh real sample of this size", and terms on very
  different scales (MMD^2 ~ 1e-2, information gain ~ 1e1) get comparable weights. The baseline
  is cached per n (FD and information gain depend strongly on n).

Per-image credit of the combination is exact: the standardisation is an affine map fixed for
the round's set size, so ``R(X) - R(X - a) = sum_t w_t (r_t(X) - r_t(X - a)) / std_t`` (std = 1
for ``none``). Terms with weight 0 are still evaluated and reported (and validated) but do not
enter R. The kernel bandwidth is resolved once from the reference (median heuristic x
``bandwidth_scale``, or a fixed number) and shared by all kernel terms.

Pool. ``score`` and ``leave_one_out`` take an optional ``pool``: features of earlier generated
images (``reward.pool.rounds`` previous rounds of the experiment). The set terms are then
computed on ``S u P`` (the round's n images and the p pool rows), standardised at set size
n + p, and credit goes to the round's own images only: ``R(S u P) - R(S u P - x_i)`` for i in S.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.rewards.inputs import as_features, check_same_dim
from marsdiff.rewards.kernels import resolve_bandwidth, squared_distances
from marsdiff.rewards.terms import build_term, term_options

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TermConfig:
    name: str
    kind: str
    weight: float
    standardise: str
    options: dict[str, Any]


@dataclass(frozen=True)
class RewardConfig:
    """The ``reward:`` section, filled from the schema (whose descriptions give each default's
    reason); ``pool_rounds`` is ``pool.rounds``. The ``validation`` subsection is
    :class:`~marsdiff.rewards.validation.ValidationConfig`'s."""

    terms: tuple[TermConfig, ...]
    bandwidth: float | str
    bandwidth_scale: float
    baseline_repeats: int
    seed: int
    duplicate_factor: float
    novel_factor: float
    pool_rounds: int

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> "RewardConfig":
        """Build from the ``reward:`` config section; keys left out take the schema's defaults."""
        section = filled_section("reward", section)
        terms = tuple(
            TermConfig(name, spec["kind"], float(spec["weight"]), spec["standardise"], term_options(spec["kind"], spec))
            for name, spec in section["terms"].items()
        )
        # (the schema checks each value's range; this needs all the terms at once)
        if not any(term.weight != 0.0 for term in terms):
            raise MarsdiffError("reward.terms: at least one term needs a non-zero weight")
        return cls(
            terms=terms,
            bandwidth=section["bandwidth"],
            bandwidth_scale=float(section["bandwidth_scale"]),
            baseline_repeats=int(section["baseline_repeats"]),
            seed=int(section["seed"]),
            duplicate_factor=float(section["duplicate_factor"]),
            novel_factor=float(section["novel_factor"]),
            pool_rounds=int(section["pool"]["rounds"]),
        )

    def with_bandwidth_scale(self, scale: float) -> "RewardConfig":
        return dataclasses.replace(self, bandwidth_scale=float(scale))

    def term_names(self) -> list[str]:
        return [term.name for term in self.terms]


@dataclass(frozen=True)
class Baseline:
    """Reference-vs-reference statistics of each z-scored term at set size n."""

    n: int
    repeats: int
    mean: dict[str, float]
    std: dict[str, float]


@dataclass(frozen=True)
class TermScore:
    name: str
    kind: str
    weight: float
    raw: float
    standardised: float
    result: Any


@dataclass(frozen=True)
class CombinedResult:
    value: float
    terms: dict[str, TermScore]
    bandwidth: float
    bandwidth_source: str
    n_generated: int

    @property
    def reward(self) -> float:
        return self.value


@dataclass(frozen=True)
class PerImageCredit:
    """``reward(X) - reward(X without x_a)`` for the combination and for each raw term."""

    combined: np.ndarray
    terms: dict[str, np.ndarray]


class RewardModel:
    """The configured reward against one reference feature set."""

    def __init__(
        self,
        reference: Any,
        config: RewardConfig | dict[str, Any] | None = None,
        reference_sq_distances: np.ndarray | None = None,
        baseline_terms: tuple[str, ...] = (),
    ):
        """``reference_sq_distances``: the reference rows' squared-distance matrix, when the caller
        already has it (validation reuses it across bandwidths); computed here otherwise.
        ``baseline_terms``: z-scored terms to standardise even at weight 0 (validation compares
        mixes of them)."""
        self.config = config if isinstance(config, RewardConfig) else RewardConfig.from_dict(config)
        self.reference = as_features(reference, "reference features", min_rows=3)
        m = len(self.reference)
        if reference_sq_distances is None:
            reference_sq_distances = squared_distances(self.reference)
        elif reference_sq_distances.shape != (m, m):
            raise MarsdiffError(f"reference distance matrix has shape {reference_sq_distances.shape}, expected {(m, m)}")
        self._sq_distances = reference_sq_distances
        self.bandwidth, self.bandwidth_source = resolve_bandwidth(
            self.config.bandwidth, self.reference, self.config.bandwidth_scale, reference_sq_distances
        )
        self.terms = {
            t.name: build_term(t.kind, self.reference, self.bandwidth, t.options, reference_sq_distances)
            for t in self.config.terms
        }
        self._baselines: dict[int, Baseline] = {}
        self._baseline_terms = frozenset(baseline_terms)

    def _standardised_terms(self) -> list[TermConfig]:
        return [t for t in self.config.terms
                if t.standardise == "zscore" and (t.weight != 0.0 or t.name in self._baseline_terms)]

    def baseline(self, n: int) -> Baseline:
        """Mean and std of each z-scored term over reference subsets of size n vs the rest (cached)."""
        if n in self._baselines:
            return self._baselines[n]
        terms = self._standardised_terms()
        m = len(self.reference)
        if terms and m - n < 2:
            raise MarsdiffError(
                f"z-score baseline needs more reference rows than generated images: {m} reference vs n = {n} "
                "(use standardise: none or a larger reference set)"
            )
        rng = np.random.default_rng([self.config.seed, n])
        draws: dict[str, list[float]] = {t.name: [] for t in terms}
        for _ in range(self.config.baseline_repeats if terms else 0):
            order = rng.permutation(m)
            subset, rest = self.reference[order[:n]], self.reference[order[n:]]
            rest_distances = self._sq_distances[np.ix_(order[n:], order[n:])]
            for term in terms:
                scorer = build_term(term.kind, rest, self.bandwidth, term.options, rest_distances)
                draws[term.name].append(scorer.value(subset).reward)
        mean = {name: float(np.mean(v)) for name, v in draws.items()}
        std = {name: float(np.std(v, ddof=1)) for name, v in draws.items()}
        for name, spread in std.items():
            if not (np.isfinite(spread) and spread > 0.0):
                raise MarsdiffError(
                    f"reward term {name!r}: the reference-vs-reference baseline has zero spread "
                    "(identical reference features?); use standardise: none"
                )
        baseline = Baseline(n, self.config.baseline_repeats, mean, std)
        self._baselines[n] = baseline
        log.debug("reward baseline at n=%d: mean %s std %s", n, mean, std)
        return baseline

    def _generated(self, generated: Any, min_rows: int) -> np.ndarray:
        x = as_features(generated, "generated features", min_rows=min_rows)
        check_same_dim(x, self.reference)
        return x

    def _with_pool(self, x: np.ndarray, pool: Any) -> np.ndarray:
        """``S u P``: the round's rows first (credit is read off rows 0..n-1), then the pool's."""
        if pool is None:
            return x
        rows = as_features(pool, "pool features", min_rows=0) if len(pool) else np.empty((0, x.shape[1]))
        check_same_dim(rows, self.reference)
        return np.concatenate([x, rows]) if len(rows) else x

    def score(self, generated: Any, pool: Any = None) -> CombinedResult:
        """Every term's raw and standardised reward and their weighted sum (on ``S u pool``)."""
        x = self._with_pool(self._generated(generated, min_rows=2), pool)
        baseline = self.baseline(len(x))
        scores, total = {}, 0.0
        for term in self.config.terms:
            result = self.terms[term.name].value(x)
            raw = float(result.reward)
            if term.name in baseline.mean:
                standardised = (raw - baseline.mean[term.name]) / baseline.std[term.name]
            else:
                standardised = raw
            total += term.weight * standardised
            scores[term.name] = TermScore(term.name, term.kind, term.weight, raw, standardised, result)
        return CombinedResult(total, scores, self.bandwidth, self.bandwidth_source, len(x))

    def leave_one_out(self, generated: Any, pool: Any = None) -> PerImageCredit:
        """Exact per-image credit of the combination and of each raw term (closed forms), for the
        rows of ``generated`` only; with a ``pool`` the sets are ``S u pool``."""
        x = self._generated(generated, min_rows=3)
        n = len(x)
        x = self._with_pool(x, pool)
        baseline = self.baseline(len(x))
        per_term = {term.name: self.terms[term.name].leave_one_out(x)[:n] for term in self.config.terms}
        combined = np.zeros(n)
        for term in self.config.terms:
            if term.weight != 0.0:
                combined += term.weight * per_term[term.name] / baseline.std.get(term.name, 1.0)
        return PerImageCredit(combined, per_term)
