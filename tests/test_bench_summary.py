"""`make bench`'s table: benchmarks/summary.py builds it from the benches' JSON results (values,
targets, pass/fail, missing rows as missing), and a bench's quick run writes what it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import benchlib  # noqa: E402
import summary  # noqa: E402

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "load": [1.5, 1.0, 0.5], "torch_threads": 1}


def write(bench_dir: Path, bench: str, rows: list[dict], quick: bool = True) -> None:
    bench_dir.mkdir(parents=True, exist_ok=True)
    (bench_dir / f"{bench}.json").write_text(json.dumps(
        {"bench": bench, "quick": quick, "seconds": 1.0, "machine": MACHINE, "settings": {}, "rows": rows}))


def table(text: str) -> dict[str, list[str]]:
    """measured -> the row's cells (bench, measured, value, target, pass, machine, note)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| bench |"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[1]] = cells
    return rows


@pytest.fixture()
def fixture_results(tmp_path):
    bench_dir = tmp_path / "bench"
    row = benchlib.row
    write(bench_dir, "sampler", [
        row("sampler_ratio", "recording sampler / plain diffusers DDIM sampling, wall time", 1.02, "x", ("<=", 1.05)),
        row("hdf5_bytes", "HDF5 bytes per trajectory, a default-config round", 140123.0, "bytes", digits=0),
    ])
    write(bench_dir, "rewards", [
        row("loo_mmd_256", "leave-one-out credit mmd, n=256: recomputation / closed form", 263.0, "x", (">=", 100)),
        row("loo_frechet_256", "leave-one-out credit frechet, n=256: recomputation / closed form", 1.1, "x", (">=", 100),
            digits=1),
        # cut off at a time limit: the speed-up is at most 12x, which already misses >= 100x
        row("loo_vendi_1024", "leave-one-out credit vendi, n=1024: recomputation / closed form", 12.0, "x", (">=", 100),
            bound="upper", digits=1),
        # an upper bound above a lower-limit target decides nothing
        row("loo_frechet_1024", "leave-one-out credit frechet, n=1024: recomputation / closed form", 150.0, "x",
            (">=", 100), bound="upper"),
        row("loo_information_gain_256", "leave-one-out credit information_gain, n=256: recomputation / closed form",
            500.0, "x", (">=", 100), failed="not exact (max abs err 1e-3)"),
        row("loo_mmd_64", "leave-one-out credit mmd, n=64: recomputation / closed form", 300.0, "x", (">=", 100)),
    ])
    write(bench_dir, "pipeline", [
        row("dryrun", "snakemake -n on a finished run (nothing to do)", None, "s", ("<=", 5.0),
            note="not a finished run: plans 45 jobs"),
        row("score_round_mean", "score_round job, mean wall time", 3.1, "s", ("<=", 2.5)),
    ], quick=False)
    (bench_dir / "_run.json").write_text(json.dumps({"quick": True, "seconds": 170.0, "benches": {
        "rl_update": {"script": "bench_rl_update.py", "returncode": 1, "seconds": 3.0}}}))
    return bench_dir


def test_summary_table_values_targets_verdicts_and_missing_rows(fixture_results, tmp_path):
    out = summary.write_summary(fixture_results, tmp_path / "out" / "summary.md")
    text = out.read_text()
    rows = table(text)
    ratio = rows["recording sampler / plain diffusers DDIM sampling, wall time"]
    assert ratio[0] == "sampler (quick)" and ratio[2:5] == ["1.020 x", "<= 1.05 x", "pass"]
    assert "Test CPU 9000, 2 cores, load 1.5, 1 torch thread(s)" == ratio[5]
    assert rows["HDF5 bytes per trajectory, a default-config round"][2:5] == ["140,123 bytes", "—", "—"]
    loo = "leave-one-out credit {}, n={}: recomputation / closed form"
    assert rows[loo.format("mmd", 256)][4] == "pass"
    assert rows[loo.format("frechet", 256)][2:5] == ["1.1 x", ">= 100 x", "FAIL"]
    assert rows[loo.format("vendi", 1024)][2:5] == ["<= 12.0 x", ">= 100 x", "FAIL"]
    assert rows[loo.format("frechet", 1024)][4] == "unknown"
    assert rows[loo.format("information_gain", 256)][4].startswith("FAIL (not exact")
    # expected rows no result holds: missing with their target, never a pass
    for kind in ("conditional_information_gain", "vendi"):
        assert rows[loo.format(kind, 256)][2:5] == ["missing", ">= 100 x", "missing"]
    assert rows[loo.format("mmd", 1024)][6] == "the bench wrote no such row"
    # a row beyond the expected ones is kept
    assert rows[loo.format("mmd", 64)][4] == "pass"
    update = rows["TRPO update / PPO update, same transitions"]
    assert update[2:5] == ["missing", "<= 2.5 x", "missing"] and update[6] == "bench failed (exit 1)"
    assert rows["PPO update / (transitions x one UNet forward+backward)"][3] == "<= 1.15 x"
    assert rows["snakemake -n on a finished run (nothing to do)"][4] == "missing"
    assert rows["score_round job, mean wall time"][0] == "pipeline"  # a full-mode result is not marked quick
    assert rows["score_round job, mean wall time"][4] == "FAIL"
    stage = rows["pipeline stage: rounds: update, sum of job wall times"]
    assert stage[2] == "missing" and stage[3] == "—"
    assert "quick mode" in text and "took 170 s" in text and "no CUDA GPU" in text
    assert sum(1 for r in rows.values() if r[4] == "pass") == 3
    assert f"{sum(1 for r in rows.values() if r[4] == 'missing')} missing" in text
    assert [p.name for p in out.parent.iterdir()] == ["summary.md"]  # renamed into place, no temporary left


