"""Gaussian likelihood terms of the analysis (paper Eqs. 13-14), in normalised units.

One term ``j`` pairs an observation operator ``M_j`` with its observations ``y_j`` and its
error model: the observation-error variance ``Sigma_y`` (a scalar or one value per
observation) and ``Gamma``, the constant stand-in for ``J_M Gamma J_M^T`` of the SDA
approximation (paper Eq. 11, simplified to a constant in Eq. 13). At noise level
``sigma`` and denoised estimate ``x0 = D(x_t; sigma)``:

    log p(y_j | x_t) ~= -||y_j - M_j(x0)||^2 / (2 (Sigma_y + sigma^2 Gamma))      (Eq. 13)

The paper writes Eq. 13 as a proportionality without the 1/2; here the factor 1/2 is
part of the definition, so the term is the exact log density (up to a constant) of
``y ~ N(M(x0), (Sigma_y + sigma^2 Gamma) I)``, and its gradient at ``sigma = 0`` is the
Kalman/3D-Var gradient ``M^T (y - M x0) / Sigma_y``. Tuned values that assume the paper's
form without the 1/2 correspond to half of them here (double ``Sigma_y`` and ``Gamma``,
or double ``lambda``). The composite likelihood (Eq. 14) is ``sum_j lambda_j log p_j``.

``Sigma_y`` and ``Gamma`` are *variances* in normalised units (per-variable mean and
standard deviation of the training climate): a physical error standard deviation ``e``
of a variable with climate standard deviation ``s`` is ``Sigma_y = (e / s)^2``; see
:func:`normalised_error_variance` and :meth:`ObservationTerm.from_physical`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffda.core.grid import Grid
from diffda.core.protocols import ObservationOperator
from diffda.observations.station_arrays import StationObservations
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class ErrorModel:
    """``Sigma_y`` (observation-error variance) and ``Gamma`` (Eq. 13), normalised units."""

    sigma_y: float
    gamma: float

    def __post_init__(self) -> None:
        if not (self.sigma_y >= 0.0 and self.gamma >= 0.0):
            raise ValueError(f"sigma_y = {self.sigma_y} and gamma = {self.gamma} must be >= 0")


#: Starting points per operator kind, measured on the 32x64 prototype (NOTES.md, "A quick
#: prototype of the analysis step"): coarse grids were stable with Sigma_y = Gamma = 1e-2;
#: point observations needed Gamma ~ 0.3 (Gamma = 1e-2 blew up). Tune per experiment. The
#: low-resolution Sigma_y is 3e-3 since the sampler's guidance is capped at the prior drift
#: (SamplerConfig.max_guidance_ratio): super-resolution error 0.34-0.37 of bicubic's for
#: height against 0.56 with 1e-2 (README, four held-out times).
DEFAULT_ERROR_MODELS: dict[str, ErrorModel] = {
    "point": ErrorModel(sigma_y=1e-2, gamma=0.3),
    "low_resolution": ErrorModel(sigma_y=3e-3, gamma=1e-2),
    "forecast": ErrorModel(sigma_y=1e-2, gamma=1e-2),
}


def likelihood_variance(sigma_y: Tensor, gamma: float, sigma: Tensor) -> Tensor:
    """``Sigma_y + sigma^2 Gamma`` (Eq. 13 denominator without the 2).

    ``sigma_y``: ``()`` or ``(n_obs,)``; ``sigma``: a scalar, or one value per member
    (``(member,)`` or ``(member, 1, ..., 1)``); returns a tensor broadcastable to
    ``(member, n_obs)``.
    """
    sigma = torch.as_tensor(sigma, dtype=sigma_y.dtype, device=sigma_y.device)
    # A per-member sigma may come shaped like the state, (member, 1, 1, 1): one per row.
    sigma = sigma.reshape(()) if sigma.numel() == 1 else sigma.reshape(-1, 1)
    return sigma_y + sigma**2 * gamma


def gaussian_log_likelihood(residual: Tensor, variance: Tensor) -> Tensor:
    """``-sum_k r_k^2 / (2 v_k)`` over the last dim (Eq. 13 with its factor 1/2).

    ``residual``: ``(member, n_obs)``; ``variance`` broadcastable to it; returns ``(member,)``.
    """
    return -0.5 * (residual.square() / variance).sum(-1)


def normalised_error_variance(
    error_std: Sequence[float] | np.ndarray, climate_std: Sequence[float] | np.ndarray,
    obs_variable_index: Sequence[int] | np.ndarray | Tensor,
) -> np.ndarray:
    """Per-observation ``Sigma_y = (e_v / s_v)^2`` for observation variables ``v``.

    ``error_std``, ``climate_std``: ``(n_var,)`` physical units; ``obs_variable_index``:
    ``(n_obs,)``. Returns ``(n_obs,)``.
    """
    e = np.asarray(error_std, dtype=np.float64)
    s = np.asarray(climate_std, dtype=np.float64)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"climate standard deviations must be positive and finite, got {s}")
    idx = np.asarray(obs_variable_index, dtype=np.int64)
    return (e[idx] / s[idx]) ** 2


def normalise_observations(
    y: Tensor | np.ndarray, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray,
    obs_variable_index: Sequence[int] | np.ndarray | Tensor,
) -> Tensor:
    """``(y - mean_v) / std_v`` per observation, ``y``: ``(n_obs,)`` physical units."""
    idx = torch.as_tensor(np.asarray(obs_variable_index), dtype=torch.long)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    m = torch.as_tensor(np.asarray(mean, dtype=np.float64))[idx]
    s = torch.as_tensor(np.asarray(std, dtype=np.float64))[idx]
    return (y - m) / s


class ObservationTerm(nn.Module):
    """One likelihood term (Eq. 13); implements :class:`diffda.core.protocols.LikelihoodTerm`.

    ``operator``: ``(member, *state) -> (member, n_obs)``; ``y``: ``(n_obs,)`` normalised,
    the same observation for every member, or ``(K, n_obs)`` with ``K`` the number of
    members, member ``m`` guided by its own row (the forecast term of a mode that forecasts
    every member from its own analysis); ``sigma_y``: scalar or ``(n_obs,)`` variance;
    ``gamma``: scalar; ``weight`` is ``lambda_j`` of Eq. 14, applied by the caller (the
    sampler, or :class:`CompositeLikelihood`), not inside :meth:`log_likelihood`.
    """

    y: Tensor
    sigma_y: Tensor

    def __init__(
        self,
        operator: ObservationOperator,
        y: Tensor | np.ndarray,
        sigma_y: float | Tensor | np.ndarray,
        gamma: float,
        weight: float = 1.0,
        name: str = "",
    ) -> None:
        super().__init__()
        y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
        if y_t.dim() not in (1, 2):
            raise ValueError(f"term {name!r}: y must be (n_obs,) or (member, n_obs), got shape "
                             f"{tuple(y_t.shape)}")
        labels = getattr(operator, "labels", None)
        bad = ~torch.isfinite(y_t)
        if bad.any():
            flat = int(torch.nonzero(bad.reshape(-1))[0])
            k = flat % y_t.shape[-1]
            where = f" ({labels[k]})" if labels is not None else ""
            raise ValueError(
                f"term {name!r}: observation {k}{where} is {float(y_t.reshape(-1)[flat])}; "
                f"{int(bad.sum())} of {y_t.numel()} values are not finite (drop them first)"
            )
        n_obs = getattr(operator, "n_obs", None)
        if n_obs is not None and n_obs != y_t.shape[-1]:
            raise ValueError(f"term {name!r}: operator gives {n_obs} values, y has "
                             f"{y_t.shape[-1]}")
        sy = torch.as_tensor(
            np.asarray(sigma_y) if not isinstance(sigma_y, Tensor) else sigma_y,
            dtype=y_t.dtype if y_t.is_floating_point() else torch.float64,
        )
        if sy.dim() not in (0, 1) or (sy.dim() == 1 and sy.numel() != y_t.shape[-1]):
            raise ValueError(
                f"term {name!r}: sigma_y must be a scalar or ({y_t.shape[-1]},), "
                f"got {tuple(sy.shape)}"
            )
        if not bool(torch.all(torch.isfinite(sy) & (sy >= 0))) or not gamma >= 0:
            raise ValueError(f"term {name!r}: sigma_y and gamma must be finite and >= 0")
        if not weight >= 0:
            raise ValueError(f"term {name!r}: weight (lambda) = {weight} must be >= 0")
        if not torch.all(sy > 0) and gamma == 0:
            raise ValueError(f"term {name!r}: sigma_y = 0 with gamma = 0 is a zero variance")
        self.operator = operator
        self.register_buffer("y", y_t.to(torch.float64) if not y_t.is_floating_point() else y_t)
        self.register_buffer("sigma_y", sy)
        self.gamma = float(gamma)
        self.weight = float(weight)
        self.name = name

    @classmethod
    def from_physical(
        cls,
        operator: ObservationOperator,
        y: Tensor | np.ndarray,
        error_std: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
        gamma: float,
        weight: float = 1.0,
        name: str = "",
    ) -> ObservationTerm:
        """From physical observations and per-variable error std, normalising both with the
        per-variable ``mean`` and ``std`` (``(n_var,)``) of the state. The operator must
        have ``obs_variable_index`` ``(n_obs,)``."""
        idx = operator.obs_variable_index  # type: ignore[attr-defined]
        y_n = normalise_observations(y, mean, std, idx)
        sy = normalised_error_variance(error_std, std, idx)
        return cls(operator, y_n, torch.as_tensor(sy), gamma, weight, name)

    def residual(self, x0: Tensor) -> Tensor:
        """``y - M(x0)``, ``(member, n_obs)``."""
        return self.y.to(x0.dtype) - self.operator(x0)

    def log_likelihood(self, x0: Tensor, sigma: Tensor | float) -> Tensor:
        """Eq. 13 per member: ``x0 (member, *state)``, ``sigma`` scalar or ``(member,)``
        -> ``(member,)``. Without ``weight``; differentiable in ``x0``."""
        r = self.residual(x0)
        var = likelihood_variance(self.sigma_y.to(x0.dtype), self.gamma,
                                  torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device))
        return gaussian_log_likelihood(r, var)

    def extra_repr(self) -> str:
        sy = self.sigma_y
        sy_text = f"{float(sy):.3g}" if sy.dim() == 0 else f"per-obs[{sy.numel()}]"
        return (f"name={self.name!r}, n_obs={self.y.shape[-1]}, sigma_y={sy_text}, "
                f"gamma={self.gamma:.3g}, weight={self.weight:.3g}")


class CompositeLikelihood(nn.Module):
    """``sum_j lambda_j log p(y_j | x)`` over terms (Eq. 14). Itself a likelihood term
    with ``weight = 1``, so a sampler treats one term and a composite alike."""

    weight: float = 1.0

    def __init__(self, terms: Sequence[ObservationTerm]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a composite likelihood needs at least one term")
        self.terms = nn.ModuleList(terms)
        self.weight = 1.0

    def log_likelihood(self, x0: Tensor, sigma: Tensor | float) -> Tensor:
        """``(member, *state)`` -> ``(member,)``: the lambda-weighted sum of the terms."""
        total = self.terms[0].weight * self.terms[0].log_likelihood(x0, sigma)
        for term in self.terms[1:]:
            total = total + term.weight * term.log_likelihood(x0, sigma)
        return total

    def per_term(self, x0: Tensor, sigma: Tensor | float) -> dict[str, Tensor]:
        """Unweighted log-likelihood of each term by name (for logging), ``(member,)`` each."""
        return {t.name or f"term{j}": t.log_likelihood(x0, sigma) for j, t in enumerate(self.terms)}


def station_term(
    stations: StationObservations,
    grid: Grid,
    variables: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    error_model: ErrorModel | None = None,
    weight: float = 1.0,
    name: str = "stations",
) -> ObservationTerm:
    """The station term of the observations ``stations`` (one time) on ``grid``.

    ``Sigma_y`` per observation is its ``error_std`` normalised by the climate ``std`` of the
    variable, or ``error_model.sigma_y`` where the file gave none. ``Gamma`` is
    ``error_model.gamma`` (default :data:`DEFAULT_ERROR_MODELS` ``["point"]``).
    """
    em = error_model or DEFAULT_ERROR_MODELS["point"]
    op = stations.operator(grid, variables)
    idx = op.obs_variable_index.numpy()
    y_n = normalise_observations(stations.value, mean, std, idx)
    s = np.asarray(std, dtype=np.float64)[idx]
    err = stations.error_std
    sigma_y = np.where(np.isfinite(err), (err / s) ** 2, em.sigma_y)
    return ObservationTerm(op, y_n, torch.as_tensor(sigma_y), em.gamma, weight, name)
