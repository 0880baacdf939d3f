"""run_stage: a user error is one line; any other failure leaves its traceback in the rule log."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.stage import run_stage


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level


def test_an_unexpected_exception_is_logged_with_its_traceback_and_re_raised(tmp_path):
    log = tmp_path / "rule.log"

    def body():
        raise ZeroDivisionError("boom in the stage body")

    with pytest.raises(ZeroDivisionError):
        run_stage(SimpleNamespace(log=[str(log)]), body)
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "ZeroDivisionError: boom in the stage body" in text
    assert "in body" in text  # the frame that raised, not only the message


def test_a_user_error_is_one_line_in_the_log_and_exit_status_1(tmp_path, capsys):
    log = tmp_path / "rule.log"

    def body():
        raise MarsdiffError("sampling.steps must be >= 1")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(SimpleNamespace(log=[str(log)]), body)
    assert exit_info.value.code == 1
    text = log.read_text()
    assert "sampling.steps must be >= 1" in text and "Traceback" not in text
    assert capsys.readouterr().err.strip().splitlines()[-1] == "marsdiff error: sampling.steps must be >= 1"


@pytest.mark.parametrize("user_value, seen", [(None, "FALSE"), ("TRUE", "TRUE")])
def test_stages_open_hdf5_files_without_file_locks_unless_the_user_says(tmp_path, monkeypatch, user_value, seen):
    import h5py

    if user_value is None:
        monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    else:
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", user_value)
    observed = {}

    def body():
        observed["value"] = os.environ.get("HDF5_USE_FILE_LOCKING")
        with h5py.File(tmp_path / "x.h5", "w") as handle:  # opens under the setting
            handle["a"] = [1]

    run_stage(SimpleNamespace(log=[str(tmp_path / "rule.log")]), body)
    assert observed["value"] == seen


def test_an_injected_raise_fault_fails_the_stage_with_its_traceback_in_the_log(tmp_path, monkeypatch):
    from marsdiff import faults
    from marsdiff.faults import kill_point

    monkeypatch.setattr(faults, "_process_counts", {})  # visits count from here
    monkeypatch.setenv("MARSDIFF_KILL_AT", "score.start:2")
    monkeypatch.setenv("MARSDIFF_FAULT_MODE", "raise")
    monkeypatch.delenv("MARSDIFF_KILL_DIR", raising=False)
    visits = []

    def body():
        for _ in range(3):
            kill_point("score.start")
            visits.append(1)

    with pytest.raises(RuntimeError, match="fault injected at score.start"):
        run_stage(SimpleNamespace(log=[str(tmp_path / "rule.log")]), body)
    assert len(visits) == 1  # the first visit passes, the second raises
    assert "RuntimeError: fault injected at score.start" in (tmp_path / "rule.log").read_text()


def test_an_unknown_fault_mode_is_one_line(monkeypatch):
    from marsdiff.faults import kill_point

    monkeypatch.setenv("MARSDIFF_FAULT_MODE", "explode")
    with pytest.raises(MarsdiffError, match="MARSDIFF_FAULT_MODE='explode': expected kill or raise"):
        kill_point("score.start")
