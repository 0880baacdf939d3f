"""The evaluation image sets: which models are evaluated (:mod:`.models`, read when the Snakefile is
parsed), their seeded images (:mod:`.generate`) and those images' features (:mod:`.features`).

Kept apart from :mod:`marsdiff.evaluation` on purpose: that package imports scikit-learn (seconds
per import), and a rule's code version follows every package ``__init__`` its modules pass, so
metric code edits would otherwise re-run image generation.
"""
