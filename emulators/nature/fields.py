"""The nature run's forcing and static fields on any grid, at any cftime time.

Pure functions of (time, point): :func:`forcing_fields` (channels
:data:`FORCING_VARIABLES`) and :func:`static_fields` (channels :data:`STATIC_VARIABLES`)
give them on the cell centres of any :class:`~diffda.core.grid.Grid`, and reproduce the
stored ones exactly on the nature run's output grid at the stored times. The emulator
evaluates its forcing here (:data:`diffda.emulators.forecast.forcing.FORCINGS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cftime
import numpy as np
import torch
from diffda.core.grid import Grid
from diffda.emulators.nature.forcing import ForcingConfig, equilibrium_height, orography
from diffda.emulators.nature.landmask import land_sea_mask, smooth_land
from diffda.emulators.nature.shallow_water import DAY
from torch import Tensor

#: Forcing channels of :func:`forcing_fields`, in order: ``height_eq`` (m), the equilibrium
#: free-surface height toward which ``height`` relaxes (season, time of day, land).
FORCING_VARIABLES: tuple[str, ...] = ("height_eq",)
STATIC_VARIABLES: tuple[str, ...] = ("orography", "land_sea_mask")


def day_of_year(times: Sequence[cftime.datetime]) -> Tensor:
    """Fractional day of year (0 = Jan 1 00 UTC) of cftime ``times``, ``(time,)`` float64."""
    return torch.tensor([t.dayofyr - 1 + (t.hour * 3600 + t.minute * 60 + t.second) / DAY
                         for t in times], dtype=torch.float64)


@lru_cache(maxsize=8)
def _grid_points(grid: Grid) -> tuple[Tensor, Tensor, Tensor]:
    lat2, lon2 = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    land = smooth_land(lat2, lon2)
    return torch.as_tensor(lat2), torch.as_tensor(lon2), torch.as_tensor(land)


def forcing_fields(times: Sequence[cftime.datetime], grid: Grid,
                   cfg: ForcingConfig | None = None) -> Tensor:
    """Forcing at cftime ``times`` on the cell centres of ``grid``.

    Returns ``(time, n_forcing, nlat, nlon)`` float32 in physical units, channels
    :data:`FORCING_VARIABLES` (``height_eq`` in m,
    :func:`~diffda.emulators.nature.forcing.equilibrium_height`). Exactly the stored
    ``height_eq`` for the stored times on :data:`diffda.emulators.nature.run.OUTPUT_GRID`.
    """
    lat2, lon2, land = _grid_points(grid)
    h_eq = equilibrium_height(lat2, lon2, land, day_of_year(times), cfg or ForcingConfig())
    return h_eq[:, None].to(torch.float32)


def static_fields(grid: Grid, cfg: ForcingConfig | None = None) -> Tensor:
    """``(2, nlat, nlon)`` float32: orography (m, smooth, at the cell centres) and the
    land-sea mask (1 = land: land fraction >= 0.5), channels :data:`STATIC_VARIABLES`."""
    _, _, land = _grid_points(grid)
    oro = orography(land, cfg or ForcingConfig())
    lsm = torch.as_tensor(land_sea_mask(grid), dtype=torch.float64)
    return torch.stack([oro, lsm]).to(torch.float32)

