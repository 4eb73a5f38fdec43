"""The speed of the shallow-water model (``cycler bench nature``)."""

from __future__ import annotations

import time
from typing import Any

import torch
from diffda.emulators.nature.shallow_water import ShallowWaterConfig, ShallowWaterModel


def bench_shallow_water(cfg: ShallowWaterConfig, days: float, batch: int) -> dict[str, Any]:
    """Time ``days`` simulated days of ``batch`` members stepped together, after 10 warm-up
    steps from a seeded initial state: ``steps``, ``wall`` (s) and ``days`` simulated."""
    model = ShallowWaterModel(cfg)
    state = model.initial_state(0.0, torch.Generator().manual_seed(0))
    state.spec = state.spec.repeat(batch, 1, 1, 1)
    n = max(1, int(round(days * 86400.0 / cfg.dt_seconds)))
    with torch.no_grad():
        for _ in range(10):
            state = model.step(state)
        t0 = time.perf_counter()
        for _ in range(n):
            state = model.step(state)
        wall = time.perf_counter() - t0
    return {"steps": n, "wall": wall, "days": n * cfg.dt_seconds / 86400.0}
