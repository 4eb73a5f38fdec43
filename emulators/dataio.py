"""Gridded data I/O: the canonical form, opening and writing stores, the climatology.

Canonical form (shared by every module): an ``xarray.Dataset`` with dims ``(time, lat, lon)``
(optionally ``level``), ``lat`` ascending in degrees_north, ``lon`` in [0, 360) ascending in
degrees_east, ``time`` as cftime, CF attributes on every variable. State variables of the
default world: ``height`` (m), ``u``, ``v`` (m s-1), ``tracer`` (kg kg-1); static
``orography`` (m) and ``land_sea_mask`` (1 = land); forcing ``height_eq`` (m).

- :func:`open_dataset` opens a canonical store (zarr or netCDF) lazily with dask;
  :func:`open_datasets` joins several in time; :func:`year_indices` picks calendar years.
- :func:`make_dataset` builds one from arrays; :func:`write_netcdf`, :func:`write_zarr`
  write one atomically.
- :class:`Climatology` holds per-variable mean/std for normalisation.

Elsewhere: reanalysis readers in :mod:`diffda.emulators.reanalysis`, regridding in
:mod:`diffda.emulators.regrid`, the streaming training-data loader in
:mod:`diffda.emulators.batches`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid
from diffda.core.variables import VARIABLE_ATTRS, global_attrs
from torch import Tensor

TIME_CODER = xr.coders.CFDatetimeCoder(use_cftime=True)

#: CF attributes of the canonical variables.


_LAT_NAMES = ("lat", "latitude", "y")
_LON_NAMES = ("lon", "longitude", "x")
_TIME_NAMES = ("time", "valid_time", "datetime")
_LEVEL_NAMES = ("level", "plev", "pressure_level", "isobaricInhPa")


# --------------------------------------------------------------------------- canonical form


def make_dataset(data: Mapping[str, np.ndarray], times: Sequence[cftime.datetime] | None,
                 grid: Grid, calendar: str = "noleap") -> xr.Dataset:
    """Canonical dataset from arrays ``(time, lat, lon)`` (or ``(lat, lon)`` when ``times`` is
    None) on ``grid`` with CF attributes from :data:`VARIABLE_ATTRS`."""
    coords: dict = {"lat": ("lat", grid.lat, {"units": "degrees_north", "standard_name":
                                              "latitude", "axis": "Y"}),
                    "lon": ("lon", grid.lon, {"units": "degrees_east", "standard_name":
                                              "longitude", "axis": "X"})}
    dims: tuple[str, ...] = ("lat", "lon")
    if times is not None:
        coords["time"] = ("time", np.asarray(times, dtype=object),
                          {"standard_name": "time", "axis": "T"})
        dims = ("time", "lat", "lon")
    ds = xr.Dataset({k: (dims, np.asarray(v), dict(VARIABLE_ATTRS.get(k, {})))
                     for k, v in data.items()}, coords=coords)
    if times is not None:
        ds["time"].encoding.update({"units": "hours since 2000-01-01 00:00:00",
                                    "calendar": calendar, "dtype": "float64"})
    ds.attrs["Conventions"] = "CF-1.8"
    return ds


def _find(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    for c in candidates:
        if c in names:
            return c
    return None


def to_canonical(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """Rename dims to ``time/lat/lon/level``, sort latitude ascending, wrap longitude to
    [0, 360) ascending. Lazy (dask arrays stay lazy). ``source`` names the data in errors."""
    names = list(ds.dims) + list(ds.coords)
    lat = _find(names, _LAT_NAMES)
    lon = _find(names, _LON_NAMES)
    if lat is None or lon is None:
        raise ValueError(f"{source}: no latitude/longitude coordinates (found dims "
                         f"{list(ds.dims)}); expected one of {_LAT_NAMES} and {_LON_NAMES}")
    rename = {lat: "lat", lon: "lon"}
    t = _find(names, _TIME_NAMES)
    if t is not None and t != "time":
        rename[t] = "time"
    lev = _find(names, _LEVEL_NAMES)
    if lev is not None and lev != "level":
        rename[lev] = "level"
    ds = ds.rename({k: v for k, v in rename.items() if k != v})
    latv = ds["lat"].values
    if latv.ndim != 1 or np.any(np.abs(latv) > 90.0):
        raise ValueError(f"{source}: latitude must be 1-D within [-90, 90], got "
                         f"{latv.min()}..{latv.max()}")
    if not (np.all(np.diff(latv) > 0) or np.all(np.diff(latv) < 0)):
        raise ValueError(f"{source}: latitude is not monotonic: unknown grid")
    if latv[0] > latv[-1]:
        ds = ds.isel(lat=slice(None, None, -1))
    lonv = np.mod(ds["lon"].values.astype(np.float64), 360.0)
    order = np.argsort(lonv, kind="stable")
    if len(np.unique(lonv)) != len(lonv):
        raise ValueError(f"{source}: longitudes repeat after wrapping to [0, 360): unknown grid")
    ds = ds.assign_coords(lon=("lon", lonv, ds["lon"].attrs)).isel(lon=order)
    ds["lat"].attrs.update({"units": "degrees_north", "standard_name": "latitude"})
    ds["lon"].attrs.update({"units": "degrees_east", "standard_name": "longitude"})
    return ds


def open_store(path: Path, chunks: Mapping[str, int] | str | None = "auto") -> xr.Dataset:
    """Open a zarr store or a netCDF file as it is (no canonical renaming), lazily."""
    if not path.exists():
        raise FileNotFoundError(f"no such file or store: {path}")
    kw = dict(chunks=chunks, decode_times=TIME_CODER)
    try:
        if path.suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").exists()) \
                or (path.is_dir() and (path / ".zgroup").exists()):
            with warnings.catch_warnings():  # stores without consolidated metadata are fine
                warnings.filterwarnings("ignore", message=".*consolidated metadata.*")
                return xr.open_zarr(path, consolidated=None, **kw)
        return xr.open_dataset(path, **kw)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot be read as netCDF or zarr ({err})") from err


def open_dataset(path: str | os.PathLike, chunks: Mapping[str, int] | str | None = "auto"
                 ) -> xr.Dataset:
    """Open a canonical store (``.zarr`` or netCDF) lazily with dask, cftime times."""
    path = Path(path)
    return to_canonical(open_store(path, chunks), str(path))


def open_datasets(paths: str | os.PathLike | Sequence[str | os.PathLike],
                  chunks: Mapping[str, int] | str | None = "auto") -> xr.Dataset:
    """Open one canonical store, or several as one time series (e.g. a nature run and its
    continuation, ``cycler nature --continue-from``; or yearly files), lazily. Several
    stores must share the grid and the statics (orography, land-sea mask) and must not
    overlap in time; they are joined in time order, and the attributes (the climatology
    of each variable included) are those of the first store given."""
    if isinstance(paths, (str, os.PathLike)):
        return open_dataset(paths, chunks)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no datasets given")
    parts = [(p, open_dataset(p, chunks)) for p in paths]
    first_path, first = parts[0]
    for p, ds in parts[1:]:
        for c in ("lat", "lon"):
            if ds.sizes[c] != first.sizes[c] or not np.allclose(ds[c].values, first[c].values):
                raise ValueError(f"{p}: its {c} differs from that of {first_path}")
        for k in ("orography", "land_sea_mask"):
            if (k in ds) != (k in first) or (k in ds and not np.allclose(
                    ds[k].values, first[k].values, atol=1e-3)):
                raise ValueError(f"{p}: its {k} differs from that of {first_path}: not one world")
    parts.sort(key=lambda pd: pd[1]["time"].values[0])
    for (pa, a), (pb, b) in zip(parts, parts[1:], strict=False):
        if b["time"].values[0] <= a["time"].values[-1]:
            raise ValueError(f"{pa} and {pb} overlap in time ({b['time'].values[0]} <= "
                             f"{a['time'].values[-1]})")
    joined = xr.concat([d for _, d in parts], "time", data_vars="minimal", coords="minimal",
                       compat="override", combine_attrs="override")
    joined.attrs = dict(first.attrs)
    for v in joined.data_vars:
        joined[v].attrs = dict(first[v].attrs)
    return joined


def year_indices(ds: xr.Dataset, years: Sequence[int], name: str) -> np.ndarray:
    """Time indices of the calendar ``years`` in ``ds`` (they need not be contiguous);
    ``name`` names the data in the error raised when there are none."""
    keep = np.flatnonzero(np.isin(ds["time"].dt.year.values, np.asarray(list(years))))
    if keep.size == 0:
        have = sorted(set(ds["time"].dt.year.values.tolist()))
        raise ValueError(f"{name}: no times in years {list(years)}; years present: {have}")
    return keep


# --------------------------------------------------------------------------- climatology


@dataclass(frozen=True)
class Climatology:
    """Per-variable mean and std (area-weighted over lat/lon and over time) in physical
    units, for ``x_norm = (x - mean) / std``."""

    mean: dict[str, float]
    std: dict[str, float]

    def normalise(self, x: Tensor, variables: Sequence[str], dim: int = -3) -> Tensor:
        """``(..., var, lat, lon)`` (``var`` at ``dim``) physical -> normalised."""
        m, s = self._vectors(x, variables, dim)
        return (x - m) / s

    def denormalise(self, x: Tensor, variables: Sequence[str], dim: int = -3) -> Tensor:
        m, s = self._vectors(x, variables, dim)
        return x * s + m

    def _vectors(self, x: Tensor, variables: Sequence[str], dim: int) -> tuple[Tensor, Tensor]:
        missing = [v for v in variables if v not in self.mean]
        if missing:
            raise KeyError(f"climatology has no {missing}; it has {sorted(self.mean)}")
        shape = [1] * x.ndim
        shape[dim] = len(variables)
        m = torch.tensor([self.mean[v] for v in variables], dtype=x.dtype).reshape(shape)
        s = torch.tensor([self.std[v] for v in variables], dtype=x.dtype).reshape(shape)
        return m, s

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"mean": self.mean, "std": self.std}, f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Climatology:
        d = json.loads(Path(path).read_text())
        return cls({k: float(v) for k, v in d["mean"].items()},
                   {k: float(v) for k, v in d["std"].items()})

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, variables: Sequence[str] | None = None
                     ) -> Climatology:
        """From the ``climatology_mean`` / ``climatology_std`` attributes that
        :func:`write_climatology_attrs` stores; computes it when they are absent."""
        variables = list(variables or [v for v in ds.data_vars
                                       if "climatology_mean" in ds[v].attrs])
        if all("climatology_mean" in ds[v].attrs for v in variables) and variables:
            return cls({v: float(ds[v].attrs["climatology_mean"]) for v in variables},
                       {v: float(ds[v].attrs["climatology_std"]) for v in variables})
        return climatology(ds, variables)


def climatology(ds: xr.Dataset, variables: Sequence[str]) -> Climatology:
    """Area-weighted (cell-area, :meth:`Grid.area_weights`) mean and std over all dims of
    each variable; computed chunk by chunk with dask."""
    missing = [v for v in variables if v not in ds]
    if missing:
        raise KeyError(f"variables {missing} not in dataset (has {sorted(map(str, ds.data_vars))})")
    w = xr.DataArray(Grid(ds.sizes["lat"], ds.sizes["lon"]).area_weights(), dims="lat")
    mean, std = {}, {}
    for v in variables:
        x = ds[v].astype(np.float64)
        m = float(x.weighted(w).mean())
        s = float(np.sqrt(((x - m) ** 2).weighted(w).mean()))
        mean[v], std[v] = m, s if s > 0 else 1.0
    return Climatology(mean, std)


def write_climatology_attrs(store: str | os.PathLike, clim: Climatology) -> None:
    """Store ``clim`` as ``climatology_mean`` / ``climatology_std`` attributes of the
    variables of a zarr store (in place)."""
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    for v in clim.mean:
        group[v].attrs.update({"climatology_mean": clim.mean[v], "climatology_std": clim.std[v]})


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` to netCDF4 atomically (temp file in the same folder, then rename), with
    the global attributes of :func:`~diffda.core.variables.global_attrs` (``Conventions``,
    a ``history`` line of this command, no absolute ``source`` path) and the permissions
    of the user's umask (not ``0600``)."""
    path = Path(path)
    out = ds.copy()
    out.attrs = global_attrs(ds.attrs)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nc.tmp")
    os.close(fd)
    try:
        out.to_netcdf(tmp, engine="netcdf4")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_zarr(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` to a zarr v3 store atomically (temp folder, then rename)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, suffix=".zarr.tmp"))
    shutil.rmtree(tmp)
    ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    os.replace(tmp, path)
