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
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import current_umask
from marsdiff.io.digests import file_digest

#: Digest -> the files it covers (relative names), filled by :func:`code_digest`; lets tests
#: check which files a rule's ``code`` param follows.
REGISTRY: dict[str, tuple[str, ...]] = {}

DIGEST_CHARS = 16
PACKAGE = "marsdiff"


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]
    return tree


def _import_statements(tree: ast.AST) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """Every import in a file, inside functions too (stages import heavy modules lazily):
    ``(level, module, names)``, level 0 and names () for ``import a.b``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((0, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
    return tuple(found)


def _marsdiff_names(statements, package: tuple[str, ...]) -> set[str]:
    """Dotted names of marsdiff modules (or their attributes) imported by ``statements``.

    ``package``: the file's package path inside marsdiff, for relative imports (empty for
    workflow scripts, which have none).
    """
    names: set[str] = set()
    for level, module, imported in statements:
        if level:
            if not package or level > len(package) + 1:
                continue
            base = (PACKAGE, *package[: len(package) - level + 1])
            module = ".".join(base + ((module,) if module else ()))
        if module.split(".")[0] != PACKAGE:
            continue
        names.add(module)
        names.update(f"{module}.{name}" for name in imported)
    return names


@lru_cache(maxsize=None)
def _analyse(path: str, size: int, mtime_ns: int) -> tuple[str, tuple]:
    # size and mtime are part of the cache key only: a file edited while a long-lived process
    # (a test session) keeps this cache is parsed again.
    source = Path(path).read_bytes()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        raise MarsdiffError(f"{path}: cannot parse for the code version ({err.msg}, line {err.lineno})") from None
    statements = _import_statements(tree)
    # ast.dump leaves out line/column attributes by default; comments never reach the AST.
    digest = hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()
    return digest, statements


def _stat_key(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise MarsdiffError(f"{path}: code file not found (named in a rule's code_version)") from None
    return str(path), stat.st_size, stat.st_mtime_ns


def behaviour_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a Python file's AST without docstrings (comments and layout never count)."""
    return _analyse(*_stat_key(Path(path)))[0]


def _module_file(library: Path, dotted: str) -> Path | None:
    """The file of a dotted marsdiff module name, or None (an attribute, not a module)."""
    relative = Path(*dotted.split(".")[1:])
    package_init = library / relative / "__init__.py"
    if package_init.is_file():
        return package_init
    module = (library / relative).with_suffix(".py")
    return module if relative.parts and module.is_file() else None


