"""Parse-time checks against the user's data, and the one-line stop every parse-time error takes.

Snakemake deletes a job's old outputs before it re-runs it, so bad input must stop the workflow
while the Snakefile is parsed: the reference data named in the config is checked and digested
here (its digest is prepare_reference's ``data`` param), then the settings that depend on it
(docs/workflow.md, "When something fails").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from marsdiff.errors import MarsdiffError

#: The stat-keyed cache of user-data digests, per working directory.
DIGEST_CACHE = Path(".snakemake") / "marsdiff" / "content-digests.json"


def stop_on_user_error(compute: Callable[..., Any], *args: Any) -> Any:
    """``compute(*args)``; a MarsdiffError stops the parse with its one line (no traceback)."""
    try:
        return compute(*args)
    except MarsdiffError as err:
        print(f"marsdiff error: {err}", file=sys.stderr)
        raise SystemExit(1)


_CONTENT_DIGESTS = None


def content_digests():
    """The shared stat-keyed cache of user-data digests (one per parse)."""
    global _CONTENT_DIGESTS
    if _CONTENT_DIGESTS is None:
        from marsdiff.provenance import ContentDigests

        _CONTENT_DIGESTS = ContentDigests(DIGEST_CACHE)
    return _CONTENT_DIGESTS


def file_digest(path: str) -> str:
    """SHA-256 of a user file named in the config, through the cache (saved at once)."""
    digests = content_digests()
    digest = digests.file(path)
    digests.save()
    return digest


def reference_data_version(config: Mapping[str, Any]) -> str:
    """Check the data the reference section names and return a digest of its content; then,
    the data known good, check the settings that depend on it (class distributions against the
    reference classes, images_per_round against the train split, validation and evaluation sizes)."""
    from marsdiff.config_checks import check_data_settings, reference_summary
    from marsdiff.data.reference import check_reference_inputs
    from marsdiff.provenance import combine_digests

    digests = content_digests()
    named = check_reference_inputs(config["reference"], digests.file)
    digests.save()
    check_data_settings(config, reference_summary(config))
    return combine_digests(named)
