"""Earth-like continents for the default world: a cached land-sea mask and smooth land.

The land-sea mask comes from the ``global-land-mask`` package (a 1 km GLOBE-derived mask)
sampled once at the cell centres of a fine 512x1024 grid (WeatherBench convention, see
:class:`~diffda.core.grid.Grid`) and cached bit-packed in
``emulators/data/landmask_512x1024.npz`` (about 60 kB). From it:

- :func:`land_fraction` gives the exact area fraction of land in each cell of any grid whose
  size divides 512x1024 (area-weighted coarsening, :func:`~diffda.core.grid.coarsen`);
- :func:`smooth_land` gives a smooth land field in [0, 1] at *arbitrary* points: a Gaussian
  kernel average (on the sphere, great-circle distance) of the 64x128 land fraction. Being a
  pure function of (lat, lon), it gives the same value at a point whatever grid asks for it,
  which is what lets the forcing be reproduced exactly on any grid.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from diffda.core.grid import Grid, coarsen

FINE_GRID = Grid(512, 1024)
CACHE_PATH = Path(__file__).parents[1] / "data" / f"landmask_{FINE_GRID.nlat}x{FINE_GRID.nlon}.npz"

#: Grid on which :func:`smooth_land` takes its kernel average (its node values).
SMOOTHING_GRID = Grid(64, 128)
#: Gaussian kernel width of :func:`smooth_land`, great-circle distance in km.
SMOOTHING_KM = 400.0
EARTH_RADIUS_KM = 6371.22


def compute_fine_mask(grid: Grid = FINE_GRID) -> np.ndarray:
    """Sample ``global_land_mask.globe.is_land`` at the cell centres of ``grid``.

    Returns a bool array ``(nlat, nlon)``, latitude ascending, longitude 0..360, True = land.
    """
    from global_land_mask import globe

    lon = np.where(grid.lon >= 180.0, grid.lon - 360.0, grid.lon)  # the package wants -180..180
    lat2, lon2 = np.meshgrid(grid.lat, lon, indexing="ij")
    return np.asarray(globe.is_land(lat2, lon2), dtype=bool)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@lru_cache(maxsize=1)
def fine_land_mask() -> np.ndarray:
    """The cached 512x1024 land mask (bool, latitude ascending, longitude 0..360).

    Built from ``global-land-mask`` on first use and written atomically to
    :data:`CACHE_PATH`; later calls read the cache.
    """
    if CACHE_PATH.exists():
        with np.load(CACHE_PATH) as z:
            shape = tuple(int(s) for s in z["shape"])
            if shape != (FINE_GRID.nlat, FINE_GRID.nlon):
                raise ValueError(f"{CACHE_PATH}: cached mask has shape {shape}, expected "
                                 f"{(FINE_GRID.nlat, FINE_GRID.nlon)}; delete it to rebuild")
            bits = np.unpackbits(z["packed"])[: shape[0] * shape[1]]
            return bits.reshape(shape).astype(bool)
    mask = compute_fine_mask(FINE_GRID)
    _atomic_savez(CACHE_PATH, packed=np.packbits(mask.ravel()), shape=np.array(mask.shape))
    return mask


def land_fraction(grid: Grid) -> np.ndarray:
    """Area fraction of land per cell of ``grid``, shape ``(nlat, nlon)``, float64 in [0, 1].

    Exact area-weighted average of the fine mask; ``grid`` must divide 512x1024 by the same
    integer factor in both directions (e.g. 8x16 ... 512x1024).
    """
    factor = FINE_GRID.nlat // grid.nlat
    if factor * grid.nlat != FINE_GRID.nlat or factor * grid.nlon != FINE_GRID.nlon:
        raise ValueError(
            f"land fraction is available on grids that divide {FINE_GRID} by an integer "
            f"factor (nlon = 2 nlat), not on {grid}"
        )
    mask = torch.from_numpy(fine_land_mask().astype(np.float64))
    return coarsen(mask, factor).numpy()


def land_sea_mask(grid: Grid) -> np.ndarray:
    """Binary land-sea mask on ``grid`` (1 = land: land fraction >= 0.5), float32."""
    return (land_fraction(grid) >= 0.5).astype(np.float32)


def _unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> torch.Tensor:
    lat = torch.as_tensor(np.deg2rad(lat_deg), dtype=torch.float64)
    lon = torch.as_tensor(np.deg2rad(lon_deg), dtype=torch.float64)
    return torch.stack(
        [torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1
    )


@lru_cache(maxsize=1)
def _smoothing_nodes() -> tuple[torch.Tensor, torch.Tensor]:
    g = SMOOTHING_GRID
    lat2, lon2 = np.meshgrid(g.lat, g.lon, indexing="ij")
    xyz = _unit_vectors(lat2.ravel(), lon2.ravel())
    weight = torch.as_tensor(np.repeat(g.area_weights(), g.nlon), dtype=torch.float64)
    frac = torch.as_tensor(land_fraction(g).ravel(), dtype=torch.float64)
    return xyz, torch.stack([weight * frac, weight])


def smooth_land(lat_deg: np.ndarray, lon_deg: np.ndarray, width_km: float = SMOOTHING_KM
                ) -> np.ndarray:
    """Smooth land field in [0, 1] at arbitrary points (any shape, degrees).

    ``L(p) = sum_k a_k f_k K(p, p_k) / sum_k a_k K(p, p_k)`` with the Gaussian kernel of the
    chord distance ``K = exp(-c^2 / (2 s^2))``, ``c^2 = 2 (1 - p . p_k)`` on the unit sphere
    (``c`` equals the great-circle distance to within 1% below 1500 km), ``s = width_km / a``,
    ``f_k`` the 64x128 land fraction and ``a_k`` the cell areas. A pure function of the
    points: grid-independent by construction.
    """
    lat_deg, lon_deg = np.broadcast_arrays(np.asarray(lat_deg, float), np.asarray(lon_deg, float))
    nodes, num_den = _smoothing_nodes()
    pts = _unit_vectors(lat_deg.ravel(), lon_deg.ravel())
    s = width_km / EARTH_RADIUS_KM
    out = torch.empty(pts.shape[0], dtype=torch.float64)
    for start in range(0, pts.shape[0], 2048):
        cosd = pts[start:start + 2048] @ nodes.T
        kern = torch.exp((cosd - 1.0) / (s * s))
        nd = kern @ num_den.T
        out[start:start + 2048] = nd[:, 0] / nd[:, 1]
    return out.reshape(lat_deg.shape).numpy()
