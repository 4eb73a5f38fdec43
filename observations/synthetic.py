"""Synthetic station observations from a truth run (identical-twin experiments).

The truth is a Dataset in the canonical form (dims ``(time, lat, lon)``, latitude
ascending on a WeatherBench cell-centre grid, longitude 0..360, cftime times, variables
``height``, ``u``, ``v``, ``tracer``). At every truth time whose hour is in ``hours``
(default 00 and 12 UTC) each station observes each variable: the bicubic
:class:`~diffda.observations.operators.PointOperator` value plus Gaussian noise

    y_{t,s,v} = M_{s,v}(x_t) + e_v * n_{t,s,v},   n ~ N(0, 1),

with one generator per observation time derived from ``(seed, "synthetic-observations",
hours since 0001-01-01)`` (:mod:`diffda.core.rng`), so an observation does not change when
the time range, the chunking or the order of the calls changes. Output is the CF station
form of :func:`diffda.observations.stations.station_observations_dataset` and, optionally,
IGRA v2 files (:func:`diffda.observations.soundings.write_igra_directory`) that the IGRA
reader reads back. :func:`make_observations` is the whole recipe of ``cycler obs make``:
a network, the observations of a truth file, and the files written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid
from diffda.core.rng import numpy_generator
from diffda.core.variables import global_attrs
from diffda.observations.operators import PointOperator
from diffda.observations.soundings import write_igra_directory
from diffda.observations.station_arrays import station_observations
from diffda.observations.stations import (
    MODEL_VARIABLES,
    StationNetwork,
    default_network,
    grid_land,
    read_station_list,
    station_id_text,
    station_observations_dataset,
)
from tqdm import tqdm

NOISE_STREAM = "synthetic-observations"
#: Error std as a fraction of a variable's std over the observed truth values, used for
#: variables without an explicit ``error_std``.
DEFAULT_RELATIVE_ERROR = 0.1
TIME_UNITS = "hours since 0001-01-01 00:00:00"


def grid_of(ds: xr.Dataset | xr.DataArray) -> Grid:
    """The :class:`Grid` of a canonical Dataset, checking its latitudes and longitudes."""
    for name in ("lat", "lon"):
        if name not in ds.coords:
            raise KeyError(
                f"dataset has no coordinate {name!r} (canonical dims are time, lat, lon)"
            )
    lat, lon = np.asarray(ds["lat"], float), np.asarray(ds["lon"], float)
    grid = Grid(len(lat), len(lon))
    if not np.allclose(lat, grid.lat, atol=1e-4) or not np.allclose(lon, grid.lon, atol=1e-4):
        raise ValueError(
            f"dataset coordinates are not the WeatherBench cell-centre grid {grid} "
            f"(lat {lat[0]:.4f}..{lat[-1]:.4f} ascending expected {grid.lat[0]:.4f}..; "
            f"lon from {lon[0]:.4f} expected 0)"
        )
    return grid


def hours_key(t: cftime.datetime) -> int:
    """Whole hours since 0001-01-01 in the time's own calendar (a non-negative seed key)."""
    return int(round(float(cftime.date2num(t, TIME_UNITS, calendar=t.calendar))))


def observation_time_indices(times: Sequence[cftime.datetime], hours: Sequence[int]) -> np.ndarray:
    """Indices of ``times`` at whole hours in ``hours`` (e.g. 00 and 12 UTC)."""
    return np.array(
        [i for i, t in enumerate(times) if t.hour in hours and t.minute == 0 and t.second == 0],
        dtype=np.int64,
    )


def station_noise(seed: int, times: Sequence[cftime.datetime], n_station: int, n_var: int
                  ) -> np.ndarray:
    """Standard normal noise ``(time, station, var)``, one generator per time."""
    return np.stack([
        numpy_generator(seed, NOISE_STREAM, hours_key(t)).standard_normal((n_station, n_var))
        for t in times
    ]) if len(times) else np.zeros((0, n_station, n_var))


