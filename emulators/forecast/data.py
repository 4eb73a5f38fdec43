"""The emulator's data: coarsened nature-run states in memory, and their time structure.

- :class:`CoarseStates` and :func:`load_coarse_states`: a canonical dataset (or several
  stores joined in time) read year by year and coarsened to the emulator grid with
  :func:`diffda.core.grid.coarsen_to`, the same function the observation operators use.
- :func:`open_nature`: a canonical dataset, lazily (used by the cycle driver too).
- :func:`year_segments`, :func:`hours_since`, :func:`window_starts`: where the states of a
  year lie, and which windows of consecutive ``dt_hours`` steps exist (never across a gap).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid, coarsen_to
from diffda.emulators.dataio import year_indices
from torch import Tensor
from tqdm.auto import tqdm

VARIABLES: tuple[str, ...] = ("height", "u", "v", "tracer")
"""The default state variables of the emulator, in channel order."""

@dataclasses.dataclass
class CoarseStates:
    """Coarsened nature-run states in memory, physical units.

    ``states``: ``(time, var, nlat, nlon)`` float32; ``times``: cftime, length ``time``;
    ``orography``, ``land_sea_mask``: ``(nlat, nlon)``.
    """

    states: Tensor
    times: list[cftime.datetime]
    variables: tuple[str, ...]
    grid: Grid
    orography: Tensor
    land_sea_mask: Tensor


def open_nature(path: str | Path) -> xr.Dataset:
    """Open a canonical dataset lazily (the data layer's ``open_dataset`` when present)."""
    try:
        from diffda.emulators.dataio import open_dataset
    except ImportError:  # the data layer is optional for in-memory datasets in tests
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such dataset") from None
        coder = xr.coders.CFDatetimeCoder(use_cftime=True)
        if path.suffix == ".zarr" or path.is_dir():
            return xr.open_zarr(path, decode_times=coder)
        return xr.open_dataset(path, decode_times=coder)
    return open_dataset(path)


def load_coarse_states(
    data: str | Path | xr.Dataset | Sequence[str | Path],
    grid: Grid,
    variables: Sequence[str] = VARIABLES,
    years: Sequence[int] | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> CoarseStates:
    """Read ``variables`` of a canonical dataset (path or Dataset), keep ``years``
    (calendar years of ``time``; all if None) and coarsen to ``grid`` with
    :func:`~diffda.core.grid.coarsen_to`, ``chunk`` times at a time (the store is never
    loaded whole at full resolution).

    ``data`` may also be a list of paths, e.g. a nature run and its continuation
    (``cycler nature --continue-from``): the times of ``years`` in each are read and
    joined in time order (:func:`~diffda.emulators.dataio.open_datasets`); the stores must
    share their grid and statics and not overlap in time."""
    if isinstance(data, xr.Dataset):
        ds, name = data, "dataset"
    elif isinstance(data, (list, tuple)):
        from diffda.emulators.dataio import open_datasets

        ds, name = open_datasets(list(data)), ", ".join(map(str, data))
    else:
        ds, name = open_nature(data), data
    missing = [v for v in (*variables, "orography", "land_sea_mask") if v not in ds]
    if missing:
        raise KeyError(f"{name}: missing variables {missing}; has {sorted(ds.data_vars)}")
    if years is not None:
        ds = ds.isel(time=year_indices(ds, years, name))
    n = ds.sizes["time"]
    out = torch.empty(n, len(variables), grid.nlat, grid.nlon)
    for start in tqdm(range(0, n, chunk), desc="coarsen", disable=not progress):
        block = ds[list(variables)].isel(time=slice(start, start + chunk))
        arr = np.stack([block[v].transpose("time", "lat", "lon").values for v in variables], 1)
        coarse = coarsen_to(torch.as_tensor(arr, dtype=torch.float64), grid)
        out[start:start + chunk] = coarse.float()
    static = [
        coarsen_to(torch.as_tensor(ds[k].transpose("lat", "lon").values, dtype=torch.float64),
                   grid).float()
        for k in ("orography", "land_sea_mask")
    ]
    return CoarseStates(
        states=out, times=list(ds["time"].values), variables=tuple(variables), grid=grid,
        orography=static[0], land_sea_mask=static[1],
    )


def year_segments(data: CoarseStates) -> dict[int, slice]:
    """``{year: slice}`` of the contiguous states of each calendar year in ``data``."""
    years = [t.year for t in data.times]
    out: dict[int, slice] = {}
    for i, y in enumerate(years):
        if y not in out:
            out[y] = slice(i, i + 1)
        elif out[y].stop == i:
            out[y] = slice(out[y].start, i + 1)
        else:
            raise ValueError(f"the states of year {y} are not contiguous in the data")
    return out


def hours_since(times: Sequence[cftime.datetime], ref: cftime.datetime) -> np.ndarray:
    """Hours from ``ref`` to each of ``times`` (float64)."""
    return np.array([(t - ref).total_seconds() / 3600.0 for t in times])


def window_starts(times: Sequence[cftime.datetime], dt_hours: float, length: int) -> np.ndarray:
    """Indices ``i`` such that ``times[i], ..., times[i + length]`` are consecutive steps of
    ``dt_hours`` (windows never cross a gap, e.g. between non-adjacent years)."""
    h = hours_since(times, times[0])
    ok = np.isclose(np.diff(h), dt_hours)
    if length == 0:
        return np.arange(len(times))
    run = np.convolve(ok.astype(int), np.ones(length, dtype=int), mode="valid")
    return np.flatnonzero(run == length)


