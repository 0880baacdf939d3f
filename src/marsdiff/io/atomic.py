"""Atomic outputs: write to a temporary name beside the target, rename when complete.

A crash, a Ctrl-C or a raised error leaves no file at the target path, so Snakemake (and users)
never see a half-written output.

- Permissions follow the umask like any ``open()``: files 0644 and directories 0755 under the
  usual umask 022 (``mkstemp``/``mkdtemp`` alone would give 0600/0700, unreadable for the rest
  of a project group on a shared cluster file system).
- Temporaries are named ``.<target>.tmp.<pid>@<host>.<random>[suffix]``. A job killed by
  SIGKILL (out of memory, SLURM time limit) cannot clean up, so the next write of the same
  target removes the leftovers of writers that are gone: on this host, a process id that no
  longer runs; from another host (shared file systems), a temporary untouched for
  :data:`FOREIGN_STALE_SECONDS`. A writer still running elsewhere keeps its temporary (the
  feature cache is written by concurrent jobs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

#: A temporary from another host (or an older naming scheme) is stale once untouched this long.
FOREIGN_STALE_SECONDS = 15 * 60

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_OWNER = re.compile(r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.")


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask has to set one)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OSError:
        return True
    return True


def _is_stale(entry: os.DirEntry, prefix: str, now: float) -> bool:
    owner = _OWNER.match(entry.name[len(prefix):])
    if owner and owner["host"] == _HOST:
        pid = int(owner["pid"])
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        age = now - entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_STALE_SECONDS


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that dead writers left beside ``target``; return what was removed."""
    target = Path(target)
    prefix = _temp_prefix(target)
    # mkdtemp of earlier versions named directories ".<target>.<random>.tmp".
    legacy_dir = re.compile(rf"^\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) or legacy_dir.match(entry.name)):
            continue
        if not _is_stale(entry, prefix if entry.name.startswith(prefix) else "", now):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``target`` on success.

    The temporary name keeps the target's suffix (or ``suffix``) so libraries that pick a format
    from the extension (PIL, numpy, matplotlib) still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f"{_temp_prefix(target)}{os.getpid()}@{_HOST}.",
        suffix=target.suffix if suffix is None else suffix,
        dir=target.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``target`` (old content removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(target)}{os.getpid()}@{_HOST}.", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")
