"""``make bench``: run every benchmark, each as its own process, then write the one table.

    .venv/bin/python benchmarks/run_all.py [--quick]      # make bench [QUICK=1]

Runs the benches behind the table (sampler, rewards, rl_update, pipeline; bench_sd_gpu where a
CUDA GPU is visible, which says so and writes nothing otherwise), each with ``--quick`` in quick
mode and ``--out benchmarks-out/bench``, then ``benchmarks/summary.py`` writes
``benchmarks-out/summary.md``. In full mode the benches outside the table (evaluation cost,
memory options) run too, for their printed tables. Earlier results in benchmarks-out/bench are
removed first (with ``--only``, those of the benches it runs), so the table never mixes runs. A bench that fails does not stop the others: its rows
show as missing, and the command exits 1 after the summary is written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import DEFAULT_OUT, ROOT, env_quick

#: (result name, script): the benches whose JSON results make the table, in the table's order.
TABLE_BENCHES = (
    ("sampler", "bench_sampler.py"),
    ("rewards", "bench_rewards.py"),
    ("rl_update", "bench_rl_update.py"),
    ("pipeline", "bench_pipeline.py"),
    ("sd_gpu", "bench_sd_gpu.py"),
)
#: Printed tables only, not in the summary: full mode only (they take minutes).
EXTRA_BENCHES = ("bench_evaluation.py", "bench_memory_options.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=env_quick(), help="also QUICK=1 in the environment")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--summary", type=Path, default=ROOT / "benchmarks-out" / "summary.md")
    parser.add_argument("--run-dir", type=Path,
                        help="a finished default run's folder for the pipeline rows and the dry-run (default: the project)")
    parser.add_argument("--only", nargs="+", choices=[name for name, _ in TABLE_BENCHES],
                        help="run only these benches (the others' rows show as missing)")
    args = parser.parse_args()
    from marsdiff.io.atomic import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    # Earlier results of the benches about to run go first: the table never mixes runs (--only
    # keeps the others' results; their rows then show the run they came from).
    for stale in args.out.glob("*.json"):
        if not args.only or stale.stem in args.only:
            stale.unlink()
    env = dict(os.environ, QUICK="1" if args.quick else "0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    here = Path(__file__).resolve().parent
    started = time.perf_counter()
    benches: dict[str, dict] = {}
    scripts = [(name, script, True) for name, script in TABLE_BENCHES if not args.only or name in args.only]
    if not args.quick and not args.only:
        scripts += [(Path(script).stem, script, False) for script in EXTRA_BENCHES]
    for name, script, in_table in scripts:
        command = [sys.executable, str(here / script)]
        if in_table:
            command += ["--out", str(args.out)] + (["--quick"] if args.quick else [])
        if name == "pipeline" and args.run_dir:
            command += ["--bench-dir", str(args.run_dir / "benchmarks-out"), "--workdir", str(args.run_dir)]
        print(f"\n=== {script}{' (quick)' if args.quick else ''}", flush=True)
        bench_started = time.perf_counter()
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
        benches[name] = {"script": script, "returncode": code, "seconds": round(time.perf_counter() - bench_started, 1)}
        print(f"=== {script}: exit {code}, {benches[name]['seconds']:.0f} s", flush=True)
    write_json(args.out / "_run.json", {"quick": args.quick, "benches": benches, "only": args.only,
                                        "seconds": round(time.perf_counter() - started, 1)})
    from summary import write_summary

    print(f"\nsummary: {write_summary(args.out, args.summary)} ({time.perf_counter() - started:.0f} s in all)")
    failed = [n for n, b in benches.items() if b["returncode"]]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
