"""Validation of rewards on diversity ladders, its output tables and figures, and the gate training uses.

For each bootstrap repeat the ``train`` rows of the reference set (the held-out split is for
evaluation only) are split at random, stratified by size category, into a *pool* and a *target*
half. Ladder sets of ``set_size`` rows are drawn from the pool (:mod:`marsdiff.rewards.ladders`)
and every configured reward term plus the weighted ``combined`` reward is scored against the
target half: the reward never sees the rows it is scored on as reference. Repeats give the
intervals (2.5-97.5 percentiles).

A reward passes a ladder when the Spearman rank correlation between level and mean reward per
level is at least ``min_spearman`` (every reward is oriented higher = better, every ladder
goes from less to more diverse). A reward is validated when it passes every ladder.
Kernel rewards are also scored at each ``bandwidth_scales`` multiple of the median heuristic:
the ``bandwidth_sweep`` section of validation.json, used to choose the default bandwidth.

Mix selection: the per-draw Spearman rho (one draw = one set) of every weight vector of a
declared grid over ``mix.terms`` (weights summing to 1 in steps of ``mix.step``), computed from
the terms' z-scores; the rule (:func:`select_mix`): among the mixes that pass the level-mean
gate on every ladder, the highest *minimum* per-draw rho over the ladders (ties: the higher
mean). Train split only, so the choice never reads held-out crops.

Credit signal-to-noise (:mod:`marsdiff.rewards.reliability`): split-half correlation of a
probe image's credit in two disjoint companion sets drawn from the pool half, scored against
the target half, for the configured mix, the previous default (0.7 mmd + 0.3
information_gain) and each of their terms, at ``snr.set_size`` images plus each pool of
``snr.pool_rounds`` x set_size earlier images.

Outputs: ``ladder.csv`` (ladder, level, repeat, reward, bandwidth_scale, bandwidth, value,
standardised), ``ladder_<name>.png`` (one panel per reward, mean with interval vs level),
``ladder_rho.png`` (per-draw rho of every reward on every ladder) and ``validation.json`` (see
:func:`summarise`, plus ``mix_selection`` and ``credit_snr``), written by stage validate_rewards
(:mod:`marsdiff.stages.validate_rewards`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.rewards.combined import RewardConfig, RewardModel
from marsdiff.rewards.inputs import as_features
from marsdiff.rewards.kernels import squared_distances
from marsdiff.rewards.ladders import build_ladder
from marsdiff.rewards.reliability import agreement, mix_credit, split_half_credits
from marsdiff.rewards.terms import BANDWIDTH_KINDS

log = logging.getLogger(__name__)

COMBINED = "combined"
#: ladder.csv columns; ``bandwidth`` is the kernel sigma of that repeat's target half
#: (unused by frechet and cmmd, which has its own sigma = 10)
#: ``standardised``: the z-score of a term at the validated bandwidth (NaN elsewhere / unstandardised)
TABLE_COLUMNS = ["ladder", "level", "repeat", "reward", "bandwidth_scale", "bandwidth", "value", "standardised"]
TRAIN_SPLIT = "train"
#: the default mix before issue 18, measured beside the configured one (credit signal-to-noise)
PREVIOUS_DEFAULT = {"mmd": 0.7, "information_gain": 0.3}


@dataclass(frozen=True)
class ValidationConfig:
    """The ``reward.validation`` section, filled from the schema; ``mix_*`` and ``snr_*`` are the
    ``mix`` and ``snr`` subsections' keys."""

    min_spearman: float
    enforce: bool
    set_size: int
    repeats: int
    ladders: tuple[str, ...]
    bandwidth_scales: tuple[float, ...]
    seed: int
    mix_terms: tuple[str, ...]
    mix_step: float
    mix_tolerance: float
    snr_set_size: int
    snr_pool_rounds: tuple[int, ...]
    snr_probes: int
    snr_repeats: int

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> "ValidationConfig":
        """Build from the ``reward.validation`` section; keys left out take the schema's defaults."""
        section = filled_section("reward.validation", section)
        mix, snr = section["mix"], section["snr"]
        config = cls(
            min_spearman=float(section["min_spearman"]),
            enforce=bool(section["enforce"]),
            set_size=int(section["set_size"]),
            repeats=int(section["repeats"]),
            ladders=tuple(section["ladders"]),
            bandwidth_scales=tuple(float(s) for s in section["bandwidth_scales"]),
            seed=int(section["seed"]),
            mix_terms=tuple(mix["terms"]),
            mix_step=float(mix["step"]),
            mix_tolerance=float(mix["tolerance"]),
            snr_set_size=int(snr["set_size"]),
            snr_pool_rounds=tuple(int(k) for k in snr["pool_rounds"]),
            snr_probes=int(snr["probes"]),
            snr_repeats=int(snr["repeats"]),
        )
        # The schema bounds the step to (0, 1]; that it divides 1 it cannot say.
        if abs(round(1.0 / config.mix_step) * config.mix_step - 1.0) > 1e-9:
            raise MarsdiffError(f"reward.validation.mix.step must divide 1 (e.g. 0.25), got {config.mix_step}")
        return config


