"""Writing weights files that are byte-stable and shareable.

- :func:`save_safetensors`: safetensors' own writer stores the ``__metadata__`` map in hash-map
  order, which changes from process to process, so identical weights gave different bytes (and
  different content hashes). This writer re-serialises the header with sorted metadata keys: the
  same tensors and metadata always give the same bytes. It writes atomically and returns the
  sha256 the caller records in the file's sidecar.
- :func:`follow_umask`: files written by libraries that create them themselves
  (``safetensors.save_file``, diffusers' ``save_pretrained``: mode 0600) or copied with their
  mode get the mode any ``open()`` would give under the current umask, so a project group on a
  shared file system can read (and, under umask 002, write) them. ``io/atomic.py`` only sets
  the mode of the temporary it made itself.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping

from marsdiff.io.atomic import atomic_path, current_umask
from marsdiff.io.digests import file_digest

#: safetensors pads its JSON header with spaces to a multiple of this many bytes.
_HEADER_ALIGN = 8


def canonical_safetensors_bytes(data: bytes) -> bytes:
    """``data`` (a serialised safetensors file) with its metadata keys sorted; tensors untouched."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    # Tensor entries keep safetensors' order (it is deterministic: by dtype alignment, then name)
    # and their data offsets, so the data section is reused as it is.
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def save_safetensors(tensors: Mapping, target: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``tensors`` (torch) to ``target`` atomically, byte-stable, mode from the umask; return its sha256."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata=dict(metadata) if metadata else None)
    with atomic_path(target, suffix=".safetensors") as tmp:
        tmp.write_bytes(canonical_safetensors_bytes(data))
    return file_digest(target)


def follow_umask(root: str | os.PathLike) -> None:
    """Give ``root`` (a file, or a folder and everything in it) the modes the umask allows:
    files 0666 & ~umask (plus execute bits only where they were set), folders 0777 & ~umask."""
    mask = current_umask()
    root = Path(root)
    paths = [root] if root.is_file() else [root, *root.rglob("*")]
    for path in paths:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        else:
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o666 | (0o111 if executable else 0)) & ~mask)
