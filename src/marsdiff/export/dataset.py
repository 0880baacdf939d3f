"""A labelled synthetic crater dataset drawn from one model of a run (``marsdiff sample``).

The model is the base model (at its configured knobs or at another eta / initial-noise
temperature: a knob setting) or an experiment's policy at any round. The output folder follows
the Hugging Face ``imagefolder`` convention, so ``datasets.load_dataset("imagefolder",
data_dir=...)`` reads it:

* ``images/x<index>.png``: the images, as the generator writes them;
* ``metadata.csv``: ``file_name`` first (relative to the folder), then the labels: the class
  with its diameter range in pixels and, where the reference's ground scale is known, in metres;
  the image's seed and knobs; the model's kind, id, policy round and hash; the base model's
  hash and the config digest;
* ``README.md``: a dataset card with the provenance, the class counts and, when the run has
  evaluated this model, its evaluation figures.

Images come from their own random stream (round index :data:`EXPORT_ROUND`, above every training
round and the evaluation's), so an exported set never repeats an image any RL round trained on or
the evaluation scored. Everything is checked before the first image is drawn, and the folder
appears only when complete: bad input leaves nothing behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from marsdiff.errors import MarsdiffError
from marsdiff.evalset.models import BASE, EVALUATION_ROUND, FINAL, KNOB, ROUND, evaluation_models, knob_model_name
from marsdiff.io.digests import file_digest

#: Round index of exported images' seeds (training rounds are 0..998, the evaluation is 1000).
EXPORT_ROUND = EVALUATION_ROUND + 1
#: Ground scale of the default reference (the HRSC Nanedi Vallis tile shipped by pycda).
HRSC_METRES_PER_PIXEL = 12.5
IMAGES_DIR = "images"
METADATA_CSV = "metadata.csv"
CARD = "README.md"
METADATA_COLUMNS = (
    "file_name", "class", "diameter_min_px", "diameter_max_px", "diameter_min_m", "diameter_max_m", "seed",
    "eta", "noise_scale", "model_kind", "model_id", "policy_round", "policy_sha256", "base_model_hash",
    "config_digest",
)


@dataclass(frozen=True)
class DrawOptions:
    """How a dataset is drawn, whatever the model: which classes, which seeds, where it runs.
    A setting left None takes the config's value: ``export.seed``, ``sampling.device``,
    ``sampling.batch_size``, the evaluation's steps (``evaluation.steps`` or ``sampling.steps``)."""

    classes: Sequence[str] | None = None
    proportions: Sequence[float] | None = None
    seed: int | None = None
    device: str | None = None
    batch_size: int | None = None
    steps: int | None = None
    results: str | os.PathLike = "results"
    progress: bool = True


@dataclass(frozen=True)
class ModelSource:
    """Which model draws the images: ``kind`` is base, knob, final or round (as the evaluation's)."""

    kind: str
    model_id: str
    spec: dict[str, Any]
    policy_dir: Path | None = None
    round_index: int | None = None
    experiment: str | None = None


