"""Scores of an ensemble against the truth: pure functions on tensors.

Shapes: an ensemble is ``(member, var, lat, lon)``, the truth ``(var, lat, lon)``, on a
WeatherBench cell-centre grid (latitude ascending). Spatial means are area-weighted with
:meth:`diffda.core.grid.Grid.area_weights` (exact band areas, proportional to cos(lat)
as the grid is refined; WeatherBench2's latitude weighting). Every score is returned per
variable, ``(var,)``, in the physical units of the inputs.

- :func:`rmse`: latitude-weighted RMSE of the ensemble mean,
  ``sqrt(sum_ij w_i (mean_m x_mij - y_ij)^2 / sum_ij w_i)``.
- :func:`spread`: ``sqrt(sum_ij w_i var_m(x_mij) / sum_ij w_i)`` with the unbiased
  (``1 / (M - 1)``) ensemble variance (0 for one member). For a perfectly reliable ensemble
  of ``M`` members, ``E[rmse^2] = (1 + 1/M) E[spread^2]`` (Fortin et al. 2014), so the
  spread-skill ratio ``sqrt((M + 1) / M) spread / rmse`` is 1.
- :func:`crps`: the area-weighted mean of the pointwise ensemble CRPS, fair by default
  (see :func:`crps_ensemble` for the derivation).
- :func:`masked_rmse`: the RMSE of the ensemble mean over a subset of grid cells (station /
  non-station cells, :func:`station_cell_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffda.core.grid import Grid, coarsen_to
from diffda.cycler.analysis.forecast_error import innovation_moments, pair_moments
from torch import Tensor

SCORES: tuple[str, ...] = ("rmse", "spread", "crps", "rmse_station", "rmse_nonstation")


def _weights(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Area weights ``(lat, lon)`` for the last two dims of ``x``, zero outside ``mask``."""
    nlat, nlon = x.shape[-2:]
    w = torch.as_tensor(Grid(nlat, nlon).area_weights(), dtype=x.dtype, device=x.device)
    w = w[:, None].expand(nlat, nlon)
    if mask is not None:
        w = w * mask.to(device=x.device, dtype=x.dtype)
    return w


