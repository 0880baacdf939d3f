"""The base model's training loss: the v or epsilon target and its min-SNR-gamma weights.

The min-SNR weights are hand-written rather than diffusers' ``compute_snr``: that one squares
square roots and differs from ``abar / (1 - abar)`` at 661 of the 1000 timesteps (up to 3e-7
relative), which would change the shipped model's weights (docs/architecture.md, "Libraries").
"""

from __future__ import annotations

import torch


def loss_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for the scheduler's prediction type.

    Caps the weight of the nearly clean timesteps, whose gradients conflict with those of the
    noisy ones and slow convergence; gamma 0 gives plain MSE. The weight on the x0 error is
    min(SNR, gamma) in both cases, which is min(SNR, gamma) / SNR on an epsilon loss and
    min(SNR, gamma) / (SNR + 1) on a v loss (||v error||^2 = (SNR + 1) ||x0 error||^2).
    """
    if gamma <= 0:
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = abar / (1.0 - abar)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1.0)
    return torch.clamp(snr, max=gamma) / snr


def training_target(scheduler, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to output: the noise, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(images, noise, timesteps)
    return noise


def diffusion_loss(unet, scheduler, images, labels, noise, timesteps, gamma: float) -> torch.Tensor:
    noisy = scheduler.add_noise(images, noise, timesteps)
    predicted = unet(noisy, timesteps, class_labels=labels).sample
    per_sample = (predicted - training_target(scheduler, images, noise, timesteps)).pow(2).mean(dim=(1, 2, 3))
    return (per_sample * loss_weights(scheduler, timesteps, gamma)).mean()


@torch.no_grad()
def fixed_batch_loss(unet, scheduler, images, labels, gamma: float, seed: int = 0) -> float:
    """Deterministic loss on given images (fixed noise and timesteps): for tests and reports."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), generator=gen)
    device = next(unet.parameters()).device
    was_training = unet.training
    unet.eval()
    value = diffusion_loss(unet, scheduler, images.to(device), labels.to(device), noise.to(device),
                           timesteps.to(device), gamma)
    unet.train(was_training)
    return float(value)
