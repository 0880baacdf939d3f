"""Scoring one round's images: the set reward and each image's exact credit (for stage score_round,
whose files and steps are :mod:`marsdiff.stages.score_round`'s).

The parts: the validation gate (:func:`check_validated`: the configured reward, or an
experiment's override term by term, must have passed the diversity ladders unless
``reward.validation.enforce`` is false); the round's features at the matched resolution
(:func:`round_features`, also the evaluation sets' path); the ``train`` rows of the reference
features (:func:`train_reference_features`: held-out rows are evaluation's); the per-image table
and set reward (:func:`score_features`) and the summary (:func:`round_summary`).

``rewards.csv``, one row per image in samples.csv order: ``image_id, image_index, condition,
condition_name, seed, file`` (those samples.csv has), ``credit`` (``R(X) - R(X without x)``, the
configured combination), ``rank`` (1 = largest credit), ``credit_<term>`` (raw credit of each
term, weight 0 included), ``nn_id, nn_distance, duplicate`` (nearest other generated image),
``ref_nn_id, ref_nn_distance, novel`` (nearest train reference image).

``reward_summary.json``: ``set_reward`` (the round's own images; with a pool also
``set_reward_with_pool``), ``pool`` (rounds, files, rows used), ``terms`` (kind, weight, standardise, raw,
standardised, baseline mean/std at this n for z-scored terms), ``bandwidth``, ``n_images``,
``n_reference_train``, ``extractor``, ``resolution``, duplicate/novel thresholds and counts and
``validation`` (what was checked).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.io.reading import open_image
from marsdiff.rewards.combined import CombinedResult, RewardConfig, RewardModel
from marsdiff.rewards.per_image import per_image_table
from marsdiff.rewards.validation import COMBINED, TRAIN_SPLIT, ValidationConfig, require_validated

log = logging.getLogger(__name__)

#: A set reward (and its leave-one-out credit) needs at least this many images.
MIN_IMAGES = 3
#: samples.csv columns carried into rewards.csv when present (the sampler may add more).
SAMPLE_COLUMNS = ("image_id", "image_index", "condition", "condition_name", "seed", "file")


# ---------------------------------------------------------------------------- validation gate


def _combination(config: RewardConfig) -> dict[str, dict[str, Any]]:
    return {t.name: {"kind": t.kind, "weight": t.weight, "standardise": t.standardise} for t in config.terms}


def check_validated(validation_json: str | os.PathLike, reward_section: Mapping[str, Any]) -> dict[str, Any]:
    """Raise unless the configured reward passed the diversity ladders (unless enforce is false).

    When the reward is the combination validation.json records (same terms, weights,
    standardisation and bandwidth), its ``combined`` entry must have passed. A per-experiment
    override is a different combination, never ranked on the ladders as such: then every term
    with a non-zero weight must have passed under the same name and kind, and the weights must
    be positive (a positive sum of rewards that rise along a ladder rises along it too).
    Returns what was checked, for the summary.
    """
    config = RewardConfig.from_dict(dict(reward_section))
    enforce = ValidationConfig.from_dict(reward_section.get("validation")).enforce
    path = Path(validation_json)
    try:
        recorded = json.loads(path.read_text())
        same = (
            recorded.get("reward_terms") == _combination(config)
            and recorded.get("bandwidth") == config.bandwidth
            and recorded.get("bandwidth_scale") == config.bandwidth_scale
        )
    except (OSError, ValueError, AttributeError):
        # unreadable: require_validated raises the one-line error (or warns when not enforced)
        require_validated(path, COMBINED, enforce)
        return {"checked": "unavailable", "enforce": enforce}
    if same:
        require_validated(path, COMBINED, enforce)
        return {"checked": COMBINED, "enforce": enforce}
    weighted = [t for t in config.terms if t.weight != 0.0]
    problems = []
    if any(t.weight < 0.0 for t in weighted):
        problems.append("it has negative weights, so its terms' validation does not carry over")
    if recorded.get("bandwidth") != config.bandwidth or recorded.get("bandwidth_scale") != config.bandwidth_scale:
        problems.append(
            f"its bandwidth {config.bandwidth} x {config.bandwidth_scale} differs from the validated "
            f"{recorded.get('bandwidth')} x {recorded.get('bandwidth_scale')}"
        )
    for term in weighted:
        kind = (recorded.get("reward_terms") or {}).get(term.name, {}).get("kind")
        if kind != term.kind:
            problems.append(f"term {term.name!r} ({term.kind}) was not validated as such")
    if problems:
        message = f"the reward differs from the one validated in {path}: {'; '.join(problems)}"
        if enforce:
            raise MarsdiffError(f"{message}; re-run validate_rewards with it or set reward.validation.enforce: false")
        log.warning("%s; continuing because enforce is false", message)
        return {"checked": "none", "enforce": enforce}
    for term in weighted:
        require_validated(path, term.name, enforce)
    return {"checked": "terms", "terms": [t.name for t in weighted], "enforce": enforce}


# ---------------------------------------------------------------------------- round images


def _image_side(path: Path) -> int:
    width, height = open_image(path, "generated image", "sample_round").size
    if width != height:
        raise MarsdiffError(f"{path}: generated image is {width}x{height} px; scoring expects square images")
    return width


def round_features(
    paths: list[Path], extractor: Any, cache_dir: str | os.PathLike | None, resolution: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of generated images at ``resolution`` px through the feature cache.

    Images at the matched size are read as written. Larger ones (Stable Diffusion) are brought
    down with :func:`~marsdiff.data.images.resize_to`, written as PNG to a scratch folder and
    extracted from there: PNG encoding is deterministic, so the cache recognises them on a re-run.
    A smaller image is an error (the matched size is never above the generator's).
    """
    from marsdiff.data.images import load_image, resize_to, save_png
    from marsdiff.data.resolution import file_mode
    from marsdiff.features.cache import extract_with_cache

    sides = [_image_side(p) for p in paths]
    small = [(p, s) for p, s in zip(paths, sides) if s < resolution]
    if small:
        raise MarsdiffError(f"{small[0][0]}: generated image is {small[0][1]} px, below the matched resolution {resolution} px")
    with tempfile.TemporaryDirectory(prefix="marsdiff-score-") as scratch:
        sources = []
        for path, side in zip(paths, sides):
            if side == resolution:
                sources.append(path)
                continue
            target = Path(scratch) / path.name
            save_png(target, resize_to(load_image(path, mode=file_mode(path)), resolution))
            sources.append(target)
        features, stats = extract_with_cache(sources, extractor, cache_dir, progress=False)
    info = {
        "extractor": extractor.name,
        "feature_dim": int(features.shape[1]),
        "generated_size": sorted(set(sides)),
        "resized": int(sum(s != resolution for s in sides)),
        "cache_hits": stats.hits,
        "cache_misses": stats.misses,
    }
    return features, info


