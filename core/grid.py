"""Regular latitude-longitude grids of cell centres, and area-weighted coarsening.

The reanalysis grid convention is WeatherBench's: ``nlat`` latitudes at cell centres
``-90 + (i + 1/2) 180/nlat`` (ascending, no poles) and ``nlon`` longitudes ``j 360/nlon``
starting at 0. The 5.625 deg grid (32x64) has latitudes -87.1875..87.1875 and longitudes
0..354.375.

Coarsening by an integer factor ``f`` (:func:`coarsen`) averages, with exact area weights,
the fine cells that make up each coarse cell *as labelled*: in latitude the cells nest
(rows ``f i .. f i + f - 1``); in longitude they do not (both grids put a cell centre at 0),
so coarse cell ``j``, centred at ``j 360 f / nlon``, covers the fine columns
``f j - f/2 .. f j + f/2`` with half weights on the two end columns when ``f`` is even
(the end cells are split between two coarse cells), and columns
``f j - (f-1)/2 .. f j + (f-1)/2`` when ``f`` is odd. So the coarse value sits where its
label says, the global area-weighted mean is conserved to round-off, and constants are
reproduced. (Unlike plain block means, coarsening twice by 2 is then not the same as once
by 4: the half-weighted end columns do not compose.) This one function makes the
emulator's training data, the low-resolution observations and the forecast-grid
observations: they are identical by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Grid:
    """A regular lat-lon grid of cell centres (WeatherBench convention)."""

    nlat: int
    nlon: int

    def __post_init__(self) -> None:
        if self.nlat < 1 or self.nlon < 1:
            raise ValueError(f"grid size must be positive, got {self.nlat}x{self.nlon}")

    @property
    def lat(self) -> np.ndarray:
        """Latitudes of cell centres in degrees, ascending, shape ``(nlat,)``."""
        return -90.0 + (np.arange(self.nlat) + 0.5) * 180.0 / self.nlat

    @property
    def lon(self) -> np.ndarray:
        """Longitudes of cell centres in degrees, 0..360, shape ``(nlon,)``."""
        return np.arange(self.nlon) * 360.0 / self.nlon

    @property
    def lat_bounds(self) -> np.ndarray:
        """Cell edges in latitude, degrees, shape ``(nlat + 1,)``."""
        return np.linspace(-90.0, 90.0, self.nlat + 1)

    def area_weights(self) -> np.ndarray:
        """Relative cell area per latitude row, shape ``(nlat,)``, mean 1 (WeatherBench2's
        latitude weights: exact band areas, proportional to cos(lat) as nlat grows)."""
        s = np.sin(np.deg2rad(self.lat_bounds))
        w = s[1:] - s[:-1]
        return w / w.mean()

    def coarsened(self, factor: int) -> Grid:
        if self.nlat % factor or self.nlon % factor:
            raise ValueError(f"grid {self.nlat}x{self.nlon} is not divisible by factor {factor}")
        return Grid(self.nlat // factor, self.nlon // factor)

    def __str__(self) -> str:
        return f"{self.nlat}x{self.nlon}"


def longitude_stencil(factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Column offsets and weights (summing to 1) of one coarse cell, see the module doc."""
    if factor % 2:
        half = (factor - 1) // 2
        offsets = np.arange(-half, half + 1)
        weights = np.ones(factor)
    else:
        offsets = np.arange(-factor // 2, factor // 2 + 1)
        weights = np.ones(factor + 1)
        weights[[0, -1]] = 0.5
    return offsets, weights / factor


def coarsen(x: Tensor, factor: int) -> Tensor:
    """Area-weighted coarsening of ``(..., lat, lon)`` by ``factor`` (module doc).

    Linear and differentiable. Latitude must be ascending cell centres of a WeatherBench-
    style grid covering the globe (the rows' areas are computed from ``x.shape[-2]``).
    """
    nlat, nlon = x.shape[-2:]
    if factor == 1:
        return x
    if nlat % factor or nlon % factor:
        raise ValueError(f"cannot coarsen a {nlat}x{nlon} field by factor {factor}")
    w = torch.as_tensor(Grid(nlat, nlon).area_weights(), dtype=x.dtype, device=x.device)
    lead = x.shape[:-2]
    rows = (x * w[:, None]).reshape(*lead, nlat // factor, factor, nlon).sum(-2)
    rows = rows / w.reshape(nlat // factor, factor).sum(-1)[:, None]
    offsets, weights = longitude_stencil(factor)
    cols = (factor * np.arange(nlon // factor)[None, :] + offsets[:, None]) % nlon  # (k, J)
    idx = torch.as_tensor(cols.reshape(-1), device=x.device)
    gathered = rows.index_select(-1, idx).reshape(*lead, nlat // factor, len(offsets), -1)
    wk = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    return (gathered * wk[:, None]).sum(-2)


def coarsen_to(x: Tensor, grid: Grid) -> Tensor:
    """Coarsen ``(..., lat, lon)`` to ``grid`` (integer factor, same in both directions)."""
    nlat, nlon = x.shape[-2:]
    factor = nlat // grid.nlat
    if factor * grid.nlat != nlat or factor * grid.nlon != nlon:
        raise ValueError(f"cannot coarsen {nlat}x{nlon} to {grid}: not an integer factor")
    return coarsen(x, factor)


def lat_weighted_mean(x: Tensor, dims: tuple[int, int] = (-2, -1)) -> Tensor:
    """Area-weighted mean over the ``(lat, lon)`` dims of ``(..., lat, lon)``."""
    nlat, nlon = x.shape[-2:]
    w = torch.as_tensor(Grid(nlat, nlon).area_weights(), dtype=x.dtype, device=x.device)
    return (x * w[:, None]).mean(dim=dims)
