"""Station observations as arrays, taken once from the CF station Dataset at the I/O edge.

The cycle driver reads its observation file once (:func:`station_observations`) and then
works with one :class:`StationObservations` per analysis time: no xarray lookups and no
operators rebuilt from files inside the cycles. Values and error standard deviations are
in physical units; missing values are dropped, and observation ``k`` is variable
``variable[k]`` at ``(lat[k], lon[k])``, ordered station-major as in the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cftime
import numpy as np
import xarray as xr
from diffda.core.grid import Grid
from diffda.observations.operators import PointOperator
from diffda.observations.stations import network_from_dataset


@dataclass(frozen=True)
class StationObservations:
    """The non-missing (station, variable) observations valid at ``time``.

    ``lat``, ``lon``, ``value``, ``error_std``: ``(n_obs,)`` float64 (degrees; physical
    units; ``error_std`` NaN where the file gives none); ``variable``, ``labels``: ``n_obs``
    names (``"<station id>:<variable>"`` for the labels).
    """

    time: cftime.datetime
    lat: np.ndarray
    lon: np.ndarray
    variable: tuple[str, ...]
    value: np.ndarray
    error_std: np.ndarray
    labels: tuple[str, ...]

    @property
    def n_obs(self) -> int:
        return len(self.variable)

    def operator(self, grid: Grid, state_variables: Sequence[str]) -> PointOperator:
        """The bicubic point operator of these observations on ``grid``."""
        return PointOperator(grid, state_variables, self.lat, self.lon, self.variable,
                             labels=self.labels)


def station_observations(
    obs: xr.Dataset, times: Iterable[cftime.datetime], state_variables: Sequence[str],
    observed: Sequence[str] | None = None,
) -> list[StationObservations]:
    """One :class:`StationObservations` per time of ``times``, from a CF station Dataset
    (synthetic or IGRA, :mod:`diffda.observations.stations`). ``observed``: the variables
    to use (default: every state variable the file has). ``KeyError`` naming a time the
    file does not hold, or when it has none of the variables."""
    observed = [v for v in (observed or state_variables) if v in obs]
    if not observed:
        raise KeyError(f"observations have none of the variables {list(state_variables)}")
    network = network_from_dataset(obs)
    error = {v: float(obs[v].attrs.get("observation_error_std", np.nan)) for v in observed}
    out = []
    for time in times:
        try:
            at = obs.sel(time=time)
        except KeyError:
            raise KeyError(f"no observations at {time} in the observation file") from None
        values = {v: np.asarray(at[v].values, dtype=np.float64) for v in observed}
        keep = [(k, v) for k in range(len(network.ids)) for v in observed
                if np.isfinite(values[v][k])]
        out.append(StationObservations(
            time=time,
            lat=np.asarray([network.lat[k] for k, _ in keep], dtype=np.float64),
            lon=np.asarray([network.lon[k] for k, _ in keep], dtype=np.float64),
            variable=tuple(v for _, v in keep),
            value=np.asarray([values[v][k] for k, v in keep], dtype=np.float64),
            error_std=np.asarray([error[v] for _, v in keep], dtype=np.float64),
            labels=tuple(f"{network.ids[k]}:{v}" for k, v in keep),
        ))
    return out
