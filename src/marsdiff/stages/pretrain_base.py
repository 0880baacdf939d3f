"""Stage ``pretrain_base``: install the shipped base model into ``results/models/base/`` where it
is what training would produce, else train it there.

When the shipped model matches (training config, train split, training code) and how it is
installed are :mod:`marsdiff.diffusion.shipped`'s; the training is
:func:`marsdiff.diffusion.pretrain.pretrain_base`'s. This module decides between the two and
says why in the rule's log.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from marsdiff.diffusion.shipped import PROVENANCE_NAME, SHIPPED_DIR, install, mismatches, record_weights_hash

log = logging.getLogger(__name__)


def pretrain_or_install(index_csv: str | os.PathLike, out_dir: str | os.PathLike, section: Mapping[str, Any],
                        code_version: str, threads: int | None = None) -> dict[str, Any]:
    """Stage pretrain_base: install the shipped model where it is what training would produce
    (``shipped_checkpoint: auto``), else train; the log says which and why. ``section``: the
    ``model.pixel`` section, filled here by the schema. Returns the metadata."""
    from marsdiff.config import filled_section
    from marsdiff.diffusion.pretrain import pretrain_base

    section = filled_section("model.pixel", section)
    if section["shipped_checkpoint"] == "auto":
        reasons = (mismatches(section, index_csv, code_version) if (SHIPPED_DIR / PROVENANCE_NAME).is_file()
                   else [f"no shipped model at {SHIPPED_DIR}"])
        if not reasons:
            meta = install(out_dir)
            log.info("installed the shipped base model (%s, trained %s steps; weights sha256 %s): it was trained "
                     "from this config, train split and code. Set model.pixel.shipped_checkpoint: never to train "
                     "anyway.", SHIPPED_DIR, meta["training"]["steps"], meta["installed_from"]["weights_sha256"][:12])
            return meta
        log.info("training instead of installing the shipped base model: %s", "; ".join(reasons))
    pretrain_base(index_csv, out_dir, section, threads=threads, code_version=code_version)
    return record_weights_hash(out_dir)
