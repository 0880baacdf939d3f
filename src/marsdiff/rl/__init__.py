"""Reinforcement learning on the denoising chain: policies, advantages, PPO/TRPO and the round loop (docs/rl.md)."""
