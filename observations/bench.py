"""Speed and accuracy of the observation operators (``cycler bench operators``).

:func:`time_operators`: median wall time of the forward map, forward plus backward, and a
forward-mode JVP of the point, low-resolution and forecast-grid operators on random states.
:func:`interpolation_errors`: the point operator's largest error on smooth fields of the
sphere (:func:`~diffda.observations.operators.smooth_sphere_fields`) at three resolutions,
beside ``grid_sample``'s (:func:`~diffda.observations.operators.grid_sample_reference`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffda.core.grid import Grid
from diffda.observations.operators import (
    PointOperator,
    forecast_grid_operator,
    grid_sample_reference,
    low_resolution_operator,
    smooth_sphere_fields,
)
from diffda.observations.stations import default_network

#: The state variables of the timed operators.
BENCH_VARIABLES = ("height", "u", "v", "tracer")


def time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after one call
    to warm up."""
    fn()
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(best))


@dataclass(frozen=True)
class OperatorTiming:
    """Median times (ms) of one operator applied to the whole ensemble."""

    name: str
    n_obs: int
    forward_ms: float
    forward_backward_ms: float
    jvp_ms: float


def time_operators(
    grid: Grid, n_stations: int, members: int, repeats: int
) -> tuple[list[OperatorTiming], dict[str, str]]:
    """Time the point operator (``n_stations`` default stations x :data:`BENCH_VARIABLES`)
    and the low-resolution (8x16) and forecast-grid (16x32) operators on a seeded random
    state ``(members, 4, nlat, nlon)``.

    Returns the timings and, by name, why an operator could not be built on ``grid``.
    """
    variables = BENCH_VARIABLES
    net = default_network(n_stations, seed=0)
    point = PointOperator.from_network(net, grid, variables)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(members, len(variables), grid.nlat, grid.nlon, generator=gen)

    def fwd_bwd(op: torch.nn.Module) -> None:
        xr_ = x.clone().requires_grad_(True)
        op(xr_).square().sum().backward()

    def jvp(op: torch.nn.Module) -> None:
        torch.func.jvp(op, (x,), (x,))

    rows: list[tuple[str, torch.nn.Module]] = [("point", point)]
    unavailable: dict[str, str] = {}
    for name, factory in (("low-res 8x16", low_resolution_operator),
                          ("forecast 16x32", forecast_grid_operator)):
        try:
            rows.append((name, factory(grid, variables)))
        except ValueError as err:
            unavailable[name] = str(err)
    timings = []
    for name, op in rows:
        with torch.no_grad():
            t_f = time_ms(lambda op=op: op(x), repeats)
        t_b = time_ms(lambda op=op: fwd_bwd(op), repeats)
        t_j = time_ms(lambda op=op: jvp(op), repeats)
        timings.append(OperatorTiming(name, op.n_obs, t_f, t_b, t_j))
    return timings, unavailable


@dataclass(frozen=True)
class InterpolationError:
    """Largest absolute errors on one grid: the point operator (Keys a = -0.5) on the
    scalar ``s`` and on ``u``, ``v``; ``grid_sample`` on ``s`` (points with |lat| <= 85)."""

    grid: Grid
    keys_scalar: float
    keys_vector: float
    grid_sample_scalar: float


def interpolation_errors(nlats: tuple[int, ...] = (32, 64, 128)) -> list[InterpolationError]:
    """Errors of interpolation to 1,100 seeded random points (100 of them within 5 degrees
    of the north pole) on the grids ``nlat x 2 nlat``: ``s`` a degree-3 polynomial on the
    sphere, ``u``, ``v`` a tilted rotation plus a projected constant."""
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-90, 90, 1000), rng.uniform(85, 90, 100)])
    lon = rng.uniform(0, 360, len(lat))
    exact = smooth_sphere_fields(lat, lon)
    out = []
    for nlat in nlats:
        g = Grid(nlat, 2 * nlat)
        la2, lo2 = np.meshgrid(g.lat, g.lon, indexing="ij")
        f = smooth_sphere_fields(la2, lo2)
        xs = torch.as_tensor(np.stack([f["s"], f["u"], f["v"]])[None])
        n = len(lat)
        op = PointOperator(g, ("s", "u", "v"), np.tile(lat, 3), np.tile(lon, 3),
                           ["s"] * n + ["u"] * n + ["v"] * n)
        y = op(xs)[0].numpy()
        err_s = np.abs(y[:n] - exact["s"]).max()
        err_uv = max(np.abs(y[n:2 * n] - exact["u"]).max(), np.abs(y[2 * n:] - exact["v"]).max())
        inner = np.abs(lat) <= 85
        ref = grid_sample_reference(xs, lat[inner], lon[inner])[0, 0].numpy()
        err_ref = np.abs(ref - exact["s"][inner]).max()
        out.append(InterpolationError(g, err_s, err_uv, err_ref))
    return out
