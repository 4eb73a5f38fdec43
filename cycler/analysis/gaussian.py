"""The exact denoiser of a Gaussian prior, and the exact linear-Gaussian quantities around it.

For a prior ``x0 ~ N(mu, S)`` (``n``-dimensional, ``S`` symmetric positive semi-definite)
and the EDM forward process ``x = x0 + sigma n`` (``sigma(t) = t``), everything is closed form:

- denoiser (Tweedie): ``D(x; sigma) = E[x0 | x] = mu + S (S + sigma^2 I)^{-1} (x - mu)``;
- its covariance: ``Cov[x0 | x] = sigma^2 dD/dx = sigma^2 S (S + sigma^2 I)^{-1}``;
- for a linear operator ``H`` (``m x n``), ``p(y | x_t) = N(y; H D(x_t), R + sigma^2 Gamma(sigma))``
  exactly, with ``Gamma(sigma) = H S (S + sigma^2 I)^{-1} H^T`` (paper Eq. 11 with the true
  ``J_M Gamma J_M^T``; Eq. 13 replaces it by a constant);
- the posterior of ``x0`` given ``y = H x0 + e``, ``e ~ N(0, R)``: the Kalman update.

These are the reference the posterior sampler is tested against: with this denoiser and
this ``Gamma(sigma)``, Algorithm 1 samples the Kalman posterior up to step error.
States are flattened: a batch ``(B, *shape)`` is treated as ``(B, n)``, ``n = prod(shape)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


class GaussianDenoiser:
    """``D(x; sigma) = mu + S (S + sigma^2 I)^{-1} (x - mu)`` for the prior ``N(mu, S)``.

    ``mean``: ``(n,)`` or ``shape``; ``cov``: ``(n, n)``. ``__call__(x, sigma)``: ``x``
    ``(B, *shape)``, ``sigma`` a scalar or ``(B,)`` -> ``(B, *shape)``. Computed through the
    eigendecomposition ``S = V diag(lam) V^T``:
    ``D = mu + V diag(lam / (lam + sigma^2)) V^T (x - mu)``.
    Satisfies the :class:`~diffda.core.protocols.Denoiser` protocol.
    """

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        n = mean.numel()
        if cov.shape != (n, n):
            raise ValueError(
                f"cov must be ({n}, {n}) for a mean of {n} elements, got {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.T, atol=1e-10 * float(cov.abs().max())):
            raise ValueError("cov must be symmetric")
        lam, vec = torch.linalg.eigh(cov)
        if float(lam.min()) < -1e-8 * float(lam.abs().max()):
            raise ValueError(
                f"cov must be positive semi-definite, smallest eigenvalue {float(lam.min())}"
            )
        self.mean = mean.reshape(-1)
        self.cov = cov
        self.lam = lam.clamp_min(0.0)
        self.vec = vec

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        b = x.shape[0]
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)
        z = (x.reshape(b, -1) - self.mean) @ self.vec  # coordinates in the eigenbasis
        z = z * (self.lam / (self.lam + s**2))
        return (self.mean + z @ self.vec.T).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``(n, dim)`` exact prior draws, for reference ensembles."""
        z = torch.randn(n, self.mean.numel(), generator=generator, dtype=self.mean.dtype)
        return self.mean + (z * self.lam.sqrt()) @ self.vec.T


def exact_gamma(op: Tensor, cov: Tensor, sigma: Tensor | float) -> Tensor:
    """``Gamma(sigma) = H S (S + sigma^2 I)^{-1} H^T`` (``(m, m)``), so that
    ``p(y | x_t) = N(y; H D(x_t; sigma), R + sigma^2 Gamma(sigma))`` exactly for a Gaussian
    prior with covariance ``S`` (``(n, n)``) and a linear operator ``H`` (``(m, n)``)."""
    n = cov.shape[0]
    s2 = torch.as_tensor(sigma, dtype=cov.dtype) ** 2
    eye = torch.eye(n, dtype=cov.dtype, device=cov.device)
    k = torch.linalg.solve(cov + s2 * eye, cov)  # (S + s^2 I)^{-1} S = S (S + s^2 I)^{-1} (sym.)
    return op @ k @ op.T


def kalman_posterior(
    mean: Tensor, cov: Tensor, op: Tensor, obs_cov: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """Posterior mean ``(n,)`` and covariance ``(n, n)`` of ``x ~ N(mean, cov)`` given
    ``y = H x + e``, ``e ~ N(0, R)``: ``K = S H^T (H S H^T + R)^{-1}``,
    ``m_a = m + K (y - H m)``, ``S_a = (I - K H) S`` (symmetrised)."""
    innov_cov = op @ cov @ op.T + obs_cov
    gain = torch.linalg.solve(innov_cov, op @ cov).T  # S H^T (H S H^T + R)^{-1}
    m_a = mean + gain @ (y - op @ mean)
    s_a = cov - gain @ op @ cov
    return m_a, 0.5 * (s_a + s_a.T)
