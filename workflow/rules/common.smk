# Pure-Python helpers for the rules: paths, per-stage params, target lists.
# No heavy imports here: the Snakefile is parsed again in every cluster job.
import json
from pathlib import Path

from marsdiff.provenance import code_digest
from marsdiff.stage import param_text

# run_dir: one folder per run (default: the working directory itself)
RUN_DIR = Path(config["run_dir"])
RESULTS = RUN_DIR / "results"
LOGS = RUN_DIR / "logs"
BENCH = RUN_DIR / "benchmarks-out"
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
    return param_text({name: cfg.get(name) for name in sections})


def code_version(*parts):
    """Digest of the behaviour of the code behind a stage; pass it as ``params: code=...``.

    Parts are the roots: the rule's script ("scripts/sample_round.py"), a library subpackage
    ("rewards") or module ("io/trajectories.py", relative to src/marsdiff). Every marsdiff
    module they import, at the top or inside functions, is followed transitively; modules
    loaded by string (importlib) must be named as parts. The digest follows the code's AST
    without docstrings, so comment, docstring and layout edits re-run nothing, and it holds no
    paths or times, so a moved or re-cloned project re-runs nothing (docs/workflow.md).
    """
    return code_digest(LIBRARY, SCRIPTS, parts)


def untracked(value):
    """A param Snakemake passes to the script but never compares between runs.

    For settings that do not change a stage's output (batch size, device, cache folder, log
    cadence) and for where user data lives (its content is tracked by a digest param instead).
    Snakemake leaves params computed from a job's threads out of its params trigger, so the
    value comes back from a function of ``threads``.
    """
    text = value if isinstance(value, str) else param_text(value)
    return lambda wildcards, threads: text


def directory_input(path):
    """A directory input whose time stamp is ignored (its content is tracked by a small file).

    Copies (cp -r, rsync without -t, unpacking an archive) reset a folder's time stamp and no
    checksum can stand in for a directory, so a plain directory input re-runs its consumers
    after a copy. The producing rule writes a small file that changes with the folder's content
    (images.csv lists every image's sha256; marsdiff_model.json comes with every training), and
    consumers list that file as an ordinary input beside this one.
    """
    return ancient(path)


def stop_on_user_error(compute, *args):
    """``compute(*args)``; a MarsdiffError stops the parse with its one line (no traceback)."""
    import sys

    from marsdiff.errors import MarsdiffError

    try:
        return compute(*args)
    except MarsdiffError as err:
        print(f"marsdiff error: {err}", file=sys.stderr)
        raise SystemExit(1)


_CONTENT_DIGESTS = None


def content_digests():
    """The shared stat-keyed cache of user-data digests (.snakemake/marsdiff/, per working dir)."""
    global _CONTENT_DIGESTS
    if _CONTENT_DIGESTS is None:
        from marsdiff.provenance import ContentDigests

        _CONTENT_DIGESTS = ContentDigests(Path(".snakemake") / "marsdiff" / "content-digests.json")
    return _CONTENT_DIGESTS


def reference_data_version(cfg):
    """Check the data the reference section names and return a digest of its content.

    Runs at parse time: bad input (missing folder, labels outside the tile, an undecodable
    image, ...) stops the workflow with one line before Snakemake deletes any old output.
    """
    from marsdiff.data.reference import check_reference_inputs
    from marsdiff.provenance import combine_digests

    digests = content_digests()
    named = stop_on_user_error(check_reference_inputs, cfg["reference"], digests.file)
    digests.save()
    # The data is known good now: check the settings that depend on it before any job runs.
    check_settings_against_reference(cfg)
    return combine_digests(named)


def check_settings_against_reference(cfg):
    """Class distributions against the reference classes, images_per_round against the train
    split, validation and evaluation sizes (marsdiff.config_checks.check_data_settings)."""
    from marsdiff.config_checks import check_data_settings, reference_summary

    stop_on_user_error(check_data_settings, cfg, stop_on_user_error(reference_summary, cfg))


