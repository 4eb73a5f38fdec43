"""The speed of the emulator's forecast step (``cycler bench emulator``).

:func:`bench_emulator` times ``emulator.step`` on a batch of members;
:func:`untrained_default` is a default-size emulator to time when no weights are at hand.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from diffda.core.grid import Grid
from diffda.core.rng import torch_generator
from diffda.emulators.forecast.data import VARIABLES
from diffda.emulators.forecast.model import SFNOEmulator
from diffda.emulators.forecast.sfno import SFNO, SFNOConfig
from diffda.emulators.forecast.training import ModelConfig
from diffda.emulators.training import count_parameters


def bench_emulator(emulator: SFNOEmulator, members: int = 16, steps: int = 40) -> dict[str, Any]:
    """Time ``emulator.step`` (physical units in and out, forcing included) on a batch of
    ``members`` states; returns steps per second and ms per step."""
    import cftime

    g = torch_generator(0, "bench")
    shape = (members, len(emulator.variables), emulator.grid.nlat, emulator.grid.nlon)
    x = emulator.denormalise(torch.randn(shape, generator=g) * 0.5)
    t = cftime.DatetimeNoLeap(1, 1, 1)
    dt = _hours(emulator.dt_hours)
    x = emulator.step(x, t)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        t = t + dt
        x = emulator.step(x, t)
    sec = time.perf_counter() - t0
    return {"steps_per_second": steps / sec, "ms_per_step": 1e3 * sec / steps,
            "members": members, "steps": steps, "threads": torch.get_num_threads(),
            "n_parameters": count_parameters(emulator.net),
            "grid": str(emulator.grid), "finite": bool(torch.isfinite(x).all())}


def _hours(h: float):
    import datetime

    return datetime.timedelta(hours=h)


def untrained_default() -> SFNOEmulator:
    """A default-size emulator with unit normalisation and no forcing (for timing only)."""
    grid, n_var, n_static = Grid(16, 32), len(VARIABLES), 4
    cfg = SFNOConfig(in_channels=n_var + 1 + n_static, out_channels=n_var,
                     **dataclasses.asdict(ModelConfig()))
    ones, zeros = torch.ones(n_var), torch.zeros(n_var)
    return SFNOEmulator(
        SFNO(cfg, generator=torch_generator(0, "emulator-init")), variables=VARIABLES,
        grid=grid, state_mean=zeros, state_std=ones, tendency_std=ones * 0.1,
        log_offset=zeros, forcing_mean=torch.zeros(1), forcing_std=torch.ones(1),
        static=torch.zeros(n_static, grid.nlat, grid.nlon),
        forcing=lambda times, g: torch.zeros(len(times), 1, g.nlat, g.nlon),
    ).eval()

