"""A localized, inflated stochastic EnKF for gridded states (the classical baseline).

The analysis is the perturbed-observation EnKF of :func:`diffda.cycler.analysis.enkf.
stochastic_enkf_analysis` (Burgers et al. 1998) with two standard remedies for small
ensembles:

- *multiplicative prior inflation* (Anderson & Anderson 1999): ``x_m <- x_mean + alpha
  (x_m - x_mean)``, ``alpha >= 1``, before the update (:func:`inflate`);
- *covariance localization* (Houtekamer & Mitchell 2001): the gain is built from
  Schur (elementwise) products with a compactly supported correlation of the great-circle
  distance, the Gaspari & Cohn (1999) fifth-order function (:func:`gaspari_cohn`)::

      K = (rho_xy o P H^T) (rho_yy o H P H^T + R)^(-1),
      x_m^a = x_m + K (y + R^(1/2) z_m - H x_m),   z_m ~ N(0, I),

  with ``rho_xy`` ``(n, p)`` between state points and observation locations and ``rho_yy``
  ``(p, p)`` between observations. Without localization (``rho = 1``) and with ``alpha = 1``
  this is exactly :func:`~diffda.cycler.analysis.enkf.stochastic_enkf_analysis`.

States are ``(member, var, lat, lon)`` on the emulator grid, flattened to ``(member, n)``
with ``n = var * lat * lon``; every variable at a grid point shares that point's taper, so
cross-variable covariances at one place are kept. Observations are point values
``H x`` given as the ensemble's images ``hx`` ``(member, p)`` (any, e.g. bicubic, operator),
located at ``(obs_lat, obs_lon)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffda.core.config import require
from diffda.core.grid import Grid
from torch import Tensor

EARTH_RADIUS_KM = 6371.0


def gaspari_cohn(r: Tensor) -> Tensor:
    """Gaspari & Cohn (1999) Eq. 4.10, the compactly supported fifth-order piecewise
    rational correlation, of ``r = d / c`` (``c`` the half-width; zero for ``r >= 2``)::

        1 - 5/3 r^2 + 5/8 r^3 + 1/2 r^4 - 1/4 r^5                   0 <= r <= 1
        4 - 5 r + 5/3 r^2 + 5/8 r^3 - 1/2 r^4 + 1/12 r^5 - 2/(3r)   1 <  r <  2
    """
    r = r.abs()
    inner = 1 - 5 / 3 * r**2 + 5 / 8 * r**3 + 0.5 * r**4 - 0.25 * r**5
    rs = r.clamp_min(1e-12)
    outer = (4 - 5 * rs + 5 / 3 * rs**2 + 5 / 8 * rs**3 - 0.5 * rs**4 + rs**5 / 12
             - 2 / (3 * rs))
    return torch.where(r <= 1, inner, torch.where(r < 2, outer, torch.zeros_like(r)))


def great_circle_km(lat1: Tensor, lon1: Tensor, lat2: Tensor, lon2: Tensor) -> Tensor:
    """Pairwise great-circle distances ``(n1, n2)`` in km between points given in degrees
    (haversine formula, Earth radius :data:`EARTH_RADIUS_KM`)."""
    p1, p2 = torch.deg2rad(lat1)[:, None], torch.deg2rad(lat2)[None, :]
    dlat = p2 - p1
    dlon = torch.deg2rad(lon2)[None, :] - torch.deg2rad(lon1)[:, None]
    a = torch.sin(dlat / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(a.clamp(0, 1).sqrt())


def localization(
    grid: Grid, n_var: int, obs_lat: Tensor, obs_lon: Tensor, radius_km: float | None,
) -> tuple[Tensor, Tensor]:
    """``rho_xy`` ``(n_var * nlat * nlon, p)`` and ``rho_yy`` ``(p, p)`` for a state
    flattened as ``(var, lat, lon)``; ``radius_km`` is the half-width ``c`` of
    :func:`gaspari_cohn` (zero beyond ``2 c``); ``None``: no localization (all ones)."""
    dtype = obs_lat.dtype
    la, lo = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    glat = torch.as_tensor(la.ravel(), dtype=dtype)
    glon = torch.as_tensor(lo.ravel(), dtype=dtype)
    p = obs_lat.numel()
    if radius_km is None:
        return (torch.ones(n_var * glat.numel(), p, dtype=dtype), torch.ones(p, p, dtype=dtype))
    rho_grid = gaspari_cohn(great_circle_km(glat, glon, obs_lat, obs_lon) / radius_km)
    rho_yy = gaspari_cohn(great_circle_km(obs_lat, obs_lon, obs_lat, obs_lon) / radius_km)
    return rho_grid.repeat(n_var, 1), rho_yy


def inflate(ensemble: Tensor, factor: Tensor | float) -> Tensor:
    """Multiplicative inflation ``mean + factor (x_m - mean)`` over dim 0, any shape (a tensor
    ``factor`` broadcasts: one per element, e.g. :func:`rtps_factor`)."""
    mean = ensemble.mean(0, keepdim=True)
    return mean + factor * (ensemble - mean)


def rtps_factor(analysis: Tensor, forecast: Tensor, alpha: float) -> Tensor:
    """The factor ``1 + alpha (sigma_f - sigma_a) / sigma_a`` of relaxation to prior spread
    (RTPS; Whitaker and Hamill 2012, MWR 140, 3078) per element, over the members (dim 0,
    kept with size 1): anomalies times it have the spread ``alpha sigma_f + (1 - alpha)
    sigma_a``. ``forecast`` has the analysis's shape but for its member count; where the
    analysis has no spread the factor is 1."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"RTPS alpha = {alpha}: must be in [0, 1]")
    sigma_a = analysis.std(0, keepdim=True)
    sigma_f = forecast.std(0, keepdim=True).to(sigma_a.dtype)
    tiny = torch.finfo(sigma_a.dtype).tiny
    return torch.where(sigma_a > 0, 1 + alpha * (sigma_f - sigma_a) / sigma_a.clamp_min(tiny),
                       torch.ones_like(sigma_a))


