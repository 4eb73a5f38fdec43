"""The likelihood terms of an analysis, in the prior's normalised units: one way to build
each, used by the cycle driver and by the single-analysis experiments alike.

- :func:`station_term`: station profiles (points, bicubic), ``Sigma_y`` per observation
  from its error std (or one value for all), weight ``lambda``;
- :func:`low_resolution_term`: the truth coarsened to a low-resolution grid (Eq. 14's
  ``y_LR``), noise-free as in the paper unless a generator is given;
- :func:`forecast_term`: the emulator's forecast on its own grid, one forecast for every
  member or one per member (Eq. 14's forecast term).

Each returns an :class:`~diffda.observations.likelihood.ObservationTerm` (Eq. 13 with its
factor 1/2). Observations are normalised with the prior's per-variable climate mean and
std; a coarse-grid operator has weights summing to 1, so coarsening and normalising
commute and the low-resolution observation is exact in both units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffda.core.grid import Grid, coarsen_to
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations import likelihood
from diffda.observations.likelihood import ErrorModel, ObservationTerm
from diffda.observations.operators import CoarseGridOperator, forecast_grid_operator
from diffda.observations.station_arrays import StationObservations
from torch import Tensor


def station_term(
    prior: DiffusionPrior, stations: StationObservations, error: ErrorModel,
    weight: float = 1.0, *, grid: Grid | None = None, sigma_y: float | None = None,
) -> ObservationTerm:
    """The station term of ``stations`` on ``grid`` (default the prior's).

    ``Sigma_y`` per observation is its error std normalised by the climate std, or
    ``error.sigma_y`` where the file gives none; ``sigma_y``, if given, replaces them all.
    ``Gamma`` is ``error.gamma``; ``weight`` is ``lambda`` of Eq. 14."""
    term = likelihood.station_term(stations, grid or prior.grid, prior.variables,
                                   prior.mean.tolist(), prior.std.tolist(), error, weight)
    if sigma_y is not None:
        term = ObservationTerm(term.operator, term.y, sigma_y, error.gamma, weight,
                               name="stations")
    return term


def low_resolution_term(
    prior: DiffusionPrior, state: Tensor, lr_grid: Grid, error: ErrorModel,
    observed: Sequence[str], noise_generator: torch.Generator | None = None,
) -> tuple[ObservationTerm, Tensor]:
    """The low-resolution term of the physical ``state`` ``(var, lat, lon)``:
    ``y = coarsen(normalise(state))`` for the ``observed`` variables, flattened
    ``(var, lat, lon)``; returns the term and the physical coarse field
    ``(n_observed, lr_lat, lr_lon)``. Noise-free as in the paper's sample-LR, unless
    ``noise_generator`` is given: then ``y`` (and the coarse field) get Gaussian noise of
    the likelihood's own variance ``Sigma_y``, so that the likelihood is the true one and
    the ensemble's spread can be checked against its error."""
    op = CoarseGridOperator(prior.grid, lr_grid, prior.variables, observed)
    z = prior.normalise(state.to(torch.float64))
    with torch.no_grad():
        y = op(z[None])[0]
    coarse = coarsen_to(state, lr_grid)[op.var_index]
    if noise_generator is not None:
        eps = math.sqrt(error.sigma_y) * torch.randn(y.shape, generator=noise_generator,
                                                     dtype=y.dtype)
        y = y + eps
        std = prior.std.to(coarse.dtype)[op.var_index][:, None, None]
        coarse = coarse + std * eps.reshape(coarse.shape).to(coarse.dtype)
    return ObservationTerm(op, y, error.sigma_y, error.gamma, name="low_resolution"), coarse


def forecast_term(
    prior: DiffusionPrior, forecast: Tensor, coarse: Grid, error: ErrorModel,
    weight: float = 1.0,
) -> ObservationTerm:
    """The forecast term: ``-||y_m - C(x0_m)||^2 / (2 (Sigma_y + sigma^2 Gamma))`` with
    ``C`` the coarsening to the emulator grid ``coarse`` and ``y`` the normalised
    ``forecast`` ``(K, var, lat_e, lon_e)`` (physical), ``K = 1`` (one forecast for every
    member) or ``K = member`` (member ``m`` guided by its own forecast)."""
    op = forecast_grid_operator(prior.grid, prior.variables, coarse=coarse)
    y = prior.normalise(forecast.double()).reshape(forecast.shape[0], -1)
    return ObservationTerm(op, y, error.sigma_y, error.gamma, weight, name="forecast")
