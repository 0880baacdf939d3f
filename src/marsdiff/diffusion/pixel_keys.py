"""``model.pixel`` keys that never change the trained weights, torch-free.

The workflow leaves them out of pretrain_base's params (workflow/rules/common.smk reads them
when the Snakefile is parsed, so this module must not import torch): the preview grid is drawn
by its own stage, preview_base, and the log cadence only shapes the log.
"""

PIXEL_PREVIEW_KEYS = ("grid_samples_per_class", "grid_reference_per_class", "grid_sampling_steps")
PIXEL_LOGGING_KEYS = ("log_every",)