def localized_enkf_analysis(
    ensemble: Tensor, hx: Tensor, y: Tensor, r: Tensor | float, perturbations: Tensor,
    rho_xy: Tensor, rho_yy: Tensor,
) -> Tensor:
    """The localized stochastic EnKF update (module docstring), ``(M, n) -> (M, n)``.

    ensemble: ``(M, n)``; hx: ``(M, p)`` images ``H x_m``; y: ``(p,)``; r: scalar or
    ``(p,)`` observation-error variances; perturbations: ``(M, p)`` standard normals from
    the caller's generators; rho_xy ``(n, p)``, rho_yy ``(p, p)`` localization tapers.
    """
    m = ensemble.shape[0]
    if m < 2:
        raise ValueError(f"the EnKF needs at least 2 members, got {m}")
    p = y.shape[0]
    if hx.shape != (m, p) or perturbations.shape != (m, p):
        raise ValueError(f"hx {tuple(hx.shape)} and perturbations {tuple(perturbations.shape)} "
                         f"must be (members={m}, n_obs={p})")
    r = torch.as_tensor(r, dtype=ensemble.dtype).expand(p)
    X = ensemble - ensemble.mean(0)                        # (M, n) anomalies
    HX = hx - hx.mean(0)                                   # (M, p)
    PHt = rho_xy * (X.T @ HX) / (m - 1)                    # (n, p) localized P H^T
    S = rho_yy * (HX.T @ HX) / (m - 1) + torch.diag(r)     # (p, p) localized H P H^T + R
    innovations = y + r.sqrt() * perturbations - hx        # (M, p)
    return ensemble + torch.linalg.solve(S, innovations.T).T @ PHt.T


@dataclass(frozen=True, kw_only=True)
class LocalizedEnKF:
    """The localized, inflated stochastic EnKF on one grid (an :class:`~diffda.cycler.
    protocols.Analysis` over ensembles).

    ``radius_km``: Gaspari-Cohn half-width ``c`` (the taper vanishes at ``2 c``), ``None``
    for no localization; ``inflation``: the multiplicative prior inflation ``alpha``.
    """

    grid: Grid
    radius_km: float | None = 2000.0
    inflation: float = 1.1

    def __post_init__(self) -> None:
        require(self.radius_km is None or self.radius_km > 0, "enkf.radius_km",
                self.radius_km, "must be positive")
        require(self.inflation >= 1.0, "enkf.inflation", self.inflation, "must be >= 1")

    def analyse(
        self, prior: Tensor, observations: Sequence[PointObservations],
        generators: Sequence[torch.Generator],
    ) -> Tensor:
        """``prior`` ``(M, var, lat, lon)`` -> analysis of the same shape. Each set of
        observations is assimilated in turn (serially, with its own perturbations drawn
        member by member from ``generators``)."""
        if prior.dim() != 4 or tuple(prior.shape[-2:]) != (self.grid.nlat, self.grid.nlon):
            raise ValueError(f"EnKF prior must be (member, var, {self.grid.nlat}, "
                             f"{self.grid.nlon}), got {tuple(prior.shape)}")
        x = inflate(prior, self.inflation)
        m, shape = x.shape[0], x.shape[1:]
        for obs in observations:
            if obs.y.numel() == 0:
                continue
            hx = obs.operator(x)
            z = torch.stack([torch.randn(obs.y.numel(), generator=g, dtype=x.dtype)
                             for g in generators])
            rho_xy, rho_yy = localization(self.grid, shape[0], obs.lat.to(x.dtype),
                                          obs.lon.to(x.dtype), self.radius_km)
            flat = localized_enkf_analysis(x.reshape(m, -1), hx, obs.y.to(x.dtype),
                                           obs.r.to(x.dtype), z, rho_xy, rho_yy)
            x = flat.reshape(m, *shape)
        return x


@dataclass(frozen=True)
class PointObservations:
    """Point observations for :class:`LocalizedEnKF`: ``operator`` maps ``(M, var, lat, lon)``
    to ``(M, p)``; ``y`` ``(p,)``; ``r`` ``(p,)`` error variances; ``lat``, ``lon`` ``(p,)``
    degrees, the locations used for localization. Same units as the state."""

    operator: Callable[[Tensor], Tensor]
    y: Tensor
    r: Tensor
    lat: Tensor
    lon: Tensor
