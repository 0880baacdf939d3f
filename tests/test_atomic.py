"""Atomic outputs: permissions follow the umask, and temporaries of killed writers are removed."""

import os
import stat
import subprocess
import sys
import time

import pytest

from marsdiff.io import atomic
from marsdiff.io.atomic import atomic_dir, atomic_path, remove_stale_temporaries, write_text


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)

    previous = os.umask(0o022)
    yield set_mask
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
    assert mode(tmp_path / "a.txt") == file_mode
    assert mode(tmp_path / "model") == dir_mode
    assert mode(tmp_path / "model" / "weights.bin") == file_mode


def test_umask_is_read_without_changing_it(umask):
    umask(0o027)
    assert atomic.current_umask() == 0o027
    assert atomic.current_umask() == 0o027


def _killed_writer(tmp_path, kind):
    """A child process that starts writing ``out`` and dies by SIGKILL (as under the OOM killer)."""
    script = (
        "import os, signal, sys\n"
        "from marsdiff.io.atomic import atomic_path, atomic_dir\n"
        f"target = sys.argv[1]\n"
        f"with {'atomic_path(target)' if kind == 'file' else 'atomic_dir(target)'} as tmp:\n"
        "    (tmp / 'part').write_bytes(b'x' * 1000) if tmp.is_dir() else tmp.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = tmp_path / ("out.h5" if kind == "file" else "images")
    subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    return target


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_the_next_write_removes_a_killed_writers_temporary(tmp_path, kind):
    target = _killed_writer(tmp_path, kind)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}.tmp.")]
    assert len(left) == 1, "the killed writer left its temporary behind"
    context = atomic_path(target) if kind == "file" else atomic_dir(target)
    with context as tmp:
        if kind == "file":
            tmp.write_text("done")
        else:
            (tmp / "a.png").write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name], "only the finished output remains"


def test_a_live_writers_temporary_is_kept(tmp_path):
    # Concurrent jobs write the same feature-cache file: a running writer must keep its temporary.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".cache.npz.tmp.{sleeper.pid}@{atomic._HOST}.abcd1234.npz"
        live.write_bytes(b"partial")
        fresh_foreign = tmp_path / ".cache.npz.tmp.77@otherhost.abcd1234.npz"
        fresh_foreign.write_bytes(b"partial")
        with atomic_path(tmp_path / "cache.npz") as tmp:
            tmp.write_bytes(b"mine")
        assert live.exists() and fresh_foreign.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once its writer is gone, the same temporary is stale.
    assert remove_stale_temporaries(tmp_path / "cache.npz") == [live]


def test_foreign_and_legacy_temporaries_go_once_untouched_long_enough(tmp_path):
    old = time.time() - atomic.FOREIGN_STALE_SECONDS - 60
    foreign = tmp_path / ".out.csv.tmp.4242@node17.abcd1234.csv"
    legacy_file = tmp_path / ".out.csv.tmp.k3j4h5g6.csv"
    other_target = tmp_path / ".other.csv.tmp.k3j4h5g6.csv"
    for path in (foreign, legacy_file, other_target):
        path.write_text("partial")
        os.utime(path, (old, old))
    assert sorted(remove_stale_temporaries(tmp_path / "out.csv")) == sorted([foreign, legacy_file])
    assert other_target.exists(), "temporaries of other targets are left alone"


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
