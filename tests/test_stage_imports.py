"""Each light stage imports only what it runs (issue 22; docs/performance.md, "Fixed cost per job").

Every Snakemake job is a fresh interpreter, so a module a stage imports without using costs that
time in every job of the stage. The stages below load no diffusion model: importing diffusers,
transformers or peft there (seconds each) is pure start-up cost, and so are scipy.stats, scikit-learn
and matplotlib where the stage computes no statistic, metric or figure.

A stage's modules are read from its script (every ``marsdiff`` import, at the top or inside the body,
as the code digest reads them) plus the modules its run imports lazily on the default path (the
feature extractor); each stage is imported in a fresh interpreter and its ``sys.modules`` inspected.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import run_python

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"

DIFFUSION = ("diffusers", "transformers", "peft")

#: script -> (modules its default run imports lazily, beyond the script's own imports; packages
#: that must stay out besides the diffusion stack)
LIGHT_STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # the round's images meet the reward's extractor (MobileNetV2, torchvision) through the cache
    "score_round": (("marsdiff.features.registry", "marsdiff.features.torchvision_models",
                     "marsdiff.features.cache", "marsdiff.io.feature_files", "marsdiff.data.resolution",
                     "marsdiff.data.manifest"), ("scipy.stats", "sklearn", "matplotlib", "h5py")),
    "extract_features": (("marsdiff.features.torchvision_models",), ("scipy.stats", "sklearn", "matplotlib")),
    "validate_rewards": (("marsdiff.features.torchvision_models",), ("sklearn",)),
    "evaluate": ((), ("matplotlib", "torch")),
    "pixel_statistics": ((), ("scipy", "sklearn", "matplotlib", "torch")),
    "report_summary": ((), ("scipy", "sklearn", "matplotlib", "torch")),
    "plot_evaluation": ((), ("torch",)),
    "plot_experiment": ((), ("torch", "sklearn")),
}


def script_modules(script: Path) -> list[str]:
    """The marsdiff modules a script imports anywhere (``from pkg import mod`` counts ``pkg.mod``
    when ``mod`` is a module file), so a new import in a stage's body is checked too."""
    library = REPO / "src"
    found: list[str] = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("marsdiff")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("marsdiff"):
            found.append(node.module)
            for alias in node.names:
                path = library / Path(*node.module.split("."), alias.name)
                if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
                    found.append(f"{node.module}.{alias.name}")
    return sorted(set(found))


def imported_after(modules: list[str]) -> set[str]:
    """The top-level packages (and scipy.stats) loaded by importing ``modules`` in a fresh interpreter."""
    probe = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | ({'scipy.stats'} & set(sys.modules)))))\n"
    )
    return set(json.loads(run_python(probe).strip().splitlines()[-1]))


def test_script_modules_reads_body_imports():
    """The parser sees the imports inside a stage body (where score_round imports its library)."""
    modules = script_modules(SCRIPTS / "score_round.py")
    assert "marsdiff.stages.score_round" in modules and "marsdiff.stage" in modules


@pytest.mark.parametrize("stage", sorted(LIGHT_STAGES))
def test_light_stage_imports_no_diffusion_stack(stage):
    run_path, banned = LIGHT_STAGES[stage]
    modules = script_modules(SCRIPTS / f"{stage}.py") + list(run_path)
    loaded = imported_after(modules)
    assert "marsdiff" in loaded  # the probe imported the stage at all
    unwanted = sorted(loaded & {*DIFFUSION, *banned})
    assert not unwanted, f"{stage} imports {unwanted} but runs none of it: import it where it is used"


def test_the_probe_sees_a_transitive_heavy_import():
    """The metrics module imports scikit-learn through its submodules, and the probe sees it: an
    empty answer above means the stage is light, not that the probe is blind."""
    assert {"sklearn", "scipy.stats"} <= imported_after(["marsdiff.evaluation.evaluate"])
