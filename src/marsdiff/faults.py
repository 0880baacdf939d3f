"""Fault injection: SIGKILL (or an exception) at named points of the stages, for the fault tests.

Stages call :func:`kill_point` at the places where a crash is most harmful (half-way through a
trajectory file, inside the policy's temporary folder, after an update's optimiser step, after a
stage wrote its outputs but before Snakemake recorded the job as done). Nothing happens unless the
environment asks for it:

``MARSDIFF_KILL_AT=site:count``
    the ``count``-th time (1-based) a stage reaches ``site``, the process dies with SIGKILL: no
    ``finally`` blocks, no atexit, exactly what a power cut or the OOM killer does.
``MARSDIFF_KILL_DIR=dir`` (optional)
    where the counts are kept, so ``count`` runs across every job of a Snakemake run (a file per
    site, updated under an exclusive lock), and where the kill is recorded (``dir/killed``, one
    line ``site:count pid``) before the signal, so a test can prove the point was reached.
    Without it, each process counts on its own.
``MARSDIFF_KILL_SCOPE=process|group``
    ``process`` (default) kills the stage only: Snakemake sees a failed job. ``group`` kills the
    whole process group: Snakemake itself and every running job die at once and the lock and
    the incomplete markers stay behind, as after a node failure. Start Snakemake in its own
    session (``setsid``) for this, or the group is also your shell's.

The site names are listed in :data:`SITES` (docs/reliability.md): a misspelt site would never
fire and a kill test would pass without killing anything, so an unknown name is refused.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

from marsdiff.errors import MarsdiffError

ENV_AT = "MARSDIFF_KILL_AT"
ENV_DIR = "MARSDIFF_KILL_DIR"
ENV_SCOPE = "MARSDIFF_KILL_SCOPE"
ENV_MODE = "MARSDIFF_FAULT_MODE"
KILLED_FILE = "killed"

#: Every kill point a stage calls, and where it is.
SITES = {
    "sample.start": "sample_round: before the policy is loaded and anything is written",
    "trajectories.batch": "io/trajectories.py: after each batch of chains is written into the open .h5",
    "sample.done": "sample_round: every output written, the job not yet recorded as done",
    "score.start": "score_round: before the features are computed",
    "score.done": "score_round: rewards.csv and reward_summary.json written",
    "update.ppo.step": "PPO: after each optimiser step (policy in memory half-updated)",
    "update.trpo.line_search": "TRPO: after each line-search trial step is applied to the parameters",
    "update.ppo.policy_folder": "PPO update: the policy's temporary folder holds the weights, not the trainer state",
    "update.trpo.policy_folder": "TRPO update: the policy's temporary folder holds the weights, not the trainer state",
    "update.done": "update_round: policy/ and metrics.json written",
    "generate.start": "generate_samples / generate_base_samples: before any evaluation image is drawn",
    "generate.done": "generate_samples / generate_base_samples: images/ and samples.csv written",
    "evaluate.start": "evaluate: before the metrics are computed",
    "evaluate.done": "evaluate: every metrics table written",
}
_process_counts: dict[str, int] = {}


def kill_spec() -> tuple[str, int] | None:
    """The requested (site, count) or None; a malformed request is a one-line error."""
    spec = os.environ.get(ENV_AT, "").strip()
    if not spec:
        return None
    site, _, count = spec.rpartition(":")
    if site not in SITES or not count.isdigit() or int(count) < 1:
        raise MarsdiffError(f"{ENV_AT}={spec!r}: expected SITE:COUNT with COUNT >= 1 and SITE one of {', '.join(SITES)}")
    return site, int(count)


def _bump(site: str) -> int:
    """Count one more visit of ``site``: across processes under MARSDIFF_KILL_DIR, else in this one."""
    directory = os.environ.get(ENV_DIR)
    if not directory:
        _process_counts[site] = _process_counts.get(site, 0) + 1
        return _process_counts[site]
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    # Two jobs may reach the same site at once (--cores 2): read-increment-write under a lock.
    with open(path / f"count.{site}", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        count = int(handle.read().strip() or 0) + 1
        handle.seek(0)
        handle.truncate()
        handle.write(str(count))
        handle.flush()
        os.fsync(handle.fileno())
    return count


def kill_point(site: str) -> None:
    """Die here with SIGKILL if the environment names this visit of ``site`` (see the module doc)."""
    if site not in SITES:
        raise ValueError(f"unknown kill point {site!r}: add it to marsdiff.faults.SITES")
    mode = os.environ.get(ENV_MODE, "kill")
    if mode not in ("kill", "raise"):
        raise MarsdiffError(f"{ENV_MODE}={mode!r}: expected kill or raise")
    spec = kill_spec()
    if spec is None or spec[0] != site:
        return
    count = _bump(site)
    if count != spec[1]:
        return
    directory = os.environ.get(ENV_DIR)
    if directory:
        with open(Path(directory) / KILLED_FILE, "a") as handle:
            handle.write(f"{site}:{count} {os.getpid()}\n")
            handle.flush()
            os.fsync(handle.fileno())
    if mode == "raise":
        raise RuntimeError(f"fault injected at {site} ({ENV_MODE}=raise)")
    if os.environ.get(ENV_SCOPE, "process") == "group":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
