"""Reanalysis readers: WeatherBench / WeatherBench2-style ERA5 into the canonical form.

:func:`open_reanalysis` reads one store or one file per variable (netCDF or zarr), latitude
either order, longitude -180..180 or 0..360, pressure levels as a ``level`` dim or in
names like ``z500``; :func:`convert_units` brings each variable to canonical units
(geopotential to height); the result is in the canonical form of
:mod:`diffda.emulators.dataio`, optionally regridded (:func:`diffda.emulators.regrid.regrid`)
to a target :class:`~diffda.core.grid.Grid`, bilinear (periodic in longitude) or
conservative.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from diffda.core.grid import Grid
from diffda.emulators.dataio import VARIABLE_ATTRS, open_store, to_canonical
from diffda.emulators.regrid import regrid

GRAVITY = 9.80665  # m s-2, WMO standard gravity for geopotential -> geopotential height

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
    opened = [(str(p), to_canonical(open_store(Path(p)), str(p))) for p in paths]
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