def resolve_parts(library: Path, scripts: Path, parts: Iterable[str],
                  stops: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """``(name, path)`` of the files behind code parts and everything they import, sorted by name.

    A part is a subpackage of the library ("rewards": every module below it), a library module
    ("io/trajectories.py") or a workflow script ("scripts/prepare_reference.py"). Every marsdiff
    module these files import (at the top or inside functions, transitively) is added, and so is
    the ``__init__.py`` of each package on the way, since importing a module runs them. Imports
    by string (importlib) are not seen: name such modules as parts.

    ``stops``: library modules ("errors.py", "rl/trpo.py") the walk neither adds nor follows,
    for code declared not to change the outputs (marsdiff.workflow.code says which and why). A
    module they import is still added when another path reaches it.
    """
    library, scripts, parts = Path(library), Path(scripts), tuple(parts)
    stops = frozenset(stops)
    for stop in sorted(stops):
        if not (library / stop).is_file():
            raise MarsdiffError(f"code_version: {library / stop} does not exist (a module the digest stops at)")
        if stop in parts:
            raise MarsdiffError(f"code_version: {stop} is both a root and a module the digest stops at")
    files: dict[str, Path] = {}
    todo: list[tuple[str, Path, tuple[str, ...]]] = []

    def add_library_file(path: Path) -> None:
        relative = path.relative_to(library)
        name = relative.as_posix()
        if name in files or name in stops:
            return
        files[name] = path
        # A module's package, and a package's own __init__: both resolve "." to that package.
        todo.append((name, path, relative.parts[:-1]))
        for parent in relative.parents:
            init = library / parent / "__init__.py"
            if init.is_file() and init != path:
                add_library_file(init)

    for part in parts:
        if part.startswith("scripts/"):
            path = scripts / part[len("scripts/"):]
            if not path.is_file():
                raise MarsdiffError(f"code_version: workflow script {path} does not exist")
            files[part] = path
            todo.append((part, path, ()))
        elif part.endswith(".py"):
            path = library / part
            if not path.is_file():
                raise MarsdiffError(f"code_version: {path} does not exist (part {part!r})")
            add_library_file(path)
        else:
            modules = sorted((library / part).rglob("*.py"))
            if not modules:
                raise MarsdiffError(f"code_version: {library / part} is not a subpackage with modules (part {part!r})")
            for module in modules:
                add_library_file(module)

    while todo:
        _, path, package = todo.pop()
        for dotted in _marsdiff_names(_analyse(*_stat_key(path))[1], package):
            module = _module_file(library, dotted)
            if module is not None:
                add_library_file(module)
    return sorted(files.items())


def code_digest(library: str | os.PathLike, scripts: str | os.PathLike, parts: Iterable[str],
                stops: Iterable[str] = ()) -> str:
    """Digest of the behaviour of the files behind ``parts``, not following ``stops`` (see
    :func:`resolve_parts`). Only the files count: the same files give the same digest whatever
    the parts and stops that chose them."""
    named = resolve_parts(Path(library), Path(scripts), parts, stops)
    combined = hashlib.sha256()
    for name, path in named:
        combined.update(f"{name}\0{behaviour_digest(path)}\n".encode())
    digest = combined.hexdigest()[:DIGEST_CHARS]
    REGISTRY[digest] = tuple(name for name, _ in named)
    return digest


# ---------------------------------------------------------------------------- user data

def combine_digests(named: Iterable[tuple[str, str]]) -> str:
    """One short digest over ``(name, digest)`` pairs, independent of their order."""
    combined = hashlib.sha256()
    for name, digest in sorted(named):
        combined.update(f"{name}\0{digest}\n".encode())
    return combined.hexdigest()[:DIGEST_CHARS]


class ContentDigests:
    """SHA-256 of files, cached on disk under (resolved path, size, mtime, ctime, inode).

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

    def file(self, path: str | os.PathLike, check: Callable[[Path], object] | None = None, kind: str = "file") -> str:
        """SHA-256 of ``path``; on a cache miss ``check(path)`` runs first (it raises on bad
        content), so a cached entry also means "checked, unchanged since". ``kind`` names the
        check in the cache key: the same file checked as an image and read as a table are two
        entries."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as err:
            raise MarsdiffError(f"{path}: cannot read ({err.strerror})") from None
        key = f"{kind}:{path.resolve()}"
        # ctime too: unlike mtime it cannot be set back (os.utime), so a rewrite is always seen.
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        entry = self._entries.get(key)
        if entry and entry[:4] == stamp:
            return entry[4]
        if check is not None:
            check(path)
        try:
            digest = file_digest(path)
        except OSError as err:
            raise MarsdiffError(f"{path}: cannot read ({err.strerror})") from None
        if time.time() - max(stat.st_mtime_ns, stat.st_ctime_ns) / 1e9 > self.RACY_SECONDS:
            self._entries[key] = stamp + [digest]
            self._dirty = True
        return digest

    def files(self, named: Iterable[tuple[str, str | os.PathLike]]) -> str:
        """One digest over ``(name, path)`` pairs: names (e.g. paths inside a folder) and contents."""
        return combine_digests((name, self.file(path)) for name, path in named)

    def save(self) -> None:
        """Write the cache atomically (concurrent parses in cluster jobs may race; last one wins)."""
        if not (self.cache_path and self._dirty):
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            # a unique name: cluster jobs on several hosts may save at once (same pid possible)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.cache_path.name}.", suffix=".tmp", dir=self.cache_path.parent)
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self._entries, sort_keys=True))
            os.chmod(tmp, 0o666 & ~current_umask())  # shared project directories: group-readable
            os.replace(tmp, self.cache_path)
            self._dirty = False
        except OSError:
            pass  # a read-only working directory only loses the shortcut
