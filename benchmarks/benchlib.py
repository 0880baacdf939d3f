"""What every benchmark shares: quick mode, the machine it ran on, and its machine-readable result.

Each ``benchmarks/bench_*.py`` stays a standalone command that prints its own tables; it also
writes one JSON file, ``benchmarks-out/bench/<name>.json`` (``--out`` changes the folder), that
``benchmarks/summary.py`` turns into the one table of ``benchmarks-out/summary.md``. A file holds:

- ``bench``: the benchmark's name; ``quick``: whether it ran in quick mode; ``seconds``: its wall time;
- ``machine``: CPU model, cores, load average, torch threads, GPU (:func:`machine_info`);
- ``settings``: the sizes/repeats it ran with (free-form, printed in the summary's notes);
- ``rows``: one per measured figure (:func:`row`), each with its id, what it measures, its value
  (``null`` when it could not be measured, with a note why), unit and the project's target.

Quick mode (``--quick`` on a bench, or ``QUICK=1`` in the environment, which ``make bench QUICK=1``
passes on) keeps every row but uses smaller sizes and fewer repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks-out" / "bench"
#: Comparison operators a target may use, as the summary prints them.
TARGET_OPS = ("<=", ">=", "<", ">")


def env_quick() -> bool:
    """``QUICK`` set to anything but empty, 0, no or false."""
    return os.environ.get("QUICK", "").strip().lower() not in ("", "0", "no", "false")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", default=env_quick(),
                        help="smaller sizes and repeats, same rows (also QUICK=1 in the environment)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for this bench's JSON result (default {DEFAULT_OUT.relative_to(ROOT)})")


def pick(quick: bool, quick_value: Any, full_value: Any, given: Any = None) -> Any:
    """An argument's value: what the user gave, else the quick or the full default."""
    if given is not None:
        return given
    return quick_value if quick else full_value


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: timings mean little without it."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    if os.environ.get("OMP_NUM_THREADS"):
        info["omp_threads"] = os.environ["OMP_NUM_THREADS"]
    # Only where the bench uses torch: importing it costs seconds, and a bench without it (rewards,
    # pipeline) does not depend on its threads.
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def row(id: str, what: str, value: float | None, unit: str = "", target: tuple[str, float] | None = None,
        note: str = "", digits: int = 3, bound: str | None = None, failed: str = "") -> dict[str, Any]:
    """One measured figure. ``target`` is (op, bound), e.g. ("<=", 1.05); None: reported, no target.
    ``value`` None means not measured: ``note`` says why (the summary shows it as missing).
    ``bound``: "upper" or "lower" when only a bound on the figure is known (a run cut off at a time
    limit); the summary then passes or fails it only where the bound decides. ``failed``: why the
    figure misses its target whatever its value (e.g. a closed form that is not exact)."""
    if target is not None and target[0] not in TARGET_OPS:
        raise ValueError(f"target operator {target[0]!r} is not one of {TARGET_OPS}")
    if bound not in (None, "upper", "lower"):
        raise ValueError(f"bound must be None, 'upper' or 'lower', not {bound!r}")
    return {"id": id, "what": what, "value": None if value is None else float(value), "unit": unit,
            "target": None if target is None else {"op": target[0], "value": float(target[1])},
            "note": note, "digits": digits, "bound": bound, "failed": failed}


def write_result(out: Path, bench: str, rows: list[dict[str, Any]], quick: bool, started: float,
                 settings: dict[str, Any] | None = None, machine: dict[str, Any] | None = None) -> Path:
    """Write ``out/<bench>.json`` atomically (temp name, rename) and return its path."""
    from marsdiff.io.atomic import write_json

    path = Path(out) / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {
        "bench": bench, "quick": bool(quick), "seconds": round(time.perf_counter() - started, 2),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine or machine_info(),
        "settings": settings or {}, "rows": rows,
    })
    print(f"result: {path}")
    return path
