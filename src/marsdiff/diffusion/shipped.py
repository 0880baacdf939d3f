"""The base model the project ships, and when ``pretrain_base`` may install it instead of training.

Training the default base model to a useful quality costs more CPU time than the default run
has (docs/base_model.md). The project therefore ships the model its own ``pretrain_base`` rule
trained from the committed default config (``make base-checkpoint``), with its provenance
beside it in ``src/marsdiff/assets/base_model/``::

    unet/  scheduler/  marsdiff_model.json  loss.csv   the model directory, as pretrain_base wrote it
    training.log                                        pretrain_base's log of that training
    provenance.json                                     what it was trained from and how it scored

``provenance.json`` records the three things the weights depend on: the resolved training
config (``model.pixel`` without the keys that change no weight), the digest of the training code
(:func:`training_code_version`, the same AST digest the workflow's ``code_version`` uses) and the
digest of the train split (:func:`train_split_digest`: ids, image hashes and size classes). With
``model.pixel.shipped_checkpoint: auto`` the rule installs the shipped model when all three match
the run's, like a cache hit, and trains otherwise (own reference data, another recipe, edited
training code), saying why in its log; ``never`` always trains. A test fails when the committed
code or default config stop matching the shipped model, so it cannot silently go stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError
from marsdiff.features.base import file_digest

log = logging.getLogger(__name__)

LIBRARY = Path(__file__).resolve().parent.parent
SHIPPED_DIR = LIBRARY / "assets" / "base_model"
PROVENANCE_NAME = "provenance.json"
TRAINING_LOG_NAME = "training.log"
MODEL_FILES = ("unet", "scheduler", "marsdiff_model.json", "loss.csv")
#: The module whose code (with everything it imports) decides the trained weights.
TRAINING_CODE_ROOTS = ("diffusion/pretrain.py",)
#: model.pixel keys that choose where or whether to train, not what is trained.
NON_TRAINING_KEYS = ("device", "shipped_checkpoint")
SHIPPED_CHOICES = ("auto", "never")


def training_code_version() -> str:
    """Digest of the training code's behaviour (AST without docstrings; comments never count)."""
    from marsdiff.provenance import code_digest

    return code_digest(LIBRARY, LIBRARY.parent / "workflow" / "scripts", TRAINING_CODE_ROOTS)


