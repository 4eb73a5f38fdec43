"""Likelihood terms (Eqs. 13-14): values, gradients through a denoiser, independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffda.core.grid import Grid
from diffda.core.protocols import LikelihoodTerm, ObservationOperator
from diffda.observations.likelihood import (
    DEFAULT_ERROR_MODELS,
    CompositeLikelihood,
    ErrorModel,
    ObservationTerm,
    normalised_error_variance,
)
from diffda.observations.operators import PointOperator, low_resolution_operator

VARS = ("height", "u", "v", "tracer")
GRID = Grid(16, 32)


def _state(m: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, 4, 16, 32, dtype=torch.float64, generator=g)


def _point() -> PointOperator:
    return PointOperator(GRID, VARS, [10.0, 50.0, -70.0, 85.0], [5.0, 100.0, 359.0, 200.0],
                         ["height", "u", "tracer", "v"],
                         labels=["S1:height", "S2:u", "S3:tracer", "S4:v"])


def test_value_is_eq13_with_its_factor_one_half() -> None:
    op = _point()
    y = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    sigma_y = torch.tensor([0.01, 0.02, 0.03, 0.04], dtype=torch.float64)
    term = ObservationTerm(op, y, sigma_y, gamma=0.3, weight=2.0)
    x = _state()
    sigma = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    ll = term.log_likelihood(x, sigma)
    assert ll.shape == (3,)
    for m in range(3):
        r = y - op(x[m : m + 1])[0]
        expected = -float((r**2 / (2 * (sigma_y + sigma[m] ** 2 * 0.3))).sum())
        assert float(ll[m]) == pytest.approx(expected, rel=1e-12)
    # sigma shaped like the state (member, 1, 1, 1) is one value per member.
    torch.testing.assert_close(term.log_likelihood(x, sigma.reshape(3, 1, 1, 1)), ll)
    # A scalar sigma broadcasts to all members; the weight is not applied inside.
    ll_scalar = term.log_likelihood(x, 0.5)
    assert float(ll_scalar[1]) == pytest.approx(float(ll[1]), rel=1e-12)
    assert isinstance(term, LikelihoodTerm) and isinstance(op, ObservationOperator)


def test_gradient_is_the_kalman_gradient_and_members_are_independent() -> None:
    op = _point()
    h = op.matrix()
    y = torch.tensor([0.5, -1.0, 0.2, 0.3], dtype=torch.float64)
    term = ObservationTerm(op, y, 0.05, gamma=0.1)
    x = _state().requires_grad_(True)
    sigma = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    (g,) = torch.autograd.grad(term.log_likelihood(x, sigma).sum(), x)
    for m in range(3):
        r = y - h @ x[m].detach().reshape(-1)
        expected = h.T @ r / (0.05 + sigma[m] ** 2 * 0.1)  # d/dx of -|r|^2 / (2 v)
        torch.testing.assert_close(g[m].reshape(-1), expected)
    jac = torch.func.jacrev(lambda z: term.log_likelihood(z, sigma))(x.detach())
    for m in range(3):
        for k in range(3):
            if k != m:
                assert float(jac[m, k].abs().max()) == 0.0


def test_gradient_flows_through_a_denoiser() -> None:
    """The sampler's use: grad_x of log p(y | D(x; sigma)) by autograd through D."""
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(5)))

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x / (1 + sigma**2) + 0.1 * conv(x)

    term = ObservationTerm(low_resolution_operator(GRID, VARS, coarse=Grid(4, 8)),
                           torch.zeros(4 * 4 * 8, dtype=torch.float64), 0.01, gamma=0.01)
    x = _state(2).requires_grad_(True)
    sigma = torch.tensor(0.7, dtype=torch.float64)
    ll = term.log_likelihood(denoiser(x, sigma), sigma)
    (g,) = torch.autograd.grad(ll.sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    # Finite-difference check of one directional derivative.
    d = torch.randn_like(x)
    eps = 1e-6

    def f(z: torch.Tensor) -> float:
        with torch.no_grad():
            return float(term.log_likelihood(denoiser(z, sigma), sigma).sum())

    fd = (f(x.detach() + eps * d) - f(x.detach() - eps * d)) / (2 * eps)
    assert fd == pytest.approx(float((g * d).sum()), rel=1e-6)
    # Changing member 1 does not change member 0's gradient.
    x2 = x.detach().clone()
    x2[1] += 5.0
    x2.requires_grad_(True)
    (g2,) = torch.autograd.grad(term.log_likelihood(denoiser(x2, sigma), sigma).sum(), x2)
    torch.testing.assert_close(g2[0], g[0])


def test_composite_is_the_lambda_weighted_sum_eq14() -> None:
    x = _state()
    a = ObservationTerm(_point(), torch.zeros(4, dtype=torch.float64), 0.02, 0.3, weight=0.4,
                        name="stations")
    lr = low_resolution_operator(GRID, VARS, coarse=Grid(4, 8))
    b = ObservationTerm(lr, torch.ones(lr.n_obs, dtype=torch.float64), 0.1, 0.01, weight=1.5,
                        name="lr")
    comp = CompositeLikelihood([a, b])
    sigma = torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64)
    expected = 0.4 * a.log_likelihood(x, sigma) + 1.5 * b.log_likelihood(x, sigma)
    torch.testing.assert_close(comp.log_likelihood(x, sigma), expected)
    assert comp.weight == 1.0 and isinstance(comp, LikelihoodTerm)
    assert set(comp.per_term(x, sigma)) == {"stations", "lr"}
    with pytest.raises(ValueError, match="at least one term"):
        CompositeLikelihood([])


def test_physical_units_are_normalised() -> None:
    net_op = PointOperator(GRID, VARS, [0.0, 0.0], [0.0, 0.0], ["height", "u"])
    mean, std = [5500.0, 10.0, 0.0, 1e-3], [100.0, 5.0, 5.0, 5e-4]
    term = ObservationTerm.from_physical(net_op, np.array([5600.0, 0.0]), [20.0, 1.0, 1.0, 1e-4],
                                         mean, std, gamma=0.1)
    torch.testing.assert_close(term.y, torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(term.sigma_y, torch.tensor([0.04, 0.04], dtype=torch.float64))
    np.testing.assert_allclose(normalised_error_variance([2.0, 3.0], [4.0, 6.0], [1, 0, 1]),
                               [0.25, 0.25, 0.25])
    with pytest.raises(ValueError, match="must be positive"):
        normalised_error_variance([1.0], [0.0], [0])


def test_bad_inputs_are_rejected_with_names() -> None:
    op = _point()
    y = torch.tensor([0.0, float("nan"), 0.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"observation 1 \(S2:u\) is nan"):
        ObservationTerm(op, y, 0.1, 0.1, name="igra")
    with pytest.raises(ValueError, match="operator gives 4 values, y has 3"):
        ObservationTerm(op, torch.zeros(3), 0.1, 0.1)
    with pytest.raises(ValueError, match=r"sigma_y must be a scalar or \(4,\)"):
        ObservationTerm(op, torch.zeros(4), torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="weight"):
        ObservationTerm(op, torch.zeros(4), 0.1, 0.1, weight=-1.0)
    with pytest.raises(ValueError, match="zero variance"):
        ObservationTerm(op, torch.zeros(4), 0.0, 0.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        ErrorModel(sigma_y=-1.0, gamma=0.0)
    assert DEFAULT_ERROR_MODELS["point"].gamma > DEFAULT_ERROR_MODELS["low_resolution"].gamma
