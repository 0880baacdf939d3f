"""Evaluation cost: seconds per model and for the shared parts, by M and bootstrap replicates B.

One command: ``.venv/bin/python benchmarks/bench_evaluation.py`` (prints a table; not a test).
For each M it evaluates two generated sets (jittered train features) against the held-out split
and times the reference preparation (distances, k-means, classifiers), each metric's point
estimate plus B replicates, and the real-vs-real baselines. Features are the default reference
(results/reference/manifest.csv + results/features/reference/<extractor>.npy) when they exist,
else random features of the default size (103 held-out, 306 train, 256 dimensions), with a note.
BLAS runs single-threaded for stable timings.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from marsdiff.config import filled_section  # noqa: E402
from marsdiff.evaluation import EvaluationSettings, ReferenceSet  # noqa: E402
from marsdiff.evaluation.bootstrap import bootstrap_counts  # noqa: E402
from marsdiff.evaluation.evaluate import PreparedReference, real_draw_baseline  # noqa: E402
from marsdiff.evaluation.metric import estimate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_reference(extractor: str, results: Path, category_columns) -> tuple[ReferenceSet, str]:
    manifest = results / "reference" / "manifest.csv"
    features = results / "features" / "reference" / f"{extractor}.npy"
    if manifest.exists() and features.exists():
        return ReferenceSet.from_files(manifest, features, category_columns), f"default reference ({extractor})"
    rng = np.random.default_rng(0)
    cats = lambda n: pd.DataFrame({"size_cat": rng.choice(list("abcdef"), n), "lighting_cat": rng.choice(list("xyz"), n)})  # noqa: E731
    reference = ReferenceSet.from_arrays(rng.normal(size=(103, 256)), rng.normal(size=(306, 256)), cats(103), cats(306))
    return reference, "random features (run `make run` first for the default reference)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1000])
    parser.add_argument("--replicates", type=int, default=None,
                        help="bootstrap replicates (default: the schema's evaluation.metrics.bootstrap_replicates)")
    parser.add_argument("--extractor", default="mobilenet_v2")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="results directory of a run")
    args = parser.parse_args()

    given = {} if args.replicates is None else {"bootstrap_replicates": args.replicates}
    settings = EvaluationSettings.from_config(filled_section("evaluation.metrics", given), args.extractor)
    reference, source = load_reference(args.extractor, args.results, settings.category_columns)
    print(f"features: {source}; held-out {len(reference.heldout)}, train {len(reference.train)}, d={reference.dim}")
    started = time.perf_counter()
    prepared = PreparedReference(reference, settings)
    print(f"reference preparation (distances, k-means, classifiers): {time.perf_counter() - started:.2f} s")
    print(f"\nseconds per model, B={settings.bootstrap_replicates} bootstrap replicates\n")

    rng = np.random.default_rng(1)
    rows = []
    for m in args.sizes:
        x = reference.train[rng.integers(0, len(reference.train), m)]
        x = x + rng.normal(scale=0.3 * reference.train.std(), size=x.shape)
        counts = bootstrap_counts(m, settings.bootstrap_replicates, settings.seed)
        started = time.perf_counter()
        metrics, _ = prepared.metrics(x)
        setup = time.perf_counter() - started
        timings = {}
        for metric in metrics:
            started = time.perf_counter()
            estimate(metric, counts, settings.confidence)
            timings[metric.name] = time.perf_counter() - started
        started = time.perf_counter()
        real_draw_baseline(prepared, m, "real")
        real = time.perf_counter() - started
        rows.append({"M": m, "distances+setup": setup, **timings, "model total": setup + sum(timings.values()),
                     f"real baseline ({settings.baseline_repeats} draws, once per M)": real})
    table = pd.DataFrame(rows).set_index("M").T
    print(table.map(lambda v: f"{v:.2f}").to_string())


if __name__ == "__main__":
    main()
