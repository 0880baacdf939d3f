"""What the Snakefile computes while it is parsed, as plain, unit-tested Python.

``workflow/rules/common.smk`` is a thin include over this package: it builds one
:class:`~marsdiff.workflow.paths.Layout` and one :class:`~marsdiff.workflow.plan.Plan` from the
config and hands their values to the rules. Each module owns one concept:

- :mod:`~marsdiff.workflow.paths`: where every result, log and benchmark file lives;
- :mod:`~marsdiff.workflow.plan`: what the config asks for (experiments and their rounds, the
  evaluated models and streams, the scoring resolution and extractor, the exported models);
- :mod:`~marsdiff.workflow.targets`: the files each stage's target rule asks for;
- :mod:`~marsdiff.workflow.params`: each rule's tracked params, plain flat dicts of exactly the
  config values its outputs depend on;
- :mod:`~marsdiff.workflow.code`: each rule's code-digest roots and their digests;
- :mod:`~marsdiff.workflow.resources`: GPU counts per rule;
- :mod:`~marsdiff.workflow.checks`: the parse-time checks against the user's data.

The Snakefile is parsed again in every cluster job, so nothing here imports torch, diffusers,
h5py or pandas at import time (``tests/test_workflow_plan.py`` checks it); the few checks that
read the user's data import what they need when they run. Settings that change no output
(batch sizes, devices, cache folders) are not params at all: scripts read them from
``snakemake.config`` (:func:`marsdiff.stage.untracked`).
"""
