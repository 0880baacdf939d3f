"""Code and data versions (marsdiff.provenance): what changes them and what does not."""

import os
import shutil
import textwrap
import time

import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.provenance import REGISTRY, ContentDigests, code_digest


@pytest.fixture
def project(tmp_path):
    """A miniature library (marsdiff/...) and a workflow script importing part of it."""
    lib = tmp_path / "src" / "marsdiff"
    (lib / "data").mkdir(parents=True)
    (lib / "rewards").mkdir()
    (lib / "__init__.py").write_text('"""pkg"""\n')
    (lib / "errors.py").write_text("class MarsdiffError(Exception):\n    pass\n")
    (lib / "data" / "__init__.py").write_text("")
    (lib / "data" / "manifest.py").write_text("from ..errors import MarsdiffError\n\nCOLUMNS = ['id']\n")
    (lib / "rewards" / "__init__.py").write_text("")
    (lib / "rewards" / "kernels.py").write_text(textwrap.dedent('''\
        """Kernels."""
        import numpy as np


        def bandwidth(x):
            """Median distance."""
            from marsdiff.data.manifest import COLUMNS  # lazy import, still followed
            return float(np.median(x))
        '''))
    (lib / "rewards" / "unused.py").write_text("X = 1\n")
    scripts = tmp_path / "workflow" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "stage.py").write_text("from marsdiff.rewards.kernels import bandwidth\nbandwidth([1])\n")
    return lib, scripts


def digest(project, *parts):
    lib, scripts = project
    return code_digest(lib, scripts, parts or ("scripts/stage.py",))


def test_the_digest_follows_imports_including_lazy_and_relative_ones(project):
    files = REGISTRY[digest(project)]
    assert files == ("__init__.py", "data/__init__.py", "data/manifest.py", "errors.py", "rewards/__init__.py",
                     "rewards/kernels.py", "scripts/stage.py")
    assert "rewards/unused.py" in REGISTRY[digest(project, "rewards")], "a subpackage part takes all its modules"


def test_comments_docstrings_and_layout_do_not_change_it(project):
    lib, _ = project
    before = digest(project)
    kernels = lib / "rewards" / "kernels.py"
    text = kernels.read_text()
    kernels.write_text("# a new comment\n" + text.replace('"""Median distance."""', '"""Median Euclidean distance,\n    reworded."""')
                       .replace("return float(np.median(x))", "return float(  np.median( x )  )  # same"))
    assert digest(project) == before


def test_a_behaviour_change_anywhere_in_the_closure_changes_it(project):
    lib, scripts = project
    before = digest(project)
    (lib / "data" / "manifest.py").write_text("from ..errors import MarsdiffError\n\nCOLUMNS = ['id', 'path']\n")
    after_module = digest(project)
    assert after_module != before
    (scripts / "stage.py").write_text("from marsdiff.rewards.kernels import bandwidth\nbandwidth([2])\n")
    assert digest(project) != after_module
    (lib / "rewards" / "unused.py").write_text("X = 2\n")
    assert digest(project) == digest(project), "stable"
    assert "rewards/unused.py" not in REGISTRY[digest(project)]


def test_a_moved_project_keeps_its_digest(project, tmp_path):
    lib, scripts = project
    before = digest(project)
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "src", moved / "src")
    shutil.copytree(tmp_path / "workflow", moved / "workflow")
    assert code_digest(moved / "src" / "marsdiff", moved / "workflow" / "scripts", ["scripts/stage.py"]) == before


def test_unknown_parts_are_one_line_errors(project):
    with pytest.raises(MarsdiffError, match=r"code_version: .*nothing\.py does not exist"):
        digest(project, "nothing.py")
    with pytest.raises(MarsdiffError, match=r"workflow script .*missing\.py does not exist"):
        digest(project, "scripts/missing.py")


def test_content_digests_follow_content_not_time_or_place(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    old = time.time() - 100
    os.utime(data, (old, old))
    cache = tmp_path / "cache.json"
    digests = ContentDigests(cache)
    digests.RACY_SECONDS = -1
    first = digests.file(data)
    digests.save()
    assert cache.is_file()

    os.utime(data, None)  # touched: same content
    assert ContentDigests(cache).file(data) == first
    copy = tmp_path / "copy.csv"
    shutil.copy(data, copy)
    assert ContentDigests(cache).file(copy) == first
    data.write_text("a,b\n1,3\n")  # same size, new content, time stamp set back
    os.utime(data, (old, old))
    assert ContentDigests(cache).file(data) != first, "the change time still differs"


def test_a_cached_digest_skips_the_check_only_while_the_file_is_unchanged(tmp_path):
    image = tmp_path / "img.png"
    image.write_bytes(b"fake image")
    old = time.time() - 100
    os.utime(image, (old, old))
    calls = []
    digests = ContentDigests(tmp_path / "cache.json")
    digests.RACY_SECONDS = -1  # the file was just written: trust its stamp anyway, for the test
    digests.file(image, check=calls.append, kind="image")
    digests.file(image, check=calls.append, kind="image")
    assert calls == [image], "checked once while unchanged"
    digests.file(image, check=calls.append, kind="table")
    assert len(calls) == 2, "another kind of check is another entry"
    image.write_bytes(b"other image")
    digests.file(image, check=calls.append, kind="image")
    assert len(calls) == 3


def test_a_file_younger_than_the_clock_tick_is_not_cached(tmp_path):
    data = tmp_path / "fresh.txt"
    data.write_text("x")
    digests = ContentDigests(tmp_path / "cache.json")
    digests.file(data)
    digests.save()
    assert not (tmp_path / "cache.json").exists(), "a rewrite within the same tick could keep its stamp"


def test_a_damaged_cache_is_rebuilt(tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    data = tmp_path / "d.txt"
    data.write_text("x")
    assert len(ContentDigests(cache).file(data)) == 64


def test_no_stage_runs_the_rerun_machinery():
    """Editing marsdiff.provenance (how versions are computed) must re-run no stage: no workflow
    script may import it, directly or through the library."""
    from conftest import REPO

    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        files = REGISTRY[code_digest(REPO / "src" / "marsdiff", REPO / "workflow" / "scripts", [f"scripts/{script.name}"])]
        assert "provenance.py" not in files, script.name
