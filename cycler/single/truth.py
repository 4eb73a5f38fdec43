"""The truth state of a single-analysis experiment and what is derived from it alone:
the state at one time (coarsened to the prior's grid where the data are finer), its
synthetic station observations at the default network, the station values for scatter
plots, and the bicubic baseline of a low-resolution field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid, coarsen_to
from diffda.core.times import parse_time
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations.operators import PointOperator
from diffda.observations.stations import (
    StationNetwork,
    default_network,
    grid_land,
    network_from_dataset,
)
from diffda.observations.synthetic import grid_of, synthetic_station_observations, truth_at_stations
from torch import Tensor


@dataclass(frozen=True)
class Truth:
    """One truth state: ``state`` ``(var, lat, lon)`` float64, physical units."""

    state: Tensor
    time: cftime.datetime
    index: int
    grid: Grid
    variables: tuple[str, ...]
    land_sea_mask: np.ndarray | None  # (lat, lon), 1 = land


def select_index(ds: xr.Dataset, time: str | None = None, index: int | None = None,
                 source: str = "dataset") -> int:
    """The time index of ``ds`` named by ``time`` (ISO text, exact match) or ``index``
    (negative counts from the end). ``ValueError`` naming ``source`` and the time range if
    the time is not in the data."""
    if (time is None) == (index is None):
        raise ValueError("give exactly one of a time or an index")
    times = ds["time"].values
    n = len(times)
    if n == 0:
        raise ValueError(f"{source} has no times")
    span = f"{times[0]} .. {times[-1]} ({n} times)"
    if index is not None:
        if not -n <= index < n:
            raise ValueError(f"time index {index} is outside {source}: it has {span}")
        return int(index) % n
    assert time is not None
    calendar = getattr(times[0], "calendar", None)
    if not calendar:
        raise ValueError(f"{source}: times must be cftime objects (open with use_cftime)")
    t = parse_time(time, calendar, key="time")
    hits = np.nonzero(np.array([x == t for x in times]))[0]
    if len(hits) == 0:
        raise ValueError(f"time {t} is not in {source}: it has {span}")
    return int(hits[0])


def truth_at(ds: xr.Dataset, variables: Sequence[str], index: int, grid: Grid | None = None,
             source: str = "dataset") -> Truth:
    """Load the state of ``variables`` at time ``index`` (only that time is read).

    ``grid``: the prior's grid. A finer dataset is coarsened to it with the area-weighted
    :func:`~diffda.core.grid.coarsen_to` (as the prior's training data were); a grid
    that is not an integer refinement of it is an error."""
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise KeyError(f"{source} has no variable(s) {missing} that the prior needs; "
                       f"it has {sorted(map(str, ds.data_vars))}")
    native = grid_of(ds)
    at = ds.isel(time=index)
    state = torch.as_tensor(np.stack([
        np.asarray(at[v].transpose("lat", "lon").values, dtype=np.float64) for v in variables
    ]))
    if not bool(torch.isfinite(state).all()):
        bad = [v for k, v in enumerate(variables) if not bool(torch.isfinite(state[k]).all())]
        raise ValueError(f"{source}: variable(s) {bad} have non-finite values at "
                         f"{ds['time'].values[index]}")
    lsm = (torch.as_tensor(np.asarray(ds["land_sea_mask"].transpose("lat", "lon").values,
                                      dtype=np.float64))
           if "land_sea_mask" in ds else None)
    grid = grid or native
    if grid != native:
        try:
            state = coarsen_to(state, grid)
            lsm = coarsen_to(lsm, grid) if lsm is not None else None
        except ValueError:
            raise ValueError(f"{source} is on the {native} grid, which cannot be coarsened to "
                             f"the prior's {grid} grid; use weights trained for its grid"
                             ) from None
    return Truth(state, ds["time"].values[index], int(index), grid, tuple(variables),
                 None if lsm is None else lsm.numpy())


def check_observed(observed: Sequence[str] | None, variables: Sequence[str]) -> tuple[str, ...]:
    """The observed variables (default all); ``ValueError`` naming an unknown one."""
    if observed is None:
        return tuple(variables)
    unknown = [v for v in observed if v not in variables]
    if unknown or not observed:
        raise ValueError(f"unknown observed variable(s) {unknown or list(observed)}; "
                         f"the prior has {list(variables)}")
    return tuple(observed)


def station_network_for(truth: Truth, n: int, seed: int) -> StationNetwork:
    """The default network on the truth's own land (its ``land_sea_mask``), or on the
    Earth's land (``global-land-mask``) when the dataset has no mask."""
    if truth.land_sea_mask is not None:
        return default_network(n, seed=seed, is_land=grid_land(truth.land_sea_mask))
    return default_network(n, seed=seed)


def synthetic_stations_at(
    ds: xr.Dataset, truth: Truth, network: StationNetwork, seed: int,
    observed: Sequence[str], relative_error: float,
) -> xr.Dataset:
    """Synthetic station observations of the truth at its time only (CF station form):
    bicubic values plus Gaussian noise of std ``relative_error`` times the std of the
    noise-free station values of each variable (:mod:`diffda.observations.synthetic`)."""
    one = ds.isel(time=[truth.index])
    clean = truth_at_stations(one, network, observed, progress=False)[0]  # (station, var)
    error_std = {v: relative_error * float(clean[:, k].std()) for k, v in enumerate(observed)}
    return synthetic_station_observations(one, network, seed, observed, error_std,
                                          hours=(truth.time.hour,), progress=False)


def station_values(prior: DiffusionPrior, truth: Truth, obs: xr.Dataset,
                   observed: Sequence[str], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Values at the station points for scatter plots (physical units, noise-free truth):
    ``station_truth``, ``station_mean``, ``station_unconditional``, ``station_obs``
    ``(station, n_observed)`` (NaN where a station did not observe)."""
    network = network_from_dataset(obs)
    op = PointOperator.from_network(network, truth.grid, prior.variables, observed)
    shape = (len(network), len(observed))
    with torch.no_grad():
        out = {"station_truth": op(truth.state[None])[0].reshape(shape).numpy(),
               "station_mean": op(torch.as_tensor(fields["ensemble"]).mean(0, keepdim=True))[0]
               .reshape(shape).numpy()}
        if "unconditional" in fields:
            out["station_unconditional"] = op(
                torch.as_tensor(fields["unconditional"]).mean(0, keepdim=True)
            )[0].reshape(shape).numpy()
    at = obs.sel(time=truth.time)
    out["station_obs"] = np.stack([np.asarray(at[v].values, dtype=float) if v in at
                                   else np.full(len(network), np.nan) for v in observed], -1)
    out["station_observed"] = list(observed)
    return out


def bicubic_upsample(coarse: Tensor, fine: Grid, variables: Sequence[str]) -> Tensor:
    """Bicubic interpolation on the sphere of ``(..., var, h, w)`` cell values to the cell
    centres of ``fine``: ``(..., var, fine.nlat, fine.nlon)``.

    The Keys (a = -0.5) 4x4 stencil of :class:`~diffda.observations.operators.PointOperator`
    on the coarse grid: periodic in longitude, continued across the poles (with the sign
    of ``u``, ``v`` reversed there). The coarse values are cell means, taken as centre
    values, as a bicubic upsampling of a coarse field does.
    """
    *lead, nv, h, w = coarse.shape
    if nv != len(variables):
        raise ValueError(f"{nv} coarse variables for names {list(variables)}")
    lat2, lon2 = np.meshgrid(fine.lat, fine.lon, indexing="ij")
    n = lat2.size
    op = PointOperator(Grid(h, w), variables, np.tile(lat2.ravel(), nv),
                       np.tile(lon2.ravel(), nv), [v for v in variables for _ in range(n)])
    flat = coarse.reshape(-1, nv, h, w)
    out = op(flat)  # weights are cast to the input's dtype
    return out.reshape(*lead, nv, fine.nlat, fine.nlon)
