"""Where every file of a run lives: results, logs and benchmarks under the run folder.

One :class:`Layout` per run folder (``run_dir``, the working directory by default). Rules,
targets and tests ask it for paths instead of joining strings of their own, so a folder is named
once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The folders of one run (``run_dir``) and of the project the Snakefile lives in (``basedir``)."""

    run_dir: Path
    basedir: Path

    @classmethod
    def from_config(cls, config, basedir) -> "Layout":
        return cls(Path(config["run_dir"]), Path(basedir))

    # ---------------------------------------------------------------- the project's code
    @property
    def library(self) -> Path:
        """The marsdiff sources beside the Snakefile, whatever the working directory."""
        return self.basedir / "src" / "marsdiff"

    @property
    def scripts(self) -> Path:
        return self.basedir / "workflow" / "scripts"

    @property
    def report_intro(self) -> Path:
        return self.basedir / "workflow" / "report" / "workflow.rst"

    @property
    def shipped_provenance(self) -> Path:
        return self.library / "assets" / "base_model" / "provenance.json"

    # ---------------------------------------------------------------- the run's folders
    @property
    def results(self) -> Path:
        return self.run_dir / "results"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def bench(self) -> Path:
        return self.run_dir / "benchmarks-out"

    @property
    def reference(self) -> Path:
        return self.results / "reference"

    @property
    def features(self) -> Path:
        return self.results / "features"

    @property
    def validation(self) -> Path:
        return self.results / "validation"

    @property
    def base_model(self) -> Path:
        return self.results / "models" / "base"

    @property
    def runs(self) -> Path:
        return self.results / "runs"

    @property
    def eval(self) -> Path:
        return self.results / "eval"

    @property
    def eval_samples(self) -> Path:
        return self.eval / "samples"

    @property
    def eval_plots(self) -> Path:
        return self.eval / "plots"

    @property
    def report(self) -> Path:
        return self.results / "report"

    @property
    def datasets(self) -> Path:
        return self.results / "datasets"

    @property
    def study(self) -> Path:
        return self.results / "study"

    @property
    def knob_selection(self) -> Path:
        """select_knob's choice: the input that gives model frozen_knob its knobs."""
        return self.eval / "knob_selection.json"

    @property
    def knob_selection_table(self) -> Path:
        return self.eval / "knob_selection.csv"

    @property
    def comparisons(self) -> Path:
        """Per (stream, model, baseline, metric) comparisons: the study's machine-readable contract."""
        return self.eval / "comparisons.csv"

    # ---------------------------------------------------------------- per-wildcard paths
    def resized_reference(self, size: int) -> Path:
        """The reference images box-downsampled to ``size`` pixels (resize_reference)."""
        return self.reference / f"at_{size}px"

    def resized_features(self, size: int) -> Path:
        return self.features / f"reference_{size}px"

    def round_dir(self, exp: str, round_label: str | int) -> Path:
        label = round_label if isinstance(round_label, str) else f"{round_label:03d}"
        return self.runs / exp / f"round_{label}"

    def stream_dir(self, stream: int | str) -> Path:
        """Test stream ``stream``'s samples, features and tables: results/eval/ for stream 0 (the
        figures, pixel statistics and exports read it), results/eval/stream<s>/ for the others."""
        return self.eval if int(stream) == 0 else self.eval / f"stream{int(stream)}"

    def stream_samples(self, stream: int | str, model: str) -> Path:
        return self.stream_dir(stream) / "samples" / model

    def stream_features(self, stream: int | str, model: str, extractor: str, suffix: str) -> Path:
        """One model's feature file of one stream (suffix: npy, ids.txt or json)."""
        return self.stream_dir(stream) / "features" / model / f"{extractor}.{suffix}"
