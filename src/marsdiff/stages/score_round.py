"""Stage ``score_round``: one round's images scored, ``rewards.csv``, ``reward_summary.json`` and
``features.npy`` written.

Inputs are the round directory written by sample_round (``images/*.png`` + ``samples.csv``)
and the reference set's features at the matched resolution
(``results/features/reference_{size}px/{extractor}.npy``, see :mod:`marsdiff.data.resolution`).
Steps (the scoring itself is :mod:`marsdiff.rewards.round_scoring`'s):

1. refuse a reward that failed the diversity-ladder validation unless
   ``reward.validation.enforce`` is false (:func:`~marsdiff.rewards.round_scoring.check_validated`);
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

Outputs, all written atomically: ``rewards.csv`` and ``reward_summary.json`` (their columns and
keys: :mod:`marsdiff.rewards.round_scoring`), and ``features.npy`` (+ ``.ids.txt``, ``.json``;
the feature-file contract of :mod:`marsdiff.io.feature_files`): the round's features in
samples.csv order, the next rounds' pool. The files depend only on the inputs: feature-cache
hits and timings go to the log, so a re-scored round that changed nothing leaves byte-identical
files and re-runs nothing downstream.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.io.reading import read_csv, rerun_hint
from marsdiff.rewards.combined import CombinedResult, RewardConfig, RewardModel
from marsdiff.rewards.round_scoring import (
    MIN_IMAGES, check_validated, round_features, round_summary, score_features, train_reference_features,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundScore:
    """What :func:`score_round` computed (the files hold the same)."""

    table: pd.DataFrame
    result: CombinedResult
    summary: dict[str, Any]
    #: feature-cache hits and misses of the round's images (logged, not written)
    cache: dict[str, int]


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
    """Stage score_round (see the module docstring). ``reward_section`` is the reward config
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
    summary = round_summary(model, result, table)
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
