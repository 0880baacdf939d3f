"""The bad-input battery (tests/bad_inputs.py): each case gives one line, never a traceback or a
silent acceptance, and docs/reliability.md records exactly that line."""

from __future__ import annotations

import pytest

from bad_inputs import CASES, DOC, provoke_message, recorded_messages

REGENERATE = "regenerate the table with `python tests/bad_inputs.py`"


@pytest.mark.parametrize("bad", CASES, ids=[bad.id for bad in CASES])
def test_bad_input_gives_the_documented_line(bad, tmp_path):
    message = provoke_message(bad, tmp_path)
    assert "\n" not in message and "Traceback" not in message, message
    recorded = recorded_messages()
    assert bad.id in recorded, f"{bad.id} is missing from {DOC.name}: {REGENERATE}"
    assert recorded[bad.id] == message, f"{DOC.name} is stale for {bad.id}: {REGENERATE}"


def test_the_table_lists_every_case_once_and_nothing_else():
    ids = [bad.id for bad in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert set(recorded_messages()) == set(ids), REGENERATE
    assert len(ids) >= 80, "issue 23 asks for a battery of at least 80 bad inputs"
