"""The one benchmark table: reads the benches' JSON results and writes ``benchmarks-out/summary.md``.

    .venv/bin/python benchmarks/summary.py [--bench-dir benchmarks-out/bench] [--out benchmarks-out/summary.md]

``make bench`` runs it last (through ``benchmarks/run_all.py``). Every figure the project promises
has a row (:data:`EXPECTED`); one that no result file holds is listed as **missing**, never as a
pass. A row passes when its value meets its target, fails when it does not (or when the bench
says why it fails whatever the value, e.g. a closed form that is not exact), and shows "—" when
the project sets no target. A value known only as a bound (a run cut off at a time limit) passes
or fails only where the bound decides, else "unknown". Rows a bench writes beyond the expected
ones (e.g. n = 64, the GPU's) follow its expected rows. The file is written to a temporary name
and renamed.
"""

from __future__ import annotations

import argparse
import json
import operator
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REWARD_KINDS = ("mmd", "information_gain", "conditional_information_gain", "frechet", "vendi")
STAGES = ("reference", "features", "validation", "base model", "rounds: sample", "rounds: score", "rounds: update",
          "evaluation", "report")

#: bench -> [(row id, what it measures, target (op, bound) or None, unit)]: the rows the table must
#: show, present or missing, with the project's targets (ARCHITECTURE.md, issue 22). A bench's own
#: row carries its target too; this copy is what a missing row shows.
EXPECTED: dict[str, list[tuple[str, str, tuple[str, float] | None, str]]] = {
    "sampler": [
        ("sampler_ratio", "recording sampler / plain diffusers DDIM sampling, wall time", ("<=", 1.05), "x"),
        ("hdf5_bytes", "HDF5 bytes per trajectory, a default-config round", None, "bytes"),
    ],
    "rewards": [
        (f"loo_{kind}_{n}", f"leave-one-out credit {kind}, n={n}: recomputation / closed form", (">=", 100.0), "x")
        for n in (256, 1024) for kind in REWARD_KINDS
    ],
    "rl_update": [
        ("update_ratio", "PPO update / (transitions x one UNet forward+backward)", ("<=", 1.15), "x"),
        ("trpo_ppo", "TRPO update / PPO update, same transitions", ("<=", 2.5), "x"),
    ],
    "pipeline": [
        *((f"stage_{label.replace('rounds: ', 'rounds_').replace(' ', '_')}",
           f"pipeline stage: {label}, sum of job wall times", None, "s") for label in STAGES),
        ("pipeline_wall", "default pipeline, first job start to last job end", ("<=", 360.0), "s"),
        ("score_round_mean", "score_round job, mean wall time", ("<=", 2.5), "s"),
        ("sample_ms_per_image_step", "sample_round per image-step, start-up included", ("<=", 6.0), "ms"),
        ("dryrun", "snakemake -n on a finished run (nothing to do)", ("<=", 5.0), "s"),
    ],
}
#: Benches whose table appears only when they ran (the GPU one needs a GPU).
OPTIONAL = ("sd_gpu",)
ORDER = ("sampler", "rewards", "rl_update", "pipeline", "sd_gpu")
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def verdict(item: dict[str, Any]) -> str:
    """pass / FAIL / missing / unknown / — for one row."""
    value, target = item.get("value"), item.get("target")
    if value is None:
        return "missing"
    if item.get("failed"):
        return f"FAIL ({item['failed']})"
    if not target:
        return "—"
    meets = OPS[target["op"]](value, target["value"])
    bound = item.get("bound")
    if bound is None:
        return "pass" if meets else "FAIL"
    # The true figure is <= value (upper bound) or >= value (lower): decided only when the bound
    # already meets an upper-limit target (upper bound) or already misses a lower-limit one.
    upper_limit = target["op"] in ("<=", "<")
    if (bound == "upper") == upper_limit:
        return "pass" if meets else "unknown"
    return "unknown" if meets else "FAIL"


def format_value(item: dict[str, Any]) -> str:
    if item.get("value") is None:
        return "missing"
    digits = int(item.get("digits", 3))
    text = f"{item['value']:,.{digits}f}"
    prefix = {"upper": "<= ", "lower": ">= "}.get(item.get("bound") or "", "")
    return f"{prefix}{text} {item.get('unit', '')}".strip()


