"""Glue shared by the workflow scripts (and CLI commands).

A script gets its stage's configuration as a JSON string param, logs into the rule's log file,
and turns a :class:`~marsdiff.errors.MarsdiffError` into one line on stderr and exit status 1.
Any other exception is a bug or a machine fault: its traceback goes into the rule's log as well
as stderr, because on a cluster stderr ends up in the scheduler's log, far from the rule's.
The library never reads Snakemake objects; only this module and ``workflow/scripts`` do.

Two kinds of settings reach a script. Tracked ones arrive as params (:func:`params_json`):
Snakemake compares their text and re-runs the job when it changes. Settings that change no
output (batch sizes, devices, the feature cache, where the user's data lives) are read from the
validated config with :func:`untracked`, which Snakemake's params trigger never sees.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import sys
from typing import Any, Callable

from marsdiff.errors import MarsdiffError
from marsdiff.logs import LOG_FORMAT



def configure_logging(log_path: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def param_text(value: Any) -> str:
    """A rule param as text: a Python literal with every mapping's keys sorted.

    Snakemake compares this text between runs (its params trigger), so it must not depend on key
    order; and the HTML report shows it in each result's info panel with every double quote
    escaped, so it has none where a JSON text would have dozens."""
    return repr(_keys_sorted(value))


def _keys_sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _keys_sorted(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_keys_sorted(item) for item in value]
    return value


def params_json(snakemake: Any, name: str) -> Any:
    """Decode a rule param written by :func:`param_text` (or JSON, as tests and older runs pass)."""
    text = getattr(snakemake.params, name)
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return json.loads(text)


def untracked(snakemake: Any, key: str) -> Any:
    """The value of the dotted config ``key`` (``"sampling.batch_size"``, ``"features"``) as the
    job sees it: the validated config, every schema default filled. For settings that change no
    output: editing them re-runs nothing, yet the stage gets the value the config gives."""
    value: Any = snakemake.config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise MarsdiffError(f"config key {key}: not in the workflow's config (the schema gives every default)")
        value = value[part]
    return value


def run_stage(snakemake: Any, body: Callable[[], None]) -> None:
    """Run a stage body with logging into the rule's log; user errors exit 1 with one line."""
    log = list(getattr(snakemake, "log", []) or [])
    configure_logging(log[0] if log else None)
    # HDF5's own file locks fail on many cluster file systems (NFS, Lustre: "unable to lock
    # file"), and protect nothing here: every HDF5 file has one writer, which writes it under a
    # temporary name and renames it. HDF5 reads the variable when it opens a file. A value the
    # user set wins.
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    try:
        body()
    except MarsdiffError as err:
        logging.getLogger("marsdiff").error("%s", err)
        print(f"marsdiff error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        # the root logger writes to stderr and the rule log; re-raised for Snakemake's own report
        logging.getLogger("marsdiff").exception("the stage failed")
        raise
