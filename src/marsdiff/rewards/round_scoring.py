"""Scores one round's images: the set reward and each image's exact credit (stage score_round).

Inputs are the round directory written by sample_round (``images/*.png`` + ``samples.csv``)
and the reference set's features at the matched resolution
(``results/features/reference_{size}px/{extractor}.npy``, see :mod:`marsdiff.data.resolution`).
Steps:

1. refuse a reward that failed the diversity-ladder validation unless
   ``reward.validation.enforce`` is false (:func:`check_validated`);
2. features of the round's images with the reward's extractor (the first of
   ``features.extractors``) through the content-keyed cache; images larger than the matched size
   (Stable Diffusion) are first brought down to it with the same BOX function as the reference;
3. the reward model on the ``train`` rows of the reference features only (held-out rows are
   evaluation's);
4. the set reward (:meth:`RewardModel.score`: every term raw and standardised) and the exact
   per-image credit (:meth:`RewardModel.leave_one_out`, through
   :func:`~marsdiff.rewards.per_image.per_image_table`);
5. with ``reward.pool.rounds`` K > 0, the features of the experiment's previous K rounds (their
   ``features.npy``, most recent first) join the set for the credit: ``R(S u P) - R(S u P - x)``
   for the round's own images. The pool is cut to the rows the z-score baseline allows
   (``n + p <= m - 2``), most recent rounds first, and the summary says so.

Outputs, both written atomically:

``rewards.csv``, one row per image in samples.csv order: ``image_id, image_index, condition,
condition_name, seed, file`` (those samples.csv has), ``credit`` (``R(X) - R(X without x)``, the
configured combination), ``rank`` (1 = largest credit), ``credit_<term>`` (raw credit of each
term, weight 0 included), ``nn_id, nn_distance, duplicate`` (nearest other generated image),
``ref_nn_id, ref_nn_distance, novel`` (nearest train reference image).

``features.npy`` (+ ``.ids.txt``, ``.json``; the feature-file contract of
:mod:`marsdiff.io.feature_files`): the round's features in samples.csv order, the next rounds' pool.

``reward_summary.json``: ``set_reward`` (the round's own images; with a pool also
``set_reward_with_pool``), ``pool`` (rounds, files, rows used), ``terms`` (kind, weight, standardise, raw,
standardised, baseline mean/std at this n for z-scored terms), ``bandwidth``, ``n_images``,
``n_reference_train``, ``extractor``, ``resolution``, duplicate/novel thresholds and counts and
``validation`` (what was checked). Both files depend only on the inputs: feature-cache hits and
timings go to the log, so a re-scored round that changed nothing leaves byte-identical files
and re-runs nothing downstream.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.io.reading import open_image, read_csv, rerun_hint
from marsdiff.rewards.combined import CombinedResult, RewardConfig, RewardModel
from marsdiff.rewards.per_image import per_image_table
from marsdiff.rewards.validation import COMBINED, TRAIN_SPLIT, ValidationConfig, require_validated

log = logging.getLogger(__name__)

#: A set reward (and its leave-one-out credit) needs at least this many images.
MIN_IMAGES = 3
#: samples.csv columns carried into rewards.csv when present (the sampler may add more).
SAMPLE_COLUMNS = ("image_id", "image_index", "condition", "condition_name", "seed", "file")


@dataclass(frozen=True)
class RoundScore:
    """What :func:`score_round` computed (the files hold the same)."""

    table: pd.DataFrame
    result: CombinedResult
    summary: dict[str, Any]
    #: feature-cache hits and misses of the round's images (logged, not written)
    cache: dict[str, int]


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


def read_round_samples(samples_csv: str | os.PathLike, images_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[Path]]:
    """samples.csv rows and the image path of each; one-line errors for missing files or too few images."""
    samples_csv, images_dir = Path(samples_csv), Path(images_dir)
    if not samples_csv.is_file():
        raise MarsdiffError(f"{samples_csv}: samples file not found (run the sample_round stage)")
    samples = read_csv(samples_csv, "samples file", "sample_round", columns=("image_id",),
                       dtype={"image_id": str, "file": str, "condition_name": str})
    if samples["image_id"].duplicated().any():
        raise MarsdiffError(f"{samples_csv}: duplicate image_id {samples['image_id'][samples['image_id'].duplicated()].iloc[0]}")
    if len(samples) < MIN_IMAGES:
        # More images on disk than rows: the table lost rows (truncated), the setting is not at fault.
        on_disk = len(list(images_dir.glob("*.png"))) if images_dir.is_dir() else 0
        if on_disk > len(samples):
            raise MarsdiffError(f"{samples_csv}: lists {len(samples)} image(s) but {images_dir} holds {on_disk}: "
                                f"the file is truncated; {rerun_hint('sample_round')}")
        raise MarsdiffError(
            f"{samples_csv}: {len(samples)} image row(s), but every round has at least {MIN_IMAGES}: the file is "
            f"truncated or damaged; {rerun_hint('sample_round')}"
        )
    files = samples["file"] if "file" in samples else samples["image_id"] + ".png"
    paths = [images_dir / name for name in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MarsdiffError(f"{missing[0]}: image listed in {samples_csv.name} not found ({len(missing)} missing)")
    return samples.reset_index(drop=True), paths


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


def read_pool(
    paths: list[str | os.PathLike] | tuple, extractor: str, dim: int, n: int, m: int, rounds: int
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The previous rounds' features (``paths`` most recent first) as one pool, cut to fit.

    The z-scored baseline draws n + p reference rows and needs 2 more, so the pool keeps at most
    ``m - n - 2`` rows, whole rounds most recent first, then the rows of the next that fit.
    """
    from marsdiff.io.feature_files import read_feature_set

    info: dict[str, Any] = {"rounds": rounds, "files": [str(p) for p in paths], "rows_available": 0, "rows": 0}
    if not paths:
        return None, info
    parts = [read_feature_set(p, extractor=extractor, expected_dim=dim)[0].astype(np.float64) for p in paths]
    rows = np.concatenate(parts)
    room = max(0, m - n - 2)
    info.update(rows_available=len(rows), rows=min(len(rows), room))
    if len(rows) > room:
        info["limited_by"] = f"the z-score baseline: {m} train reference rows allow n + p <= {m - 2}"
        log.warning("reward pool cut from %d to %d rows (%s)", len(rows), room, info["limited_by"])
        rows = rows[:room]
    return (rows if len(rows) else None), info


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


