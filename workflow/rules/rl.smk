# Per-round recorded sampling and RL updates.
