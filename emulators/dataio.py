"""Gridded data I/O: the canonical form, reanalysis readers, regridding, normalisation and
the streaming training-data loader.

Canonical form (shared by every module): an ``xarray.Dataset`` with dims ``(time, lat, lon)``
(optionally ``level``), ``lat`` ascending in degrees_north, ``lon`` in [0, 360) ascending in
degrees_east, ``time`` as cftime, CF attributes on every variable. State variables of the
default world: ``height`` (m), ``u``, ``v`` (m s-1), ``tracer`` (kg kg-1); static
``orography`` (m) and ``land_sea_mask`` (1 = land); forcing ``height_eq`` (m).

- :func:`open_dataset` opens a canonical store (zarr or netCDF) lazily with dask.
- :func:`open_reanalysis` reads WeatherBench / WeatherBench2-style ERA5 (netCDF or zarr, one
  store or one file per variable, latitude either order, longitude -180..180 or 0..360,
  pressure levels as a ``level`` dim or in names like ``z500``), converts units, brings it
  to the canonical form and optionally regrids it (:func:`regrid`) to a target
  :class:`~diffda.core.grid.Grid`, bilinear (periodic in longitude) or conservative.
- :class:`Climatology` holds per-variable mean/std for normalisation.
- :class:`StateBatches` streams seeded random batches of normalised windows
  ``(batch, window, var, lat, lon)`` from a store without loading it whole, sharded by
  ``(rank, world_size)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid
from diffda.core.rng import numpy_generator
from torch import Tensor

GRAVITY = 9.80665  # m s-2, WMO standard gravity for geopotential -> geopotential height
TIME_CODER = xr.coders.CFDatetimeCoder(use_cftime=True)

#: CF attributes of the canonical variables.
VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    "height": {"units": "m", "long_name": "free-surface height (geopotential-height-like)",
               "standard_name": "geopotential_height"},
    "u": {"units": "m s-1", "long_name": "eastward wind", "standard_name": "eastward_wind"},
    "v": {"units": "m s-1", "long_name": "northward wind", "standard_name": "northward_wind"},
    "tracer": {"units": "kg kg-1", "long_name": "humidity-like tracer mixing ratio",
               "standard_name": "specific_humidity"},
    "height_eq": {"units": "m", "long_name": "equilibrium height (relaxation target, forcing)"},
    "orography": {"units": "m", "long_name": "surface height", "standard_name": "surface_altitude"},
    "land_sea_mask": {"units": "1", "long_name": "land-sea mask (1 = land)",
                      "standard_name": "land_binary_mask"},
    "t2m": {"units": "K", "long_name": "2 m temperature", "standard_name": "air_temperature"},
}

#: Names of WeatherBench (1 and 2) / ERA5 variables -> short names used here.
ALIASES: dict[str, str] = {
    "geopotential": "z", "u_component_of_wind": "u", "v_component_of_wind": "v",
    "temperature": "t", "specific_humidity": "q", "2m_temperature": "t2m",
    "geopotential_at_surface": "orography", "land_sea_mask": "lsm",
}

#: Accepted units per short name -> (canonical units, factor) so that value * factor is in
#: canonical units.
UNITS: dict[str, dict[str, tuple[str, float]]] = {
    "z": {"m**2 s**-2": ("m2 s-2", 1.0), "m2 s-2": ("m2 s-2", 1.0), "m^2/s^2": ("m2 s-2", 1.0),
          "m2/s2": ("m2 s-2", 1.0)},
    "u": {"m s**-1": ("m s-1", 1.0), "m s-1": ("m s-1", 1.0), "m/s": ("m s-1", 1.0)},
    "v": {"m s**-1": ("m s-1", 1.0), "m s-1": ("m s-1", 1.0), "m/s": ("m s-1", 1.0)},
    "t": {"K": ("K", 1.0)},
    "t2m": {"K": ("K", 1.0)},
    "q": {"kg kg**-1": ("kg kg-1", 1.0), "kg kg-1": ("kg kg-1", 1.0), "kg/kg": ("kg kg-1", 1.0),
          "1": ("kg kg-1", 1.0)},
    "orography": {"m": ("m", 1.0), "m**2 s**-2": ("m", 1.0 / GRAVITY)},
    "lsm": {"(0 - 1)": ("1", 1.0), "1": ("1", 1.0), "0-1": ("1", 1.0)},
}

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


def _open_any(path: Path, chunks: Mapping[str, int] | str | None = "auto") -> xr.Dataset:
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
    return to_canonical(_open_any(path, chunks), str(path))


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


# --------------------------------------------------------------------------- reanalyses


_LEVEL_NAME = re.compile(r"^([a-z_0-9]+?)_?(\d{2,4})$")


def _select(ds: xr.Dataset, spec: str, source: str) -> xr.DataArray:
    """A variable by spec: a name (``z500``, ``t2m``, ``geopotential``) or ``name@level``."""
    name, level = spec, None
    if "@" in spec:
        name, lev = spec.split("@", 1)
        level = float(lev)
    if name in ds.data_vars and level is None:
        return ds[name]
    short = ALIASES.get(name, name)
    cands = [n for n in ds.data_vars if n == name or ALIASES.get(n, n) == short]
    if not cands and level is None:
        m = _LEVEL_NAME.match(name)
        if m:
            base = m.group(1)
            level = float(m.group(2))
            cands = [n for n in ds.data_vars if n == base or ALIASES.get(n, n) == base]
            short = ALIASES.get(base, base)
    if not cands:
        raise KeyError(f"{source}: variable {spec!r} not found; available: "
                       f"{sorted(map(str, ds.data_vars))}")
    da = ds[cands[0]]
    if level is not None:
        if "level" not in da.dims:
            raise KeyError(f"{source}: variable {cands[0]!r} has no level dim to select "
                           f"{level:g} hPa from (dims {da.dims})")
        levels = da["level"].values
        if not np.any(np.isclose(levels, level)):
            raise KeyError(f"{source}: level {level:g} not in {cands[0]!r} levels "
                           f"{levels.tolist()}")
        da = da.sel(level=levels[np.isclose(levels, level)][0]).drop_vars("level")
    da.attrs["_short"] = short
    return da


def convert_units(da: xr.DataArray, target: str, source: str, assume: str | None = None
                  ) -> xr.DataArray:
    """Bring ``da`` to canonical units for output name ``target`` (``height`` from geopotential
    divides by g); raises with the file, variable and units when they are unknown. ``assume``:
    the units to use when the file gives none (it never overrides units that are present)."""
    short = da.attrs.get("_short", da.name)
    units = str(da.attrs.get("units", "")).strip()
    if not units:
        if assume is None:
            raise ValueError(f"{source}: variable {da.name!r} has no units attribute; pass "
                             f"units={{{target!r}: ...}} to state them")
        units = assume
    table = UNITS.get(short)
    if table is None:
        raise ValueError(f"{source}: no unit rules for variable {da.name!r} ({short})")
    if units not in table:
        raise ValueError(f"{source}: variable {da.name!r} has units {units!r}; expected one of "
                         f"{sorted(table)}")
    canon, factor = table[units]
    out = da * factor if factor != 1.0 else da.copy()
    if target == "height" and canon == "m2 s-2":
        out = out / GRAVITY
        canon = "m"
    attrs = dict(VARIABLE_ATTRS.get(target, {}))
    attrs.setdefault("units", canon)
    attrs["source_variable"] = str(da.name)
    out.attrs = attrs
    return out.rename(target)


def open_reanalysis(paths: str | os.PathLike | Sequence[str | os.PathLike],
                    variables: Mapping[str, str], grid: Grid | None = None,
                    method: str = "bilinear", units: Mapping[str, str] | None = None
                    ) -> xr.Dataset:
    """Read WeatherBench/WB2-style ERA5 files into the canonical form, lazily.

    ``paths``: one store/file, a directory of netCDF files, or a list; each variable is
    looked up in every file. ``variables``: output name -> spec, e.g. ``{"height": "z500",
    "u": "u@500", "t2m": "2m_temperature"}`` (a spec is a name, a WB2 long name, a name with
    a level suffix, or ``name@level``). Geopotential becomes height (m) for output ``height``.
    ``grid``: regrid to it with ``method`` (``"bilinear"`` or ``"conservative"``).
    ``units``: output name -> units for files that carry no units attribute (WeatherBench's
    2 m temperature files, for one). A variable found in several files is concatenated along
    ``time``; repeated times are an error (they name the files).
    """
    units = dict(units or {})
    if isinstance(paths, str | os.PathLike):
        p = Path(paths)
        if p.is_dir() and p.suffix != ".zarr" and not (p / "zarr.json").exists() \
                and not (p / ".zgroup").exists():
            paths = sorted(p.glob("*.nc"))
            if not paths:
                raise FileNotFoundError(f"{p}: directory has no .nc files")
        else:
            paths = [p]
    opened = [(str(p), to_canonical(_open_any(Path(p)), str(p))) for p in paths]
    out = {}
    for target, spec in variables.items():
        found = []
        for src, ds in opened:
            try:
                found.append((src, _select(ds, spec, src)))
            except KeyError:
                continue
        if not found:
            raise KeyError(f"variable {spec!r} (for {target!r}) not found in "
                           f"{[s for s, _ in opened]}")
        if len(found) > 1 and "time" in found[0][1].dims:
            da = xr.concat([d for _, d in found], dim="time").sortby("time")
            tv = da["time"].values
            if len(np.unique(tv)) != len(tv):
                raise ValueError(f"variable {spec!r}: the files {[s for s, _ in found]} repeat "
                                 "the same times; open them one at a time")
        else:
            da = found[0][1]
        out[target] = convert_units(da, target, found[0][0], units.get(target))
    ds = xr.Dataset(out)
    if grid is not None:
        ds = regrid(ds, grid, method)
    return ds


# --------------------------------------------------------------------------- regridding


def bilinear_weights(src: np.ndarray, dst: np.ndarray, periodic: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``i0, i1`` and weight ``w1`` of linear interpolation from ascending ``src`` to
    ``dst`` (``x = (1 - w1) x[i0] + w1 x[i1]``). ``periodic``: the period (longitude, 360),
    wrapping across the seam; otherwise values beyond the ends are held constant."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = len(src)
    if periodic is not None:
        ext = np.concatenate([src, [src[0] + periodic]])
        d = np.mod(dst - src[0], periodic) + src[0]
        j = np.clip(np.searchsorted(ext, d, side="right") - 1, 0, n - 1)
        w = (d - ext[j]) / (ext[j + 1] - ext[j])
        return j, (j + 1) % n, w
    j = np.clip(np.searchsorted(src, dst, side="right") - 1, 0, n - 2)
    w = np.clip((dst - src[j]) / (src[j + 1] - src[j]), 0.0, 1.0)
    return j, j + 1, w


def _edges(centres: np.ndarray, lo: float, hi: float) -> np.ndarray:
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[lo], mid, [hi]])


def conservative_matrix(src_edges: np.ndarray, dst_edges: np.ndarray, measure) -> np.ndarray:
    """``(n_dst, n_src)`` overlap-measure weights normalised per destination row, for
    intervals given by ascending edges; ``measure(a, b)`` is the size of ``[a, b]`` (e.g.
    ``sin b - sin a`` for latitude bands)."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    w = np.where(hi > lo, measure(lo, hi), 0.0)
    return w / w.sum(1, keepdims=True)


