"""evaluate_models / evaluate_feature_set end to end on small synthetic features: every metric for
every model with intervals, the real-vs-real baselines, the CSV round trip, and one-line errors for
bad settings and inputs."""

import numpy as np
import pandas as pd
import pytest

from marsdiff.config import filled_section
from marsdiff.errors import MarsdiffError
from marsdiff.evaluation import (
    REAL_MODEL,
    SPLIT_HALF_MODEL,
    Evaluation,
    EvaluationSettings,
    ReferenceSet,
    evaluate_feature_set,
    evaluate_models,
)
from marsdiff.evaluation.settings import config_keys
from marsdiff.io.feature_files import write_feature_set

FAST = dict(bootstrap_replicates=40, kid_subsets=8, baseline_repeats=4, n_modes=4)


def fast_settings(**change) -> EvaluationSettings:
    """The schema's metric defaults with a few cheaper values, in the feature space 'toy'."""
    return EvaluationSettings.from_config(filled_section("evaluation.metrics", {**FAST, **change}), "toy")
SIZES = np.array(["s1", "s2", "s3"])


def crops(rng, n, shift=0.0, spread=1.0):
    """Features whose first coordinate sets the size category and second the lighting."""
    size = rng.integers(0, 3, n)
    light = rng.integers(0, 2, n)
    x = rng.normal(scale=spread, size=(n, 6)) + shift
    x[:, 0] += 4.0 * size
    x[:, 1] += 4.0 * light
    return x, pd.DataFrame({"size_cat": SIZES[size], "lighting_cat": np.array(["dark", "bright"])[light]})


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    heldout, heldout_cats = crops(rng, 40)
    train, train_cats = crops(rng, 90)
    return ReferenceSet.from_arrays(heldout, train, heldout_cats, train_cats)


@pytest.fixture(scope="module")
def evaluation(reference):
    rng = np.random.default_rng(1)
    models = {
        "base": crops(rng, 30)[0],
        "collapsed": crops(rng, 30, spread=0.05)[0] * 0.0 + crops(rng, 1)[0],  # one image 30 times
        "memorised": reference.train[:30] + 1e-6,
    }
    return evaluate_models(models, reference, fast_settings())


METRICS = [
    "FD_toy", "KID", "MMD2_rbf", "precision", "recall", "density", "coverage", "vendi", "KL_size_cat",
    "KL_lighting_cat", "modes_covered", "near_duplicate_pairs", "memorisation_ratio", "memorisation_pass",
]


def test_every_model_gets_every_metric_with_an_interval_around_the_value(evaluation):
    table = evaluation.metrics
    for model in ("base", "collapsed", "memorised"):
        rows = table[table["model"] == model]
        assert list(rows["metric"]) == METRICS
        assert (rows["ci_low"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["ci_high"] + 1e-12).all()
        assert set(rows["interval"]) == {"percentile", "bias-shifted percentile"}
        assert (rows["n_generated"] == 30).all() and (rows["n_reference"] == 40).all()
    # 40 replicates per model and metric, kept for paired differences
    assert len(evaluation.replicates) == 3 * len(METRICS) * 40


def test_metrics_tell_the_models_apart(evaluation):
    value = evaluation.metrics.set_index(["model", "metric"])["value"]
    assert value["collapsed", "vendi"] == pytest.approx(1.0)
    assert value["collapsed", "near_duplicate_pairs"] == 30 * 29 / 2
    assert value["collapsed", "modes_covered"] == 1
    assert value["base", "modes_covered"] >= 3
    assert value["base", "coverage"] > value["collapsed", "coverage"]
    assert value["memorised", "memorisation_pass"] == 0 and value["base", "memorisation_pass"] == 1
    assert value["memorised", "memorisation_ratio"] < 0.01 < 0.5 < value["base", "memorisation_ratio"]


def test_real_baselines_are_train_draws_of_the_same_size_and_heldout_halves(evaluation):
    table = evaluation.metrics
    real = table[table["model"] == REAL_MODEL]
    assert list(real["metric"]) == METRICS[:-2]  # memorisation is undefined for train crops
    assert (real["n_generated"] == 30).all() and (real["interval"] == "spread over draws").all()
    assert "4 random draws of 30 train crops" in real["detail"].iloc[0]
    halves = table[table["model"] == SPLIT_HALF_MODEL]
    assert list(halves["metric"]) == ["MMD2_rbf"] and halves["n_generated"].iloc[0] == 20
    # real data at the same N: near the split-half MMD, far below the collapsed model's
    value = table.set_index(["model", "metric"])["value"]
    assert abs(value[REAL_MODEL, "MMD2_rbf"]) < value["collapsed", "MMD2_rbf"] / 5


def test_category_tables_and_reference_summary(evaluation):
    coverage = evaluation.category_coverage
    assert set(coverage["model"]) == {"base", "collapsed", "memorised", REAL_MODEL}
    assert set(coverage["column"]) == {"size_cat", "lighting_cat"}
    assert ((coverage["ci_low"] <= coverage["coverage"]) & (coverage["coverage"] <= coverage["ci_high"])).all()
    shares = evaluation.category_shares
    assert shares.groupby(["model", "column"])["generated_share"].sum().to_numpy() == pytest.approx(1.0)
    summary = evaluation.reference_summary.set_index("quantity")
    assert summary.loc["heldout_images", "value"] == 40 and summary.loc["train_images", "value"] == 90
    assert summary.loc["classifier_accuracy_size_cat", "value"] > 0.8  # the size is in feature 0


def test_tables_round_trip_through_csv(evaluation, tmp_path):
    paths = evaluation.write(tmp_path / "eval")
    assert paths["metrics"].name == "metrics.csv" and paths["replicates"].name == "bootstrap.csv"
    again = Evaluation.read(tmp_path / "eval")
    pd.testing.assert_frame_equal(again.metrics, evaluation.metrics, check_dtype=False)
    assert again.models() == ["base", "collapsed", "memorised", REAL_MODEL, SPLIT_HALF_MODEL]


def test_evaluate_feature_set_without_categories_skips_kl():
    rng = np.random.default_rng(2)
    table = evaluate_feature_set(rng.normal(size=(12, 3)), rng.normal(size=(15, 3)), rng.normal(size=(20, 3)),
                                 settings=fast_settings(), model="m")
    assert not table["metric"].str.startswith("KL_").any()
    assert set(table["model"]) == {"m", REAL_MODEL, SPLIT_HALF_MODEL}


def test_reference_from_manifest_and_feature_files(tmp_path):
    rng = np.random.default_rng(3)
    features, cats = crops(rng, 24)
    ids = [f"c{i:03d}" for i in range(24)]
    manifest = cats.assign(id=ids, path=[f"images/{i}.png" for i in ids], split=["heldout", "train", "train"] * 8)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    write_feature_set(features[::-1].astype(np.float32), ids[::-1], tmp_path / "mobilenet_v2.npy")  # other order
    reference = ReferenceSet.from_files(tmp_path / "manifest.csv", tmp_path / "mobilenet_v2.npy", ("size_cat", "lighting_cat"))
    assert reference.heldout.shape == (8, 6) and reference.train.shape == (16, 6)
    first = reference.heldout_ids.index("c000")
    assert reference.heldout[first] == pytest.approx(features[0], abs=1e-5)
    assert reference.heldout_categories.loc[first, "size_cat"] == cats.loc[0, "size_cat"]

    manifest.assign(split="train").to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(MarsdiffError, match="held-out split is empty"):
        ReferenceSet.from_files(tmp_path / "manifest.csv", tmp_path / "mobilenet_v2.npy", ("size_cat",))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(k_density_coverage=40), r"k_density_coverage = 40 must be smaller than the number of held-out images \(40\)"),
        (dict(k_precision_recall=30), r"k_precision_recall = 30 must be smaller than the number of generated images of .m. \(30\)"),
        (dict(n_modes=41), r"n_modes = 41 must be at most the number of held-out images \(40\)"),
        (dict(category_columns=["crater_age"]), r"lack column\(s\) crater_age"),
    ],
)
def test_settings_that_do_not_fit_the_data_are_one_line_errors(reference, change, message):
    generated = {"m": np.random.default_rng(4).normal(size=(30, 6))}
    with pytest.raises(MarsdiffError, match=message) as error:
        evaluate_models(generated, reference, fast_settings(**change))
    one_line(error)


