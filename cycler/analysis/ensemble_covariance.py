"""The ensemble mode's forecast term with the forecast ensemble's localized covariance.

The diagonal term (:func:`~diffda.cycler.cycling.forecast_fit.ensemble_forecast_term`) gives
each cell of the emulator grid the forecast ensemble's own variance and treats the cells as
independent. Here the forecast error covariance is the ensemble's, localized (a Schur product
with the Gaspari-Cohn taper of the cells' great-circle distance, the same for every pair of
variables, so that the cross-variable covariances of the ensemble are kept) and blended with
its diagonal::

    P = inflation * ((1 - w) L + w I) o (A^T A / (N - 1)),     A the anomalies (N, n)

``w`` (``uncorrelated_share``) keeps part of each cell's variance uncorrelated; it bounds
``P``'s smallest eigenvalue away from zero (Schur product theorem: at least ``w min P_ii``),
so that no direction the 16 members happen not to span is taken as known exactly.

The prior already is the climatology ``N(mu, C)`` (``C`` the climate variance per cell, its
correlations unknown in closed form: diagonal here), so the term is the extended likelihood
whose product with it is the forecast distribution ``N(f_mean, P)`` (the matrix form of the
diagonal term's ``alpha = 1 - P_f / c``, ``beta = alpha P_f``): an equivalent observation
``f'`` of ``x`` with covariance ``R``::

    R^-1 = P^-1 - C^-1 = U diag(q) U^T,      R^-1 (f' - mu) = P^-1 (f_mean - mu)

so in the eigenbasis ``U`` of ``R^-1`` the term is a diagonal one: observations
``U^T (f' - mu) = U^T P^-1 (f_mean - mu) / q`` of the operator ``x -> U^T (H x - mu)`` with
variances ``1 / q``, and Eq. 13's ``sigma^2 Gamma`` added to each as in every other term
(``U`` is orthonormal, so that is ``R + sigma^2 Gamma I``). Directions where the forecast
ensemble is as wide as the climate or wider (``q <= MIN_PRECISION``) carry no information
and are left out, as the diagonal term leaves out cells with ``P_f >= 0.99 c``.

One Cholesky factorisation and one symmetric eigendecomposition of ``n x n`` per cycle (``n``
= variables x emulator cells, 2048 on the default 16x32 grid); each network evaluation then
costs one ``(member, n) x (n, K)`` product. It is exact for the localized covariance; on much
larger grids the same term would be built from a low-rank (modulated-ensemble) factor of
``P`` instead (not built).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from diffda.core.grid import Grid
from diffda.cycler.analysis.letkf import gaspari_cohn, great_circle_km
from torch import Tensor

#: Precision (normalised units) below which a direction of ``R^-1`` carries no information:
#: a variance of 1e6, the diagonal term's variance of an uninformative cell.
MIN_PRECISION = 1e-6
#: The share of the climate variance added to the forecast variance of every cell: far
#: below Eq. 13's ``sigma^2 Gamma`` at the last noise level (``4e-7`` at ``sigma = 0.002``,
#: ``Gamma = 0.1``), it only keeps the factorisation defined where the members agree.
VARIANCE_FLOOR = 1e-8


@lru_cache(maxsize=8)
def cell_localization(nlat: int, nlon: int, radius_km: float) -> Tensor:
    """The Gaspari-Cohn taper ``(cells, cells)`` between the cells of an ``nlat x nlon`` grid
    (half-width ``radius_km``, zero beyond twice that), float64, cells ordered ``(lat,
    lon)``."""
    grid = Grid(nlat, nlon)
    la, lo = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    lat = torch.as_tensor(la.ravel(), dtype=torch.float64)
    lon = torch.as_tensor(lo.ravel(), dtype=torch.float64)
    return gaspari_cohn(great_circle_km(lat, lon, lat, lon) / radius_km)


def localized_covariance(anomalies: Tensor, grid: Grid, radius_km: float,
                         uncorrelated_share: float) -> Tensor:
    """``((1 - w) L + w I) o (A^T A / (N - 1))``, ``(n, n)`` float64, for ``anomalies``
    ``(member, var, lat, lon)`` (members minus their mean) on ``grid``; ``L`` the
    :func:`cell_localization` between cells, the same for every pair of variables."""
    n_member, n_var = anomalies.shape[:2]
    a = anomalies.double().reshape(n_member, -1)
    cov = a.T @ a / (n_member - 1)
    cells = cell_localization(grid.nlat, grid.nlon, float(radius_km))
    taper = (1.0 - uncorrelated_share) * cells.repeat(n_var, n_var)
    taper.diagonal().add_(uncorrelated_share)
    return cov * taper


def extended_likelihood(forecast_mean: Tensor, mu: Tensor, c: Tensor, covariance: Tensor,
                        min_precision: float = MIN_PRECISION) -> tuple[Tensor, Tensor, Tensor]:
    """The extended likelihood of the forecast ``N(forecast_mean, covariance)`` against the
    climatology ``N(mu, diag(c))`` in the eigenbasis of its precision ``R^-1 = P^-1 - C^-1``:
    ``(basis (n, K), y (K,), variance (K,))``, all ``(n,)`` vectors flattened alike, float64
    (module docstring). A variance of ``VARIANCE_FLOOR c`` is added on the diagonal, so that
    cells where every member agrees (no spread) keep a finite precision."""
    floor = VARIANCE_FLOOR * torch.diag(c.double())
    chol, info = torch.linalg.cholesky_ex(covariance.double() + floor)
    if int(info):
        raise ValueError("the forecast covariance is not positive definite (minor "
                         f"{int(info)}): keep a share of it uncorrelated")
    p_inv = torch.cholesky_inverse(chol)
    q, u = torch.linalg.eigh(p_inv - torch.diag(1.0 / c.double()))
    keep = q > min_precision
    q, u = q[keep], u[:, keep]
    d = torch.cholesky_solve((forecast_mean.double() - mu.double())[:, None], chol)[:, 0]
    return u, (u.T @ d) / q, 1.0 / q
