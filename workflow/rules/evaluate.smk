# Evaluation and report (docs/evaluation.md): does RL cover the real variety of craters better
# than the best sampling knob chosen without seeing the test set? select_knob fixes the baseline
# first: the base model's factorial knob grid on a validation stream, scored against a validation
# part of the TRAIN split (never the held-out crops), by the rule evaluation.baseline declares.
# Then every evaluated model (marsdiff.workflow.plan, EVAL_MODEL: the base model, the frozen knob, any
# descriptive knob setting, each experiment's final policy, every k-th round) draws M images on
# each test stream (generate_base_samples: the base model and its knob settings, one job and one
# model load per stream; generate_samples: one job per policy; the stream rules: streams 1..); their
# features come from the reward's extractor at the matched resolution, the path the reference
# took (extract_sample_features, score.smk's resize_reference / extract_resized_features);
# evaluate / evaluate_stream compare each stream with the HELD-OUT split only; pixel_statistics
# measures brightness spread and contrast against the held-out crops; plot_evaluation writes the
# figures (stream 0), report_summary the declared-endpoint comparisons of every stream
# (comparisons.csv), summary.md and the report's tables.
EVAL_EXTRACTOR = SCORE_EXTRACTOR  # the reward's feature space, at SCORE_SIZE like a scored round
EVAL_TABLES, EVAL_SETS = targets.EVAL_TABLES, PLAN.eval_sets
KNOB_SELECTION, KNOB_SELECTION_TABLE = LAYOUT.knob_selection, LAYOUT.knob_selection_table
EVAL_COMPARISONS, REPORT_INTRO = LAYOUT.comparisons, LAYOUT.report_intro
stream_dir, stream_samples = LAYOUT.stream_dir, LAYOUT.stream_samples