def reference_params(cfg, stage):
    """The reference keys one stage's output depends on (``images``: prepare_reference,
    ``appearance``: categorize_reference). Data locations are left out: their content is the
    ``data`` param; so are the limits that only refuse bad data (CHECK_KEYS)."""
    from marsdiff.data.reference import APPEARANCE_KEYS, CHECK_KEYS, LOCATION_KEYS

    section = cfg["reference"]
    if stage == "appearance":
        keys = APPEARANCE_KEYS
    else:
        keys = [k for k in section if k not in APPEARANCE_KEYS + LOCATION_KEYS + CHECK_KEYS]
    return param_text({"reference": {k: section.get(k) for k in keys}})


def reference_locations(cfg):
    from marsdiff.data.reference import LOCATION_KEYS

    return {"reference": {k: cfg["reference"].get(k) for k in LOCATION_KEYS}}


# Option keys of the extractors that name files: their content is tracked, not their path.
EXTRACTOR_FILE_KEYS = {"mobilenet_v2": ("weights",), "resnet18": ("weights",), "clip": ("pretrained", "model_config")}


def extractor_params(cfg, name):
    """What one extractor's features depend on: its own options, weight files by content.

    Batch size, device, cache folder and the list of other extractors change no feature value
    (the feature cache reuses vectors across them too), so they are not part of it.
    """
    options = dict(cfg["features"].get(name) or {})
    for key in EXTRACTOR_FILE_KEYS.get(name, ()):
        value = options.get(key)
        if value and Path(value).is_file():
            options[key] = f"sha256:{content_digests().file(value)}"
    content_digests().save()
    return param_text({"extractor": name, "options": options})


def pretrain_params(cfg):
    """The resolved model.pixel training keys (preset values filled in): what the weights depend
    on, whatever preset name produced them. Preview-grid and logging keys are left out
    (preview_base draws the grid); pretrain_settings passes those to the script untracked."""
    from marsdiff.diffusion.pixel_presets import PIXEL_PRESETS
    from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS, PIXEL_PREVIEW_KEYS

    section = dict(cfg["model"].get("pixel") or {})
    preset = PIXEL_PRESETS.get(section.pop("preset", None) or "small", {})
    resolved = {**preset, **{k: (preset.get(k) if v is None else v) for k, v in section.items()}}
    training = {k: v for k, v in resolved.items() if k not in PIXEL_PREVIEW_KEYS + PIXEL_LOGGING_KEYS}
    return param_text({"model": {"pixel": training}})


def pretrain_settings(cfg):
    """model.pixel keys the training script needs that change no weight: the preset's name
    (recorded in the model's metadata) and the log cadence."""
    from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS

    section = cfg["model"].get("pixel") or {}
    return {"preset": section.get("preset") or "small", **{k: section.get(k) for k in PIXEL_LOGGING_KEYS}}


# The modules whose code the shipped base model's provenance records (marsdiff.diffusion.shipped).
SHIPPED_TRAINING_CODE_ROOTS = ("diffusion/pretrain.py",)


def shipped_checkpoint_version(cfg):
    """The shipped base model's weights hash where pretrain_base may install it, else 'never'."""
    if (cfg["model"].get("pixel") or {}).get("shipped_checkpoint", "auto") == "never":
        return "never"
    provenance = LIBRARY / "assets" / "base_model" / "provenance.json"
    return json.loads(provenance.read_text())["weights_sha256"] if provenance.is_file() else "none shipped"


def preview_params(cfg):
    from marsdiff.diffusion.pixel_keys import PIXEL_PREVIEW_KEYS

    section = cfg["model"].get("pixel") or {}
    return param_text({"model": {"pixel": {k: section.get(k) for k in PIXEL_PREVIEW_KEYS}}})


def extractor_names(cfg):
    return list(cfg["features"]["extractors"])


EXTRACTOR_PARAMS = {name: stop_on_user_error(extractor_params, config, name) for name in extractor_names(config)}


