"""Per-image (leave-one-out) rewards: closed form vs naive recomputation.

One command: ``.venv/bin/python benchmarks/bench_rewards.py`` (prints a table; not a test).
For each reward kind and n generated images it times ``term.leave_one_out(X)`` (closed form)
against ``[reward(X) - reward(X without x_a) for every a]`` with the same reference-side
precomputation, and reports the speed-up and the largest absolute difference.

Generated sets are the default reference features (train split of results/features/reference,
first configured extractor) with small Gaussian jitter, drawn with replacement when n exceeds the
reference; random features of the same dimension are used, with a note, when those files do not
exist. Where naive recomputation would take minutes, it is timed on a random subset of removals
and extrapolated to all n (marked ``*``). BLAS runs single-threaded for stable timings.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from marsdiff.rewards import build_term, median_heuristic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("mmd", "information_gain", "conditional_information_gain", "frechet", "vendi")
#: (kind, n) pairs whose closed form itself takes minutes on a laptop CPU: skipped with a note.
SKIP = {("frechet", 1024): "O(n^2 d min(n,d)): one SVD per image", ("vendi", 1024): "O(n^4): one eigen-solve per image"}


def load_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def reference_features(config: dict) -> tuple[np.ndarray, str]:
    import pandas as pd

    extractor = config["features"]["extractors"][0]
    features_path = ROOT / "results" / "features" / "reference" / f"{extractor}.npy"
    manifest_path = ROOT / "results" / "reference" / "manifest.csv"
    if not features_path.exists():
        rng = np.random.default_rng(0)
        dim = 256
        print(f"note: {features_path.relative_to(ROOT)} not found; using random N(0, 1) features, 300 x {dim}")
        return rng.normal(size=(300, dim)), f"random (dim {dim})"
    features = np.load(features_path).astype(np.float64)
    ids = features_path.with_suffix(".ids.txt").read_text().split()
    if manifest_path.exists():
        split = pd.read_csv(manifest_path).set_index("id")["split"]
        features = features[[split.get(i) == "train" for i in ids]]
    return features, f"{extractor} train split"


def naive_credit(term, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    full = term.value(x).reward
    return np.array([full - term.value(np.delete(x, a, axis=0)).reward for a in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--naive-budget", type=int, default=64, help="max removals timed naively per row")
    args = parser.parse_args()
    config = load_config()
    reference, source = reference_features(config)
    rng = np.random.default_rng(0)
    scale = float((config.get("reward") or {}).get("bandwidth_scale", 0.5))
    bandwidth = scale * median_heuristic(reference)
    print(f"reference: {source}, {reference.shape[0]} x {reference.shape[1]}; bandwidth {scale:g} x median = {bandwidth:.4g}")
    print(f"{'reward':30s} {'n':>5s} {'closed s':>10s} {'naive s':>10s} {'speed-up':>9s} {'max abs err':>12s}")
    jitter = 0.05 * reference.std()
    for n in args.sizes:
        x = reference[rng.choice(len(reference), n, replace=n > len(reference))]
        x = x + rng.normal(scale=jitter, size=x.shape)
        for kind in KINDS:
            if (kind, n) in SKIP:
                print(f"{kind:30s} {n:5d}  skipped: {SKIP[(kind, n)]}")
                continue
            term = build_term(kind, reference, bandwidth)
            closed_s = float("inf")
            for _ in range(3):  # best of 3: the machine is shared, the minimum is the stable figure
                start = time.perf_counter()
                closed = term.leave_one_out(x)
                closed_s = min(closed_s, time.perf_counter() - start)
                if closed_s > 1.0:
                    break
            rows = np.arange(n) if n <= args.naive_budget else np.sort(rng.choice(n, args.naive_budget, replace=False))
            start = time.perf_counter()
            naive = naive_credit(term, x, rows)
            naive_s = (time.perf_counter() - start) * n / len(rows)
            mark = "*" if len(rows) < n else " "
            error = float(np.max(np.abs(closed[rows] - naive)))
            print(f"{kind:30s} {n:5d} {closed_s:10.4f} {naive_s:9.3f}{mark} {naive_s / closed_s:8.0f}x {error:12.2e}")
    print("* naive time extrapolated from a random subset of removals; error over that subset")


if __name__ == "__main__":
    main()