def _summary(model: RewardModel, result: CombinedResult, table: pd.DataFrame) -> dict[str, Any]:
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


def score_round(
    images_dir: str | os.PathLike,
    samples_csv: str | os.PathLike,
    reference_features: str | os.PathLike,
    manifest: str | os.PathLike,
    validation_json: str | os.PathLike,
    reward_section: Mapping[str, Any],
    features_cfg: Mapping[str, Any],
    resolution: int,
    rewards_csv: str | os.PathLike,
    summary_json: str | os.PathLike,
    extractor: str | None = None,
    features_npy: str | os.PathLike | None = None,
    pool_features: list[str | os.PathLike] | tuple = (),
) -> RoundScore:
    """The score_round stage (see the module docstring). ``reward_section`` is the reward config
    the round is trained on (an experiment's override already merged in); ``features_cfg`` the
    ``features`` section; ``resolution`` the matched size the reference features were made at;
    ``features_npy`` where the round's features are written (the next rounds' pool);
    ``pool_features`` the previous rounds' features files, most recent first."""
    from marsdiff.features.registry import build_extractor
    from marsdiff.io.atomic import atomic_path, write_json

    started = time.perf_counter()
    reward_section = dict(reward_section or {})
    # cheap refusals first: a failed validation or a too-small round must not cost an extraction
    validation = check_validated(validation_json, reward_section)
    samples, paths = read_round_samples(samples_csv, images_dir)
    extractor = extractor or filled_section("features", features_cfg)["extractors"][0]
    encoder = build_extractor(extractor, dict(features_cfg))
    # both sides from the same extractor setting, or the distances mean nothing
    reference, reference_ids = train_reference_features(reference_features, manifest, extractor, encoder.dim)
    features, feature_info = round_features(paths, encoder, features_cfg.get("cache_dir"), int(resolution))
    config = RewardConfig.from_dict(reward_section)
    model = RewardModel(reference, config)
    pool, pool_info = read_pool(pool_features, extractor, encoder.dim, len(features), len(reference), config.pool_rounds)
    table, result = score_features(model, features, samples, reference_ids, pool=pool)
    summary = _summary(model, result, table)
    if pool is not None:
        pool_info["set_reward_with_pool"] = model.score(features, pool=pool).value
    summary["pool"] = pool_info
    summary.update(
        extractor=extractor,
        resolution={"matched": int(resolution), "generated": feature_info["generated_size"], "resized_images": feature_info["resized"]},
        feature_dim=feature_info["feature_dim"],
        validation=validation,
    )
    if features_npy is not None:
        from marsdiff.io.feature_files import write_feature_set

        write_feature_set(features, samples["image_id"].astype(str).tolist(), features_npy, extractor=encoder)
    with atomic_path(rewards_csv) as tmp:
        table.to_csv(tmp, index=False)
    write_json(summary_json, summary)
    cache = {"hits": feature_info["cache_hits"], "misses": feature_info["cache_misses"]}
    log.info(
        "scored %d images at %d px: set reward %.4f, credit %.3g..%.3g, %d duplicate, %d novel "
        "(feature cache: %d hits, %d misses; %.1f s)",
        len(table), resolution, result.value, summary["credit"]["min"], summary["credit"]["max"],
        summary["n_duplicate"], summary["n_novel"], cache["hits"], cache["misses"], time.perf_counter() - started,
    )
    return RoundScore(table, result, summary, cache)
