"""The forcing of the shallow-water model, as pure functions of (time, point).

:class:`ForcingConfig` parametrises the equilibrium height ``h_eq`` toward which the
free-surface height relaxes (Eq. 3 of :mod:`diffda.emulators.nature.shallow_water`): the
"sun" of :func:`equilibrium_height` (season, time of day, land) with
:func:`solar_declination`, and the orography (:func:`orography`, from the smooth land
fraction). The fields on any grid at cftime times are in
:mod:`diffda.emulators.nature.fields`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

OBLIQUITY_DEG = 23.44
DAYS_PER_YEAR = 365.0  # the nature run's calendar is cftime "noleap"


@dataclass(frozen=True, kw_only=True)
class ForcingConfig:
    """Parameters of the equilibrium height (the "sun") and of orography, see
    :func:`equilibrium_height`. Heights in m, latitudes in degrees."""

    mean_height: float = 6000.0
    jet_drop: float = 1500.0  # equator-to-pole drop of h_eq across each hemisphere's front
    front_lat: float = 45.0  # annual-mean latitude of the fronts (jets)
    front_width: float = 6.0  # width of the tanh fronts, degrees
    front_shift: float = 8.0  # poleward shift of the summer front, degrees at solstice
    seasonal_drop: float = 0.3  # relative change of jet_drop at solstice (weaker in summer)
    land_season: float = 150.0  # land warmer (higher) in summer, colder in winter
    diurnal: float = 40.0  # amplitude of the day-night bulge over ocean
    land_diurnal: float = 2.0  # diurnal amplitude over land = diurnal * (1 + land_diurnal)
    orography_height: float = 1500.0  # orography = orography_height * smooth_land


def solar_declination(day_of_year: Tensor) -> Tensor:
    """Declination in radians for a fractional day of year (0 = Jan 1, 00 UTC), circular
    orbit: ``delta = eps sin(2 pi (d - 79) / 365)`` (equinox on 21 March)."""
    phase = 2 * math.pi * (day_of_year - 79.0) / DAYS_PER_YEAR
    return math.radians(OBLIQUITY_DEG) * torch.sin(phase)


def equilibrium_height(lat_deg: Tensor, lon_deg: Tensor, land: Tensor, day_of_year: Tensor,
                       cfg: ForcingConfig) -> Tensor:
    """Equilibrium free-surface height ``h_eq`` in m.

    ``lat_deg, lon_deg, land``: ``(nlat, nlon)`` (``land`` = :func:`smooth_land` in [0, 1]);
    ``day_of_year``: ``(time,)`` fractional days since Jan 1 00 UTC (UTC time of day in the
    fraction). Returns ``(time, nlat, nlon)``. With ``s = sin(delta) / sin(eps)`` (+1 at the
    northern summer solstice) and hemispheric fronts ``T(x) = (1 + tanh(x / w)) / 2``:

        h_eq = H0 - D_N T(lat - lat_N) - D_S T(-lat - lat_S)          (jets near lat_N, lat_S)
               + A_L land sin(lat) s                                   (land warm in summer)
               + A_d (1 + b land) cos(lat) cos(delta) cos(hour angle)  (day-night bulge)

    ``D_N = D (1 - c s)``, ``lat_N = lat_0 + shift s`` (summer: weaker, poleward), and the
    mirror for the south. The diurnal term has zero daily mean.
    """
    d = day_of_year[:, None, None].to(torch.float64)
    lat = torch.deg2rad(lat_deg.to(torch.float64))[None]
    lon = lon_deg.to(torch.float64)[None]
    land = land.to(torch.float64)[None]
    decl = solar_declination(d)
    s = torch.sin(decl) / math.sin(math.radians(OBLIQUITY_DEG))
    w = math.radians(cfg.front_width)
    lat_n = torch.deg2rad(cfg.front_lat + cfg.front_shift * s)
    lat_s = torch.deg2rad(cfg.front_lat - cfg.front_shift * s)
    drop_n = cfg.jet_drop * (1 - cfg.seasonal_drop * s)
    drop_s = cfg.jet_drop * (1 + cfg.seasonal_drop * s)
    fronts = (drop_n * 0.5 * (1 + torch.tanh((lat - lat_n) / w))
              + drop_s * 0.5 * (1 + torch.tanh((-lat - lat_s) / w)))
    season = cfg.land_season * land * torch.sin(lat) * s
    hour_angle = 2 * math.pi * torch.remainder(d, 1.0) + torch.deg2rad(lon) - math.pi
    diurnal = (cfg.diurnal * (1 + cfg.land_diurnal * land) * torch.cos(lat) * torch.cos(decl)
               * torch.cos(hour_angle))
    return cfg.mean_height - fronts + season + diurnal


def orography(land: Tensor, cfg: ForcingConfig) -> Tensor:
    """Surface height ``h_s = orography_height * land`` in m (smooth, from smooth land)."""
    return cfg.orography_height * land
