"""What the forecast emulator sees besides its state: the forcing and the static inputs.

- :data:`ForcingFn`: ``forcing(times, grid) -> (time, n_forcing, nlat, nlon)`` in physical
  units; :data:`FORCINGS` is the registry of forcing sources by the name stored in a
  weights card (``"nature"``: the nature run's ``height_eq``,
  :func:`diffda.emulators.nature.fields.forcing_fields`; ``"none"``).
- :func:`as_forcing_tensor` brings what a forcing function returns to one tensor layout.
- :func:`static_channels`: the static inputs (orography, land-sea mask, sin and cos of
  latitude), :data:`STATIC_CHANNELS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid
from torch import Tensor

STATIC_CHANNELS: tuple[str, ...] = ("orography", "land_sea_mask", "sin_lat", "cos_lat")

ForcingFn = Callable[[Sequence[cftime.datetime], Grid], Tensor]
"""``forcing(times, grid) -> (time, n_forcing, nlat, nlon)`` in physical units."""


def as_forcing_tensor(obj: Any, n_times: int) -> Tensor:
    """Convert what a forcing function returns into ``(time, n_forcing, lat, lon)`` float32.

    Accepts an ``xr.Dataset`` (data variables with a ``time`` dim, in name order), an
    ``xr.DataArray``, a numpy array or a tensor of shape ``(time, lat, lon)`` or
    ``(time, n_forcing, lat, lon)``.
    """
    if isinstance(obj, xr.Dataset):
        names = sorted(n for n, v in obj.data_vars.items() if "time" in v.dims)
        obj = np.stack([obj[n].transpose("time", "lat", "lon").values for n in names], axis=1)
    elif isinstance(obj, xr.DataArray):
        obj = obj.values
    t = torch.as_tensor(np.asarray(obj) if not isinstance(obj, Tensor) else obj)
    t = t.to(torch.float32)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[0] != n_times:
        raise ValueError(
            f"forcing must be (time={n_times}, [n_forcing,] lat, lon), got shape {tuple(t.shape)}"
        )
    return t


def _nature_forcing() -> ForcingFn:
    """The nature run's forcing, ``diffda.emulators.nature.fields.forcing_fields(times, grid)``."""
    nature = importlib.import_module("diffda.emulators.nature.fields")

    def forcing(times: Sequence[cftime.datetime], grid: Grid) -> Tensor:
        return as_forcing_tensor(nature.forcing_fields(list(times), grid), len(times))

    return forcing


FORCINGS: dict[str, Callable[[], ForcingFn | None]] = {
    "nature": _nature_forcing,
    "none": lambda: None,
}
"""Registry of forcing sources by the name stored in a weights card."""


def static_channels(orography: Tensor, land_sea_mask: Tensor, grid: Grid) -> Tensor:
    """Static inputs ``(4, nlat, nlon)``: orography / its area-weighted std (m / m), the
    land-sea mask (1 = land), sin and cos of latitude."""
    w = torch.as_tensor(grid.area_weights(), dtype=torch.float32)[:, None]
    oro = orography.to(torch.float32)
    oro_std = torch.sqrt((w * oro**2).mean()).clamp_min(1.0)
    lat = torch.deg2rad(torch.as_tensor(grid.lat, dtype=torch.float32))[:, None]
    ones = torch.ones(grid.nlat, grid.nlon)
    return torch.stack(
        [oro / oro_std, land_sea_mask.to(torch.float32), torch.sin(lat) * ones,
         torch.cos(lat) * ones]
    )

