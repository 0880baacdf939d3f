"""Storing a trained base model as the shipped one (``marsdiff ship-base-model``).

The ship side of :mod:`marsdiff.diffusion.shipped`, kept apart because it computes the training
code's version with :mod:`marsdiff.provenance`, which no workflow stage may import (editing how
versions are computed must re-run nothing); the stage gets that version from the workflow.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from marsdiff.diffusion.shipped import (
    LIBRARY,
    PROVENANCE_NAME,
    SHIPPED_DIR,
    TRAINING_CODE_ROOTS,
    TRAINING_LOG_NAME,
    WEIGHT_NEUTRAL_MODULES,
    copy_model_files,
    train_split_digest,
    training_config,
)
from marsdiff.errors import MarsdiffError
from marsdiff.io.digests import file_digest
from marsdiff.io.reading import read_json


def training_code_version() -> str:
    """Digest of the training code's behaviour (AST without docstrings; comments never count):
    the training roots and what they import, not following the weight-neutral modules."""
    from marsdiff.provenance import code_digest

    return code_digest(LIBRARY, LIBRARY.parent / "workflow" / "scripts", TRAINING_CODE_ROOTS, WEIGHT_NEUTRAL_MODULES)


def ship(model_dir: str | os.PathLike, index_csv: str | os.PathLike, section: Mapping[str, Any] | None,
         assessment: Mapping[str, Any], training_log: str | os.PathLike | None, produced_by: str,
         folder: str | os.PathLike = SHIPPED_DIR) -> dict[str, Any]:
    """Write ``model_dir`` (a model pretrain_base trained from ``section``) as the shipped model,
    with its provenance: training config, code version, train split, weights hash, training
    summary and ``assessment`` (the issue-11 measurement, :mod:`marsdiff.evalset.assess`)."""
    from marsdiff.diffusion.pixel import MODEL_META_NAME
    from marsdiff.io.atomic import atomic_dir

    model_dir = Path(model_dir)
    meta = read_json(model_dir / MODEL_META_NAME, "model metadata", "pretrain_base")
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
        copy_model_files(model_dir, tmp)
        if training_log is not None:
            shutil.copyfile(training_log, tmp / TRAINING_LOG_NAME)
        (tmp / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return provenance
