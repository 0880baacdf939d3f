"""make test runs two pytest-xdist workers with --dist loadgroup: tests/conftest.py puts a file's
tests in one group, and every file that uses the session's tiny evaluation run in one more."""

from __future__ import annotations

from types import SimpleNamespace


from conftest import pytest_collection_modifyitems


def fake_item(nodeid: str, fixtures: tuple[str, ...] = ()):
    item = SimpleNamespace(nodeid=nodeid, fixturenames=list(fixtures), marks=[])
    item.add_marker = item.marks.append
    return item


def group_of(item) -> str:
    (mark,) = item.marks
    assert mark.name == "xdist_group"
    return mark.args[0]


def test_a_files_tests_share_a_group_and_the_tiny_evaluation_users_share_one():
    items = [
        fake_item("tests/test_a.py::test_one"),
        fake_item("tests/test_a.py::test_two"),
        fake_item("tests/test_b.py::test_plain"),
        # one test of the file uses the shared run: the whole file joins its group
        fake_item("tests/test_b.py::test_reads_the_run", ("tmp_path", "tiny_evaluation")),
        fake_item("tests/test_c.py::test_kills[x]", ("uninterrupted", "tiny_evaluation")),
    ]
    pytest_collection_modifyitems(None, items)
    groups = [group_of(item) for item in items]
    assert groups[0] == groups[1] == "tests/test_a.py"
    assert groups[2] == groups[3] == groups[4] == "tiny_evaluation"


def test_the_real_users_of_the_tiny_evaluation_share_a_group(request):
    """This session's own collection: a collected test that needs the run through another fixture
    (test_kills' ``uninterrupted``) puts its file in the run's group, and a file that does not
    use it keeps its own."""
    groups, users = {}, set()
    for item in request.session.items:
        path = item.nodeid.split("::")[0]
        groups.setdefault(path, set()).update(m.args[0] for m in item.iter_markers("xdist_group"))
        if "tiny_evaluation" in item.fixturenames:
            users.add(path)
    if any("test_killed_runs_resume" in item.nodeid for item in request.session.items):
        assert "tests/test_kills.py" in users  # through its module fixture ``uninterrupted``
    for path in users:
        assert groups[path] == {"tiny_evaluation"}, path
    assert groups["tests/test_worker_groups.py"] == {"tests/test_worker_groups.py"}