def format_target(item: dict[str, Any]) -> str:
    target = item.get("target")
    if not target:
        return "—"
    return f"{target['op']} {target['value']:g} {item.get('unit', '')}".strip()


def format_machine(machine: dict[str, Any]) -> str:
    if not machine:
        return "?"
    parts = [str(machine.get("cpu", "?")), f"{machine.get('cores', '?')} cores"]
    if machine.get("load"):
        parts.append(f"load {machine['load'][0]:.1f}")
    if "torch_threads" in machine:
        parts.append(f"{machine['torch_threads']} torch thread(s)")
    elif machine.get("omp_threads"):
        parts.append(f"OMP_NUM_THREADS={machine['omp_threads']}")
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']}")
    return ", ".join(parts)


def cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def load_results(bench_dir: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for path in sorted(bench_dir.glob("*.json")):
        if path.name.startswith("_"):
            continue
        data = json.loads(path.read_text())
        results[data.get("bench", path.stem)] = data
    return results


def load_runner(bench_dir: Path) -> dict[str, Any]:
    path = bench_dir / "_run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def build_rows(results: dict[str, dict[str, Any]], runner: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows, expected ones first per bench, with a missing row for each absent figure."""
    table = []
    for bench in [*ORDER, *sorted(set(results) - set(ORDER))]:
        data = results.get(bench)
        if data is None and bench not in EXPECTED:
            continue
        ran = (runner.get("benches") or {}).get(bench)
        if data is None:
            why = (f"bench failed (exit {ran['returncode']})" if ran and ran.get("returncode")
                   else f"no result file {bench}.json (bench not run)")
        else:
            why = "the bench wrote no such row"
        rows_by_id = {r["id"]: r for r in (data or {}).get("rows", [])}
        label = f"{bench} (quick)" if data and data.get("quick") else bench
        machine = format_machine((data or {}).get("machine", {})) if data else "—"
        expected = {e[0]: e for e in EXPECTED.get(bench, [])}
        for row_id in [*expected, *(i for i in rows_by_id if i not in expected)]:
            item = rows_by_id.get(row_id)
            if item is None:
                _, what, target, unit = expected[row_id]
                item = {"id": row_id, "what": what, "value": None, "unit": unit, "note": why,
                        "target": target and {"op": target[0], "value": target[1]}}
            table.append({"bench": label, "what": item["what"], "value": format_value(item),
                          "target": format_target(item), "verdict": verdict(item), "machine": machine,
                          "note": item.get("note", "")})
    return table


def render(results: dict[str, dict[str, Any]], runner: dict[str, Any]) -> str:
    rows = build_rows(results, runner)
    quick = any(d.get("quick") for d in results.values())
    counts = {v: sum(1 for r in rows if r["verdict"].split(" ")[0] == v) for v in ("pass", "FAIL", "missing", "unknown")}
    lines = [
        "# Benchmark summary",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by benchmarks/summary.py from {len(results)} bench result(s)"
        + (" in quick mode (`make bench QUICK=1`: smaller sizes and repeats)" if quick else "") + ". "
        + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".",
    ]
    if runner.get("seconds") is not None:
        command = (f"benchmarks/run_all.py --only {' '.join(runner['only'])}" if runner.get("only")
                   else "make bench" + (" QUICK=1" if runner.get("quick") else ""))
        lines.append(f"`{command}` took {runner['seconds']:.0f} s.")
    if "sd_gpu" not in results:
        lines.append("GPU rows (benchmarks/bench_sd_gpu.py, Stable Diffusion 1.5 size): not run, no CUDA GPU visible.")
    lines += [
        "",
        "| bench | measured | value | target | pass | machine | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(cell(r[k]) for k in ("bench", "what", "value", "target", "verdict", "machine",
                                                            "note")) + " |")
    lines += ["", "Timings on a shared machine are noisy: the load average is in the machine column.", ""]
    return "\n".join(lines)


def write_summary(bench_dir: Path, out: Path) -> Path:
    from marsdiff.io.atomic import write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, render(load_results(bench_dir), load_runner(bench_dir)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "benchmarks-out" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks-out" / "summary.md")
    args = parser.parse_args()
    print(f"summary: {write_summary(args.bench_dir, args.out)}")


if __name__ == "__main__":
    main()
