"""marsdiff: RL fine-tuning of diffusion models toward diverse, realistic Mars crater images.

The package owns all the science; the Snakemake workflow under ``workflow/`` only wires stages
together. Sub-packages: ``data`` (reference sets), ``features`` (image encoders and the feature
cache), ``rewards`` (set rewards and per-image credit), ``diffusion`` (models and the recording
sampler), ``rl`` (policy-gradient updates), ``evaluation`` and ``io`` (atomic files, trajectories).
"""

__version__ = "0.1.0"
