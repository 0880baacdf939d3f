# The thin layer between the config and the rules: everything computed here comes from the
# torch-free, unit-tested package marsdiff.workflow (paths, plan, targets, params, code digests,
# resources, parse-time checks; docs/workflow.md, "Where the logic lives"). What is left are the
# input functions that need Snakemake's own objects (wildcards, ancient).
from marsdiff.stage import param_text
from marsdiff.workflow import code, params, resources, targets
from marsdiff.workflow.checks import file_digest, reference_data_version, stop_on_user_error
from marsdiff.workflow.paths import Layout
from marsdiff.workflow.plan import EXTRACTOR_CHOICES, Plan

LAYOUT = Layout.from_config(config, workflow.basedir)
PLAN = stop_on_user_error(Plan.from_config, config)
RESULTS, LOGS, BENCH = LAYOUT.results, LAYOUT.logs, LAYOUT.bench
REFERENCE_DIR, FEATURES_DIR, BASE_MODEL_DIR, RUNS_DIR = LAYOUT.reference, LAYOUT.features, LAYOUT.base_model, LAYOUT.runs
EVAL_DIR, EVAL_SAMPLES, REPORT_DIR = LAYOUT.eval, LAYOUT.eval_samples, LAYOUT.report
EVAL_MODEL, EVAL_STREAMS = PLAN.eval_model, list(PLAN.eval_streams)
SCORE_SIZE, SCORE_EXTRACTOR = PLAN.score_size, PLAN.score_extractor
RESIZED_FEATURES = LAYOUT.resized_features(SCORE_SIZE)
# Each extractor's params (weight files by content), computed once per parse.
EXTRACTOR_PARAMS = {
    name: param_text(stop_on_user_error(params.extractor, config, name, file_digest)) for name in PLAN.extractors
}


def extractor_param(wildcards):
    """The {extractor}'s params, also for one outside features.extractors asked for by path."""
    name = wildcards.extractor
    return EXTRACTOR_PARAMS.get(name) or param_text(stop_on_user_error(params.extractor, config, name, file_digest))


def code_version(rule):
    """The ``code`` param of ``rule``: digest of its roots' behaviour (marsdiff.workflow.code)."""
    return code.rule_code(LAYOUT, rule)


def gpus(rule):
    return resources.gpus(config, rule)


def directory_input(path):
    """A directory input whose time stamp is ignored: copies reset a folder's time stamp and no
    checksum stands in for a directory, so consumers list beside it a small file that changes
    with the folder's content (images.csv, marsdiff_model.json, samples.csv, metrics.json)."""
    return ancient(path)


def report_landing_page():
    """The verdicts report_summary writes, or the bare workflow description before there are any."""
    landing = REPORT_DIR / "landing.rst"
    return str(landing.resolve()) if landing.is_file() else str(LAYOUT.report_intro)


def base_model_inputs():
    """The pixel base model's files (Stable Diffusion loads from the HF cache or a local
    directory outside the workflow: no file inputs)."""
    if config["model"]["backend"] != "pixel":
        return {}
    return {
        "meta": str(BASE_MODEL_DIR / "marsdiff_model.json"),
        "unet": directory_input(str(BASE_MODEL_DIR / "unet")),
        "scheduler": directory_input(str(BASE_MODEL_DIR / "scheduler")),
    }


def policy_inputs(round_dir):
    """A round's policy folder and its metrics.json, which every update rewrites with the policy."""
    return {"policy": directory_input(str(round_dir / "policy")), "policy_metrics": str(round_dir / "metrics.json")}


def round_policy_inputs(wildcards):
    """Round r samples (and update r starts from) the policy of round r-1's update; round 000
    starts from the experiment's initial policy, built from the config."""
    previous = {} if wildcards.round == "000" else policy_inputs(LAYOUT.round_dir(wildcards.exp, int(wildcards.round) - 1))
    return {**base_model_inputs(), **previous}


def pool_inputs(wildcards):
    """The features of the experiment's previous reward.pool.rounds rounds, most recent first."""
    current = int(wildcards.round)
    first = max(-1, current - 1 - PLAN.pool_rounds(wildcards.exp))
    return [str(LAYOUT.round_dir(wildcards.exp, r) / "features.npy") for r in range(current - 1, first, -1)]


def round_group(wildcards):
    """The group of a round's three jobs (marsdiff.workflow.resources.round_group)."""
    return resources.round_group(config, wildcards.exp, int(wildcards.round))


def evaluation_sample_inputs(wildcards):
    """The base model, select_knob's choice for the frozen knob, an RL policy's folder."""
    model = EVAL_MODEL[wildcards.model]
    inputs = dict(base_model_inputs())
    if model["kind"] == "frozen":
        inputs["selection"] = str(LAYOUT.knob_selection)
    if model["experiment"] is not None:
        inputs.update(policy_inputs(LAYOUT.round_dir(model["experiment"], model["round"])))
    return inputs


def stream_features(stream, name, suffix):
    """One evaluated model's feature file of one stream, in the reward's feature space."""
    return LAYOUT.stream_features(stream, name, SCORE_EXTRACTOR, suffix)


def evaluation_figure_outputs():
    """Every figure of plot_evaluation wrapped for the report, with its caption and label."""
    outputs = {}
    for key, path in targets.evaluation_figures(LAYOUT, PLAN).items():
        caption, label = targets.figure_caption(key)
        outputs[key] = report(path, caption=caption, category=EVAL_CATEGORY, labels={"figure": label})
    return outputs


EVAL_CATEGORY = "5. Evaluation"
