"""Reading files that an earlier stage wrote: the one place where loader errors become one line.

Every reader of a pipeline artefact (safetensors weights, JSON sidecars and metrics, CSV tables,
``.npy`` arrays, images) goes through these functions. Whatever the library raises for a
truncated, garbled or wrong-shaped file (``SafetensorError``, ``JSONDecodeError``,
``EmptyDataError``, ``UnicodeDecodeError``, PIL's ``UnidentifiedImageError``, numpy's
``ValueError``...) becomes a :class:`~marsdiff.errors.MarsdiffError` naming the file and what to
do: re-run the rule that wrote it with ``snakemake --forcerun <rule>``.

Content hashes are checked here too: :func:`verify_sha256` checks a file against the hash its
sidecar recorded (:func:`marsdiff.io.digests.file_digest`). A sidecar without a hash (written
before hashes existed) is refused the same way, so corrupt weights can never be loaded silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from marsdiff.errors import MarsdiffError
from marsdiff.io.digests import file_digest

#: Errors a loader raises for a file whose bytes are wrong (not for a bug in our code).
_DECODE_ERRORS = (OSError, ValueError, EOFError, UnicodeDecodeError)


def rerun_hint(rule: str | None) -> str:
    """What to do about a bad file written by ``rule``."""
    if not rule:
        return "re-create it"
    return f"re-run its rule: snakemake --forcerun {rule}"


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    # One line: library messages can be long (h5py, pandas); the type name says enough after 160 chars.
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def unreadable(path: str | os.PathLike, what: str, rule: str | None, err: BaseException | str) -> MarsdiffError:
    """The one-line error for a file that exists but cannot be read as ``what``."""
    reason = err if isinstance(err, str) else _reason(err)
    return MarsdiffError(f"{path}: unreadable {what}, truncated or corrupt ({reason}); {rerun_hint(rule)}")


def _require(path: Path, what: str, rule: str | None) -> None:
    if not path.is_file():
        raise MarsdiffError(f"{path}: {what} not found; {rerun_hint(rule)}")


# ------------------------------------------------------------------------------------------------
# Hashes


def verify_sha256(path: str | os.PathLike, expected: Any, sidecar: str | os.PathLike, rule: str | None) -> None:
    """Refuse ``path`` unless its content hash is ``expected`` (recorded in ``sidecar``)."""
    path = Path(path)
    _require(path, "file", rule)
    if not isinstance(expected, str) or len(expected) != 64:
        raise MarsdiffError(f"{sidecar}: records no sha256 of {path.name} (written by an older marsdiff); "
                            f"{rerun_hint(rule)}")
    actual = file_digest(path)
    if actual != expected:
        raise MarsdiffError(f"{path}: content does not match the sha256 in {Path(sidecar).name} "
                            f"({actual[:12]} != {expected[:12]}): the file is corrupt or was changed; {rerun_hint(rule)}")


# ------------------------------------------------------------------------------------------------
# Formats


def read_json(path: str | os.PathLike, what: str, rule: str | None, expect: type = dict,
              keys: Iterable[str] = ()) -> Any:
    """A JSON file whose top level is ``expect`` (a dict unless told), holding ``keys``."""
    path = Path(path)
    _require(path, what, rule)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except _DECODE_ERRORS as err:
        raise unreadable(path, what, rule, err) from None
    if not isinstance(value, expect):
        wanted = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise MarsdiffError(f"{path}: {what} holds a {type(value).__name__}, expected {wanted}; {rerun_hint(rule)}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise MarsdiffError(f"{path}: {what} lacks {', '.join(map(repr, missing))}; {rerun_hint(rule)}")
    return value


def read_csv(path: str | os.PathLike, what: str, rule: str | None, columns: Iterable[str] = (), **kwargs):
    """A CSV table (pandas) with at least ``columns``; ``kwargs`` go to ``pandas.read_csv``."""
    import pandas as pd

    path = Path(path)
    _require(path, what, rule)
    try:
        table = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, *_DECODE_ERRORS) as err:
        raise unreadable(path, what, rule, err) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MarsdiffError(f"{path}: {what} has no column {', '.join(map(repr, missing))}; {rerun_hint(rule)}")
    return table


def load_safetensors(path: str | os.PathLike, what: str, rule: str | None, sha256: Any = None,
                     sidecar: str | os.PathLike | None = None) -> dict:
    """The tensors of a safetensors file (torch, CPU). With ``sidecar``, the file must first
    match the ``sha256`` that sidecar recorded (a missing hash is refused too)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _require(path, what, rule)
    if sidecar is not None:
        verify_sha256(path, sha256, sidecar, rule)
    try:
        return load_file(str(path))
    except (SafetensorError, *_DECODE_ERRORS) as err:
        raise unreadable(path, what, rule, err) from None


def load_npy(path: str | os.PathLike, what: str, rule: str | None):
    """A ``.npy`` array (never pickled objects)."""
    import numpy as np

    path = Path(path)
    _require(path, what, rule)
    try:
        return np.load(path, allow_pickle=False)
    except _DECODE_ERRORS as err:
        raise unreadable(path, what, rule, err) from None


def open_image(path: str | os.PathLike, what: str, rule: str | None):
    """A fully decoded PIL image (a lazily opened one would fail later, far from the file's name)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _require(path, what, rule)
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, *_DECODE_ERRORS) as err:
        # PIL raises SyntaxError for some broken PNG chunks.
        raise unreadable(path, what, rule, err) from None


def read_samples(samples_csv: str | os.PathLike, images_dir: str | os.PathLike) -> tuple[list[str], list[Path]]:
    """Image ids and paths of the images a ``samples.csv`` lists (stage ``generate_samples``), in
    image-index order; every listed image must exist in ``images_dir``."""
    samples_csv, images_dir = Path(samples_csv), Path(images_dir)
    samples = read_csv(samples_csv, "samples file", "generate_samples", columns=("image_id", "file", "image_index"),
                       dtype={"image_id": str, "file": str})
    samples = samples.sort_values("image_index", kind="stable").reset_index(drop=True)
    paths = [images_dir / name for name in samples["file"]]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise MarsdiffError(f"{absent[0]}: image listed in {samples_csv.name} not found ({len(absent)} missing)")
    return samples["image_id"].astype(str).tolist(), paths
