"""Stage ``validate_rewards``: the diversity-ladder validation of the rewards, on files.

Reads the reference features (with their ids file) and the manifest, runs
:func:`marsdiff.rewards.validation.run_validation` on the train rows and writes ``ladder.csv``,
the ladder and rho figures and ``validation.json`` (their content: :mod:`marsdiff.rewards.validation`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from marsdiff.io.atomic import atomic_path, write_json
from marsdiff.rewards.validation import plot_ladder, plot_rho, run_validation, train_reference

log = logging.getLogger(__name__)


def validate_rewards(
    features_path: str | Path,
    manifest_path: str | Path,
    reward_section: dict[str, Any] | None,
    ladder_csv: str | Path,
    validation_json: str | Path,
    plot_paths: dict[str, str | Path],
    extractor: str = "",
    rho_plot: str | Path | None = None,
) -> dict[str, Any]:
    """Stage validate_rewards: read reference features (and their ids file), write ladder.csv,
    plots and validation.json."""
    from marsdiff.data.manifest import read_manifest
    from marsdiff.io.feature_files import read_feature_set

    # The features must come from the extractor this stage was told about, at its dimension.
    features, ids = read_feature_set(features_path, extractor=extractor or None)
    manifest = read_manifest(manifest_path)
    train_features, meta = train_reference(features, ids, manifest)
    log.info("validating rewards on %d train reference rows (%s)", len(meta), extractor or "features")
    table, summary = run_validation(train_features, meta, reward_section)
    summary["extractor"] = extractor
    with atomic_path(ladder_csv) as tmp:
        table.to_csv(tmp, index=False)
    for ladder, path in plot_paths.items():
        plot_ladder(table, ladder, summary, path)
    if rho_plot is not None:
        plot_rho(summary, rho_plot)
    write_json(validation_json, summary)
    for name, entry in sorted(summary["rewards"].items()):
        log.info("reward %-30s %s %s", name, "PASS" if entry["passed"] else "FAIL", "; ".join(entry["failures"]))
    return summary