def reference_targets():
    return [str(REFERENCE_DIR / name) for name in ("images", "images.csv", "manifest.csv", "contact_sheet.png")]


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


def experiment_names(cfg):
    return sorted(cfg.get("experiments") or {})


def experiment_pattern(cfg):
    """Wildcard constraint of {exp}: only configured experiment names match."""
    import re

    return "|".join(re.escape(name) for name in experiment_names(cfg)) or "no-experiment-configured"


def experiment_rounds(cfg, exp):
    """Round labels 000 .. rounds-1 of one experiment (ascending: Snakemake walks long chains
    without recursion when every round is requested in order)."""
    from marsdiff.rl.experiments import experiment_settings

    return [f"{r:03d}" for r in range(experiment_settings(cfg["experiments"], exp, cfg["sampling"])["rounds"])]


def rl_targets():
    """Targets of the RL stage (workflow/rules/rl.smk): every round's metrics in order, each
    experiment's metrics table and reward curve, and its final policy."""
    targets = []
    for exp in experiment_names(config):
        rounds = experiment_rounds(config, exp)
        targets += [str(RUNS_DIR / exp / f"round_{r}" / "metrics.json") for r in rounds]
        targets += [str(RUNS_DIR / exp / "metrics.csv"), str(RUNS_DIR / exp / "reward_curve.png")]
    return targets


# What sampling a round reads of its experiment (the update-only keys reach later rounds through
# the previous policy's files). Neither stage reads `rounds` (a longer run keeps its finished
# rounds) nor `reward` (it reaches the loop only through score_round's rewards.csv).
SAMPLE_KEYS = ("name", "mode", "steps", "eta", "seed", "class_distribution", "images_per_round", "lora", "policy")
UPDATE_SKIPS = ("rounds", "reward")


def rl_params(cfg, exp, stage):
    """The params of one RL stage ("sample" or "update") of ``exp``: only the experiment keys
    that stage reads, the shared sampling setup and the backend's section (the pixel model
    itself is a file input). Other experiments, the sampling batch size (images do not depend
    on it) and the unused backend's keys are left out, so editing them re-runs no round."""
    from marsdiff.rl.experiments import experiment_settings

    settings = experiment_settings(cfg["experiments"], exp, cfg["sampling"])
    if stage == "sample":
        settings = {k: v for k, v in settings.items() if k in SAMPLE_KEYS}
    else:
        settings = {k: v for k, v in settings.items() if k not in UPDATE_SKIPS}
    sampling = {k: v for k, v in cfg["sampling"].items() if k in ("min_std", "device", "store")}
    model = {"backend": cfg["model"]["backend"]}
    if cfg["model"]["backend"] == "stable_diffusion":
        model["stable_diffusion"] = cfg["model"]["stable_diffusion"]
    else:
        model["pixel"] = {"device": cfg["model"]["pixel"].get("device", "auto")}
    return param_text({"experiments": {exp: settings}, "sampling": sampling, "model": model})


def base_model_inputs():
    """The pixel base model's files (Stable Diffusion loads from the HF cache or a local
    directory outside the workflow: no file inputs)."""
    if config["model"]["backend"] != "pixel":
        return {}
    # marsdiff_model.json is rewritten by every training: it carries the folders' changes.
    return {
        "meta": str(BASE_MODEL_DIR / "marsdiff_model.json"),
        "unet": directory_input(str(BASE_MODEL_DIR / "unet")),
        "scheduler": directory_input(str(BASE_MODEL_DIR / "scheduler")),
    }


def previous_policy(wildcards):
    """Round r samples (and update r starts from) the policy written by round r-1's update;
    round 000 starts from the experiment's initial policy, built from the config."""
    if wildcards.round == "000":
        return {}
    previous = RUNS_DIR / wildcards.exp / f"round_{int(wildcards.round) - 1:03d}"
    # metrics.json is written with the policy by every update: it carries the folder's changes.
    return {"policy": directory_input(str(previous / "policy")), "policy_metrics": str(previous / "metrics.json")}


