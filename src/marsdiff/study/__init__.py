"""The multi-seed study (config/study.yaml, docs/rl.md "Study").

- :mod:`marsdiff.study.pairing`: which experiments form an arm, their training seeds, and each
  experiment's paired base (the A/A control on the same seeds) for the reward curves. Parse-time
  code: no pandas, no torch.
- :mod:`marsdiff.study.summary`: the study summary (markdown + CSV) from the evaluation's
  ``comparisons.csv`` and the experiments' ``metrics.csv``.
"""