def training_config(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The resolved training keys of a ``model.pixel`` section (presets filled in)."""
    from marsdiff.diffusion.pixel import PixelConfig
    from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS, PIXEL_PREVIEW_KEYS

    section = {k: v for k, v in dict(section or {}).items() if k not in NON_TRAINING_KEYS}
    resolved = PixelConfig.from_dict(section).as_dict()
    dropped = set(PIXEL_PREVIEW_KEYS) | set(PIXEL_LOGGING_KEYS) | set(NON_TRAINING_KEYS)
    return {k: v for k, v in sorted(resolved.items()) if k not in dropped}


def train_split_digest(index_csv: str | os.PathLike) -> tuple[str, int]:
    """(digest, number of images) of what training reads from ``images.csv``: the class list and,
    per train image, its id, content hash and size class."""
    from marsdiff.data.manifest import read_manifest
    from marsdiff.diffusion.pixel import size_class_order

    table = read_manifest(Path(index_csv))
    if "sha256" not in table.columns:
        raise MarsdiffError(f"{index_csv}: no sha256 column (written by prepare_reference?)")
    train = table[table["split"] == "train"]
    rows = sorted(zip(train["id"].astype(str), train["sha256"].astype(str), train["size_cat"].astype(str)))
    digest = hashlib.sha256(json.dumps({"classes": size_class_order(table), "train": rows}).encode())
    return digest.hexdigest()[:16], len(rows)


def read_provenance(folder: str | os.PathLike = SHIPPED_DIR) -> dict[str, Any]:
    path = Path(folder) / PROVENANCE_NAME
    if not path.is_file():
        raise MarsdiffError(f"{path}: no shipped base model here (build it with `make base-checkpoint`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MarsdiffError(f"{path}: corrupt provenance ({err})") from None


def mismatches(section: Mapping[str, Any] | None, index_csv: str | os.PathLike,
               folder: str | os.PathLike = SHIPPED_DIR) -> list[str]:
    """Why the shipped model is not what this training would produce (empty: it is)."""
    provenance = read_provenance(folder)
    reasons = []
    wanted = training_config(section)
    shipped = provenance.get("train_config", {})
    changed = sorted(k for k in set(wanted) | set(shipped) if wanted.get(k) != shipped.get(k))
    if changed:
        reasons.append("training config differs in " + ", ".join(
            f"{k} ({shipped.get(k)!r} shipped, {wanted.get(k)!r} here)" for k in changed))
    split, _ = train_split_digest(index_csv)
    if split != provenance.get("train_split_digest"):
        reasons.append("the train split differs (other reference images, classes or split)")
    code = training_code_version()
    if code != provenance.get("training_code_version"):
        reasons.append(f"the training code differs (version {code}, shipped {provenance.get('training_code_version')})")
    weights = Path(folder) / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file() or file_digest(weights) != provenance.get("weights_sha256"):
        reasons.append(f"{weights}: missing or not the file the provenance lists")
    return reasons


def install(out_dir: str | os.PathLike, folder: str | os.PathLike = SHIPPED_DIR) -> dict[str, Any]:
    """Copy the shipped model directory to ``out_dir`` atomically; returns its metadata, which
    now names where it came from."""
    from marsdiff.diffusion.pixel import MODEL_META_NAME
    from marsdiff.io.atomic import atomic_dir

    folder = Path(folder)
    provenance = read_provenance(folder)
    meta = json.loads((folder / MODEL_META_NAME).read_text())
    meta["installed_from"] = {
        "shipped_checkpoint": str(folder.relative_to(LIBRARY.parent.parent) if folder.is_relative_to(LIBRARY.parent.parent) else folder),
        "weights_sha256": provenance["weights_sha256"],
        "produced_by": provenance.get("produced_by"),
    }
    with atomic_dir(out_dir) as tmp:
        for name in MODEL_FILES:
            source = folder / name
            if source.is_dir():
                shutil.copytree(source, tmp / name)
            elif name != MODEL_META_NAME:
                shutil.copyfile(source, tmp / name)
        (tmp / MODEL_META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def ship(model_dir: str | os.PathLike, index_csv: str | os.PathLike, section: Mapping[str, Any] | None,
         assessment: Mapping[str, Any], training_log: str | os.PathLike | None, produced_by: str,
         folder: str | os.PathLike = SHIPPED_DIR) -> dict[str, Any]:
    """Write ``model_dir`` (a model pretrain_base trained from ``section``) as the shipped model,
    with its provenance: training config, code version, train split, weights hash, training
    summary and ``assessment`` (the issue-11 measurement, :mod:`marsdiff.evalset.assess`)."""
    from marsdiff.diffusion.pixel import MODEL_META_NAME
    from marsdiff.io.atomic import atomic_dir

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / MODEL_META_NAME).read_text())
    if meta.get("installed_from"):
        raise MarsdiffError(f"{model_dir}: this model was installed from the shipped checkpoint, not trained "
                            "(train it with model.pixel.shipped_checkpoint: never)")
    config = training_config(section)
    trained = {k: v for k, v in meta.get("train_config", {}).items() if k in config}
    if trained != config:
        changed = sorted(k for k in config if trained.get(k) != config[k])
        raise MarsdiffError(f"{model_dir}: trained with other settings than the config gives ({', '.join(changed)})")
    code = training_code_version()
    if meta.get("training_code_version") != code:
        raise MarsdiffError(f"{model_dir}: trained by training code {meta.get('training_code_version') or '(not recorded)'}, "
                            f"the code here is {code}: retrain it (make base-checkpoint)")
    split, images = train_split_digest(index_csv)
    provenance = {
        "produced_by": produced_by,
        "train_config": config,
        "training_code_version": code,
        "train_split_digest": split,
        "train_images": images,
        "weights_sha256": file_digest(model_dir / "unet" / "diffusion_pytorch_model.safetensors"),
        "training": meta.get("training", {}),
        "versions": meta.get("versions", {}),
        "assessment": dict(assessment),
    }
    with atomic_dir(folder) as tmp:
        for name in MODEL_FILES:
            source = model_dir / name
            if source.is_dir():
                shutil.copytree(source, tmp / name)
            else:
                shutil.copyfile(source, tmp / name)
        if training_log is not None:
            shutil.copyfile(training_log, tmp / TRAINING_LOG_NAME)
        (tmp / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return provenance
