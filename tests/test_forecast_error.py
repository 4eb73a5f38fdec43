"""The forecast's own error model from innovations: the estimator recovers known (alpha,
beta) from observations and forecasts alone, pools by adding, refuses what cannot be
fitted, and on the linear test bed the cycle-fit-cycle loop finds the exact fixed point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffda.cycler.analysis import kalman
from diffda.cycler.analysis.forecast_error import (
    Moments,
    equivalent_observation,
    fit_from_moments,
    innovation_moments,
)
from diffda.cycler.linear.testbed import (
    EXTENDED,
    LinearSetup,
    innovation_alpha_beta,
    make_truth_and_obs,
)


@pytest.mark.parametrize("alpha, beta", [(0.9, 0.05), (0.5, 0.4), (0.2, 1.0)])
def test_recovers_known_alpha_beta_from_synthetic_innovations(alpha, beta):
    rng = np.random.default_rng(0)
    n, c, r = 200_000, 1.3, 0.2
    mu = rng.normal(0, 3, n)                       # a climatology that varies by place
    x = mu + np.sqrt(c) * rng.standard_normal(n)
    y = x + np.sqrt(r) * rng.standard_normal(n)
    f = alpha * x + (1 - alpha) * mu + np.sqrt(beta) * rng.standard_normal(n)
    # pooled in two halves: the sums add
    m = innovation_moments(y[: n // 2], f[: n // 2], r, mu[: n // 2]) + innovation_moments(
        y[n // 2:], f[n // 2:], r, mu[n // 2:])
    assert m.n == n
    fit = fit_from_moments(m)
    assert fit.alpha == pytest.approx(alpha, abs=0.01)
    assert fit.beta == pytest.approx(beta, rel=0.03, abs=0.005)


def test_equivalent_observation_is_the_same_likelihood():
    x = torch.linspace(-2, 2, 41, dtype=torch.float64)
    f, mu = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    alpha, beta = 0.6, 0.2
    fp, sig = equivalent_observation(f, mu, alpha, beta)
    log_a = -(f - alpha * x - (1 - alpha) * mu) ** 2 / (2 * beta)
    log_b = -(fp - x) ** 2 / (2 * sig)
    diff = log_a - log_b  # equal up to a constant in x
    torch.testing.assert_close(diff, diff[0].expand_as(diff))


def test_refuses_what_cannot_be_fitted():
    with pytest.raises(ValueError, match="too few"):
        fit_from_moments(Moments.zero())
    with pytest.raises(ValueError, match="observation-error variance"):
        fit_from_moments(Moments(10, aa=1.0, ab=0.5, bb=1.0, r=2.0))


@pytest.mark.parametrize("name", list(EXTENDED))
def test_linear_cycle_fit_cycle_finds_the_exact_fixed_point(name):
    setup = LinearSetup(obs_every=10, cycles=3000, spinup=100, n=20, seed=3)
    fit = innovation_alpha_beta(setup, make_truth_and_obs(setup), name)
    fp = kalman.extended_fixed_point(setup.A, setup.q, setup.c, 1.0, forecast=EXTENDED[name])
    assert fit.converged
    assert fit.alpha == pytest.approx(fp.alpha, abs=0.015)
    assert fit.beta == pytest.approx(fp.beta, rel=0.03)
