# Pure-Python helpers for the rules: paths, per-stage params, target lists.
# No heavy imports here: the Snakefile is parsed again in every cluster job.
import json
from pathlib import Path

from marsdiff.provenance import code_digest

RESULTS = Path("results")
LOGS = Path("logs")
BENCH = Path("benchmarks-out")
REFERENCE_DIR = RESULTS / "reference"
FEATURES_DIR = RESULTS / "features"
BASE_MODEL_DIR = RESULTS / "models" / "base"
RUNS_DIR = RESULTS / "runs"
# Library code lives beside the Snakefile, whatever the working directory.
LIBRARY = Path(workflow.basedir) / "src" / "marsdiff"
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
EXTRACTOR_CHOICES = ("mobilenet_v2", "clip", "resnet18")


def stage_params(cfg, *sections):
    """One JSON string (sorted keys) of the config sections a rule depends on.

    Snakemake's params trigger compares this text, so a rule re-runs exactly when one of its
    own sections changes, never on key reordering or on other stages' settings.
    """
    return json.dumps({name: cfg.get(name) for name in sections}, sort_keys=True)


def code_version(*parts):
    """Digest of the behaviour of the code a rule runs: pass it as ``params: code=...``.

    Parts are the roots: the rule's script ("scripts/sample_round.py"), a library subpackage
    ("rewards") or module ("io/trajectories.py", relative to src/marsdiff). Every marsdiff
    module they import, at the top or inside functions, is followed transitively; modules
    loaded by string (importlib) must be named as parts. The digest follows the code's AST
    without docstrings, so comment, docstring and layout edits re-run nothing, and it holds no
    paths or times, so a moved or re-cloned project re-runs nothing (docs/workflow.md).
    """
    return code_digest(LIBRARY, SCRIPTS, parts)


def library_sources(*parts):
    """The library modules a rule's script runs, declared as inputs so code edits re-run it.

    Each part is a subpackage ("rewards": all its modules) or one module ("io/trajectories.py").
    """
    files = [LIBRARY / "errors.py", LIBRARY / "stage.py", LIBRARY / "devices.py", LIBRARY / "io" / "atomic.py"]
    for part in parts:
        path = LIBRARY / part
        files += [path] if part.endswith(".py") else sorted(path.rglob("*.py"))
    return [str(f) for f in files]


def extractor_names(cfg):
    return list(cfg["features"]["extractors"])


def reference_targets():
    return [str(REFERENCE_DIR / "manifest.csv"), str(REFERENCE_DIR / "contact_sheet.png")]


def feature_targets():
    return [
        str(FEATURES_DIR / "reference" / f"{name}.npy") for name in extractor_names(config)
    ]


def reward_targets():
    """Targets of the reward-validation stage (workflow/rules/rewards.smk)."""
    validation = RESULTS / "validation"
    ladders = config["reward"]["validation"]["ladders"]
    return [str(validation / "ladder.csv"), str(validation / "validation.json")] + [
        str(validation / f"ladder_{name}.png") for name in ladders
    ]


def model_targets():
    """Targets of the base-model stage (workflow/rules/model.smk)."""
    base = RESULTS / "models" / "base"
    return [str(base / name) for name in ("marsdiff_model.json", "samples.png", "loss.csv")]


def sampling_targets():
    """Targets of the recorded-sampling stage (workflow/rules/rl.smk)."""
    round_dir = RESULTS / "runs" / config["sampling"]["experiment"] / "round_000"
    return [str(round_dir / "trajectories.h5"), str(round_dir / "images"), str(round_dir / "samples.csv")]


def round_policy_inputs(wildcards):
    """The policy a round samples: the base model for round 000, else round r-1's update.

    The Stable Diffusion base model comes from the HF cache or a local directory, outside the
    workflow, so round 000 then has no file inputs.
    """
    if wildcards.round != "000":
        previous = f"round_{int(wildcards.round) - 1:03d}"
        return {"policy": str(RUNS_DIR / wildcards.exp / previous / "policy")}
    if config["model"]["backend"] != "pixel":
        return {}
    return {
        "meta": str(BASE_MODEL_DIR / "marsdiff_model.json"),
        "unet": str(BASE_MODEL_DIR / "unet"),
        "scheduler": str(BASE_MODEL_DIR / "scheduler"),
    }


def sampling_gpus(cfg):
    """Stable Diffusion wants a GPU; the pixel model only when the config asks for CUDA."""
    return int(cfg["model"]["backend"] == "stable_diffusion" or cfg["sampling"].get("device") == "cuda")