def resolve_model(config: Mapping[str, Any], results: str | os.PathLike, model: str = "base",
                  round_index: int | None = None, eta: float | None = None,
                  noise_scale: float | None = None) -> ModelSource:
    """The model named on the command line, checked against the config and the run's files."""
    sampling = config["sampling"]
    experiments = config["experiments"]
    if model == "base":
        if round_index is not None:
            raise MarsdiffError("--round applies to an experiment's policy, not to the base model")
        base_eta = float(sampling["eta"])
        base_weights = sampling["class_distribution"]
        eta_value = base_eta if eta is None else float(eta)
        noise_value = 1.0 if noise_scale is None else float(noise_scale)
        if not 0.0 <= eta_value <= 1.0:
            raise MarsdiffError(f"--eta {eta_value:g}: DDIM eta must be in [0, 1]")
        if not noise_value > 0.0:
            raise MarsdiffError(f"--noise-scale {noise_value:g}: the initial-noise temperature must be > 0")
        spec = dict(name=BASE, kind=BASE, eta=eta_value, noise_scale=noise_value, class_weights=base_weights,
                    class_weights_name="sampling.class_distribution", experiment=None, round=None)
        if eta_value == base_eta and noise_value == 1.0:
            return ModelSource(BASE, BASE, spec)
        # The evaluation's name for this knob setting, so the card finds its figures.
        evaluated = [m for m in evaluation_models(config) if m["kind"] == KNOB and m["eta"] == eta_value
                     and m["noise_scale"] == noise_value and json.dumps(m["class_weights"]) == json.dumps(base_weights)]
        name = evaluated[0]["name"] if evaluated else knob_model_name(eta_value, noise_value, "base-classes")
        return ModelSource(KNOB, name, {**spec, "name": name, "kind": KNOB})
    if model not in experiments:
        choices = ", ".join(["base", *sorted(experiments)])
        raise MarsdiffError(f"--model {model!r}: not a configured model (choose one of {choices})")
    if eta is not None or noise_scale is not None:
        raise MarsdiffError(f"--eta / --noise-scale set the base model's knobs; the policy of {model!r} sets its own")
    from marsdiff.rl.experiments import experiment_settings

    rounds = int(experiment_settings(experiments, model, sampling)["rounds"])
    final = rounds - 1
    chosen = final if round_index is None else int(round_index)
    if not 0 <= chosen <= final:
        raise MarsdiffError(f"--round {chosen}: experiment {model!r} has rounds 0..{final}")
    policy_dir = Path(results) / "runs" / model / f"round_{chosen:03d}" / "policy"
    if not (policy_dir / "policy.json").is_file():
        raise MarsdiffError(f"{policy_dir}: no trained policy of {model!r} round {chosen} (run the workflow first)")
    kind = FINAL if chosen == final else ROUND
    model_id = model if kind == FINAL else f"{model}-r{chosen:03d}"
    spec = dict(name=model_id, kind=kind, eta=None, noise_scale=None, class_weights=None, class_weights_name=None,
                experiment=model, round=chosen)
    return ModelSource(kind, model_id, spec, policy_dir, chosen, model)


def requested_distribution(names: Sequence[str], classes: Sequence[str] | None,
                           proportions: Sequence[float] | None) -> list[float] | None:
    """Class weights from ``--classes`` (a subset, equal shares) and/or ``--proportions``."""
    if classes is None and proportions is None:
        return None
    chosen = list(classes) if classes else list(names)
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise MarsdiffError(f"--classes: unknown class {unknown[0]!r} (the model's classes: {', '.join(names)})")
    if len(set(chosen)) != len(chosen):
        raise MarsdiffError("--classes: a class is named twice")
    shares = [1.0] * len(chosen) if proportions is None else [float(p) for p in proportions]
    if len(shares) != len(chosen):
        raise MarsdiffError(f"--proportions: {len(shares)} values for {len(chosen)} classes")
    if any(not (p >= 0.0) or p == float("inf") for p in shares) or sum(shares) <= 0.0:
        raise MarsdiffError("--proportions: values must be finite, >= 0 and not all zero")
    weight = dict(zip(chosen, shares))
    return [weight.get(name, 0.0) for name in names]


def with_class_distribution(generation: Any, names: Sequence[str], weights: Sequence[float] | None, model_id: str):
    """``generation`` drawing its conditions from ``weights`` (None: unchanged)."""
    import torch

    from marsdiff.diffusion.plan import FixedGeneration, condition_probabilities

    if weights is None:
        return generation
    if isinstance(generation, FixedGeneration):
        return FixedGeneration(names, list(weights), generation.knobs)
    if getattr(generation, "learn_conditions", True):
        raise MarsdiffError(f"--classes / --proportions: the policy of {model_id!r} chooses the classes itself")
    # The scheduler policy draws classes from a fixed distribution: replace it, keep its knobs.
    generation.fixed_log_probs = torch.log(condition_probabilities(list(weights), names).float())
    return generation


def class_diameters(index_csv: str | os.PathLike, class_key: str | None, names: Sequence[str],
                    metres_per_pixel: float | None) -> dict[str, dict[str, str]]:
    """Per class: the diameter range of the reference crops in that class (pixels, metres)."""
    from marsdiff.io.reading import read_csv

    blank = {name: {k: "" for k in METADATA_COLUMNS[2:6]} for name in names}
    if class_key is None or not Path(index_csv).is_file():
        return blank
    table = read_csv(index_csv, "reference index", "prepare_reference", dtype={class_key: str})
    if class_key not in table.columns or "diameter_px" not in table.columns:
        return blank
    out = dict(blank)
    for name, group in table.groupby(class_key):
        if name not in out:
            continue
        low, high = float(group["diameter_px"].min()), float(group["diameter_px"].max())
        row = {"diameter_min_px": f"{low:.4g}", "diameter_max_px": f"{high:.4g}",
               "diameter_min_m": "", "diameter_max_m": ""}
        if metres_per_pixel:
            row["diameter_min_m"] = f"{low * metres_per_pixel:.4g}"
            row["diameter_max_m"] = f"{high * metres_per_pixel:.4g}"
        out[name] = row
    return out


