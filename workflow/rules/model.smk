# Base diffusion model and recorded sampling (filled in by the model stage).
