"""The log-prob scheduler's DDIM grid is diffusers' grid, including the step counts where a
re-implementation rounded half-integers the other way."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from marsdiff.diffusion.scheduler_logprob import DDIMLogProbScheduler, power_timesteps


def scheduler(spacing: str, offset: int = 0, T: int = 1000) -> DDIMLogProbScheduler:
    # the grid depends on neither eta nor min_std
    return DDIMLogProbScheduler(torch.linspace(0.999, 0.01, T), 1.0, T, timestep_spacing=spacing, steps_offset=offset,
                                eta=1.0, min_std=0.01)


@pytest.mark.parametrize(
    "spacing, offset, steps",
    # 48 trailing and 27 linspace: T - k T/n lands on x.5, where torch's arange/linspace and numpy's differ
    [("trailing", 0, 48), ("trailing", 0, 40), ("linspace", 0, 27), ("leading", 1, 50), ("leading", 0, 7)],
)
def test_grid_is_diffusers_grid(spacing, offset, steps):
    theirs = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    theirs.set_timesteps(steps)
    ours = scheduler(spacing, offset)
    grid = ours.set_timesteps(steps)
    assert grid.dtype == torch.int64 and torch.equal(grid, theirs.timesteps)
    # each step's previous timestep is the next grid point, then the clean image (-1)
    assert ours.prev_timesteps.tolist() == grid[1:].tolist() + [-1]


def test_trailing_grid_at_48_steps_holds_diffusers_values():
    grid = scheduler("trailing").set_timesteps(48)
    assert grid[:5].tolist() == [999, 978, 957, 936, 916]


def test_step_count_and_spacing_are_checked():
    with pytest.raises(ValueError, match="1..1000"):
        scheduler("leading").set_timesteps(0)
    with pytest.raises(ValueError, match="1..1000"):
        scheduler("leading").set_timesteps(1001)
    with pytest.raises(ValueError, match="unsupported timestep_spacing"):
        scheduler("karras").set_timesteps(10)


def test_power_one_is_trailing_spacing_where_no_rounding_tie_occurs():
    grid, prev = power_timesteps(1000, 40, torch.tensor([1.0]))
    assert torch.equal(grid[0], scheduler("trailing").set_timesteps(40))
    assert prev[0, -1] == -1
