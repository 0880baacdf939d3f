"""Each rule's code-digest roots: the code whose behaviour its outputs depend on.

A rule's ``code`` param is :func:`marsdiff.provenance.code_digest` of its roots: the rule's
script and, where the script reaches library code only through another path, the library
modules or subpackages named here. Every marsdiff module a root imports, at the top or inside
functions, is followed transitively; modules loaded by string (importlib) must be named as
roots. The digest follows the code's AST without docstrings, so comment, docstring and layout
edits re-run nothing, and holds no paths or times (docs/workflow.md, "Re-run policy").
"""

from __future__ import annotations

from marsdiff.workflow.paths import Layout

#: What an RL round's sampling and update run: the policies, the sampler and the trajectory format.
RL_CODE = ("rl", "diffusion", "io/trajectories.py")
#: The modules whose code the shipped base model's provenance records (marsdiff.diffusion.shipped):
#: pretrain_base passes their digest to the stage, which installs the shipped model only on a match.
SHIPPED_TRAINING_CODE_ROOTS = ("diffusion/pretrain.py",)

CODE_ROOTS: dict[str, tuple[str, ...]] = {
    "prepare_reference": ("scripts/prepare_reference.py",),
    "categorize_reference": ("scripts/categorize_reference.py",),
    "extract_features": ("scripts/extract_features.py",),
    "validate_rewards": ("scripts/validate_rewards.py",),
    "pretrain_base": ("scripts/pretrain_base.py",),
    "preview_base": ("scripts/preview_base.py",),
    "resize_reference": ("scripts/resize_reference.py",),
    # the reference stage's adapter: same cache, same feature-file contract
    "extract_resized_features": ("scripts/extract_features.py",),
    "score_round": ("scripts/score_round.py",),
    "sample_round": (*RL_CODE, "scripts/sample_round.py"),
    "update_round": (*RL_CODE, "scripts/update_round.py"),
    "plot_experiment": ("rl/curves.py", "scripts/plot_experiment.py"),
    "select_knob": ("evalset/select.py", "scripts/select_knob.py"),
    "generate_base_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "generate_base_stream_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "generate_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "generate_stream_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "extract_sample_features": ("evalset/features.py", "scripts/extract_sample_features.py"),
    # the tables' code only: stages/report_summary.py's summary reads evaluation/pixels.py
    "evaluate": ("evaluation/run.py", "scripts/evaluate.py"),
    "evaluate_stream": ("evaluation/run.py", "scripts/evaluate.py"),
    "pixel_statistics": ("evaluation/pixels.py", "scripts/pixel_statistics.py"),
    "plot_evaluation": ("stages/plot_evaluation.py", "scripts/plot_evaluation.py"),
    "report_summary": ("stages/report_summary.py", "scripts/report_summary.py"),
    "export_dataset": ("export/dataset.py", "scripts/export_dataset.py"),
    "study_summary": ("study/summary.py", "scripts/study_summary.py"),
}


def code_version(layout: Layout, *roots: str) -> str:
    """Digest of the behaviour of the code behind ``roots`` (script paths start with ``scripts/``,
    library paths are relative to src/marsdiff)."""
    from marsdiff.provenance import code_digest

    return code_digest(layout.library, layout.scripts, roots)


def rule_code(layout: Layout, rule: str) -> str:
    """The ``code`` param of ``rule``."""
    return code_version(layout, *CODE_ROOTS[rule])


def shipped_training_code(layout: Layout) -> str:
    """The digest the shipped model's provenance records (already covered by pretrain_base's code)."""
    return code_version(layout, *SHIPPED_TRAINING_CODE_ROOTS)
