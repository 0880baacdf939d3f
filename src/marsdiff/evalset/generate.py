"""Seeded evaluation images of the evaluated models: the base model at a knob setting, or a saved RL policy.

Stages ``generate_base_samples`` (the base model and its knob settings, one job per test stream
that loads the base model once) and ``generate_samples`` (one job per RL policy);
:mod:`marsdiff.evalset.models` lists the models.
Output: ``images/e<index>.png`` (uint8, as the generator writes them) and ``samples.csv`` with
one row per image: ``image_id, file, image_index, seed, condition, condition_name, eta,
noise_scale, guidance_scale``.

Pairing: image i of every model is drawn from the same per-image random stream (seed from
``(evaluation.seed, stream_round(s), i)`` on test stream s), so the condition draw and the initial noise are
shared wherever the plans agree, and differences between models are paired (the bootstrap of
:mod:`marsdiff.evaluation.bootstrap` pairs replicates by image index for the same reason).
The chain is the RL sampler's (:class:`~marsdiff.diffusion.sampler.RecordingSampler`), so a
policy is evaluated with exactly the sampling it was trained under; the recorded log-probs are
dropped.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from marsdiff.evalset.models import EVALUATION_ROUND, BASE, FINAL, FROZEN, KNOB, ROUND
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = (
    "image_id", "file", "image_index", "seed", "condition", "condition_name", "eta", "noise_scale", "guidance_scale",
)


def image_file(index: int) -> str:
    return f"e{index:05d}.png"


def class_weights(spec: Any, backend: Any, where: str) -> Any:
    """The class distribution of a knob setting: 'uniform', 'inverse_frequency' (1 / the model's
    training count of each class), 'tails' (weight 2 on the first and last class: the pixel
    model's smallest and largest craters), a list of weights or a {class name: weight} mapping."""
    if spec == "tails":
        weights = [1.0] * len(backend.conditions())
        weights[0] = weights[-1] = 2.0
        return weights
    if spec != "inverse_frequency":
        return spec
    meta = getattr(backend, "meta", None) or {}
    counts = ((meta.get("training") or {}).get("class_counts")) or {}
    names = backend.conditions()
    missing = [name for name in names if name not in counts]
    if missing:
        raise MarsdiffError(f"{where}: inverse_frequency needs the model's class counts, none recorded for {missing[0]!r}")
    # A class the model never saw keeps the weight of a class seen once (not infinity).
    return [1.0 / max(1, int(counts[name])) for name in names]


def generation_for(spec: Mapping[str, Any], backend: Any, policy_dir: str | os.PathLike | None):
    """(backend, generation plan policy) that draws the model's images."""
    from marsdiff.diffusion.plan import FixedGeneration

    kind = spec["kind"]
    if kind in (BASE, FROZEN, KNOB):
        if spec.get("eta") is None or spec.get("noise_scale") is None:
            raise MarsdiffError(f"evaluation model {spec['name']!r}: no knob setting (the frozen knob's comes from select_knob)")
        where = (
            f"evaluation.knobs.class_weights.{spec['class_weights_name']}" if kind == KNOB else "sampling.class_distribution"
        )
        weights = class_weights(spec["class_weights"], backend, where)
        try:
            generation = FixedGeneration(
                backend.conditions(), weights, {"eta": spec["eta"], "noise_scale": spec["noise_scale"]}
            )
        except MarsdiffError as err:
            # the library names sampling.class_distribution; name the key the user set
            prefix = "sampling.class_distribution: "
            message = str(err)[len(prefix):] if str(err).startswith(prefix) else str(err)
            raise MarsdiffError(f"{where}: {message}") from None
        return backend, generation
    if kind in (FINAL, ROUND):
        from marsdiff.rl.policy import RoundPolicy

        if policy_dir is None:
            raise MarsdiffError(f"evaluation model {spec['name']!r}: no policy folder given")
        policy = RoundPolicy.load(policy_dir, backend)
        return policy.backend, policy.generation
    raise MarsdiffError(f"evaluation model {spec.get('name')!r}: unknown kind {kind!r}")


def draw_images(
    backend: Any,
    generation: Any,
    sampling: Mapping[str, Any],
    n_images: int,
    seed: int,
    steps: int,
    images_dir: str | os.PathLike,
    round_index: int = EVALUATION_ROUND,
    label: str = "",
) -> list[dict[str, Any]]:
    """Draw ``n_images`` seeded images of one plan into ``images_dir`` (written as they come, not
    atomically: callers wrap the folder); the samples-table rows, in image-index order."""
    from marsdiff.data.images import save_png
    from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings

    settings = SamplingSettings.from_config({
        **{k: v for k, v in dict(sampling).items() if k in ("min_std", "batch_size", "device", "eta")},
        "steps": int(steps),
        "seed": int(seed),
        "store": {"dtype": "float32"},
    })
    sampler = RecordingSampler(backend, settings, generation)
    names = backend.conditions()
    rows: list[dict[str, Any]] = []
    for batch in sampler.sample(int(n_images), round_index=int(round_index)):
        for j, index in enumerate(batch.image_index.tolist()):
            name = image_file(index)
            save_png(Path(images_dir) / name, batch.images[j])
            rows.append({
                "image_id": name[:-4],
                "file": name,
                "image_index": int(index),
                "seed": int(batch.seed[j]),
                "condition": int(batch.condition[j]),
                "condition_name": names[int(batch.condition[j])],
                "eta": f"{float(batch.eta[j]):.6g}",
                "noise_scale": f"{float(batch.noise_scale[j]):.6g}",
                "guidance_scale": f"{float(batch.guidance_scale[j]):.6g}",
            })
        log.info("%s: %d/%d images", label, len(rows), n_images)
    return rows


def generate_model_samples(
    spec: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    sampling: Mapping[str, Any],
    n_images: int,
    seed: int,
    steps: int,
    images_dir: str | os.PathLike,
    samples_csv: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    policy_dir: str | os.PathLike | None = None,
    round_index: int = EVALUATION_ROUND,
) -> dict[str, Any]:
    """Draw ``n_images`` seeded images of one evaluated model into ``images_dir`` + ``samples_csv``.

    ``spec``: one entry of :func:`marsdiff.evalset.models.evaluation_models` (the frozen knob's
    with its chosen knobs filled, :func:`~marsdiff.evalset.models.frozen_spec`); ``sampling``: the
    sampling section (min_std, batch_size, device; the seed and steps are the evaluation's);
    ``round_index``: the test stream's (:func:`~marsdiff.evalset.models.stream_round`).
    """
    return generate_samples_of(
        [(spec, images_dir, samples_csv)], model_cfg, sampling, n_images, seed, steps,
        model_dir=model_dir, policy_dir=policy_dir, round_index=round_index,
    )[0]


def generate_samples_of(
    models: Sequence[tuple[Mapping[str, Any], str | os.PathLike, str | os.PathLike]],
    model_cfg: Mapping[str, Any],
    sampling: Mapping[str, Any],
    n_images: int,
    seed: int,
    steps: int,
    model_dir: str | os.PathLike | None = None,
    policy_dir: str | os.PathLike | None = None,
    round_index: int = EVALUATION_ROUND,
) -> list[dict[str, Any]]:
    """Draw every model of ``models`` ((spec, images folder, samples.csv) each, in order) with one
    load of the base model: stage generate_base_samples draws the base model's settings this way
    (loading the UNet and importing the diffusion stack cost more than a setting's draw on a CPU).
    A policy (``policy_dir``) is loaded onto the base model and drawn alone: its adapter would
    change the model the next entry sees. Each model's images are exactly those
    :func:`generate_model_samples` draws for it alone: every image has its own random stream and
    the sampler keeps no state between draws."""
    from marsdiff.diffusion.loading import load_backend
    from marsdiff.io.atomic import atomic_dir

    if int(n_images) < 2:
        raise MarsdiffError(f"evaluation.images = {n_images}: evaluation needs at least 2 images per model (set M >= 2)")
    if policy_dir is not None and len(models) != 1:
        raise MarsdiffError(f"a policy is drawn alone, got {len(models)} models for {policy_dir}")
    loading = time.perf_counter()
    device = str(sampling["device"])
    base = load_backend(model_cfg, model_dir=model_dir, device=device) if model_dir else load_backend(model_cfg, device=device)
    log.info("model loaded in %.1f s", time.perf_counter() - loading)
    results = []
    for spec, images_dir, samples_csv in models:
        started = time.perf_counter()
        backend, generation = generation_for(spec, base, policy_dir)
        names = backend.conditions()
        with atomic_dir(images_dir) as tmp_images:
            rows = draw_images(backend, generation, sampling, n_images, seed, steps, tmp_images, round_index, spec["name"])
        write_samples_table(samples_csv, rows)
        counts = np.bincount([r["condition"] for r in rows], minlength=len(names))
        seconds = time.perf_counter() - started
        log.info("%s: %d images x %d steps in %.1f s; conditions %s", spec["name"], len(rows), steps, seconds,
                 dict(zip(names, counts.tolist())))
        results.append({"images": len(rows), "steps": int(steps), "seconds": seconds})
    return results


def write_samples_table(samples_csv: str | os.PathLike, rows: list[Mapping[str, Any]]) -> None:
    from marsdiff.io.atomic import atomic_path

    with atomic_path(samples_csv) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(SAMPLE_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