# ---------------------------------------------------------------------------- reference side


def train_reference_features(
    features_path: str | os.PathLike, manifest_path: str | os.PathLike,
    extractor: str | None = None, expected_dim: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Rows of the (resized) reference features whose manifest split is ``train``, and their ids.

    ``extractor`` / ``expected_dim``: refuse features another extractor (or setting) wrote.
    """
    from marsdiff.data.manifest import read_manifest
    from marsdiff.io.feature_files import read_feature_set

    features, ids = read_feature_set(features_path, extractor=extractor, expected_dim=expected_dim)
    manifest = read_manifest(manifest_path)
    split = dict(zip(manifest["id"].astype(str), manifest["split"]))
    unknown = [i for i in ids if i not in split]
    if unknown:
        raise MarsdiffError(f"{features_path}: {len(unknown)} feature id(s) not in {manifest_path} (first: {unknown[0]})")
    rows = [k for k, image_id in enumerate(ids) if split[image_id] == TRAIN_SPLIT]
    if len(rows) < MIN_IMAGES:
        raise MarsdiffError(f"{manifest_path}: {len(rows)} train reference row(s); the reward needs at least {MIN_IMAGES}")
    return features[rows], [ids[k] for k in rows]


# ---------------------------------------------------------------------------- scoring


def score_features(
    model: RewardModel, features: np.ndarray, samples: pd.DataFrame, reference_ids: list[str],
    pool: np.ndarray | None = None,
) -> tuple[pd.DataFrame, CombinedResult]:
    """The rewards.csv table and the set reward for generated ``features`` (rows = samples rows);
    the credit is taken with ``pool`` joining the set, the set reward on the round's own images."""
    result = model.score(features)
    table = per_image_table(model, features, ids=samples["image_id"].astype(str).tolist(), reference_ids=reference_ids,
                            pool=pool)
    table = table.rename(columns={"reward": "credit", **{f"reward_{name}": f"credit_{name}" for name in model.terms}})
    carried = samples[[c for c in SAMPLE_COLUMNS if c in samples]].reset_index(drop=True)
    out = pd.concat([carried, table.drop(columns=["id"])], axis=1)
    out.attrs.update(table.attrs)
    return out, result


def round_summary(model: RewardModel, result: CombinedResult, table: pd.DataFrame) -> dict[str, Any]:
    """reward_summary.json's scoring part: the set reward and every term (raw, standardised, weight,
    baseline at this n), the bandwidth, credit statistics and the duplicate / novel counts."""
    baseline = model.baseline(result.n_generated)
    terms = {}
    for term in model.config.terms:
        score = result.terms[term.name]
        entry = {
            "kind": term.kind, "weight": term.weight, "standardise": term.standardise,
            "raw": score.raw, "standardised": score.standardised,
        }
        if term.name in baseline.mean:
            entry.update(baseline_mean=baseline.mean[term.name], baseline_std=baseline.std[term.name])
        terms[term.name] = entry
    credit = table["credit"].to_numpy()
    return {
        "set_reward": result.value,
        "terms": terms,
        "bandwidth": result.bandwidth,
        "bandwidth_source": result.bandwidth_source,
        "baseline_repeats": baseline.repeats,
        "n_images": result.n_generated,
        "n_reference_train": len(model.reference),
        "credit": {"mean": float(credit.mean()), "std": float(credit.std()), "min": float(credit.min()), "max": float(credit.max())},
        "duplicate_distance": table.attrs["duplicate_distance"],
        "novel_distance": table.attrs["novel_distance"],
        "n_duplicate": int(table["duplicate"].sum()),
        "n_novel": int(table["novel"].sum()),
    }