def weighted_spatial_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Area-weighted mean over the last two dims ``(..., lat, lon) -> (...)``, restricted to
    the cells where ``mask`` ``(lat, lon)`` is true (NaN if the mask is empty)."""
    w = _weights(x, mask)
    total = w.sum()
    if float(total) == 0.0:
        return torch.full(x.shape[:-2], float("nan"), dtype=x.dtype, device=x.device)
    return (x * w).sum(dim=(-2, -1)) / total


def _check(ensemble: Tensor, truth: Tensor) -> None:
    if ensemble.dim() != 4 or tuple(ensemble.shape[1:]) != tuple(truth.shape):
        raise ValueError(
            f"ensemble must be (member, var, lat, lon) matching truth (var, lat, lon); got "
            f"{tuple(ensemble.shape)} and {tuple(truth.shape)}"
        )


def rmse(ensemble: Tensor, truth: Tensor) -> Tensor:
    """Latitude-weighted RMSE of the ensemble mean, ``(var,)``."""
    _check(ensemble, truth)
    return weighted_spatial_mean((ensemble.mean(0) - truth) ** 2).sqrt()


def masked_rmse(ensemble: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """RMSE of the ensemble mean over the cells where ``mask`` ``(lat, lon)`` is true,
    area-weighted, ``(var,)`` (NaN for an empty mask)."""
    _check(ensemble, truth)
    return weighted_spatial_mean((ensemble.mean(0) - truth) ** 2, mask).sqrt()


def spread(ensemble: Tensor) -> Tensor:
    """``sqrt`` of the area-weighted mean of the unbiased ensemble variance, ``(var,)``;
    zero for a one-member ensemble."""
    if ensemble.shape[0] < 2:
        return torch.zeros(ensemble.shape[1], dtype=ensemble.dtype, device=ensemble.device)
    return weighted_spatial_mean(ensemble.var(0, unbiased=True)).sqrt()


def crps_ensemble(ensemble: Tensor, truth: Tensor, fair: bool = True) -> Tensor:
    """Pointwise CRPS of an ensemble, ``(member, ...)`` and ``(...)`` -> ``(...)``.

    Derivation. For a predictive distribution ``F`` and outcome ``y``,
    ``CRPS(F, y) = int (F(z) - 1[z >= y])^2 dz = E|X - y| - 1/2 E|X - X'|`` with ``X, X'``
    independent draws of ``F`` (Gneiting & Raftery 2007, Eq. 21). For an ensemble
    ``x_1..x_M``:

    - *standard* (``fair=False``): ``F`` is the empirical distribution of the members, so
      ``CRPS = 1/M sum_i |x_i - y| - 1/(2 M^2) sum_{i,j} |x_i - x_j|``;
    - *fair* (``fair=True``, Ferro 2014): ``E|X - X'|`` is estimated without bias from the
      ``M (M - 1)`` pairs ``i != j``:
      ``CRPS = 1/M sum_i |x_i - y| - 1/(2 M (M - 1)) sum_{i != j} |x_i - x_j|``;
      its expectation is the CRPS of the distribution the members are drawn from, whatever
      ``M``, so ensembles of different sizes are scored alike.

    With one member both reduce to the absolute error ``|x_1 - y|`` (the fair pair term has
    no pairs and is taken as 0). The pair sum is computed in ``O(M log M)`` from the sorted
    members: ``sum_{i,j} |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k)``, ``k = 1..M``.
    """
    m = ensemble.shape[0]
    if tuple(ensemble.shape[1:]) != tuple(truth.shape):
        raise ValueError(f"ensemble {tuple(ensemble.shape)} does not match truth "
                         f"{tuple(truth.shape)} after the member dim")
    skill = (ensemble - truth).abs().mean(0)
    if m == 1:
        return skill
    xs, _ = torch.sort(ensemble, dim=0)
    k = torch.arange(1, m + 1, dtype=ensemble.dtype, device=ensemble.device)
    k = k.reshape(m, *[1] * truth.dim())
    pair_sum = 2.0 * ((2.0 * k - m - 1.0) * xs).sum(0)  # sum over all (i, j), i == j adds 0
    denom = 2.0 * m * (m - 1) if fair else 2.0 * m * m
    return skill - pair_sum / denom


def crps(ensemble: Tensor, truth: Tensor, fair: bool = True) -> Tensor:
    """Area-weighted mean of :func:`crps_ensemble`, ``(var,)``."""
    _check(ensemble, truth)
    return weighted_spatial_mean(crps_ensemble(ensemble, truth, fair))


def station_cell_mask(grid: Grid, lat: Sequence[float] | np.ndarray,
                      lon: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(nlat, nlon)`` bool: the grid cells that contain at least one station.

    Cell ``i`` spans latitudes ``lat_bounds[i]..lat_bounds[i + 1]``; cell ``j`` spans
    longitudes ``lon_j - dlon/2 .. lon_j + dlon/2`` (cell centres start at 0)."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64) % 360.0
    i = np.clip(np.floor((lat + 90.0) * grid.nlat / 180.0).astype(int), 0, grid.nlat - 1)
    j = np.floor(lon * grid.nlon / 360.0 + 0.5).astype(int) % grid.nlon
    mask = np.zeros((grid.nlat, grid.nlon), dtype=bool)
    mask[i, j] = True
    return mask


def ensemble_scores(
    ensemble: Tensor, truth: Tensor, variables: Sequence[str], station_mask: np.ndarray,
    fair: bool = True,
) -> dict[str, dict[str, float]]:
    """All :data:`SCORES` per variable: ``{var: {score: value}}`` (plain floats).

    ``station_mask``: :func:`station_cell_mask` on the grid of ``truth``. Computed in float64.
    """
    _check(ensemble, truth)
    if len(variables) != truth.shape[0]:
        raise ValueError(f"{len(variables)} variable names for {truth.shape[0]} variables")
    e, t = ensemble.double(), truth.double()
    mask = torch.as_tensor(station_mask, dtype=torch.bool)
    table = {
        "rmse": rmse(e, t),
        "spread": spread(e),
        "crps": crps(e, t, fair),
        "rmse_station": masked_rmse(e, t, mask),
        "rmse_nonstation": masked_rmse(e, t, ~mask),
    }
    return {v: {name: float(val[k]) for name, val in table.items()}
            for k, v in enumerate(variables)}


def zonal_power_spectrum(x: np.ndarray, area_weights: np.ndarray) -> np.ndarray:
    """Zonal power spectrum ``(..., lat, lon) -> (nlon // 2 + 1,)``: ``|FFT_lon(x)_k|^2 /
    nlon^2``, one-sided (doubled except at ``k = 0`` and Nyquist), averaged over the
    leading dims and over latitude with ``area_weights`` ``(lat,)``. Parseval: its sum over
    ``k`` is the area-weighted mean of ``x^2``."""
    nlon = x.shape[-1]
    p = np.abs(np.fft.rfft(x, axis=-1)) ** 2 / nlon**2
    p[..., 1:(nlon + 1) // 2] *= 2.0
    p = p.reshape(-1, x.shape[-2], p.shape[-1]).mean(axis=0)  # (lat, k)
    w = np.asarray(area_weights, dtype=np.float64)
    return ((w / w.sum())[:, None] * p).sum(axis=0)


# ------------------------------------------------ scores of one analysis against its truth


def spread_skill_ratio(rmse_value: float, spread_value: float, members: int) -> float:
    """``sqrt((M + 1) / M) spread / rmse``: 1 for a reliable ``M``-member ensemble, since
    ``E[rmse^2] = (1 + 1/M) E[spread^2]`` (Fortin et al. 2014). NaN if ``rmse = 0``."""
    if rmse_value == 0.0:
        return math.nan
    return math.sqrt((members + 1) / members) * spread_value / rmse_value


def member_rmse(ensemble: Tensor, truth: Tensor) -> Tensor:
    """Latitude-weighted RMSE of each member, ``(member, var)``."""
    return torch.stack([rmse(ensemble[m:m + 1], truth) for m in range(ensemble.shape[0])])


def score(ensemble: Tensor, truth: Tensor, variables: Sequence[str],
          station_mask: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Per variable ``{rmse, spread, spread_skill, crps, rmse_member_mean,
    rmse_member_std[, rmse_station, rmse_nonstation]}``, physical units, in float64.

    ``ensemble``: ``(member, var, lat, lon)``; ``truth``: ``(var, lat, lon)``."""
    e, t = ensemble.double(), truth.double()
    m = e.shape[0]
    table = {"rmse": rmse(e, t), "spread": spread(e), "crps": crps(e, t)}
    per_member = member_rmse(e, t)
    table["rmse_member_mean"] = per_member.mean(0)
    table["rmse_member_std"] = (per_member.std(0) if m > 1 else torch.zeros(len(variables)))
    if station_mask is not None:
        mask = torch.as_tensor(station_mask, dtype=torch.bool)
        table["rmse_station"] = masked_rmse(e, t, mask)
        table["rmse_nonstation"] = masked_rmse(e, t, ~mask)
    out: dict[str, dict[str, float]] = {}
    for k, v in enumerate(variables):
        row = {name: float(val[k]) for name, val in table.items()}
        row["spread_skill"] = spread_skill_ratio(row["rmse"], row["spread"], m)
        out[v] = row
    return out


def unresolved_rmse(truth: Tensor, lr_grid: Grid) -> Tensor:
    """``(var,)``: latitude-weighted RMS of the part of ``truth`` ``(var, lat, lon)`` at
    zonal wavenumbers ``k >= lr_grid.nlon // 2`` (the low-resolution grid's Nyquist and
    beyond), which a field on ``lr_grid`` cannot hold."""
    k_cut = lr_grid.nlon // 2
    if k_cut > truth.shape[-1] // 2:
        raise ValueError(f"low-resolution grid {lr_grid} is not coarser in longitude than "
                         f"the truth's {truth.shape[-1]} points")
    truth = truth.double()
    return rmse((truth - zonal_high_pass(truth, k_cut))[None], truth)


def zonal_high_pass(x: Tensor, k_min: int) -> Tensor:
    """The part of ``x`` ``(..., lon)`` at zonal wavenumbers ``k >= k_min``."""
    spec = torch.fft.rfft(x, dim=-1)
    spec[..., :k_min] = 0
    return torch.fft.irfft(spec, n=x.shape[-1], dim=-1)


def lr_misfit_rmse(ensemble: Tensor, lr: Tensor, lr_grid: Grid) -> Tensor:
    """``(var,)``: latitude-weighted RMS on ``lr_grid`` of the ensemble mean's coarsened
    field minus the low-resolution field ``lr`` ``(var, lr_lat, lr_lon)`` (physical units):
    how closely the estimate fits the observation it was conditioned on, to set against
    ``sqrt(Sigma_y)``. An error that the misfit does not explain lies in the scales the
    observation cannot see."""
    coarse = coarsen_to(ensemble.mean(0).to(lr.dtype), lr_grid)
    return rmse(coarse[None], lr)


def zonal_spectra(fields: Tensor, grid: Grid) -> np.ndarray:
    """Zonal power spectra ``(var, nlon // 2 + 1)`` of ``(sample, var, lat, lon)`` fields,
    averaged over samples and (area-weighted) latitude (:func:`zonal_power_spectrum`); the
    zonal mean is not removed: ``k = 0`` holds its power."""
    x = fields.double().numpy()
    w = grid.area_weights()
    return np.stack([zonal_power_spectrum(x[:, v], w) for v in range(x.shape[1])])


# ------------------------------------------------------------------ calibration diagnostics


def rank_histogram(ensemble: Tensor, truth: Tensor, mask: Tensor | None = None) -> Tensor:
    """Counts of the truth's rank among the ``M`` members, ``(var, M + 1)``: rank ``r``
    means ``r`` members lie below the truth (a tie counts as not below; continuous fields
    have none). Over the grid cells of ``mask`` (``(lat, lon)`` bool; default all). A
    reliable ensemble has a flat histogram (Hamill 2001); a U shape means too little
    spread, a dome too much."""
    _check(ensemble, truth)
    rank = (ensemble < truth).sum(0)  # (var, lat, lon)
    if mask is not None:
        rank = rank[:, mask]
    flat = rank.reshape(rank.shape[0], -1)
    m = ensemble.shape[0]
    return torch.stack([torch.bincount(r, minlength=m + 1) for r in flat])


def station_innovations(
    y: Tensor, error_var: Tensor, variable_index: Tensor, variables: Sequence[str],
    analysis: Tensor, forecast: Tensor | None = None, forecast_var: Tensor | None = None,
    climate: tuple[Tensor, Tensor] | None = None,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Innovation statistics at the stations, per variable (physical units), for the
    Desroziers et al. (2005) consistency checks.

    ``y``: ``(n_obs,)`` observations; ``error_var``: their assumed error variance ``R``;
    ``analysis``, ``forecast``: the ensemble means at the observations, ``(n_obs,)``;
    ``forecast_var``: the forecast ensemble's variance there (``H B H^T`` of the ensemble).
    With ``d_ob = y - H x_b`` and ``d_oa = y - H x_a``: ``E[d_ob^2] = H B H^T + R`` and
    ``E[d_oa d_ob] = R`` when the error model is right. Returns per variable ``n``,
    ``oma_mean``, ``oma_var`` and, with a forecast, ``omf_mean``, ``omf_var``,
    ``r_assumed`` (mean ``R``), ``desroziers_r`` (mean ``d_oa d_ob``), ``hbh_ensemble``.
    ``climate``: the climatological mean and std at the observations; with a forecast it
    adds ``forecast_moments``, the sums from which the forecast's error model is fitted
    (:func:`~diffda.cycler.analysis.forecast_error.innovation_moments`, normalised units),
    and with the observations' ``positions`` (lat, lon in degrees) ``forecast_pairs``, the
    sums by station distance from which the forecast error's spatial correlation is
    measured (:func:`~diffda.cycler.analysis.forecast_error.pair_moments`)."""
    d_oa = (y - analysis).double()
    d_ob = None if forecast is None else (y - forecast).double()
    out: dict[str, dict[str, Any]] = {}
    for k, v in enumerate(variables):
        sel = variable_index == k
        if not bool(sel.any()):
            continue
        row = {"n": int(sel.sum()), "oma_mean": float(d_oa[sel].mean()),
               "oma_var": float(d_oa[sel].square().mean()),
               "r_assumed": float(error_var[sel].double().mean())}
        if d_ob is not None:
            row.update({"omf_mean": float(d_ob[sel].mean()),
                        "omf_var": float(d_ob[sel].square().mean()),
                        "desroziers_r": float((d_oa[sel] * d_ob[sel]).mean())})
        if forecast_var is not None:
            row["hbh_ensemble"] = float(forecast_var[sel].double().mean())
        if climate is not None and forecast is not None:
            mu, std = (c[sel].double() for c in climate)
            row["forecast_moments"] = innovation_moments(
                (y[sel].double() - mu) / std, (forecast[sel].double() - mu) / std,
                (error_var[sel].double() / std.square()), 0.0).as_dict()
            if positions is not None:
                where = sel.numpy()
                row["forecast_pairs"] = pair_moments(
                    (y[sel].double() - mu) / std, (forecast[sel].double() - mu) / std, 0.0,
                    positions[0][where], positions[1][where]).as_dict()
        out[v] = row
    return out


def calibration(analysis: Tensor, truth: Tensor, variables: Sequence[str],
                station_mask: np.ndarray) -> dict[str, dict[str, dict[str, list[int]]]]:
    """``{"rank_histogram": {var: {"grid": counts, "station": counts}}}`` of an ensemble of
    two or more members (:func:`rank_histogram` over all cells and over station cells);
    empty for one member."""
    if analysis.shape[0] < 2:
        return {}
    mask = torch.as_tensor(station_mask, dtype=torch.bool)
    grid, station = rank_histogram(analysis, truth), rank_histogram(analysis, truth, mask)
    return {"rank_histogram": {v: {"grid": grid[k].tolist(), "station": station[k].tolist()}
                               for k, v in enumerate(variables)}}
