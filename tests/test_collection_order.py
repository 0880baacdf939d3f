"""make test's two xdist workers start on the files with slow tests (tests/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import pytest_collection_modifyitems


def fake_item(nodeid: str, slow: bool = False):
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: object() if slow and name == "slow" else None)


def test_files_with_a_slow_test_go_first_whole_and_every_file_keeps_its_order():
    items = [
        fake_item("tests/test_a.py::test_1"),
        fake_item("tests/test_b.py::test_fast"),
        fake_item("tests/test_b.py::test_workflow", slow=True),
        fake_item("tests/test_c.py::test_1"),
        fake_item("tests/test_d.py::test_run[x]", slow=True),
        fake_item("tests/test_d.py::test_run[y]", slow=True),
    ]
    pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == [
        "tests/test_b.py::test_fast", "tests/test_b.py::test_workflow",
        "tests/test_d.py::test_run[x]", "tests/test_d.py::test_run[y]",
        "tests/test_a.py::test_1", "tests/test_c.py::test_1",
    ]
