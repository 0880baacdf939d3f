"""Benchmark: the default pipeline's wall time by stage, and a no-op dry-run of a finished workflow.

    .venv/bin/python benchmarks/bench_pipeline.py [--bench-dir benchmarks-out] [--workdir .] [--quick]

Nothing is run here but ``snakemake -n``: the stage times come from the rule benchmark files
(``benchmark:`` TSVs, one per job) that a finished default run left under ``--bench-dir``
(default: the project's ``benchmarks-out/``, where ``make run`` writes them). Each job's wall
seconds (column ``s``) are summed per stage:

| stage | rules (benchmark file under benchmarks-out/) |
|---|---|
| reference | prepare_reference.tsv, categorize_reference.tsv, resize_reference/ |
| features | extract_features/ (reference and resized reference) |
| validation | validate_rewards.tsv |
| base model | pretrain_base.tsv, preview_base.tsv |
| rounds: sample / score / update | runs/<exp>/round_<r>/{sample,score,update}_round.tsv |
| evaluation | eval/ (but plot_evaluation, report_summary) |
| report | eval/plot_evaluation.tsv, eval/report_summary.tsv, runs/<exp>/plot_experiment.tsv, export/, study/ |

plus the run's span from the files' times (first job start to last job end; Snakemake's own
start-up before the first job is not in it) against the 6-minute target of issue 22, the mean
``score_round`` job (target <= 2.5 s) and ``sample_round`` per image-step, start-up included
(target <= 6 ms; images and steps read from each round's trajectories.h5 under the run's results/).
A stage without benchmark files is reported as missing, never as zero.

The dry-run is ``snakemake -n --profile profiles/default`` in ``--workdir`` (the project by
default), timed; on a finished run it has nothing to do (target: seconds, <= 5 s). When it plans
jobs, the run is not finished and the row is missing. ``--quick`` changes nothing here (the bench
takes seconds). Writes benchmarks-out/bench/pipeline.json for ``benchmarks/summary.py``.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT, add_common_args, row, write_result

#: Stages in the order of the pipeline: (row id, label).
STAGES = (
    ("reference", "reference"),
    ("features", "features"),
    ("validation", "validation"),
    ("base_model", "base model"),
    ("rounds_sample", "rounds: sample"),
    ("rounds_score", "rounds: score"),
    ("rounds_update", "rounds: update"),
    ("evaluation", "evaluation"),
    ("report", "report"),
)
ROUND_FILE = re.compile(r"runs/(?P<exp>[^/]+)/round_(?P<round>\d{3})/(?P<rule>sample|score|update)_round\.tsv")
#: Targets of issue 22 ("Done when").
PIPELINE_TARGET_S = 360.0
SCORE_TARGET_S = 2.5
SAMPLE_TARGET_MS = 6.0
DRYRUN_TARGET_S = 5.0


def stage_of(relative: str) -> str:
    """The stage id of a benchmark file, by its path under benchmarks-out/ ("other" if unknown)."""
    match = ROUND_FILE.fullmatch(relative)
    if match:
        return f"rounds_{match['rule']}"
    first = relative.split("/", 1)[0]
    if relative in ("eval/plot_evaluation.tsv", "eval/report_summary.tsv") or first in ("export", "study") \
            or relative.endswith("/plot_experiment.tsv"):
        return "report"
    return {
        "prepare_reference.tsv": "reference", "categorize_reference.tsv": "reference", "resize_reference": "reference",
        "extract_features": "features", "validate_rewards.tsv": "validation",
        "pretrain_base.tsv": "base_model", "preview_base.tsv": "base_model", "eval": "evaluation",
    }.get(first, "other")


def read_job_seconds(path: Path) -> float:
    """Wall seconds of one job: column ``s`` of the benchmark file (the mean when it repeats)."""
    with open(path, newline="") as handle:
        values = [float(r["s"]) for r in csv.DictReader(handle, delimiter="\t")]
    if not values:
        raise ValueError(f"{path}: no benchmark rows")
    return sum(values) / len(values)


def collect_jobs(bench_dir: Path) -> list[dict]:
    jobs = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        relative = path.relative_to(bench_dir).as_posix()
        try:
            seconds = read_job_seconds(path)
        except (ValueError, KeyError, OSError) as err:
            print(f"skipped {relative}: {err}")
            continue
        jobs.append({"file": relative, "stage": stage_of(relative), "seconds": seconds, "end": path.stat().st_mtime})
    return jobs


def image_steps(results: Path, relative: str) -> int | None:
    """images x steps of the round a sample_round benchmark belongs to, from its trajectories.h5."""
    match = ROUND_FILE.fullmatch(relative)
    path = results / "runs" / match["exp"] / f"round_{match['round']}" / "trajectories.h5"
    if not path.is_file():
        return None
    from marsdiff.io.trajectories import open_trajectories

    with open_trajectories(path) as handle:
        return handle.num_images * handle.num_steps


def stage_rows(bench_dir: Path, results: Path) -> list[dict]:
    if not bench_dir.is_dir():
        why = f"no rule benchmarks: {bench_dir} does not exist (run `make run` first, or pass --bench-dir)"
        return ([row(f"stage_{sid}", f"pipeline stage: {label}", None, "s", note=why) for sid, label in STAGES]
                + [row(i, w, None, u, note=why) for i, w, u in (
                    ("pipeline_wall", "default pipeline, first job start to last job end", "s"),
                    ("score_round_mean", "score_round job, mean wall time", "s"),
                    ("sample_ms_per_image_step", "sample_round per image-step, start-up included", "ms"))])
    jobs = collect_jobs(bench_dir)
    rows = []
    for sid, label in STAGES + (("other", "other rules"),):
        mine = [j for j in jobs if j["stage"] == sid]
        if not mine:
            if sid != "other":
                rows.append(row(f"stage_{sid}", f"pipeline stage: {label}, sum of job wall times", None, "s",
                                note=f"no benchmark files of this stage under {bench_dir}"))
            continue
        total = sum(j["seconds"] for j in mine)
        note = f"{len(mine)} job(s), mean {total / len(mine):.1f} s"
        if sid == "other":
            note += ": " + ", ".join(j["file"] for j in mine[:5]) + (" ..." if len(mine) > 5 else "")
        rows.append(row(f"stage_{sid}", f"pipeline stage: {label}, sum of job wall times", total, "s", note=note,
                        digits=1))

    if jobs:
        # A benchmark file is written when its job ends: its time stamp is the end, minus ``s`` the start.
        span = max(j["end"] for j in jobs) - min(j["end"] - j["seconds"] for j in jobs)
        rows.append(row("pipeline_wall", "default pipeline, first job start to last job end", span, "s",
                        ("<=", PIPELINE_TARGET_S),
                        f"{len(jobs)} jobs, {sum(j['seconds'] for j in jobs):.0f} s of job time; from the files' "
                        "time stamps (a copied folder without kept times gives nonsense)", digits=0))
    else:
        rows.append(row("pipeline_wall", "default pipeline, first job start to last job end", None, "s",
                        ("<=", PIPELINE_TARGET_S), f"no benchmark files under {bench_dir}"))

    scores = [j["seconds"] for j in jobs if j["stage"] == "rounds_score"]
    rows.append(row("score_round_mean", "score_round job, mean wall time", sum(scores) / len(scores) if scores else None,
                    "s", ("<=", SCORE_TARGET_S), f"{len(scores)} jobs" if scores else "no score_round benchmarks",
                    digits=2))

    per_step, missing = [], 0
    for job in (j for j in jobs if j["stage"] == "rounds_sample"):
        count = image_steps(results, job["file"])
        if count:
            per_step.append(1000 * job["seconds"] / count)
        else:
            missing += 1
    note = (f"mean of {len(per_step)} jobs" + (f"; {missing} without trajectories.h5 under {results}" if missing else "")
            if per_step else f"no sample_round benchmarks with their trajectories.h5 under {results}")
    rows.append(row("sample_ms_per_image_step", "sample_round per image-step, start-up included",
                    sum(per_step) / len(per_step) if per_step else None, "ms", ("<=", SAMPLE_TARGET_MS), note, digits=2))
    return rows


def dryrun_row(workdir: Path) -> dict:
    snakemake = Path(sys.executable).parent / "snakemake"
    command = [str(snakemake), "-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "profiles" / "default"),
               "-n", "--cores", "2"]
    what = "snakemake -n on a finished run (nothing to do)"
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    print(f"dry-run in {workdir}: {seconds:.2f} s, exit {result.returncode}")
    if result.returncode != 0:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        return row("dryrun", what, None, "s", ("<=", DRYRUN_TARGET_S), f"snakemake -n failed: {tail[0][:200]}")
    if "Nothing to be done" not in output:
        total = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
        planned = f"{total[1]} jobs" if total else "jobs"
        return row("dryrun", what, None, "s", ("<=", DRYRUN_TARGET_S),
                   f"not a finished run: snakemake -n in {workdir} plans {planned} ({seconds:.1f} s)")
    return row("dryrun", what, seconds, "s", ("<=", DRYRUN_TARGET_S), f"in {workdir}", digits=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "benchmarks-out",
                        help="rule benchmarks of a finished default run (default: the project's benchmarks-out/)")
    parser.add_argument("--results", type=Path, help="that run's results/ (default: beside --bench-dir)")
    parser.add_argument("--workdir", type=Path, default=ROOT, help="where to time snakemake -n (default: the project)")
    parser.add_argument("--no-dryrun", action="store_true", help="only read the rule benchmarks")
    add_common_args(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    results = args.results or args.bench_dir.parent / "results"
    rows = stage_rows(args.bench_dir, results)
    rows.append(row("dryrun", "snakemake -n on a finished run (nothing to do)", None, "s", ("<=", DRYRUN_TARGET_S),
                    "not measured (--no-dryrun)") if args.no_dryrun else dryrun_row(args.workdir))
    for r in rows:
        value = "missing" if r["value"] is None else f"{r['value']:.{r['digits']}f} {r['unit']}"
        print(f"{r['what']:60s} {value:>12s}   {r['note']}")
    write_result(args.out, "pipeline", rows, args.quick, started,
                 {"bench_dir": str(args.bench_dir), "results": str(results), "workdir": str(args.workdir)})


if __name__ == "__main__":
    main()
