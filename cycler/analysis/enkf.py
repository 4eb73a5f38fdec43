"""Ensemble Kalman filter analysis steps (pure functions on ensembles).

Ensembles are ``(member, n)`` tensors; observations ``(p,)``; a linear observation
operator is a ``(p, n)`` matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor


def stochastic_enkf_analysis(
    ensemble: Tensor, y: Tensor, H: Tensor, r: Tensor | float, perturbations: Tensor
) -> Tensor:
    """Stochastic EnKF with perturbed observations (Burgers et al. 1998).

    ``E_a = E_f + K (y + r^(1/2) z_i - H E_f)``, ``K = P H^T (H P H^T + R)^(-1)``, ``P`` the
    ensemble covariance (unbiased, ``1/(M-1)``) and ``R = diag(r)``.

    ensemble: ``(M, n)``; y: ``(p,)``; H: ``(p, n)``; r: scalar or ``(p,)``;
    perturbations: ``(M, p)`` standard normals (drawn by the caller from its generator).
    Returns the analysis ensemble ``(M, n)``.
    """
    m = ensemble.shape[0]
    if m < 2:
        raise ValueError(f"the EnKF needs at least 2 members, got {m}")
    r = torch.as_tensor(r, dtype=ensemble.dtype).expand(y.shape[0])
    hx = ensemble @ H.T                                    # (M, p)
    X = ensemble - ensemble.mean(0)                        # (M, n) anomalies
    HX = hx - hx.mean(0)                                   # (M, p)
    PHt = X.T @ HX / (m - 1)                               # (n, p)
    S = HX.T @ HX / (m - 1) + torch.diag(r)                # (p, p) = H P H^T + R
    innovations = y + r.sqrt() * perturbations - hx        # (M, p)
    return ensemble + torch.linalg.solve(S, innovations.T).T @ PHt.T
