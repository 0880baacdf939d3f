"""Each rule's code-digest roots: the code whose behaviour its outputs depend on.

A rule's ``code`` param is :func:`marsdiff.provenance.code_digest` of its roots: the rule's
script and, where the script reaches library code only through another path, the library
modules or subpackages named here. Every marsdiff module a root imports, at the top or inside
functions, is followed transitively, except at the modules a rule's digest stops at (declared
here, each with its reason); modules loaded by string (importlib) must be named as roots. The
digest follows the code's AST without docstrings, so comment, docstring and layout edits re-run
nothing, and holds no paths or times (docs/workflow.md, "Re-run policy").
"""

from __future__ import annotations

from marsdiff.diffusion.shipped import TRAINING_CODE_ROOTS, WEIGHT_NEUTRAL_MODULES
from marsdiff.errors import MarsdiffError
from marsdiff.workflow.paths import Layout

#: Each RL algorithm's entry module (the keys: marsdiff.rl.experiments.ALGORITHMS).
#: rl/round_update.py imports them inside its update function only, so the walk would reach both
#: from update_round: an experiment's update_round follows its own algorithm's entry (a root too,
#: in case the dispatch ever goes by name) and stops at the others'. Editing TRPO's code then
#: re-runs the updates of TRPO experiments only. A module split out of an algorithm and imported
#: only by its entry goes with it. sample_round reaches none of them: its stage module
#: (stages/sample_round.py) imports no update code (tests/test_rerun_policy.py checks its digest's
#: files and what a sampling run imports).
ALGORITHM_ENTRIES = {"ppo": "rl/ppo.py", "trpo": "rl/trpo.py"}
#: The rules whose code depends on the experiment's algorithm (rule_code's ``algorithm``).
PER_ALGORITHM = ("update_round",)
#: The modules a rule's digest does not follow (marsdiff.provenance.resolve_parts), beyond the
#: other algorithms' entries of PER_ALGORITHM rules. None today: a digest that covers less than
#: its rule runs would miss changes, so narrowing is done by splitting modules instead.
CODE_STOPS: dict[str, tuple[str, ...]] = {}

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
    # the sampler, the policy's sampling path and the trajectory format, through
    # stages/sample_round.py and rl/round_sampling.py; no update code
    "sample_round": ("scripts/sample_round.py",),
    # plus the experiment's algorithm's entry (ALGORITHM_ENTRIES)
    "update_round": ("scripts/update_round.py",),
    "plot_experiment": ("stages/plot_experiment.py", "scripts/plot_experiment.py"),
    "select_knob": ("stages/select_knob.py", "scripts/select_knob.py"),
    "generate_base_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "generate_base_stream_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "generate_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "generate_stream_samples": ("evalset/generate.py", "scripts/generate_samples.py"),
    "extract_sample_features": ("stages/extract_sample_features.py", "scripts/extract_sample_features.py"),
    # the tables' code only: stages/report_summary.py's summary reads evaluation/pixels.py
    "evaluate": ("stages/evaluate.py", "scripts/evaluate.py"),
    "evaluate_stream": ("stages/evaluate.py", "scripts/evaluate.py"),
    "pixel_statistics": ("stages/pixel_statistics.py", "scripts/pixel_statistics.py"),
    "plot_evaluation": ("stages/plot_evaluation.py", "scripts/plot_evaluation.py"),
    "report_summary": ("stages/report_summary.py", "scripts/report_summary.py"),
    "export_dataset": ("export/dataset.py", "scripts/export_dataset.py"),
    "study_summary": ("study/summary.py", "scripts/study_summary.py"),
}


def code_version(layout: Layout, *roots: str, stops: tuple[str, ...] = ()) -> str:
    """Digest of the behaviour of the code behind ``roots`` (script paths start with ``scripts/``,
    library paths are relative to src/marsdiff), not following ``stops``."""
    from marsdiff.provenance import code_digest

    return code_digest(layout.library, layout.scripts, roots, stops)


def rule_parts(rule: str, algorithm: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(roots, stops)`` of ``rule``'s code digest; ``algorithm``: the experiment's, for the
    rules in :data:`PER_ALGORITHM` (and only for them)."""
    roots, stops = CODE_ROOTS[rule], CODE_STOPS.get(rule, ())
    if rule not in PER_ALGORITHM:
        if algorithm is not None:
            raise MarsdiffError(f"{rule}: its code does not depend on the algorithm (got {algorithm!r})")
        return roots, stops
    if algorithm not in ALGORITHM_ENTRIES:
        raise MarsdiffError(f"{rule}: its code depends on the experiment's algorithm, one of "
                            f"{', '.join(ALGORITHM_ENTRIES)} (got {algorithm!r})")
    others = tuple(entry for name, entry in sorted(ALGORITHM_ENTRIES.items()) if name != algorithm)
    return (*roots, ALGORITHM_ENTRIES[algorithm]), (*stops, *others)


def rule_code(layout: Layout, rule: str, algorithm: str | None = None) -> str:
    """The ``code`` param of ``rule`` (of an experiment running ``algorithm``, for update_round)."""
    roots, stops = rule_parts(rule, algorithm)
    return code_version(layout, *roots, stops=stops)


def rule_codes(layout: Layout) -> dict[str, str]:
    """Every ``code`` param the rules get: by rule, and by ``rule[algorithm]`` for the rules in
    :data:`PER_ALGORITHM`."""
    codes = {}
    for rule in CODE_ROOTS:
        if rule in PER_ALGORITHM:
            codes.update({f"{rule}[{name}]": rule_code(layout, rule, name) for name in ALGORITHM_ENTRIES})
        else:
            codes[rule] = rule_code(layout, rule)
    return codes


def shipped_training_code(layout: Layout) -> str:
    """The digest the shipped model's provenance records (marsdiff.diffusion.shipped: the training
    roots, not following the weight-neutral modules; already covered by pretrain_base's code)."""
    return code_version(layout, *TRAINING_CODE_ROOTS, stops=tuple(sorted(WEIGHT_NEUTRAL_MODULES)))