def round_policy_inputs(wildcards):
    return {**base_model_inputs(), **previous_policy(wildcards)}


# score_round's reward pool (POOL_ROUNDS is set in score.smk)
def pool_inputs(wildcards):
    """The features of the experiment's previous reward.pool.rounds rounds, most recent first
    (round 0 has none)."""
    current = int(wildcards.round)
    return [
        str(RUNS_DIR / wildcards.exp / f"round_{r:03d}" / "features.npy")
        for r in range(current - 1, max(-1, current - 1 - POOL_ROUNDS[wildcards.exp]), -1)
    ]


def experiment_metrics(wildcards):
    return [str(RUNS_DIR / wildcards.exp / f"round_{r}" / "metrics.json") for r in experiment_rounds(config, wildcards.exp)]


def sampling_gpus(cfg):
    """Stable Diffusion wants a GPU; the pixel model only when the config asks for CUDA."""
    return int(cfg["model"]["backend"] == "stable_diffusion" or cfg["sampling"].get("device") == "cuda")


def round_group(wildcards):
    """The Snakemake group of one round's sample_round, score_round and update_round: one SLURM
    job per round, or per cluster.rounds_per_job consecutive rounds of an experiment (local runs
    ignore groups). The id names the experiment and the block's first round because Snakemake
    merges every connected job of one group id: a single id for all rounds would make the whole
    chain of an experiment one job."""
    block = int(config["cluster"]["rounds_per_job"])
    first = int(wildcards.round) // block * block
    return f"rounds-{wildcards.exp}-{first:03d}"


# ---------------------------------------------------------------------------- evaluation
# Helpers of workflow/rules/evaluate.smk. The evaluated models (base, the frozen knob, the
# descriptive knob grid, each experiment's final policy, every k-th round) and the test streams
# come from the config alone, checked when the
# Snakefile is parsed: a bad evaluation setting stops with one line before anything runs.
EVAL_DIR = RESULTS / "eval"
EVAL_SAMPLES = EVAL_DIR / "samples"
EVAL_PLOTS = EVAL_DIR / "plots"
REPORT_DIR = RESULTS / "report"
REPORT_INTRO = Path(workflow.basedir) / "workflow" / "report" / "workflow.rst"


def report_landing_page():
    """The HTML report's landing page: the verdicts report_summary writes (the workflow's
    description, then one line per experiment), or the bare description before there are any."""
    landing = REPORT_DIR / "landing.rst"
    return str(landing.resolve()) if landing.is_file() else str(REPORT_INTRO)
EVAL_TABLES = ("metrics.csv", "bootstrap.csv", "category_coverage.csv", "category_shares.csv", "reference.csv")


def evaluation_plan(cfg):
    from marsdiff.evalset.models import check_evaluation

    return stop_on_user_error(check_evaluation, cfg)


EVAL_MODELS = evaluation_plan(config)
EVAL_MODEL = {model["name"]: model for model in EVAL_MODELS}
# The frozen knob's choice (stage select_knob): the input that gives model frozen_knob its knobs.
KNOB_SELECTION = EVAL_DIR / "knob_selection.json"
KNOB_SELECTION_TABLE = EVAL_DIR / "knob_selection.csv"
# Per (stream, model, baseline, metric) comparisons: the study's machine-readable contract.
EVAL_COMPARISONS = EVAL_DIR / "comparisons.csv"


def evaluation_stream_list(cfg):
    from marsdiff.evalset.models import evaluation_streams

    return evaluation_streams(cfg)


EVAL_STREAMS = evaluation_stream_list(config)


def stream_dir(stream):
    """Where test stream ``stream``'s samples, features and tables live: results/eval/ for stream
    0 (the figures, pixel statistics and exports read it), results/eval/stream<s>/ for the others."""
    return EVAL_DIR if int(stream) == 0 else EVAL_DIR / f"stream{int(stream)}"


def stream_samples(stream, name):
    return stream_dir(stream) / "samples" / name


