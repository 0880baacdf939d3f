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
(:func:`marsdiff.diffusion.shipping.training_code_version`: ``diffusion/pretrain.py`` and what it
imports, less :data:`WEIGHT_NEUTRAL_MODULES`) and the digest of the train split (:func:`train_split_digest`: ids, image hashes and size classes). With
``model.pixel.shipped_checkpoint: auto`` the rule installs the shipped model when all three match
the run's, like a cache hit, and trains otherwise (own reference data, another recipe, edited
training code), saying why in its log (:mod:`marsdiff.stages.pretrain_base` decides, from
:func:`mismatches`); ``never`` always trains. A test fails when the committed
code or default config stop matching the shipped model, so it cannot silently go stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError
from marsdiff.io.digests import file_digest
from marsdiff.io.reading import read_json
from marsdiff.io.weights import follow_umask

LIBRARY = Path(__file__).resolve().parent.parent
SHIPPED_DIR = LIBRARY / "assets" / "base_model"
PROVENANCE_NAME = "provenance.json"
TRAINING_LOG_NAME = "training.log"
MODEL_FILES = ("unet", "scheduler", "marsdiff_model.json", "loss.csv")
#: The module whose code (with everything it imports) decides the trained weights.
TRAINING_CODE_ROOTS = ("diffusion/pretrain.py",)
#: Modules on the training path that cannot change the trained weights, and why: the training
#: digest neither covers nor follows them, so bumping ``__version__`` or rewording an error
#: retrains nothing. A module lands here only after review; tests/test_shipped_model.py fails
#: when training imports a module that is neither in its reviewed list nor here.
WEIGHT_NEUTRAL_MODULES = {
    "__init__.py": "the package docstring and the __version__ string",
    "errors.py": "the error types and their one-line messages",
    "io/__init__.py": "re-exports the writers of io/atomic.py",
    "io/atomic.py": "writes finished files under a temporary name and renames them: where and when bytes land, "
                    "not which (the weights file's hash is checked against the provenance anyway)",
    "devices.py": "picks the torch device from model.pixel.device, a key that already trains nothing "
                  "(NON_TRAINING_KEYS)",
}
#: model.pixel keys that choose where or whether to train, not what is trained.
NON_TRAINING_KEYS = ("device", "shipped_checkpoint")


def training_config(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The training keys of a ``model.pixel`` section, filled by the schema (the preset's values
    included): what the weights depend on."""
    from marsdiff.config import filled_section
    from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS, PIXEL_PREVIEW_KEYS

    resolved = filled_section("model.pixel", section)
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
    return read_json(path, "shipped model provenance", None)


def mismatches(section: Mapping[str, Any] | None, index_csv: str | os.PathLike, code_version: str,
               folder: str | os.PathLike = SHIPPED_DIR) -> list[str]:
    """Why the shipped model is not what this training would produce (empty: it is).

    ``code_version``: the training code's digest here (the workflow computes it when the
    Snakefile is parsed, :func:`marsdiff.workflow.code.shipped_training_code`; the same value as
    :func:`marsdiff.diffusion.shipping.training_code_version`)."""
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
    if code_version != provenance.get("training_code_version"):
        reasons.append(f"the training code differs (version {code_version}, shipped {provenance.get('training_code_version')})")
    weights = Path(folder) / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file() or file_digest(weights) != provenance.get("weights_sha256"):
        reasons.append(f"{weights}: missing or not the file the provenance lists")
    return reasons


def copy_model_files(source: Path, target: Path) -> None:
    """Copy a model directory's files (:data:`MODEL_FILES`) into ``target``, without Snakemake's
    directory-output markers."""
    for name in MODEL_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns(".snakemake_timestamp"))
        else:
            shutil.copyfile(source / name, target / name)


def install(out_dir: str | os.PathLike, folder: str | os.PathLike = SHIPPED_DIR) -> dict[str, Any]:
    """Copy the shipped model directory to ``out_dir`` atomically; returns its metadata, which
    now names where it came from."""
    from marsdiff.diffusion.pixel import MODEL_META_NAME
    from marsdiff.io.atomic import atomic_dir

    folder = Path(folder)
    provenance = read_provenance(folder)
    meta = read_json(folder / MODEL_META_NAME, "shipped model metadata", None)
    # The hash every loader checks (diffusion/loading.py); mismatches() has just compared the
    # shipped file with it.
    meta["weights_sha256"] = provenance["weights_sha256"]
    meta["installed_from"] = {
        "shipped_checkpoint": str(folder.relative_to(LIBRARY.parent.parent) if folder.is_relative_to(LIBRARY.parent.parent) else folder),
        "weights_sha256": provenance["weights_sha256"],
        "produced_by": provenance.get("produced_by"),
    }
    with atomic_dir(out_dir) as tmp:
        copy_model_files(folder, tmp)
        (tmp / MODEL_META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        # copytree keeps the shipped files' modes; the installed model follows the umask.
        follow_umask(tmp)
    return meta


def record_weights_hash(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Add the UNet weights' sha256 to a freshly trained model's ``marsdiff_model.json`` (the
    frozen training code writes none) and give its files the umask's modes (diffusers writes
    the weights 0600); returns the metadata."""
    from marsdiff.diffusion.loading import UNET_WEIGHTS
    from marsdiff.diffusion.pixel import MODEL_META_NAME
    from marsdiff.io.atomic import write_json

    model_dir = Path(model_dir)
    meta = read_json(model_dir / MODEL_META_NAME, "model metadata", "pretrain_base")
    meta["weights_sha256"] = file_digest(model_dir / UNET_WEIGHTS)
    write_json(model_dir / MODEL_META_NAME, meta)
    follow_umask(model_dir)
    return meta