rule select_knob:
    """The frozen knob: the base model's knob grid on the validation stream against train crops, one job."""
    input:
        **base_model_inputs(),
        # the reference at the matched resolution: only the validation train rows are read
        reference=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.npy",
        reference_ids=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.ids.txt",
        reference_info=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.json",
        manifest=REFERENCE_DIR / "manifest.csv",
    output:
        selection=KNOB_SELECTION,
        table=report(
            KNOB_SELECTION_TABLE,
            caption="../report/eval_knob_selection.rst",
            category=EVAL_CATEGORY,
            labels={"table": "frozen knob: validation grid"},
        ),
    params:
        # batch size, device and the feature cache change no image and no feature value: the
        # script reads them untracked
        cfg=param_text(params.select_knob(config)),
        extractor=EXTRACTOR_PARAMS[EVAL_EXTRACTOR],
        resolution=SCORE_SIZE,
        code=code_version("select_knob"),
    log:
        LOGS / "eval" / "select_knob.log",
    benchmark:
        BENCH / "eval" / "select_knob.tsv"
    threads: resources.THREADS["select_knob"]
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=gpus("select_knob"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/select_knob.py"


rule generate_base_samples:
    """M seeded images of the base model and each of its knob settings (frozen knob, descriptive
    knobs) on stream 0, in one job that loads the model once: images/e<index>.png and samples.csv each."""
    input:
        **base_model_inputs(),
        # the frozen knob's knobs
        selection=KNOB_SELECTION,
    output:
        images=[directory(EVAL_SAMPLES / name / "images") for name in PLAN.base_models],
        samples=[EVAL_SAMPLES / name / "samples.csv" for name in PLAN.base_models],
    params:
        # each image has its own random stream: the batch size changes no image (read untracked);
        # any setting's spec re-draws all of them (docs/evaluation.md, "Re-runs")
        cfg=param_text(params.generate_base_samples(config, PLAN)),
        code=code_version("generate_base_samples"),
    log:
        # beside, not inside, the policies' logs/eval/generate_samples/{model}.log: any name could be a policy's
        LOGS / "eval" / "generate_base_samples.log",
    benchmark:
        BENCH / "eval" / "generate_base_samples.tsv"
    threads: resources.THREADS["generate_base_samples"]
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=gpus("generate_base_samples"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/generate_samples.py"


use rule generate_base_samples as generate_base_stream_samples with:
    output:
        images=[directory(EVAL_DIR / "stream{stream}" / "samples" / name / "images") for name in PLAN.base_models],
        samples=[EVAL_DIR / "stream{stream}" / "samples" / name / "samples.csv" for name in PLAN.base_models],
    params:
        cfg=lambda wildcards: param_text(params.generate_base_samples(config, PLAN, int(wildcards.stream))),
        code=code_version("generate_base_stream_samples"),
    log:
        LOGS / "eval" / "generate_base_samples_stream{stream}.log",
    benchmark:
        BENCH / "eval" / "generate_base_samples_stream{stream}.tsv"


rule generate_samples:
    """M seeded images of one RL policy on stream 0: images/e<index>.png and samples.csv."""
    input:
        unpack(evaluation_sample_inputs),
    output:
        images=directory(EVAL_SAMPLES / "{model}" / "images"),
        samples=EVAL_SAMPLES / "{model}" / "samples.csv",
    params:
        # each image has its own random stream: the batch size changes no image (read untracked)
        cfg=lambda wildcards: param_text(params.generate_samples(config, PLAN, wildcards.model)),
        code=code_version("generate_samples"),
    log:
        LOGS / "eval" / "generate_samples" / "{model}.log",
    benchmark:
        BENCH / "eval" / "generate_samples" / "{model}.tsv"
    # the base model's settings are generate_base_samples' outputs
    wildcard_constraints:
        model=PLAN.policy_model_pattern,
    threads: resources.THREADS["generate_samples"]
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=gpus("generate_samples"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/generate_samples.py"


use rule generate_samples as generate_stream_samples with:
    output:
        images=directory(EVAL_DIR / "stream{stream}" / "samples" / "{model}" / "images"),
        samples=EVAL_DIR / "stream{stream}" / "samples" / "{model}" / "samples.csv",
    params:
        cfg=lambda wildcards: param_text(params.generate_samples(config, PLAN, wildcards.model, int(wildcards.stream))),
        code=code_version("generate_stream_samples"),
    log:
        LOGS / "eval" / "generate_samples" / "stream{stream}" / "{model}.log",
    benchmark:
        BENCH / "eval" / "generate_samples" / "stream{stream}" / "{model}.tsv"


rule extract_sample_features:
    """Features of every model's evaluation images, every stream, with the reward's extractor at the matched size."""
    input:
        # samples.csv is rewritten with the images; the folders' time stamps are ignored
        samples=[stream_samples(s, name) / "samples.csv" for s, name in EVAL_SETS],
        images=[directory_input(stream_samples(s, name) / "images") for s, name in EVAL_SETS],
    output:
        # one job for all models and streams: one extractor load, and the content-keyed feature
        # cache makes the unchanged models' images cache hits when one model is re-drawn
        features=[stream_features(s, name, "npy") for s, name in EVAL_SETS],
        ids=[stream_features(s, name, "ids.txt") for s, name in EVAL_SETS],
        info=[stream_features(s, name, "json") for s, name in EVAL_SETS],
    params:
        # batch size, device and cache folder change no feature value: the script reads them untracked
        models=param_text(params.extract_sample_features(PLAN)),
        extractor=EXTRACTOR_PARAMS[EVAL_EXTRACTOR],
        resolution=SCORE_SIZE,
        code=code_version("extract_sample_features"),
    log:
        LOGS / "eval" / "extract_sample_features.log",
    benchmark:
        BENCH / "eval" / "extract_sample_features.tsv"
    threads: resources.THREADS["extract_sample_features"]
    resources:
        mem_mb=4000,
        runtime="30m",
        gpu=gpus("extract_sample_features"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/extract_sample_features.py"


rule evaluate:
    """Every metric with its bootstrap interval, every model against the held-out split; real baselines."""
    input:
        features=[EVAL_DIR / "features" / name / f"{EVAL_EXTRACTOR}.npy" for name in EVAL_MODEL],
        ids=[EVAL_DIR / "features" / name / f"{EVAL_EXTRACTOR}.ids.txt" for name in EVAL_MODEL],
        info=[EVAL_DIR / "features" / name / f"{EVAL_EXTRACTOR}.json" for name in EVAL_MODEL],
        # what each image was conditioned on: the labels of the train-on-synthetic classifier
        samples=[EVAL_SAMPLES / name / "samples.csv" for name in EVAL_MODEL],
        # the reference at the matched resolution (score.smk); the manifest gives the split and
        # the categories (same ids as the resized set)
        reference=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.npy",
        reference_ids=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.ids.txt",
        reference_info=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.json",
        manifest=REFERENCE_DIR / "manifest.csv",
    output:
        metrics=report(
            EVAL_DIR / "metrics.csv",
            caption="../report/eval_metrics.rst",
            category=EVAL_CATEGORY,
            labels={"table": "metrics (long form)"},
        ),
        tables=[EVAL_DIR / name for name in EVAL_TABLES if name != "metrics.csv"],
    params:
        # the model list is in the order of the inputs; metric settings are the only other knobs
        cfg=param_text(params.evaluate(config, PLAN)),
        code=code_version("evaluate"),
    log:
        LOGS / "eval" / "evaluate.log",
    benchmark:
        BENCH / "eval" / "evaluate.tsv"
    threads: resources.THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime="30m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/evaluate.py"


use rule evaluate as evaluate_stream with:
    input:
        features=lambda w: [stream_features(w.stream, name, "npy") for name in EVAL_MODEL],
        ids=lambda w: [stream_features(w.stream, name, "ids.txt") for name in EVAL_MODEL],
        info=lambda w: [stream_features(w.stream, name, "json") for name in EVAL_MODEL],
        samples=lambda w: [stream_samples(w.stream, name) / "samples.csv" for name in EVAL_MODEL],
        reference=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.npy",
        reference_ids=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.ids.txt",
        reference_info=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.json",
        manifest=REFERENCE_DIR / "manifest.csv",
    output:
        metrics=EVAL_DIR / "stream{stream}" / "metrics.csv",
        tables=[EVAL_DIR / "stream{stream}" / name for name in EVAL_TABLES if name != "metrics.csv"],
    log:
        LOGS / "eval" / "evaluate_stream{stream}.log",
    benchmark:
        BENCH / "eval" / "evaluate_stream{stream}.tsv"


rule pixel_statistics:
    """Brightness spread and contrast of every model's images against the held-out crops."""
    input:
        samples=[EVAL_SAMPLES / name / "samples.csv" for name in EVAL_MODEL],
        images=[directory_input(EVAL_SAMPLES / name / "images") for name in EVAL_MODEL],
        # the held-out crops at the matched resolution, the pixels their features came from
        manifest=REFERENCE_DIR / f"at_{SCORE_SIZE}px" / "manifest.csv",
        reference_images=directory_input(REFERENCE_DIR / f"at_{SCORE_SIZE}px" / "images"),
    output:
        table=report(
            EVAL_DIR / "pixel_statistics.csv",
            caption="../report/eval_pixel_statistics.rst",
            category=EVAL_CATEGORY,
            labels={"table": "brightness spread and contrast"},
        ),
    params:
        models=param_text(list(EVAL_MODEL)),
        resolution=SCORE_SIZE,
        # bootstrap replicates, seed and confidence are the evaluation's; its other metric
        # settings (k, n_modes, ...) change no pixel statistic
        cfg=param_text(params.pixel_statistics(config)),
        code=code_version("pixel_statistics"),
    log:
        LOGS / "eval" / "pixel_statistics.log",
    benchmark:
        BENCH / "eval" / "pixel_statistics.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime="10m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/pixel_statistics.py"


rule plot_evaluation:
    """t-SNE, sample grid, coverage by category, metric intervals, reward curves, novel/redundant images."""
    input:
        metrics=EVAL_DIR / "metrics.csv",
        tables=[EVAL_DIR / name for name in EVAL_TABLES if name != "metrics.csv"],
        features=[EVAL_DIR / "features" / name / f"{EVAL_EXTRACTOR}.npy" for name in EVAL_MODEL],
        ids=[EVAL_DIR / "features" / name / f"{EVAL_EXTRACTOR}.ids.txt" for name in EVAL_MODEL],
        info=[EVAL_DIR / "features" / name / f"{EVAL_EXTRACTOR}.json" for name in EVAL_MODEL],
        samples=[EVAL_SAMPLES / name / "samples.csv" for name in EVAL_MODEL],
        images=[directory_input(EVAL_SAMPLES / name / "images") for name in EVAL_MODEL],
        reference=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.npy",
        reference_ids=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.ids.txt",
        reference_info=RESIZED_FEATURES / f"{EVAL_EXTRACTOR}.json",
        manifest=REFERENCE_DIR / "manifest.csv",
        # the held-out crops at the evaluation's resolution: the sample grid's real row
        resized_manifest=REFERENCE_DIR / f"at_{SCORE_SIZE}px" / "manifest.csv",
        resized_images=directory_input(REFERENCE_DIR / f"at_{SCORE_SIZE}px" / "images"),
        run_metrics=[RUNS_DIR / exp / "metrics.csv" for exp in PLAN.experiments],
    output:
        **evaluation_figure_outputs(),
    params:
        cfg=param_text(params.plot_evaluation(config, PLAN)),
        code=code_version("plot_evaluation"),
    log:
        LOGS / "eval" / "plot_evaluation.log",
    benchmark:
        BENCH / "eval" / "plot_evaluation.tsv"
    threads: resources.THREADS["plot_evaluation"]
    resources:
        mem_mb=4000,
        runtime="30m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/plot_evaluation.py"


rule report_summary:
    """Declared-endpoint comparisons of every policy with the frozen knob and the base model on every
    stream (comparisons.csv), summary.md with the verdict per policy, and the report's tables."""
    input:
        metrics=EVAL_DIR / "metrics.csv",
        tables=[EVAL_DIR / name for name in EVAL_TABLES if name != "metrics.csv"],
        # every stream's metrics and paired bootstrap replicates, stream order
        stream_metrics=[stream_dir(s) / "metrics.csv" for s in EVAL_STREAMS],
        stream_replicates=[stream_dir(s) / "bootstrap.csv" for s in EVAL_STREAMS],
        selection=KNOB_SELECTION,
        pixels=EVAL_DIR / "pixel_statistics.csv",
        intro=REPORT_INTRO,
    output:
        summary=REPORT_DIR / "summary.md",
        # the report's landing page once the verdicts exist (Snakefile: report:)
        landing=REPORT_DIR / "landing.rst",
        html=report(
            REPORT_DIR / "summary.html",
            caption="../report/eval_summary.rst",
            category=EVAL_CATEGORY,
            labels={"table": "summary and verdicts"},
        ),
        comparison=report(
            REPORT_DIR / "comparison.csv",
            caption="../report/eval_comparison.rst",
            category=EVAL_CATEGORY,
            labels={"table": "policies vs frozen knob and base"},
        ),
        comparisons=EVAL_COMPARISONS,
    params:
        cfg=param_text(params.report_summary(config, PLAN)),
        code=code_version("report_summary"),
    log:
        LOGS / "eval" / "report_summary.log",
    benchmark:
        BENCH / "eval" / "report_summary.tsv"
    # small and bounded by the reference set or a few tables: a failure here repeats, so the
    # cluster profile's retry (for jobs killed for memory or time) is off for it
    retries: 0
    threads: 1
    resources:
        mem_mb=2000,
        runtime="10m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/report_summary.py"