def test_every_expected_row_appears_without_results(tmp_path):
    rows = table(summary.render({}, {}))
    expected = [e for bench in summary.EXPECTED.values() for e in bench]
    assert len(rows) == len(expected) == 2 + 10 + 2 + 13
    assert all(r[4] == "missing" for r in rows.values())


def test_reward_kinds_match_the_bench():
    """The table expects a row for every kind the bench measures. Read from its source: importing
    it would set single-thread BLAS variables in this test process and its subprocesses."""
    import ast

    tree = ast.parse((REPO / "benchmarks" / "bench_rewards.py").read_text())
    kinds = next(ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "KINDS")
    assert tuple(kinds) == summary.REWARD_KINDS


def test_pipeline_bench_quick_json_has_what_the_summary_needs(tmp_path):
    """The cheapest bench, run as `make bench QUICK=1` runs it, on a fixture run's rule benchmarks."""
    bench = tmp_path / "run" / "benchmarks-out"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {"prepare_reference.tsv": 4.0, "extract_features/reference_mobilenet_v2.tsv": 20.0,
             "runs/ppo_lora/round_000/score_round.tsv": 2.0, "runs/ppo_lora/round_001/score_round.tsv": 3.0,
             "runs/ppo_lora/round_000/sample_round.tsv": 15.0, "eval/evaluate.tsv": 30.0, "eval/plot_evaluation.tsv": 5.0}
    for name, seconds in files.items():
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text(header + f"{seconds}\t0:00:0{int(seconds) % 10}\t1\t1\t1\t1\t0\t0\t50\t{seconds}\n")
    out = tmp_path / "bench"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"), "QUICK": "1"}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_pipeline.py"), "--bench-dir", str(bench),
                    "--no-dryrun", "--out", str(out)], check=True, capture_output=True, text=True, env=env, timeout=120)
    data = json.loads((out / "pipeline.json").read_text())
    assert data["bench"] == "pipeline" and data["quick"] is True
    assert {"cpu", "cores", "load"} <= set(data["machine"])
    by_id = {r["id"]: r for r in data["rows"]}
    for r in data["rows"]:
        assert {"id", "what", "value", "unit", "target", "note", "digits", "bound", "failed"} <= set(r)
    assert [e[0] for e in summary.EXPECTED["pipeline"]] == [r["id"] for r in data["rows"]]
    assert by_id["stage_reference"]["value"] == 4.0 and by_id["stage_features"]["value"] == 20.0
    assert by_id["stage_evaluation"]["value"] == 30.0 and by_id["stage_report"]["value"] == 5.0
    assert by_id["stage_rounds_score"]["value"] == 5.0 and by_id["score_round_mean"]["value"] == 2.5
    assert by_id["stage_validation"]["value"] is None  # no benchmark file: missing, not zero
    assert by_id["sample_ms_per_image_step"]["value"] is None  # no trajectories.h5 to count image-steps
    assert by_id["pipeline_wall"]["value"] >= 30.0
    rows = table(summary.render({"pipeline": data}, {}))
    assert rows["score_round job, mean wall time"][2:5] == ["2.50 s", "<= 2.5 s", "pass"]
    assert rows["pipeline stage: validation, sum of job wall times"][4] == "missing"
