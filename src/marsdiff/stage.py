"""Glue shared by the workflow scripts (and CLI commands).

A script gets its stage's configuration as a JSON string param, logs into the rule's log file,
and turns a :class:`~marsdiff.errors.MarsdiffError` into one line on stderr and exit status 1.
The library never reads Snakemake objects; only this module and ``workflow/scripts`` do.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable

from marsdiff.errors import MarsdiffError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_path: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def params_json(snakemake: Any, name: str) -> Any:
    """Decode a JSON-encoded rule param (stages pass their config section this way)."""
    return json.loads(getattr(snakemake.params, name))


def run_stage(snakemake: Any, body: Callable[[], None]) -> None:
    """Run a stage body with logging into the rule's log; user errors exit 1 with one line."""
    log = list(getattr(snakemake, "log", []) or [])
    configure_logging(log[0] if log else None)
    try:
        body()
    except MarsdiffError as err:
        logging.getLogger("marsdiff").error("%s", err)
        print(f"marsdiff error: {err}", file=sys.stderr)
        sys.exit(1)