def train_reference(features: Any, ids: list[str], manifest: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Feature rows and manifest rows (same order) of the ``train`` split only.

    Held-out rows are dropped before any check, so nothing here ever reads their values.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise MarsdiffError(f"reference features must be a 2-D array, got shape {features.shape}")
    if len(ids) != len(features):
        raise MarsdiffError(f"reference features have {len(features)} rows but the ids file lists {len(ids)} ids")
    for column in ("id", "split"):
        if column not in manifest:
            raise MarsdiffError(f"reference manifest has no {column!r} column")
    meta = manifest.set_index(manifest["id"].astype(str))
    missing = [i for i in ids if i not in meta.index]
    if missing:
        raise MarsdiffError(f"{len(missing)} feature ids are not in the manifest (first: {missing[0]})")
    meta = meta.loc[list(ids)].reset_index(drop=True)
    train = (meta["split"] == TRAIN_SPLIT).to_numpy()
    if train.sum() < 8:
        raise MarsdiffError(f"reward validation needs at least 8 'train' reference rows, found {int(train.sum())}")
    return as_features(features[train], "train reference features"), meta[train].reset_index(drop=True)


def _split(meta: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random halves (pool, target), stratified by size category when the manifest has one."""
    groups = meta["size_cat"].astype(str).to_numpy() if "size_cat" in meta else np.zeros(len(meta), dtype=str)
    pool, target = [], []
    for name in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == name))
        half = len(rows) // 2 + rng.integers(0, 2) * (len(rows) % 2)
        pool.append(rows[:half])
        target.append(rows[half:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(target))


def ladder_table(
    features: np.ndarray, meta: pd.DataFrame, reward: RewardConfig, validation: ValidationConfig
) -> pd.DataFrame:
    """Every reward at every ladder level, repeat and bandwidth scale (long format)."""
    primary = reward.bandwidth_scale
    scales = sorted(set(validation.bandwidth_scales) | {primary})
    if reward.bandwidth != "median":
        scales = [primary]  # a fixed bandwidth is not swept
    kernel_terms = {t.name for t in reward.terms if t.kind in BANDWIDTH_KINDS}
    # other bandwidths only need the kernel terms and the weighted ones (for the combination)
    swept = dataclasses.replace(reward, terms=tuple(t for t in reward.terms if t.name in kernel_terms or t.weight))
    rows = []
    for repeat in range(validation.repeats):
        rng = np.random.default_rng([validation.seed, repeat])
        pool_rows, target_rows = _split(meta, rng)
        pool, pool_meta = features[pool_rows], meta.iloc[pool_rows].reset_index(drop=True)
        ladders = {name: build_ladder(name, pool, pool_meta, validation.set_size, rng) for name in validation.ladders}
        target = features[target_rows]
        target_distances = squared_distances(target)
        for scale in scales:
            config = (reward if scale == primary else swept).with_bandwidth_scale(scale)
            # at the validated bandwidth the mix-grid terms are z-scored too (select_mix combines them)
            mix_terms = tuple(validation.mix_terms) if scale == primary else ()
            model = RewardModel(target, config, target_distances, baseline_terms=mix_terms)
            for ladder, levels in ladders.items():
                for level in levels:
                    result = model.score(level.features)
                    values = {name: (term.raw, term.standardised) for name, term in result.terms.items()}
                    values[COMBINED] = (result.value, result.value)
                    for name, (value, z) in values.items():
                        if scale == primary or name in kernel_terms or name == COMBINED:
                            z = z if scale == primary else float("nan")
                            rows.append((ladder, level.level, repeat, name, scale, result.bandwidth, value, z))
        log.info("ladder validation: repeat %d/%d done", repeat + 1, validation.repeats)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _spearman(levels: np.ndarray, means: np.ndarray) -> float | None:
    if len(levels) < 2 or np.ptp(means) == 0.0:
        return None  # a reward constant across levels cannot be validated
    # scipy.stats costs about a second to import; score_round imports this module for the
    # validation check alone and never gets here
    from scipy import stats

    rho = stats.spearmanr(levels, means).statistic
    return None if not math.isfinite(rho) else float(rho)


def summarise(table: pd.DataFrame, min_spearman: float, primary_scale: float) -> dict[str, Any]:
    """Spearman rho per reward and ladder, pass/fail, and the bandwidth sweep."""
    keys = ["bandwidth_scale", "reward", "ladder"]
    means = table.groupby(keys + ["level"])["value"].mean().reset_index()
    # secondary, finer score: rank correlation over individual draws (how reliably one draw of
    # n images orders the levels); used to compare bandwidths and feature layers, not to gate
    draws = {key: _spearman(g["level"].to_numpy(), g["value"].to_numpy()) for key, g in table.groupby(keys)}
    rewards: dict[str, Any] = {}
    sweep: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for (scale, reward, ladder), group in means.groupby(keys):
        rho = _spearman(group["level"].to_numpy(), group["value"].to_numpy())
        rho_draws = draws[(scale, reward, ladder)]
        sweep.setdefault(reward, {}).setdefault(f"{scale:g}", {})[ladder] = {"spearman": rho, "spearman_draws": rho_draws}
        if scale != primary_scale:
            continue
        entry = rewards.setdefault(reward, {"ladders": {}, "failures": []})
        passed = rho is not None and rho >= min_spearman
        entry["ladders"][ladder] = {
            "spearman": rho,
            "spearman_draws": rho_draws,
            "passed": passed,
            "levels": group["level"].tolist(),
            "mean": group["value"].tolist(),
        }
        if not passed:
            why = "constant across levels" if rho is None else f"rho {rho:.3f} < {min_spearman}"
            entry["failures"].append(f"{ladder}: {why}")
    for entry in rewards.values():
        entry["passed"] = not entry["failures"]
    return {
        "min_spearman": min_spearman,
        "bandwidth_scale": primary_scale,
        "rewards": rewards,
        "bandwidth_sweep": {reward: by_scale for reward, by_scale in sweep.items() if len(by_scale) > 1},
    }


def mix_grid(terms: tuple[str, ...], step: float) -> list[dict[str, float]]:
    """Every weight vector over ``terms`` with weights in multiples of ``step`` summing to 1."""
    units = round(1.0 / step)

    def split(total: int, parts: int):
        if parts == 1:
            yield (total,)
            return
        for first in range(total, -1, -1):
            for rest in split(total - first, parts - 1):
                yield (first,) + rest

    return [{t: k / units for t, k in zip(terms, combo)} for combo in split(units, len(terms))]


def mix_name(weights: dict[str, float]) -> str:
    return " + ".join(f"{w:g} {t}" for t, w in weights.items() if w) or "none"


def select_mix(table: pd.DataFrame, validation: ValidationConfig, min_spearman: float, primary_scale: float,
               snr: dict[str, Any] | None = None, pool_rounds: int = 0) -> dict[str, Any]:
    """The declared grid of mixes scored on the ladders, and the one the rule picks.

    Rule: among the mixes whose level means pass ``min_spearman`` on every ladder, those whose
    minimum per-draw Spearman rho over the ladders is within ``mix.tolerance`` of the best; of
    these, the one whose credit has the highest split-half Pearson r at ``pool_rounds`` (the
    configured pool; ties and a missing measurement: the higher minimum rho, then the earlier
    grid entry). Everything it reads comes from the train split.
    """
    data = table[(table["bandwidth_scale"] == primary_scale) & table["reward"].isin(validation.mix_terms)]
    present = [t for t in validation.mix_terms if t in set(data["reward"])]
    if len(present) != len(validation.mix_terms) or data["standardised"].isna().any():
        missing = sorted(set(validation.mix_terms) - set(present))
        return {"rule": None, "grid": [], "chosen": None,
                "skipped": f"mix terms not all z-scored reward terms (missing: {missing or 'standardisation'})"}
    wide = data.pivot_table(index=["ladder", "level", "repeat"], columns="reward", values="standardised").reset_index()
    by_mix = ((snr or {}).get("by_pool_rounds") or {}).get(str(pool_rounds)) or {}
    grid = []
    for weights in mix_grid(validation.mix_terms, validation.mix_step):
        value = sum(w * wide[t] for t, w in weights.items())
        per_draw, level_mean, passed = {}, {}, True
        for ladder in validation.ladders:
            rows = (wide["ladder"] == ladder).to_numpy()
            levels = wide.loc[rows, "level"].to_numpy()
            per_draw[ladder] = _spearman(levels, value[rows].to_numpy())
            means = value[rows].groupby(levels).mean()
            level_mean[ladder] = _spearman(means.index.to_numpy(), means.to_numpy())
            passed &= level_mean[ladder] is not None and level_mean[ladder] >= min_spearman
        draws = [r if r is not None else -1.0 for r in per_draw.values()]
        split_half = (by_mix.get(mix_name(weights)) or {}).get("pearson")
        grid.append({"weights": weights, "name": mix_name(weights), "spearman_draws": per_draw, "spearman": level_mean,
                     "passed": passed, "min_spearman_draws": float(min(draws)), "mean_spearman_draws": float(np.mean(draws)),
                     "credit_split_half_r": split_half})
    eligible = [g for g in grid if g["passed"]]
    chosen = None
    if eligible:
        best = max(g["min_spearman_draws"] for g in eligible)
        near = [g for g in eligible if g["min_spearman_draws"] >= best - validation.mix_tolerance]
        # max keeps the first of equals: the earlier grid entry
        chosen = max(near, key=lambda g: (g["credit_split_half_r"] if g["credit_split_half_r"] is not None else -2.0,
                                          g["min_spearman_draws"]))
    return {
        "rule": f"among mixes passing the level-mean gate on every ladder, those within {validation.mix_tolerance:g} of "
                f"the highest minimum per-draw Spearman rho over the ladders; of these the highest credit split-half "
                f"Pearson r at pool_rounds {pool_rounds}",
        "terms": list(validation.mix_terms),
        "step": validation.mix_step,
        "tolerance": validation.mix_tolerance,
        "pool_rounds": pool_rounds,
        "grid": grid,
        "chosen": chosen,
    }


def credit_snr(features: np.ndarray, meta: pd.DataFrame, reward: RewardConfig, validation: ValidationConfig,
               extra_mixes: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Split-half credit agreement of the configured mix, the previous default, ``extra_mixes``
    and every term they use.

    Pool half = candidate images, target half = reference (as on the ladders); each of
    ``snr.repeats`` splits contributes ``snr.probes`` probes, at each pool size.
    """
    configured = {t.name: t.weight for t in reward.terms if t.weight != 0.0}
    known = {t.name for t in reward.terms}
    mixes = {COMBINED: configured}
    if all(name in known for name in PREVIOUS_DEFAULT):
        mixes["previous_default"] = dict(PREVIOUS_DEFAULT)
    for name, weights in (extra_mixes or {}).items():
        if all(t in known for t, w in weights.items() if w):
            mixes.setdefault(name, {t: w for t, w in weights.items() if w})
    names = sorted({name for weights in mixes.values() for name in weights})
    # only the measured terms: weight-0 diagnostics (Vendi, FD) would dominate the cost
    measured = dataclasses.replace(reward, terms=tuple(t for t in reward.terms if t.name in names))
    out: dict[str, Any] = {"set_size": validation.snr_set_size, "probes_per_repeat": validation.snr_probes,
                           "repeats": validation.snr_repeats, "mixes": mixes, "by_pool_rounds": {}}
    for rounds in validation.snr_pool_rounds:
        companions = validation.snr_set_size * (1 + rounds) - 1
        pairs: dict[str, list[np.ndarray]] = {}
        for repeat in range(validation.snr_repeats):
            rng = np.random.default_rng([validation.seed, repeat, 18])
            pool_rows, target_rows = _split(meta, rng)
            if 2 * companions + 1 > len(pool_rows) or len(target_rows) < companions + 3:
                # (the z-score baseline draws companions + 1 target rows and needs 2 more)
                out["by_pool_rounds"][str(rounds)] = {"skipped": f"the pool half ({len(pool_rows)} rows) cannot hold "
                                                                 f"two disjoint sets of {companions} companions, or the "
                                                                 f"target half ({len(target_rows)}) their baseline"}
                break
            model = RewardModel(features[target_rows], measured, baseline_terms=tuple(names))
            std = model.baseline(companions + 1).std
            _, credits = split_half_credits(model, features[pool_rows], companions, validation.snr_probes, rng)
            for name in names:
                pairs.setdefault(name, []).append(credits[name])
            for mix, weights in mixes.items():
                pairs.setdefault(mix, []).append(mix_credit(credits, weights, std))
        else:
            out["by_pool_rounds"][str(rounds)] = {name: agreement(np.concatenate(p)) for name, p in pairs.items()}
        log.info("credit split-half at pool %d round(s) done", rounds)
    return out


def plot_rho(summary: dict[str, Any], path: str | Path) -> None:
    """Heat map of the per-draw Spearman rho of every reward (and the grid's chosen mix) on every ladder."""
    from marsdiff.io.figures import save_png, subplots

    ladders = list(summary["ladders"])
    rewards = sorted(summary["rewards"], key=lambda name: (name == COMBINED, name))
    rows = [[summary["rewards"][r]["ladders"].get(l, {}).get("spearman_draws") for l in ladders] for r in rewards]
    labels = [f"{r} ({'pass' if summary['rewards'][r]['passed'] else 'FAIL'})" for r in rewards]
    chosen = (summary.get("mix_selection") or {}).get("chosen")
    if chosen:
        rows.append([chosen["spearman_draws"].get(l) for l in ladders])
        labels.append("grid choice: " + mix_name(chosen["weights"]))
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    fig, ax = subplots(figsize=(1.3 * len(ladders) + 4.5, 0.38 * len(rows) + 1.6))
    image = ax.imshow(values, cmap="RdYlGn", vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(ladders)), ladders, fontsize=8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_title("per-draw Spearman ρ (one set = one draw) of reward vs ladder level; higher = orders diversity better",
                 fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def plot_ladder(table: pd.DataFrame, ladder: str, summary: dict[str, Any], path: str | Path) -> None:
    """One panel per reward: mean reward vs level with a 2.5-97.5 percentile interval over repeats."""
    from matplotlib.ticker import MaxNLocator

    from marsdiff.io.figures import save_png, subplots

    data = table[(table["ladder"] == ladder) & (table["bandwidth_scale"] == summary["bandwidth_scale"])]
    rewards = sorted(data["reward"].unique(), key=lambda name: (name == COMBINED, name))
    columns = min(4, max(1, len(rewards)))
    grid_rows = max(1, math.ceil(len(rewards) / columns))
    fig, axes = subplots(grid_rows, columns, figsize=(3.2 * columns, 2.6 * grid_rows), squeeze=False)
    for ax in axes.flat[len(rewards):]:
        ax.axis("off")
    for ax, reward in zip(axes.flat, rewards):
        stats_by_level = data[data["reward"] == reward].groupby("level")["value"]
        mean = stats_by_level.mean()
        low, high = stats_by_level.quantile(0.025), stats_by_level.quantile(0.975)
        ax.fill_between(mean.index, low, high, alpha=0.25)
        ax.plot(mean.index, mean.values, "o-", ms=3)
        verdict = summary["rewards"].get(reward, {"ladders": {}})["ladders"].get(ladder, {})
        rho = verdict.get("spearman")
        label = "ρ n/a" if rho is None else f"ρ {rho:.2f}"
        if verdict.get("spearman_draws") is not None:
            label += f", per draw {verdict['spearman_draws']:.2f}"
        outcome = "pass" if verdict.get("passed") else "FAIL"
        ax.set_title(f"{reward}\n{label} ({outcome}: needs ρ ≥ {summary['min_spearman']:g})", fontsize=8)
        ax.set_xlabel("ladder level (more diverse →)", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("reward, mean over sets", fontsize=7)
        ax.tick_params(labelsize=7)
    if data.empty:
        axes.flat[0].text(0.5, 0.5, f"ladder {ladder!r}: no data", ha="center")
    fig.suptitle(f"diversity ladder '{ladder}': reward (higher = better) vs level; band = 2.5-97.5 % of "
                 f"{data.groupby(['reward', 'level']).size().max() if not data.empty else 0} sets; "
                 "ρ = Spearman of the level means", fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def run_validation(
    features: Any, meta: pd.DataFrame, reward_section: dict[str, Any] | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Ladder table and summary for train-split features (in memory; no files)."""
    section = dict(reward_section or {})
    reward = RewardConfig.from_dict(section)
    validation = ValidationConfig.from_dict(section.get("validation"))
    features = as_features(features, "reference features")
    table = ladder_table(features, meta, reward, validation)
    summary = summarise(table, validation.min_spearman, reward.bandwidth_scale)
    grid = {mix_name(w): w for w in mix_grid(validation.mix_terms, validation.mix_step)}
    summary["credit_snr"] = credit_snr(features, meta, reward, validation, grid)
    summary["mix_selection"] = select_mix(table, validation, validation.min_spearman, reward.bandwidth_scale,
                                          summary["credit_snr"], reward.pool_rounds)
    summary.update(
        set_size=validation.set_size,
        repeats=validation.repeats,
        ladders=list(validation.ladders),
        n_train_reference=len(meta),
        reward_terms={t.name: {"kind": t.kind, "weight": t.weight, "standardise": t.standardise} for t in reward.terms},
        bandwidth=reward.bandwidth,
    )
    return table, summary


def require_validated(validation_json_path: str | Path, reward_name: str, enforce: bool) -> dict[str, Any] | None:
    """Raise MarsdiffError saying why unless ``reward_name`` passed every ladder (no-op check if not enforce).

    Returns the reward's entry of validation.json (None when not enforced and it is unavailable).
    Training calls this with ``reward_name="combined"`` for the configured combination.
    """
    path = Path(validation_json_path)
    try:
        summary = json.loads(path.read_text())
        entry = summary["rewards"].get(reward_name)
    except (OSError, ValueError, KeyError, AttributeError) as err:
        if not enforce:
            log.warning("reward validation unavailable (%s); continuing because enforce is false", err)
            return None
        raise MarsdiffError(f"cannot read reward validation {path}: {err}") from None
    if entry is None:
        known = ", ".join(sorted(summary["rewards"])) or "none"
        message = f"reward {reward_name!r} was not validated in {path} (validated: {known})"
    elif not entry.get("passed", False):
        message = (
            f"reward {reward_name!r} failed diversity-ladder validation "
            f"(min Spearman {summary.get('min_spearman')}): {'; '.join(entry.get('failures', []))}"
        )
    else:
        return entry
    if enforce:
        raise MarsdiffError(f"{message}; set reward.validation.enforce: false to use it anyway")
    log.warning("%s; continuing because enforce is false", message)
    return entry
