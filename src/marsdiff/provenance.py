"""Version strings that decide when a workflow stage re-runs (docs/workflow.md, "Re-run policy").

Snakemake re-runs a job when the text of one of its params changes. Two kinds of params come
from here, both computed while the Snakefile is parsed (so they must stay cheap: no numpy, no
torch, and a stat-keyed cache for user data):

- :func:`code_digest`: the behaviour of the Python files a stage runs. Each file is parsed and
  its AST dumped without docstrings, line numbers or comments, so editing a comment, a docstring
  or the layout re-runs nothing, while any change to what the code does re-runs the stage.
  Absolute paths and modification times play no part: a moved, copied or re-cloned project
  gets the same digests.
- :class:`ContentDigests`: SHA-256 of user data files (tiles, label files, image folders). The
  digest of a file is cached under its (path, size, mtime, inode) so a parse only re-reads
  files that changed; a copied project re-reads them once and finds the same content.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from marsdiff.errors import MarsdiffError

#: Modules every stage runs through its script (stage glue, errors, devices, atomic writes).
COMMON_MODULES = ("__init__.py", "errors.py", "stage.py", "devices.py", "io/atomic.py")

#: Digest -> the files it covers (relative names), filled by :func:`code_digest`; lets tests
#: and ``marsdiff doctor``-style tools check which files a rule's ``code`` param follows.
REGISTRY: dict[str, tuple[str, ...]] = {}

DIGEST_CHARS = 16


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]
    return tree


@lru_cache(maxsize=None)
def _behaviour_digest(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key only: a file edited while a long-lived process
    # (a test session) keeps this cache is parsed again.
    source = Path(path).read_bytes()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        raise MarsdiffError(f"{path}: cannot parse for the code version ({err.msg}, line {err.lineno})") from None
    # ast.dump leaves out line/column attributes by default; comments never reach the AST.
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()


def behaviour_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a Python file's AST without docstrings (comments and layout never count)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise MarsdiffError(f"{path}: code file not found (named in a rule's code_version)") from None
    return _behaviour_digest(str(path), stat.st_size, stat.st_mtime_ns)


def resolve_parts(library: Path, scripts: Path, parts: Iterable[str]) -> list[tuple[str, Path]]:
    """``(name, path)`` of the files behind code parts, sorted by name, without duplicates.

    A part is a subpackage of the library ("rewards": every module below it), a library module
    ("io/trajectories.py"), or a workflow script ("scripts/prepare_reference.py"). The
    ``__init__.py`` of every package on a module's import path is included, since importing the
    module runs it, and so are :data:`COMMON_MODULES`.
    """
    files: dict[str, Path] = {}

    def add_module(relative: Path) -> None:
        path = library / relative
        if not path.is_file():
            raise MarsdiffError(f"code_version: {path} does not exist (part {relative.as_posix()!r})")
        files[relative.as_posix()] = path
        for parent in relative.parents:
            init = library / parent / "__init__.py"
            if init.is_file():
                files[(parent / "__init__.py").as_posix()] = init

    for part in (*COMMON_MODULES, *parts):
        if part.startswith("scripts/"):
            path = scripts / part[len("scripts/"):]
            if not path.is_file():
                raise MarsdiffError(f"code_version: workflow script {path} does not exist")
            files[part] = path
        elif part.endswith(".py"):
            add_module(Path(part))
        else:
            package = library / part
            modules = sorted(package.rglob("*.py"))
            if not modules:
                raise MarsdiffError(f"code_version: {package} is not a subpackage with modules (part {part!r})")
            for module in modules:
                add_module(module.relative_to(library))
    return sorted(files.items())


def code_digest(library: str | os.PathLike, scripts: str | os.PathLike, parts: Iterable[str]) -> str:
    """Digest of the behaviour of the files behind ``parts`` (see :func:`resolve_parts`)."""
    named = resolve_parts(Path(library), Path(scripts), parts)
    combined = hashlib.sha256()
    for name, path in named:
        combined.update(f"{name}\0{behaviour_digest(path)}\n".encode())
    digest = combined.hexdigest()[:DIGEST_CHARS]
    REGISTRY[digest] = tuple(name for name, _ in named)
    return digest


# ---------------------------------------------------------------------------- user data

def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ContentDigests:
    """SHA-256 of files, cached on disk under (resolved path, size, mtime_ns, inode).

    The cache is only a shortcut: an entry is trusted while the file's stat is unchanged, and an
    entry is not stored while the file is younger than :attr:`RACY_SECONDS` (a write in the same
    clock tick could keep size and mtime; git's "racily clean" rule).
    """

    RACY_SECONDS = 2.0

    def __init__(self, cache_path: str | os.PathLike | None = None):
        self.cache_path = Path(cache_path) if cache_path else None
        self._entries: dict[str, list] = {}
        self._dirty = False
        if self.cache_path and self.cache_path.is_file():
            try:
                loaded = json.loads(self.cache_path.read_text())
                if isinstance(loaded, dict):
                    self._entries = loaded
            except (OSError, ValueError):
                self._entries = {}  # a damaged cache is rebuilt, never trusted

    def file(self, path: str | os.PathLike) -> str:
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as err:
            raise MarsdiffError(f"{path}: cannot read ({err.strerror})") from None
        key = str(path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = self._entries.get(key)
        if entry and entry[:3] == stamp:
            return entry[3]
        try:
            digest = _file_sha256(path)
        except OSError as err:
            raise MarsdiffError(f"{path}: cannot read ({err.strerror})") from None
        if time.time() - stat.st_mtime_ns / 1e9 > self.RACY_SECONDS:
            self._entries[key] = stamp + [digest]
            self._dirty = True
        return digest

    def files(self, named: Iterable[tuple[str, str | os.PathLike]]) -> str:
        """One digest over ``(name, path)`` pairs: names (e.g. paths inside a folder) and contents."""
        combined = hashlib.sha256()
        for name, path in sorted(named, key=lambda pair: pair[0]):
            combined.update(f"{name}\0{self.file(path)}\n".encode())
        return combined.hexdigest()[:DIGEST_CHARS]

    def save(self) -> None:
        """Write the cache atomically (concurrent parses in cluster jobs may race; last one wins)."""
        if not (self.cache_path and self._dirty):
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._entries, sort_keys=True))
            os.replace(tmp, self.cache_path)
            self._dirty = False
        except OSError:
            pass  # a read-only working directory only loses the shortcut