def regrid(ds: xr.Dataset, grid: Grid, method: str = "bilinear") -> xr.Dataset:
    """Regrid a canonical dataset to ``grid`` (cell centres), lazily.

    ``bilinear``: linear in latitude (held constant beyond the outermost source rows) and in
    longitude (periodic). ``conservative``: first-order conservative (area overlaps, source
    cells bounded half-way between centres and by the poles), exact for the global mean.
    """
    lat, lon = ds["lat"].values, ds["lon"].values
    if method == "bilinear":
        i0, i1, wy = bilinear_weights(lat, grid.lat)
        j0, j1, wx = bilinear_weights(lon, grid.lon, periodic=360.0)
        wy_ = xr.DataArray(wy, dims="lat")
        wx_ = xr.DataArray(wx, dims="lon")
        lat0 = ds.isel(lat=xr.DataArray(i0, dims="lat"))
        lat1 = ds.isel(lat=xr.DataArray(i1, dims="lat"))
        y = lat0.drop_vars("lat") * (1 - wy_) + lat1.drop_vars("lat") * wy_
        out = (y.isel(lon=xr.DataArray(j0, dims="lon")).drop_vars("lon") * (1 - wx_)
               + y.isel(lon=xr.DataArray(j1, dims="lon")).drop_vars("lon") * wx_)
    elif method == "conservative":
        ly = conservative_matrix(np.deg2rad(_edges(lat, -90.0, 90.0)),
                                 np.deg2rad(grid.lat_bounds),
                                 lambda a, b: np.sin(b) - np.sin(a))
        dlon = np.median(np.diff(lon))
        src_e = np.concatenate([lon - dlon / 2, [lon[-1] + dlon / 2]])
        dst_e = np.concatenate([grid.lon - 180.0 / grid.nlon, [grid.lon[-1] + 180.0 / grid.nlon]])
        # periodic: overlap against the source shifted by -360, 0, +360
        lx = sum(conservative_matrix_raw(src_e + s, dst_e) for s in (-360.0, 0.0, 360.0))
        lx = lx / lx.sum(1, keepdims=True)
        my = xr.DataArray(ly, dims=("lat_new", "lat"))
        mx = xr.DataArray(lx, dims=("lon_new", "lon"))

        def apply(da: xr.DataArray) -> xr.DataArray:
            r = xr.dot(xr.dot(da.drop_vars(["lat", "lon"]), my, dim="lat"), mx, dim="lon")
            return r.rename({"lat_new": "lat", "lon_new": "lon"}).transpose(*da.dims)

        out = ds.map(apply)
    else:
        raise ValueError(f"unknown regridding method {method!r}; use 'bilinear' or "
                         "'conservative'")
    out = out.assign_coords(lat=("lat", grid.lat, ds["lat"].attrs),
                            lon=("lon", grid.lon, ds["lon"].attrs))
    for k in ds.data_vars:
        out[k].attrs = ds[k].attrs
    out.attrs = {**ds.attrs, "regridding": f"{method} to {grid}"}
    return out