def reference_metres_per_pixel(config: Mapping[str, Any]) -> float | None:
    """The reference's ground scale where marsdiff knows it: the default HRSC tile only."""
    reference = config["reference"]
    if reference["source"] == "hrsc" and not reference["tile"]:
        return HRSC_METRES_PER_PIXEL
    return None


def folder_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over a folder's files (relative path and content), independent of where it lives."""
    root = Path(folder)
    total = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        total.update(f"{path.relative_to(root).as_posix()}\0{file_digest(path)}\n".encode())
    return total.hexdigest()


def config_digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluation_rows(results: str | os.PathLike, model_id: str) -> list[dict[str, Any]]:
    """The run's evaluation figures of ``model_id`` (empty when it was not evaluated)."""
    from marsdiff.io.reading import read_csv

    path = Path(results) / "eval" / "metrics.csv"
    if not path.is_file():
        return []
    table = read_csv(path, "evaluation metrics", "evaluate")
    if "model" not in table.columns:
        return []
    return table[table["model"] == model_id].to_dict("records")


def dataset_card(source: ModelSource, rows: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any],
                 diameters: Mapping[str, Mapping[str, str]], evaluation: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["class"]] = counts.get(row["class"], 0) + 1
    lines = [
        "---",
        "task_categories: [image-classification]",
        "tags: [mars, craters, synthetic, diffusion, marsdiff]",
        "---",
        "",
        f"# Synthetic Mars craters: {source.model_id}",
        "",
        f"{len(rows)} images drawn by marsdiff from model `{source.model_id}` ({source.kind}). Labels are in "
        f"`{METADATA_CSV}` (`file_name` first, Hugging Face imagefolder layout): the size class each image was "
        "conditioned on, the diameter range of the real reference craters in that class, and the image's seed.",
        "",
        "## Provenance",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in provenance.items()],
        "",
        "## Classes",
        "",
        "| class | images | diameter (px) | diameter (m) |",
        "|---|---|---|---|",
    ]
    for name, row in diameters.items():
        px = f"{row['diameter_min_px']}-{row['diameter_max_px']}" if row["diameter_min_px"] else "n/a"
        metres = f"{row['diameter_min_m']}-{row['diameter_max_m']}" if row["diameter_min_m"] else "n/a"
        lines.append(f"| {name} | {counts.get(name, 0)} | {px} | {metres} |")
    lines += ["", "## Evaluation of this model", ""]
    if evaluation:
        lines += [
            "Figures of the run's evaluation (results/eval/metrics.csv): this model's own evaluation images "
            "against the held-out real craters, value [95 % interval]. They describe the model at its own class "
            "distribution, not a class subset chosen for this export.",
            "",
            "| metric | value | interval |",
            "|---|---|---|",
        ]
        for row in evaluation:
            lines.append(f"| {row['metric']} | {float(row['value']):.4g} | "
                         f"[{float(row['ci_low']):.4g}, {float(row['ci_high']):.4g}] |")
    else:
        lines.append("This model has not been evaluated in this run (no rows in results/eval/metrics.csv).")
    return "\n".join(lines) + "\n"


