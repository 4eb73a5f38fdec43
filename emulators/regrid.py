"""Regridding of canonical datasets between latitude-longitude grids.

:func:`regrid` maps a canonical dataset to the cell centres of a
:class:`~diffda.core.grid.Grid`, lazily: ``bilinear`` (:func:`bilinear_weights`, periodic in
longitude) or first-order ``conservative`` (:func:`conservative_matrix`, exact for the
global mean).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from diffda.core.grid import Grid


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