def truth_at_stations(
    truth: xr.Dataset,
    network: StationNetwork,
    variables: Sequence[str] = MODEL_VARIABLES,
    time_index: np.ndarray | None = None,
    chunk: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """Noise-free bicubic station values ``(time, station, var)`` of ``truth``, loaded in
    chunks of ``chunk`` times (a lazy store is never loaded whole)."""
    missing = [v for v in variables if v not in truth]
    if missing:
        raise KeyError(
            f"truth dataset has no variable(s) {missing}; it has {list(truth.data_vars)}"
        )
    grid = grid_of(truth)
    op = PointOperator.from_network(network, grid, variables)
    idx = np.arange(truth.sizes["time"]) if time_index is None else np.asarray(time_index)
    out = np.zeros((len(idx), len(network), len(variables)))
    for start in tqdm(range(0, len(idx), chunk), desc="truth at stations", disable=not progress):
        sel = idx[start : start + chunk]
        block = np.stack(
            [truth[v].isel(time=sel).transpose("time", "lat", "lon").values for v in variables],
            axis=1,
        )  # (time, var, lat, lon)
        bad = ~np.isfinite(block)
        if bad.any():
            t, v = np.argwhere(bad)[0][:2]
            raise ValueError(
                f"truth variable {variables[v]!r} has non-finite values at time "
                f"{truth['time'].values[sel[t]]}"
            )
        with torch.no_grad():
            y = op(torch.as_tensor(block, dtype=torch.float64))
        out[start : start + len(sel)] = y.reshape(len(sel), len(network), len(variables)).numpy()
    return out


def synthetic_station_observations(
    truth: xr.Dataset,
    network: StationNetwork,
    seed: int,
    variables: Sequence[str] = MODEL_VARIABLES,
    error_std: Mapping[str, float] | None = None,
    hours: Sequence[int] = (0, 12),
    progress: bool = True,
) -> xr.Dataset:
    """Noisy station observations of ``truth`` at the times whose hour is in ``hours``.

    ``error_std``: physical error standard deviation per variable; a variable not in it
    gets :data:`DEFAULT_RELATIVE_ERROR` times the std of its noise-free station values.
    Returns the CF station Dataset ``(time, station)``; the error std used is stored as
    each variable's ``observation_error_std`` attribute.
    """
    error_std = dict(error_std or {})
    unknown = sorted(set(error_std) - set(variables))
    if unknown:
        raise ValueError(f"error_std given for variable(s) {unknown} that are not observed "
                         f"({list(variables)})")
    for name, e in error_std.items():
        if not (np.isfinite(e) and e >= 0):
            raise ValueError(f"error_std[{name!r}] = {e} must be finite and >= 0")
    times = list(truth["time"].values)
    if times and not isinstance(times[0], cftime.datetime):
        raise ValueError("truth times must be cftime objects (open with use_cftime=True)")
    idx = observation_time_indices(times, hours)
    if len(idx) == 0:
        raise ValueError(f"truth has no times at hours {list(hours)} UTC")
    obs_times = [times[i] for i in idx]
    clean = truth_at_stations(truth, network, variables, idx, progress=progress)
    std = {
        v: float(error_std[v]) if v in error_std
        else DEFAULT_RELATIVE_ERROR * float(clean[..., k].std())
        for k, v in enumerate(variables)
    }
    noise = station_noise(seed, obs_times, len(network), len(variables))
    e = np.array([std[v] for v in variables])
    values = {v: clean[..., k] + e[k] * noise[..., k] for k, v in enumerate(variables)}
    ds = station_observations_dataset(network, obs_times, values, error_std=std)
    ds.attrs.update({
        "title": "synthetic radiosonde-like station observations",
        "source": "bicubic interpolation of the truth run plus Gaussian noise",
        "seed": seed,
        "noise_stream": NOISE_STREAM,
        "observation_hours_utc": list(hours),
    })
    return ds


def write_observations(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write a station-observation Dataset to netCDF atomically (temp file + os.replace).

    CF as checkers read it: station ids as fixed-width characters (``char`` with a
    ``strlen`` dimension, not the variable-length string type CF rejects), the global
    attributes of :func:`~diffda.core.variables.global_attrs` (``Conventions``, a
    ``history`` line), and the permissions of the user's umask (not ``0600``).
    :func:`read_observations` reads these files and older ones with variable-length ids.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cal = ds["time"].values[0].calendar if ds.sizes.get("time") else "standard"
    encoding: dict[str, dict] = {
        "time": {"units": TIME_UNITS, "calendar": cal, "dtype": "float64"}}
    out = ds.copy()
    out.attrs = global_attrs(ds.attrs)
    if "station_id" in out.variables:
        ids = np.array([str(s) for s in np.asarray(out["station_id"].values).ravel()],
                       dtype=object).reshape(out["station_id"].shape)
        out["station_id"] = out["station_id"].copy(data=ids)
        encoding["station_id"] = {"dtype": "S1", "char_dim_name": "strlen"}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out.to_netcdf(tmp, encoding=encoding)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_observations(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a station-observation netCDF file (times as cftime; station ids as ``str``,
    whether stored as characters or, in older files, as variable-length strings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"observation file {path} does not exist")
    ds = xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    ds = ds.load()
    if "station_id" in ds.variables:
        ids = np.asarray(ds["station_id"].values)
        ds = ds.assign_coords(station_id=ds["station_id"].copy(
            data=np.array([station_id_text(s) for s in ids.ravel()], dtype=object
                          ).reshape(ids.shape)))
    return ds


def point_observations_at(
    obs: xr.Dataset,
    time: cftime.datetime,
    grid: Grid,
    state_variables: Sequence[str],
    observed: Sequence[str] | None = None,
) -> tuple[PointOperator, np.ndarray, np.ndarray]:
    """The point operator, the observed values ``(n_obs,)`` and their error std ``(n_obs,)``
    (physical units) at one time, for the non-missing (station, variable) pairs."""
    (stations,) = station_observations(obs, [time], state_variables, observed)
    return stations.operator(grid, state_variables), stations.value, stations.error_std


# --------------------------------------------------------------------------- the recipe


def _quiet(message: str) -> None:
    """The default ``log`` of :func:`make_observations`: say nothing."""


def make_observations(
    truth: xr.Dataset,
    out: Path,
    *,
    network: str = "default",
    n_stations: int = 200,
    active_years: tuple[int, int] | None = None,
    seed: int = 0,
    variables: Sequence[str] = MODEL_VARIABLES,
    error_std: Mapping[str, float] | None = None,
    hours: Sequence[int] = (0, 12),
    igra_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = _quiet,
) -> Path:
    """Synthetic station observations of the canonical ``truth`` dataset, written to ``out``.

    ``network``: ``"default"`` (``n_stations`` drawn with ``seed`` on the dataset's
    ``land_sea_mask`` land if it has one, else on ``global_land_mask`` land) or the path
    of an IGRA v2 station list (filtered by ``active_years``). The observations are those
    of :func:`synthetic_station_observations`; with ``igra_dir`` they are also written as
    IGRA v2 files there. ``log`` receives one line per step (the network, each file
    written). Returns the path of the netCDF file.
    """
    if network == "default":
        land = (grid_land(truth["land_sea_mask"].values) if "land_sea_mask" in truth
                else None)
        kwargs = {"is_land": land} if land is not None else {}
        stations = default_network(n_stations, seed=seed, **kwargs)
        log(f"default network: {len(stations)} stations on "
            f"{'the dataset land_sea_mask' if land else 'global_land_mask'} land")
    else:
        stations, skipped = read_station_list(network, active_years)
        log(f"{network}: {len(stations)} stations, {len(skipped)} lines skipped")
    obs = synthetic_station_observations(
        truth, stations, seed=seed, variables=variables, error_std=error_std, hours=hours,
        progress=progress,
    )
    path = write_observations(obs, out)
    log(f"wrote {path}: {obs.sizes['time']} times x {obs.sizes['station']} stations, "
        "error std " + ", ".join(f"{v}={obs[v].attrs['observation_error_std']:.4g}"
                                 for v in variables))
    if igra_dir:
        paths, n_bad = write_igra_directory(obs, igra_dir)
        log(f"wrote {len(paths)} IGRA v2 files to {igra_dir}"
            + (f" ({n_bad} non-positive tracer values written as missing)" if n_bad else ""))
    return path
