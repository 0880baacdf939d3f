"""Stage ``resize_reference``: the reference set at the matched resolution, on files
(``results/reference/at_{size}px/``).

Why and to what size the reference is brought down is :mod:`marsdiff.data.resolution`'s; the
pixels are :func:`marsdiff.data.images.resize_to`'s, the same function the pixel model's
training set goes through.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)


def write_resized_reference(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, size: int):
    """Stage resize_reference: the reference set brought down to ``size`` px, ``out_dir/images/*.png``
    and ``out_dir/manifest.csv``.

    ``manifest_path``: the reference's images.csv (what training reads) or manifest.csv. The new
    manifest has the same rows, ids and columns, ``path`` pointing at the resized PNGs (relative
    to it, same file names) and, when the source has a ``sha256`` column, the digests of the
    resized PNGs (so the file changes whenever the folder's content does: the workflow tracks
    the folder through it). Pixels: ``resize_to(load_image(f), size)``, grey files loaded as
    grey exactly as ``load_train_set`` does, so the pixel model's training images and this set
    are bit-identical. An image smaller than ``size`` is an error (the matched size never
    upsamples). Returns the new manifest.
    """
    from marsdiff.data.images import load_image, resize_to, save_png
    from marsdiff.data.manifest import read_manifest
    from marsdiff.data.resolution import file_mode
    from marsdiff.io.digests import file_digest
    from marsdiff.io.atomic import atomic_dir, atomic_path

    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    if int(size) < 1:
        raise MarsdiffError(f"resized reference: size must be >= 1 px, got {size}")
    table = read_manifest(manifest_path)
    if table.empty:
        raise MarsdiffError(f"{manifest_path}: the reference manifest has no rows")
    names = [Path(rel).name for rel in table["path"]]
    if len(set(names)) != len(names):
        raise MarsdiffError(f"{manifest_path}: image file names are not unique; the resized set keeps one folder")
    root = manifest_path.parent
    digests = []
    with atomic_dir(out_dir / "images") as tmp_images:
        for rel, name in zip(table["path"], names):
            source = root / rel
            image = load_image(source, mode=file_mode(source))
            height, width = image.shape[:2]
            if min(height, width) < size:
                raise MarsdiffError(f"{source}: reference image is {width}x{height} px, smaller than the matched size {size} px")
            save_png(Path(tmp_images) / name, resize_to(image, int(size)))
            digests.append(file_digest(Path(tmp_images) / name))
    resized = table.copy()
    resized["path"] = [f"images/{name}" for name in names]
    if "sha256" in resized:
        resized["sha256"] = digests
    with atomic_path(out_dir / "manifest.csv") as tmp:
        resized.to_csv(tmp, index=False)
    log.info("resized %d reference images to %d px into %s", len(resized), size, out_dir)
    return resized