def test_bad_inputs_are_one_line_errors(reference):
    settings = fast_settings()
    rng = np.random.default_rng(5)
    with pytest.raises(MarsdiffError, match="has 1 image") as error:
        evaluate_models({"m": rng.normal(size=(1, 6))}, reference, settings)
    one_line(error)
    with pytest.raises(MarsdiffError, match="feature dimension mismatch: generated set 'm' has 5 dimensions") as error:
        evaluate_models({"m": rng.normal(size=(30, 5))}, reference, settings)
    one_line(error)
    with pytest.raises(MarsdiffError, match="held-out reference split is empty") as error:
        ReferenceSet.from_arrays(np.empty((0, 6)), reference.train)
    one_line(error)
    with pytest.raises(MarsdiffError, match="reserved"):
        evaluate_models({REAL_MODEL: rng.normal(size=(30, 6))}, reference, settings)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"k_precision_recall": 0}, r"config key evaluation\.metrics\.k_precision_recall: 0 is less than the minimum of 1"),
        ({"bootstrap_replicates": 5}, r"config key evaluation\.metrics\.bootstrap_replicates: 5 is less than the minimum of 10"),
        ({"confidence": 1.5}, r"config key evaluation\.metrics\.confidence: 1\.5 is greater than or equal to the maximum of 1"),
        ({"near_duplicate_fraction": -1}, r"config key evaluation\.metrics\.near_duplicate_fraction: -1 is less than or equal"),
        ({"n_bootstrap": 100}, r"config key evaluation\.metrics\.n_bootstrap: unknown key"),
    ],
)
def test_invalid_settings_are_refused_by_the_schema_with_the_key_named(config, message):
    with pytest.raises(MarsdiffError, match=message) as error:
        filled_section("evaluation.metrics", config)
    one_line(error)


def test_settings_need_the_filled_section_and_know_only_its_keys():
    section = filled_section("evaluation.metrics")
    assert set(section) == set(config_keys()), "one field per schema key, no more, no less"
    partial = {k: v for k, v in section.items() if k != "n_modes"}
    with pytest.raises(MarsdiffError, match=r"^evaluation\.metrics\.n_modes: missing; build the section with") as error:
        EvaluationSettings.from_config(partial, "toy")
    one_line(error)
    with pytest.raises(MarsdiffError, match=r"unknown key\(s\) \['n_bootstrap'\]"):
        EvaluationSettings.from_config({**section, "n_bootstrap": 100}, "toy")


def test_settings_round_trip_through_a_config_mapping():
    settings = fast_settings(category_columns=["size_cat"])
    assert EvaluationSettings.from_config(settings.to_config(), "toy") == settings
    assert settings.category_columns == ("size_cat",)