def export_dataset(
    config: Mapping[str, Any],
    out_dir: str | os.PathLike,
    n_images: int,
    model: str = "base",
    round_index: int | None = None,
    eta: float | None = None,
    noise_scale: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Draw ``n_images`` labelled images of one model into ``out_dir``; return a short summary.

    ``options``: the fields of :class:`DrawOptions` (classes, proportions, seed, device, ...)."""
    _check_request(n_images, out_dir)
    draw = DrawOptions(**options)
    source = resolve_model(config, draw.results, model, round_index, eta, noise_scale)
    return draw_dataset(config, source, out_dir, n_images, draw)


def source_of_evaluated_model(spec: Mapping[str, Any], results: str | os.PathLike) -> ModelSource:
    """The model of one evaluation entry (:func:`marsdiff.evalset.models.evaluation_models`)."""
    policy_dir = None
    if spec["experiment"] is not None:
        policy_dir = Path(results) / "runs" / spec["experiment"] / f"round_{int(spec['round']):03d}" / "policy"
    return ModelSource(spec["kind"], spec["name"], dict(spec), policy_dir, spec["round"], spec["experiment"])


def _check_request(n_images: int, out_dir: str | os.PathLike) -> None:
    if isinstance(n_images, bool) or int(n_images) <= 0:
        raise MarsdiffError(f"-n {n_images}: the number of images must be at least 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MarsdiffError(f"{out_dir}: exists and is not an empty folder (choose a new output folder)")


def draw_dataset(
    config: Mapping[str, Any],
    source: ModelSource,
    out_dir: str | os.PathLike,
    n_images: int,
    options: DrawOptions = DrawOptions(),
) -> dict[str, Any]:
    """Draw the dataset of a resolved model (the CLI's and the export_dataset rule's common path)."""
    from tqdm import tqdm

    from marsdiff.data.images import save_png
    from marsdiff.diffusion.loading import load_backend
    from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings
    from marsdiff.evalset.generate import generation_for
    from marsdiff.evalset.models import evaluation_steps
    from marsdiff.io.atomic import atomic_dir

    _check_request(n_images, out_dir)
    out_dir = Path(out_dir)
    classes, proportions, results, progress = options.classes, options.proportions, options.results, options.progress
    seed = config["export"]["seed"] if options.seed is None else options.seed
    device = config["sampling"]["device"] if options.device is None else options.device
    batch_size = config["sampling"]["batch_size"] if options.batch_size is None else options.batch_size
    steps = evaluation_steps(config) if options.steps is None else options.steps
    model_cfg = config["model"]
    sampling = config["sampling"]
    model_dir = Path(results) / "models" / "base"
    if model_cfg["backend"] == "pixel" and not (model_dir / "marsdiff_model.json").is_file():
        raise MarsdiffError(f"{model_dir}: no base model (run the workflow first, or `make run`)")
    backend = load_backend(model_cfg, model_dir=model_dir, device=device)
    backend, generation = generation_for(source.spec, backend, source.policy_dir)
    names = backend.conditions()
    generation = with_class_distribution(generation, names, requested_distribution(names, classes, proportions),
                                         source.model_id)
    settings = SamplingSettings.from_config({
        "min_std": sampling["min_std"],
        "eta": sampling["eta"],
        "device": device,
        "batch_size": int(batch_size),
        "steps": int(steps),
        "seed": int(seed),
        "store": {"dtype": "float32"},
    })
    meta = getattr(backend, "meta", None) or {}
    diameters = class_diameters(Path(results) / "reference" / "images.csv", meta.get("class_key"), names,
                                reference_metres_per_pixel(config))
    labels = {
        "model_kind": source.kind,
        "model_id": source.model_id,
        "policy_round": "" if source.round_index is None else source.round_index,
        "policy_sha256": folder_digest(source.policy_dir) if source.policy_dir else "",
        "base_model_hash": backend.model_hash(),
        "config_digest": config_digest(config),
    }
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sampler = RecordingSampler(backend, settings, generation)
    with atomic_dir(out_dir) as tmp:
        (Path(tmp) / IMAGES_DIR).mkdir()
        bar = tqdm(total=int(n_images), desc=f"sampling {source.model_id}", unit="img", disable=not progress)
        for batch in sampler.sample(int(n_images), round_index=EXPORT_ROUND):
            for j, index in enumerate(batch.image_index.tolist()):
                file_name = f"{IMAGES_DIR}/x{index:05d}.png"
                save_png(Path(tmp) / file_name, batch.images[j])
                name = names[int(batch.condition[j])]
                rows.append({"file_name": file_name, "class": name, **diameters[name], "seed": int(batch.seed[j]),
                             "eta": f"{float(batch.eta[j]):.6g}", "noise_scale": f"{float(batch.noise_scale[j]):.6g}",
                             **labels})
            bar.update(len(batch.image_index))
        bar.close()
        with open(Path(tmp) / METADATA_CSV, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(METADATA_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        provenance = {
            "model": f"{source.model_id} ({source.kind})",
            "policy round": labels["policy_round"] if source.round_index is not None else "n/a",
            "policy sha256": labels["policy_sha256"] or "n/a",
            "base model hash": labels["base_model_hash"],
            "config digest": labels["config_digest"],
            "backend": model_cfg["backend"],
            "denoising steps": settings.steps,
            "seed": int(seed),
            "seed stream": f"round index {EXPORT_ROUND} (never a training or evaluation image)",
        }
        evaluation = evaluation_rows(results, source.model_id)
        (Path(tmp) / CARD).write_text(dataset_card(source, rows, provenance, diameters, evaluation))
    return {"images": len(rows), "model_id": source.model_id, "seconds": time.perf_counter() - started,
            "folder": str(out_dir)}
