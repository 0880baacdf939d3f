"""Diffusion models: the embedded pixel-space base model, backends and the recording sampler."""
