"""The evaluation and report stages in Snakemake (workflow/rules/evaluate.smk).

Fast: which models are evaluated (base, the frozen knob, the descriptive knob grid, final
policies, every k-th round), the test streams,
the parse-time refusals of bad settings (one line naming the key), the evaluation seeds, and the
evaluate stage's refusal of an empty held-out split. Slow (one tiny end-to-end run): every metric
for every model against the held-out split only, every figure, summary.md with a verdict per
experiment, the --report HTML, and a finished run that re-runs only what a setting touches.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, make_workdir, run_snakemake
from marsdiff.config import filled_section, load_config, read_config_file
from marsdiff.errors import MarsdiffError
from marsdiff.evalset.models import EVALUATION_ROUND, check_evaluation, evaluation_models
from test_workflow import planned_jobs

TINY = REPO / "tests" / "config" / "tiny.yaml"
METRICS = (
    "FD_mobilenet_v2", "KID", "MMD2_rbf", "precision", "recall", "density", "coverage", "vendi", "KL_size_cat",
    "KL_lighting_cat", "modes_covered", "near_duplicate_pairs", "memorisation_ratio", "memorisation_pass",
    "tstr_accuracy_size_cat", "tstr_balanced_accuracy_size_cat",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config():
    return load_config(overrides=read_config_file(TINY))


# The experiments come from the config (tests/config/tiny.yaml over config/config.yaml).
TINY_EXPERIMENTS = sorted(tiny_config()["experiments"])
TINY_KNOBS = ["base", "frozen_knob", "knob-eta0.5-ns1-uniform", "knob-eta1-ns1-tails"]
TINY_MODELS = TINY_KNOBS + TINY_EXPERIMENTS
FIGURES = ("tsne", "sample_grid", "category_coverage", "metric_intervals", "reward_curves", "novel_redundant_base",
           *(f"novel_redundant_{exp}" for exp in TINY_EXPERIMENTS))


# ---------------------------------------------------------------------------- which models


def test_default_config_evaluates_base_the_frozen_knob_and_final_policies_no_test_set_grid():
    cfg = load_config()
    names = [m["name"] for m in check_evaluation(cfg)]
    assert names == ["base", "frozen_knob", *sorted(cfg["experiments"])]
    frozen = next(m for m in evaluation_models(cfg) if m["kind"] == "frozen")
    assert frozen["eta"] is None and frozen["noise_scale"] is None, "its knobs come from select_knob, not the config"


def test_streams_are_checked_and_stream_zero_draws_the_historic_evaluation_round():
    from marsdiff.evalset.models import evaluation_streams, stream_round

    assert stream_round(0) == EVALUATION_ROUND
    cfg = load_config(overrides={"evaluation": {"streams": 2}})
    assert evaluation_streams(cfg) == [0, 1] and check_evaluation(cfg)
    with pytest.raises(MarsdiffError, match=r"config key evaluation\.streams: 0 is less than the minimum of 1"):
        load_config(overrides={"evaluation": {"streams": 0}})
    with pytest.raises(MarsdiffError, match=r"evaluation stream 100 is outside 0\.\.99"):
        stream_round(100)


def test_tiny_config_models():
    models = check_evaluation(tiny_config())
    assert [m["name"] for m in models] == TINY_MODELS
    final = {m["name"]: m for m in models if m["kind"] == "final"}
    assert final["ppo_lora"]["round"] == 0 and final["ppo_lora"]["experiment"] == "ppo_lora"


def test_factorial_grid_takes_every_combination_and_the_base_point_is_base():
    cfg = load_config(overrides={"evaluation": {"knobs": {
        "grid": "factorial", "eta": [0.5, 1.0], "noise_scale": [1.0, 1.2], "class_weights": {"uniform": "uniform", "tails": "tails"}}}})
    knobs = [m for m in evaluation_models(cfg) if m["kind"] == "knob"]
    assert len(knobs) == 2 * 2 * 2 - 1, "the point equal to the base setting is the base model itself"
    assert {(m["eta"], m["noise_scale"], m["class_weights_name"]) for m in knobs} == {
        (0.5, 1.0, "uniform"), (0.5, 1.0, "tails"), (0.5, 1.2, "uniform"), (0.5, 1.2, "tails"),
        (1.0, 1.2, "uniform"), (1.0, 1.2, "tails"), (1.0, 1.0, "tails")}


def test_every_k_rounds_adds_the_earlier_policies():
    cfg = load_config(overrides={"evaluation": {"every_k_rounds": 2}, "experiments": {"ppo_lora": {"rounds": 5}}})
    rounds = [(m["name"], m["round"]) for m in evaluation_models(cfg) if m["experiment"] == "ppo_lora"]
    assert rounds == [("ppo_lora", 4), ("ppo_lora-r001", 1), ("ppo_lora-r003", 3)]


def test_evaluation_seeds_are_never_a_training_rounds_seeds():
    from marsdiff.diffusion.seeds import image_seeds

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    max_rounds = schema["properties"]["experiments"]["additionalProperties"]["properties"]["rounds"]["maximum"]
    assert EVALUATION_ROUND >= max_rounds, "training rounds are 0 .. rounds-1"
    evaluation = set(image_seeds(0, EVALUATION_ROUND, range(64)).tolist())
    training = set(np.concatenate([image_seeds(0, r, range(64)) for r in range(10)]).tolist())
    assert not evaluation & training


@pytest.mark.parametrize("change, message", [
    ({"evaluation": {"images": 8, "metrics": {"k_density_coverage": 8}}},
     "evaluation.metrics.k_density_coverage = 8 must be smaller than the number of generated images per model "
     "(evaluation.images = 8)"),
    ({"evaluation": {"images": 4}}, "evaluation.metrics.k_precision_recall = 5 must be smaller"),
    ({"evaluation": {"knobs": {"class_weights": {"skewed": [1, 2]}}}},
     "evaluation.knobs.class_weights.skewed: 2 weights for 6 size classes (reference.size_bins = 6)"),
    ({"experiments": {"base": {"rounds": 1}}}, "evaluation model name 'base' is used twice"),
    ({"evaluation": {"knobs": {"class_weights": {"inv": "inverse_frequency"}}}, "model": {"backend": "stable_diffusion"}},
     "evaluation.knobs.class_weights.inv: inverse_frequency needs the class counts only the pixel model records"),
])
def test_bad_settings_are_refused_with_one_line_naming_the_key(change, message):
    with pytest.raises(MarsdiffError) as err:
        check_evaluation(load_config(overrides=change))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    # what the schema says of one key: the code does not say it again
    ({"evaluation": {"endpoints": {"primary": ["recall", "recall"]}}},
     r"^config key evaluation\.endpoints\.primary: \['recall', 'recall'\] has non-unique elements$"),
    ({"evaluation": {"knobs": {"eta": [0.0]}}}, r"^config key evaluation\.knobs\.eta\.0: 0\.0 is less than or equal to"),
    ({"evaluation": {"baseline": {"maximise": "fd"}}}, r"^config key evaluation\.baseline\.maximise: 'fd' is not one of"),
    ({"evaluation": {"knobs": {"class_weights": {"a/b": "uniform"}}}}, r"^config key evaluation\.knobs\.class_weights: 'a/b' does not match"),
])
def test_the_schema_refuses_a_bad_key_in_one_line(change, message):
    with pytest.raises(MarsdiffError, match=message):
        load_config(overrides=change)


def test_a_metric_in_two_endpoint_roles_is_refused():
    """A relation between two keys, which the schema cannot express: checked in code."""
    cfg = load_config(overrides={"evaluation": {"endpoints": {"primary": ["recall", "precision"]}}})
    with pytest.raises(MarsdiffError, match=r"^evaluation\.endpoints: 'precision' is both a primary and a non-inferiority endpoint$"):
        check_evaluation(cfg)


def test_schema_refuses_fewer_than_two_images():
    with pytest.raises(MarsdiffError, match=r"config key evaluation\.images: 1 is less than the minimum of 2"):
        load_config(overrides={"evaluation": {"images": 1}})


@pytest.mark.parametrize("change, expected", [
    ({"evaluation": {"images": 5, "metrics": {"k_precision_recall": 5}}},
     "marsdiff error: evaluation.metrics.k_precision_recall = 5 must be smaller than the number of generated "
     "images per model (evaluation.images = 5)"),
    ({"evaluation": {"images": 1}}, "marsdiff error: config key evaluation.images: 1 is less than the minimum of 2"),
])
def test_workflow_stops_at_parse_time_with_one_line(tmp_path, change, expected):
    workdir = make_workdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(change))
    result = run_snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    # "evaluation." (a key), not "evaluation": a checkout path may hold the word (profile lines name it)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "evaluation." in line]
    assert lines == [expected], result.stdout[-2000:] + result.stderr[-2000:]
    assert not (workdir / "results").exists()


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no `snakemake` global: defines main only
    return module


def test_evaluate_stage_refuses_an_empty_heldout_split_in_one_line(tmp_path, capsys):
    from marsdiff.io.feature_files import write_feature_set

    rng = np.random.default_rng(0)
    ids = [f"c{i:03d}" for i in range(12)]
    pd.DataFrame({"id": ids, "path": [f"images/{i}.png" for i in ids], "size_cat": ["s1", "s2"] * 6,
                  "lighting_cat": ["dark", "bright"] * 6, "split": "train"}).to_csv(tmp_path / "manifest.csv", index=False)
    extractor = SimpleNamespace(name="mobilenet_v2", dim=4, cache_key=lambda: "test")
    write_feature_set(rng.normal(size=(12, 4)), ids, tmp_path / "reference.npy", extractor=extractor)
    write_feature_set(rng.normal(size=(6, 4)), [f"e{i}" for i in range(6)], tmp_path / "base.npy", extractor=extractor)
    pd.DataFrame({"image_id": [f"e{i}" for i in range(6)], "condition_name": ["s1", "s2"] * 3}).to_csv(
        tmp_path / "samples.csv", index=False)
    cfg = {"models": [{"name": "base"}], "extractor": "mobilenet_v2", "metrics": filled_section("evaluation.metrics")}
    snakemake = SimpleNamespace(
        input=SimpleNamespace(manifest=str(tmp_path / "manifest.csv"), reference=str(tmp_path / "reference.npy"),
                              features=[str(tmp_path / "base.npy")], samples=[str(tmp_path / "samples.csv")]),
        output=SimpleNamespace(metrics=str(tmp_path / "eval" / "metrics.csv")),
        params=SimpleNamespace(cfg=json.dumps(cfg)), log=[str(tmp_path / "evaluate.log")], threads=1,
    )
    with pytest.raises(SystemExit) as stop:
        load_script("evaluate").main(snakemake)
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("marsdiff error: ") and "the held-out split is empty" in err[-1], err
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------------------- tiny end-to-end run


@pytest.fixture(scope="module")
def finished(tiny_evaluation):
    """The tiny config run up to the report: every evaluation target, then --report (conftest's
    session run, shared with tests/test_kills.py)."""
    return tiny_evaluation


def evaluation_targets():
    tables = ["metrics.csv", "bootstrap.csv", "category_coverage.csv", "category_shares.csv", "reference.csv"]
    return ([f"results/eval/{t}" for t in tables + ["pixel_statistics.csv", "comparisons.csv", "knob_selection.csv"]]
            + [f"results/eval/plots/{f}.png" for f in FIGURES]
            + ["results/report/summary.md", "results/report/summary.html", "results/report/comparison.csv"])


@pytest.mark.slow
def test_every_metric_of_every_model_against_the_heldout_split_only(finished):
    metrics = pd.read_csv(finished / "results/eval/metrics.csv")
    manifest = pd.read_csv(finished / "results/reference/manifest.csv")
    heldout = int((manifest["split"] == "heldout").sum())
    assert heldout == 9
    for model in TINY_MODELS:
        rows = metrics[metrics["model"] == model].set_index("metric")
        assert sorted(rows.index) == sorted(METRICS), model
        assert rows["value"].notna().all() and (rows["n_generated"] == 8).all()
        assert (rows["n_reference"] == heldout).all(), "compared with the held-out crops only"
        assert (rows["ci_low"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["ci_high"] + 1e-12).all()
    assert {"real", "real (held-out halves)"} <= set(metrics["model"])
    reference = pd.read_csv(finished / "results/eval/reference.csv").set_index("quantity")["value"]
    assert reference["heldout_images"] == heldout and reference["train_images"] == len(manifest) - heldout
    replicates = pd.read_csv(finished / "results/eval/bootstrap.csv")
    assert set(replicates["model"]) == set(TINY_MODELS) and replicates["replicate"].max() == 19


@pytest.mark.slow
def test_images_share_seeds_across_models_and_none_is_a_training_image(finished):
    seeds = {m: pd.read_csv(finished / f"results/eval/samples/{m}/samples.csv")["seed"].tolist() for m in TINY_MODELS}
    assert all(s == seeds["base"] for s in seeds.values()) and len(set(seeds["base"])) == 8
    trained = pd.concat([pd.read_csv(p) for p in (finished / "results/runs").glob("*/round_*/samples.csv")])
    assert not set(trained["seed"]) & set(seeds["base"])
    knob = pd.read_csv(finished / "results/eval/samples/knob-eta0.5-ns1-uniform/samples.csv")
    assert set(knob["eta"]) == {0.5} and set(knob["noise_scale"]) == {1.0}
    # the frozen knob is drawn at the setting select_knob chose, on the test seeds
    chosen = json.loads((finished / "results/eval/knob_selection.json").read_text())["chosen"]
    frozen = pd.read_csv(finished / "results/eval/samples/frozen_knob/samples.csv")
    assert set(frozen["eta"]) == {chosen["eta"]} and set(frozen["noise_scale"]) == {chosen["noise_scale"]}
    features = np.load(finished / "results/eval/features/base/mobilenet_v2.npy")
    ids = (finished / "results/eval/features/base/mobilenet_v2.ids.txt").read_text().split()
    assert features.shape == (8, 256) and ids == [f"e{i:05d}" for i in range(8)]


@pytest.mark.slow
def test_pixel_statistics_of_every_model_against_the_heldout_crops(finished):
    from marsdiff.data.images import load_image

    table = pd.read_csv(finished / "results/eval/pixel_statistics.csv")
    assert sorted(table["model"].unique()) == sorted(TINY_MODELS)
    manifest = pd.read_csv(finished / "results/reference/at_16px/manifest.csv")
    heldout = np.stack([load_image(finished / "results/reference/at_16px" / p, mode="L").astype(float)
                        for p in manifest.loc[manifest["split"] == "heldout", "path"]]).reshape(9, -1)
    images = np.stack([load_image(p, mode="L").astype(float)
                       for p in sorted((finished / "results/eval/samples/base/images").glob("*.png"))]).reshape(8, -1)
    rows = table[table["model"] == "base"].set_index("statistic")
    # the numbers are those of the images on disk and of the held-out crops at the matched size
    assert rows.loc["brightness_spread", "value"] == pytest.approx(images.mean(axis=1).std())
    assert rows.loc["contrast", "value"] == pytest.approx(images.std(axis=1).mean())
    assert rows.loc["brightness_spread", "heldout_value"] == pytest.approx(heldout.mean(axis=1).std())
    assert (table["ci_low"] <= table["value"] + 1e-9).all() and (table["value"] <= table["ci_high"] + 1e-9).all()
    summary = (finished / "results/report/summary.md").read_text()
    section = summary.split("## Brightness and contrast\n", 1)[1].split("## ", 1)[0]
    assert "| held-out crops |" in section and all(f"| {m} |" in section for m in TINY_MODELS)


@pytest.mark.slow
def test_every_figure_is_written(finished):
    for figure in FIGURES:
        data = (finished / f"results/eval/plots/{figure}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, figure


@pytest.mark.slow
def test_summary_has_the_table_a_verdict_per_experiment_and_the_models(finished):
    summary = (finished / "results/report/summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| metric | better |"))
    assert all(f" {m} " in header for m in TINY_MODELS + ["real"])
    for metric in METRICS:
        assert re.search(rf"^\| {metric} \|", summary, re.M), metric
    verdict = summary.split("## Verdict\n", 1)[1].split("\n## ", 1)[0]
    for experiment in TINY_EXPERIMENTS:
        line = next(line for line in verdict.splitlines() if line.startswith(f"- **{experiment}**"))
        assert "frozen_knob" in line and "Against the base model" in line, line
        section = summary.split(f"### {experiment}\n", 1)[1].split("###", 1)[0]
        assert "| recall | primary |" in section and "| precision | non_inferiority |" in section
    assert "best knob setting" not in summary, "no best-of-N on the test set"
    assert "## The frozen knob" in summary and "**Chosen: eta" in summary
    assert "## Models" in summary and "knob-eta1-ns1-tails | base model, knob setting (descriptive) | 1 | 1 | tails (2, 1, 2)" in summary
    comparisons = pd.read_csv(finished / "results/eval/comparisons.csv")
    assert list(comparisons.columns) == ["stream", "model", "baseline", "metric", "role", "value", "baseline_value",
                                         "difference", "low", "high", "p_value", "p_holm", "verdict"]
    assert set(comparisons["model"]) == set(TINY_EXPERIMENTS) | {"frozen_knob"}
    assert set(comparisons["baseline"]) == {"frozen_knob", "base"} and set(comparisons["stream"]) == {0}
    assert not comparisons["metric"].str.startswith("memorisation_").any(), "a check is not compared"
    assert set(comparisons.loc[comparisons["role"] == "primary", "metric"]) == {"recall", "coverage"}
    family = comparisons[(comparisons["role"] == "primary") & (comparisons["model"] != "frozen_knob")]
    assert family["p_holm"].notna().all() and (family["p_holm"] >= family["p_value"]).all()
    # the tiny run's 20 replicates cannot reach significance over 2 x 3 tests: the summary says so
    assert "Too few bootstrap replicates to decide" in summary
    assert pd.read_csv(finished / "results/report/comparison.csv").equals(comparisons)
    html = (finished / "results/report/summary.html").read_text()
    assert "<table>" in html and f"<h3>{TINY_EXPERIMENTS[0]}</h3>" in html


@pytest.mark.slow
def test_the_html_report_builds_with_a_caption_for_every_figure_and_table(finished):
    report = (finished / "report.html").read_text()
    assert len(report) > 100_000
    # the info panels show each job's params as written: no escaped JSON (\\\" in the page)
    assert '"params": "cfg=' in report and '\\\\\\"' not in report.split('"params": "cfg=', 1)[1][:500]
    for caption in ("t-SNE map", "Column i shows image i", "Coverage by category", "Every evaluation metric per model",
                    "The set reward of each RL round", "Most novel (top row)", "All evaluation metrics in long form",
                    "as a page: one verdict line per RL policy", "against the frozen knob", "The frozen knob, chosen before",
                    "Brightness spread (standard deviation of the image means)"):
        assert caption in report, caption


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(page, tmp_path, name):
    """(rendered DOM, screenshot PNG) of a page in headless chromium, a 1400x900 first screen."""
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
              "--virtual-time-budget=10000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    png = tmp_path / f"{name}.png"
    subprocess.run([*common, f"--screenshot={png}", page.as_uri()], capture_output=True, timeout=120)
    return dom, png


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_the_report_and_the_summary_open_on_the_verdict_in_a_browser(finished, tmp_path):
    from PIL import Image

    dom, png = render(finished / "report.html", tmp_path, "report")
    # the landing page (the report's default view) is the verdict, one line per experiment
    assert "Verdict" in dom and "summary.html" in dom, dom[-2000:]
    for experiment in TINY_EXPERIMENTS:
        assert f"<strong>{experiment}</strong>" in dom, experiment
    # every category is numbered (the tiny run has no base-model preview: no category 3)
    for number, category in ((1, "Reference set"), (2, "Reward validation"), (4, "RL"), (5, "Evaluation")):
        assert f"{number}. {category}" in dom, category
    assert dom.count("Reward validation") == dom.count("2. Reward validation")
    with Image.open(png) as image:
        grey = np.asarray(image.convert("L"))
    assert grey.shape == (900, 1400) and (grey[:450, 280:800] < 100).mean() > 0.01, "text on the first screen"
    dom, png = render(finished / "results/report/summary.html", tmp_path, "summary")
    headings = re.findall(r"<h2>(.*?)</h2>", dom)
    assert headings[:3] == ["Verdict", "The frozen knob", "Metrics"], headings


@pytest.mark.slow
def test_a_finished_evaluation_reruns_only_what_a_setting_touches(finished, tmp_path):
    def plan(change=None):
        extra = []
        if change:
            (tmp_path / "change.yaml").write_text(yaml.safe_dump(change))
            extra = [str(tmp_path / "change.yaml")]
        result = run_snakemake(finished, "-n", *evaluation_targets(), "--configfile", str(TINY), *extra)
        return planned_jobs(result)

    assert plan() == {}, "an unchanged run has nothing to do"
    report = {"evaluate": 1, "pixel_statistics": 1, "plot_evaluation": 1, "report_summary": 1}
    assert plan({"evaluation": {"metrics": {"bootstrap_replicates": 30}}}) == report
    assert plan({"evaluation": {"plots": {"grid_columns": 3}}}) == {"plot_evaluation": 1}
    assert plan({"sampling": {"batch_size": 2}}) == {}, "the batch size changes no image"
    # One more knob value: the one job of the base model's settings re-draws them all (one model
    # load; docs/evaluation.md, "Re-runs"); the policies' images stay.
    assert plan({"evaluation": {"knobs": {"noise_scale": [1.0, 1.2]}}}) == {
        "generate_base_samples": 1, "extract_sample_features": 1, **report}
    # The selection rule re-chooses the knob: the base model's settings are re-drawn (the frozen
    # knob's JSON is that job's input), the policies' are not
    assert plan({"evaluation": {"baseline": {"precision_margin": 0.5}}}) == {
        "select_knob": 1, "generate_base_samples": 1, "extract_sample_features": 1, **report}
    # One experiment's policy changes: only its images are re-drawn, not the base model's settings
    changed = plan({"experiments": {"ppo_lora": {"optimiser": {"lr": 0.001}}}})
    assert changed["update_round"] == 1 and changed["generate_samples"] == 1, changed
    assert "generate_base_samples" not in changed and "select_knob" not in changed, changed
    # The endpoints re-run the summary only
    assert plan({"evaluation": {"endpoints": {"alpha": 0.1}}}) == {"report_summary": 1}


@pytest.mark.slow
def test_export_datasets_draws_labelled_sets_of_the_listed_models_and_nothing_else(finished, tmp_path):
    (tmp_path / "export.yaml").write_text(yaml.safe_dump({"export": {"models": ["base", "ppo_lora"], "images": 3}}))
    configs = ["--configfile", str(TINY), str(tmp_path / "export.yaml")]
    plan = planned_jobs(run_snakemake(finished, "-n", "export_datasets", *configs))
    assert plan == {"export_dataset": 2, "export_datasets": 1}, "exporting re-runs none of the study"
    run_snakemake(finished, "export_datasets", *configs)
    for model, kind in (("base", "base"), ("ppo_lora", "final")):
        folder = finished / "results" / "datasets" / model
        rows = pd.read_csv(folder / "metadata.csv")
        assert list(rows.columns)[0] == "file_name" and len(rows) == 3
        assert set(rows["model_kind"]) == {kind} and all((folder / name).is_file() for name in rows["file_name"])
        assert "| recall |" in (folder / "README.md").read_text(), "the card quotes the model's evaluation"


@pytest.mark.parametrize("model, message", [
    ("ppo_lora_final", "'ppo_lora_final' is not an evaluated model"),
    # chosen at run time by select_knob: its knob values do not exist when the Snakefile is parsed
    ("frozen_knob", "'frozen_knob' is chosen by select_knob at run time"),
])
def test_export_of_a_model_the_evaluation_does_not_draw_stops_at_parse_time(tmp_path, model, message):
    workdir = make_workdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"export": {"models": [model]}}))
    result = run_snakemake(workdir, "-n", "export_datasets", "--configfile", "bad.yaml", check=False)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "export.models" in line]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"marsdiff error: export.models: {message}")
    assert not (workdir / "results").exists()
