"""The evaluation image sets: which models are evaluated (:mod:`.models`, read when the Snakefile is
parsed) and their seeded images (:mod:`.generate`); those images' features are stage
extract_sample_features (:mod:`marsdiff.stages.extract_sample_features`).

Kept apart from :mod:`marsdiff.evaluation` on purpose: that package imports scikit-learn (seconds
per import), and a rule's code version follows every package ``__init__`` its modules pass, so
metric code edits would otherwise re-run image generation.
"""