def stream_features(stream, name, suffix):
    """One model's feature file of one stream (suffix: npy, ids.txt or json)."""
    return stream_dir(stream) / "features" / name / f"{SCORE_EXTRACTOR}.{suffix}"


def stream_set_label(stream, name):
    return name if int(stream) == 0 else f"stream{int(stream)}/{name}"


# Every (stream, model) image set, stream-major: one extraction job featurises all of them.
EVAL_SETS = [(stream, name) for stream in EVAL_STREAMS for name in EVAL_MODEL]


def evaluation_settings(cfg):
    from marsdiff.evalset.models import evaluation_section, evaluation_steps

    return {**evaluation_section(cfg), "steps": evaluation_steps(cfg)}


# The evaluation.metrics keys marsdiff.evaluation.pixels reads (its intervals' bootstrap).
PIXEL_STATISTICS_KEYS = ("bootstrap_replicates", "seed", "confidence")


def pixel_statistics_params(cfg):
    """What pixel_statistics depends on in the config: the bootstrap settings it shares with
    evaluate, nothing else (a k-NN k or n_modes re-runs evaluate only)."""
    metrics = evaluation_settings(cfg)["metrics"]
    return param_text({"metrics": {k: metrics[k] for k in PIXEL_STATISTICS_KEYS if k in metrics}})


def generation_params(cfg, name, stream=0):
    """What one evaluated model's images depend on: its spec (knobs, or experiment and round: the
    policy's content is an input; the frozen knob's knobs are select_knob's JSON, an input), M,
    the evaluation seed, stream and steps, the chain's floor and the backend. The grid's other
    points, the metric and plot settings and the batch size are left out, so editing them
    re-draws no image. Stream 0 has no stream key: adding streams re-draws none of its images."""
    section = evaluation_settings(cfg)
    model = {"backend": cfg["model"]["backend"]}
    if cfg["model"]["backend"] == "stable_diffusion":
        model["stable_diffusion"] = cfg["model"]["stable_diffusion"]
    else:
        model["pixel"] = {"device": cfg["model"]["pixel"].get("device", "auto")}
    sampling = {k: v for k, v in cfg["sampling"].items() if k in ("min_std", "device", "eta")}
    params = {"model_spec": EVAL_MODEL[name], "images": section["images"], "seed": section["seed"],
              "steps": section["steps"], "sampling": sampling, "model": model}
    if int(stream) > 0:
        params["stream"] = int(stream)
    return param_text(params)


def selection_params(cfg):
    """What the frozen knob's choice depends on: the resolved evaluation.baseline settings (grid,
    images, steps, fraction, rule, k, evaluation seed, base knobs and class weights), the
    reference seed (the validation draw of train crops), the chain's floor and the backend."""
    from marsdiff.evalset.models import selection_settings

    model = {"backend": cfg["model"]["backend"]}
    if cfg["model"]["backend"] == "stable_diffusion":
        model["stable_diffusion"] = cfg["model"]["stable_diffusion"]
    else:
        model["pixel"] = {"device": cfg["model"]["pixel"].get("device", "auto")}
    sampling = {k: v for k, v in cfg["sampling"].items() if k in ("min_std", "device")}
    return param_text({"selection": selection_settings(cfg), "reference_seed": int(cfg["reference"].get("seed", 0)),
                       "sampling": sampling, "model": model})


def endpoint_params(cfg):
    return evaluation_settings(cfg)["endpoints"]


def evaluation_sample_inputs(wildcards):
    """The base model, plus the policy folder (and its round's metrics.json, which carries the
    folder's changes) for an RL policy."""
    model = EVAL_MODEL[wildcards.model]
    inputs = dict(base_model_inputs())
    if model["kind"] == "frozen":
        inputs["selection"] = str(KNOB_SELECTION)
    if model["experiment"] is not None:
        round_dir = RUNS_DIR / model["experiment"] / f"round_{model['round']:03d}"
        inputs["policy"] = directory_input(str(round_dir / "policy"))
        inputs["policy_metrics"] = str(round_dir / "metrics.json")
    return inputs


