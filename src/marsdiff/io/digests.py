"""Content digests of files: the one SHA-256 of a file's bytes every package uses.

Feature-cache keys, the reference manifest's ``sha256`` column, weight sidecars, the shipped
model's provenance and the exported datasets all hash files through :func:`file_digest`, so one
file has one digest wherever it is recorded.
"""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes (read in chunks by :func:`hashlib.file_digest`)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
