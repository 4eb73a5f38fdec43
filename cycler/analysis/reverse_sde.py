"""Reverse-time SDE sampling with an exact Gaussian denoiser (LINEAR_THEORY.md).

Variance-exploding forward process ``x(t) = x0 + t n`` (EDM convention ``sigma(t) = t``).
For a Gaussian target with mean ``mu`` and variance ``s2`` per component the exact denoiser
is ``D(x_t; t) = mu + s2/(s2 + t^2) (x_t - mu)``, the score ``(D - x_t)/t^2``, and the
reverse SDE integrated by Euler-Maruyama on a uniform grid ``t_k = T - k h``:

    x_{t-h} = x_t + 2 t h * score(x_t, t) + sqrt(2 t h) z.                      (EM)

Two ways to run it, with the same law:

- :func:`reverse_sde_em` steps the chain, drawing ``z`` at every step (any denoiser);
- :func:`em_output_variance` (and its table :class:`EMVarianceTable`) use that, for this affine
  denoiser, one EM step is ``x - mu -> (1 - g_k)(x - mu) + sqrt(2 t_k h) z`` with
  ``g_k = 2 t_k h/(s2 + t_k^2)``, so the chain's output is exactly Gaussian with mean ``mu``
  and variance ``prod(1-g)^2 (T^2 + s2) + sum_k 2 t_k h prod_{j>k}(1-g_j)^2`` when it
  starts from the exact marginal ``x_T ~ N(mu, T^2 + s2)``. Drawing from that law is
  drawing the EM chain's output, discretisation error included, at the cost of one draw.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffda.core.protocols import Denoiser
from torch import Tensor


class DiagonalGaussianDenoiser:
    """Exact denoiser of ``N(mean, diag(var))``: ``D(x; t) = mean + var/(var + t^2) (x - mean)``.

    ``mean``, ``var``: tensors broadcastable against ``x`` (e.g. ``(n,)`` or ``(1, n)``).
    It "is a Kalman filter" whose observation is ``x`` with error variance ``t^2``.
    """

    def __init__(self, mean: Tensor, var: Tensor) -> None:
        if torch.any(var <= 0):
            raise ValueError("DiagonalGaussianDenoiser: var must be positive")
        self.mean = mean
        self.var = var

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        return self.mean + self.var / (self.var + sigma**2) * (x - self.mean)

    def log_density(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``log N(x; mean, var + sigma^2)`` summed over the last dim (for score tests)."""
        s = self.var + torch.as_tensor(sigma, dtype=x.dtype) ** 2
        return (-0.5 * (x - self.mean) ** 2 / s - 0.5 * torch.log(2 * math.pi * s)).sum(-1)


def time_grid(t_max: float, steps: int) -> np.ndarray:
    """The uniform grid ``t_k = T - k h``, ``k = 0..steps-1``, ``h = T/steps`` (ends at h)."""
    if t_max <= 0 or steps < 1:
        raise ValueError(f"need t_max > 0 and steps >= 1, got t_max={t_max}, steps={steps}")
    return t_max - np.arange(steps) * (t_max / steps)


def reverse_sde_em(
    denoiser: Denoiser, x_t: Tensor, t_max: float, steps: int, generator: torch.Generator
) -> Tensor:
    """Integrate the reverse SDE from ``t = t_max`` to 0 with Euler-Maruyama (eq. EM).

    x_t: ``(member, ...)`` draws at ``t_max``. Returns samples at ``t = 0``, same shape.
    """
    h = t_max / steps
    x = x_t
    for t in time_grid(t_max, steps):
        score = (denoiser(x, t) - x) / t**2
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + 2 * t * h * score + math.sqrt(2 * t * h) * z
    return x


def em_output_variance(s2: np.ndarray | float, t_max: float, steps: int) -> np.ndarray:
    """Variance of the EM chain's output for the Gaussian target ``(mu, s2)``, started from
    ``x_T ~ N(mu, T^2 + s2)``. Equals ``s2`` up to the O(h) discretisation error.

    s2: any shape; returns the same shape (vectorised over the grid and ``s2``).
    """
    s2 = np.asarray(s2, dtype=np.float64)
    t = time_grid(t_max, steps).reshape((-1,) + (1,) * s2.ndim)
    h = t_max / steps
    log_keep = np.log((1.0 - 2 * t * h / (s2 + t * t)) ** 2)   # log (1 - g_k)^2
    # prod_{j>k} (1 - g_j)^2 for each k: reversed exclusive cumulative sum of logs.
    after = np.flip(np.cumsum(np.flip(log_keep, 0), 0), 0) - log_keep
    total = np.exp(after[0] + log_keep[0])                     # prod over all steps
    return total * (t_max**2 + s2) + np.sum(2 * t * h * np.exp(after), axis=0)


def sample_em_stepwise_numpy(
    mu: np.ndarray, s2: np.ndarray, members: int, t_max: float, steps: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """:func:`sample_em_stepwise` with numpy arrays and a numpy generator (same EM chain)."""
    h = t_max / steps
    x = mu + np.sqrt(t_max**2 + s2) * rng.standard_normal((members, *np.shape(mu)))
    for t in time_grid(t_max, steps):
        score = (mu - x) / (s2 + t * t)        # (D - x)/t^2 for the exact denoiser
        x = x + 2 * t * h * score + np.sqrt(2 * t * h) * rng.standard_normal(x.shape)
    return x


class EMVarianceTable:
    """:func:`em_output_variance` as a table in ``log s2`` (for many distinct ``s2``).

    The ratio ``em_var / s2`` is a smooth function of ``log s2`` (1 + O(h)); it is tabulated
    on ``size`` points in ``[s2_min, s2_max]`` and interpolated linearly, which costs
    O(n) per call instead of O(n * steps). Outside the table the exact function is used.
    """

    def __init__(self, t_max: float, steps: int, s2_min: float = 1e-6, s2_max: float = 1e3,
                 size: int = 4096) -> None:
        self.t_max, self.steps = t_max, steps
        self.log_s2 = np.linspace(np.log(s2_min), np.log(s2_max), size)
        s2 = np.exp(self.log_s2)
        self.ratio = em_output_variance(s2, t_max, steps) / s2

    def __call__(self, s2: np.ndarray) -> np.ndarray:
        s2 = np.asarray(s2, dtype=np.float64)
        log_s2 = np.log(s2)
        out = np.interp(log_s2, self.log_s2, self.ratio) * s2
        outside = (log_s2 < self.log_s2[0]) | (log_s2 > self.log_s2[-1])
        if np.any(outside):
            out[outside] = em_output_variance(s2[outside], self.t_max, self.steps)
        return out