def conservative_matrix_raw(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Unnormalised overlap lengths ``(n_dst, n_src)`` of 1-D intervals."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    return np.clip(hi - lo, 0.0, None)


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
    """Write ``ds`` to netCDF4 atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nc.tmp")
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="netcdf4")
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


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    """``state``: ``(batch, window, var, lat, lon)`` normalised float32; ``times``: per
    sample, the ``window`` cftime times; ``index``: the first time index of each sample."""

    state: Tensor
    times: list[list[cftime.datetime]]
    index: np.ndarray


class StateBatches:
    """Seeded random batches of normalised windows from a (large) canonical store.

    ``source``: a path or an opened dataset (lazy, dask). Samples are windows of ``window``
    consecutive times starting at indices ``start .. stop - window`` (``time_range`` selects
    a part, e.g. the training years). Each epoch draws a permutation of the start indices
    from ``numpy_generator(seed, "batches", epoch)``, keeps every ``world_size``-th from
    ``rank`` (disjoint shards), and yields ``len(self)`` batches; only the times a batch needs
    are read (one dask computation per batch), never the whole store.
    """

    def __init__(self, source: str | os.PathLike | xr.Dataset, variables: Sequence[str],
                 climatology: Climatology, *, batch_size: int, window: int = 1, seed: int = 0,
                 rank: int = 0, world_size: int = 1, time_range: tuple[int, int] | None = None,
                 drop_last: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size = {world_size})")
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size = {batch_size} and window = {window} must be >= 1")
        self.ds = open_dataset(source) if not isinstance(source, xr.Dataset) else source
        missing = [v for v in variables if v not in self.ds]
        if missing:
            raise KeyError(f"variables {missing} not in the store (has "
                           f"{sorted(map(str, self.ds.data_vars))})")
        self.variables = list(variables)
        self.climatology = climatology
        self.batch_size, self.window, self.seed = batch_size, window, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        start, stop = time_range or (0, self.ds.sizes["time"])
        if stop - start < window:
            raise ValueError(f"time range {start}..{stop} is shorter than the window {window}")
        self.starts = np.arange(start, stop - window + 1)
        self.epoch = 0

    def shard(self, epoch: int) -> np.ndarray:
        """Start indices of this rank for ``epoch`` (a seeded permutation, then strided)."""
        perm = numpy_generator(self.seed, "batches", epoch).permutation(self.starts)
        n = len(perm) // self.world_size * self.world_size  # equal shards
        return perm[:n][self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.starts) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def read(self, starts: np.ndarray) -> Batch:
        """The batch of windows starting at ``starts`` (one lazy read of the needed times)."""
        idx = (np.asarray(starts)[:, None] + np.arange(self.window)[None]).ravel()
        uniq, inv = np.unique(idx, return_inverse=True)
        sub = self.ds[self.variables].isel(time=uniq).compute()
        arr = np.stack([sub[v].values for v in self.variables], 1)  # (u, var, lat, lon)
        x = torch.from_numpy(arr[inv].astype(np.float32))
        x = x.reshape(len(starts), self.window, *x.shape[1:])
        x = self.climatology.normalise(x, self.variables, dim=2)
        tv = sub["time"].values
        times = [list(tv[inv.reshape(len(starts), self.window)[b]]) for b in range(len(starts))]
        return Batch(x, times, np.asarray(starts))

    def __iter__(self) -> Iterator[Batch]:
        order = self.shard(self.epoch)
        self.epoch += 1
        for b in range(len(self)):
            sel = order[b * self.batch_size:(b + 1) * self.batch_size]
            if len(sel) == 0:
                break
            yield self.read(sel)