def evaluation_credit_models():
    """Models whose most novel / redundant images are drawn: the base model and final policies."""
    return [m["name"] for m in EVAL_MODELS if m["kind"] in ("base", "final")]


def evaluation_rewards(cfg):
    """The reward each credit figure uses: the experiment's (override merged), the top-level one for base."""
    from marsdiff.rl.experiments import reward_config

    rewards = {}
    for name in evaluation_credit_models():
        exp = EVAL_MODEL[name]["experiment"]
        rewards[name] = reward_config(cfg["reward"], cfg["experiments"][exp] or {}) if exp else dict(cfg["reward"])
    return rewards


def evaluation_figures():
    """Figure name -> path (the reward curves only when experiments ran)."""
    figures = {name: EVAL_PLOTS / f"{name}.png" for name in ("tsne", "sample_grid", "category_coverage", "metric_intervals")}
    if experiment_names(config):
        figures["reward_curves"] = EVAL_PLOTS / "reward_curves.png"
    for name in evaluation_credit_models():
        figures[f"novel_redundant_{name}"] = EVAL_PLOTS / f"novel_redundant_{name}.png"
    return figures


def evaluation_targets():
    """Targets of the evaluation and report stages (workflow/rules/evaluate.smk)."""
    return (
        [str(EVAL_DIR / name) for name in EVAL_TABLES]
        + [str(stream_dir(s) / name) for s in EVAL_STREAMS[1:] for name in EVAL_TABLES]
        + [str(KNOB_SELECTION), str(KNOB_SELECTION_TABLE), str(EVAL_COMPARISONS)]
        + [str(EVAL_DIR / "pixel_statistics.csv")]
        + [str(path) for path in evaluation_figures().values()]
        + [str(REPORT_DIR / name) for name in ("summary.md", "summary.html", "comparison.csv")]
    )


EVAL_CATEGORY = "5. Evaluation"
# Captions are paths relative to workflow/rules/ (where the rules using them live).
EVAL_FIGURE_CAPTIONS = {
    "tsne": ("../report/eval_tsne.rst", "t-SNE"),
    "sample_grid": ("../report/eval_sample_grid.rst", "sample grid"),
    "category_coverage": ("../report/eval_category_coverage.rst", "coverage by category"),
    "metric_intervals": ("../report/eval_metric_intervals.rst", "metric intervals"),
    "reward_curves": ("../report/eval_reward_curves.rst", "reward curves"),
}


def evaluation_figure_outputs():
    """Every figure wrapped for the report, with its caption and a label."""
    outputs = {}
    for key, path in evaluation_figures().items():
        if key.startswith("novel_redundant_"):
            caption, label = "../report/eval_novel_redundant.rst", f"novel / redundant: {key[len('novel_redundant_'):]}"
        else:
            caption, label = EVAL_FIGURE_CAPTIONS[key]
        outputs[key] = report(path, caption=caption, category=EVAL_CATEGORY, labels={"figure": label})
    return outputs


DATASETS_DIR = RESULTS / "datasets"


def export_models(cfg):
    """export.models, each checked against the evaluated models when the Snakefile is parsed."""
    from marsdiff.errors import MarsdiffError

    def check():
        exportable = [name for name, spec in EVAL_MODEL.items() if spec["kind"] != "frozen"]
        unknown = [name for name in cfg["export"]["models"] if name not in exportable]
        if unknown and unknown[0] in EVAL_MODEL:
            # its knob values exist only once select_knob has run; the dataset rule cannot wait for them
            raise MarsdiffError(
                f"export.models: {unknown[0]!r} is chosen by select_knob at run time: export the base model "
                "with `marsdiff sample --eta E --noise-scale S`, E and S from results/eval/knob_selection.json"
            )
        if unknown:
            raise MarsdiffError(
                f"export.models: {unknown[0]!r} is not an evaluated model (choose from {', '.join(exportable)})"
            )
        return list(cfg["export"]["models"])

    return stop_on_user_error(check)


EXPORT_MODELS = export_models(config)
