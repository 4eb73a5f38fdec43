"""The linear-Gaussian test bed: closed forms, and Kalman = diffusion = large-ensemble EnKF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffda.core.config import ConfigError
from diffda.cycler.analysis import kalman
from diffda.cycler.analysis.enkf import stochastic_enkf_analysis
from diffda.cycler.analysis.reverse_sde import (
    DiagonalGaussianDenoiser,
    EMVarianceTable,
    em_output_variance,
    reverse_sde_em,
    sample_em_stepwise_numpy,
)
from diffda.cycler.linear.testbed import (
    LinearSetup,
    make_truth_and_obs,
    paper_alpha_beta,
    reestimate_alpha_beta,
    run_diffusion,
    run_enkf,
    run_kalman,
    run_steady,
)
from diffda.emulators.linear import (
    OrnsteinUhlenbeck,
    advance,
    climatological_variance,
    interval_noise_variance,
)

SMALL = dict(n=8, cycles=600, spinup=50, members=200, seed=3)


def test_closed_forms_float64():
    assert climatological_variance(0.01) == pytest.approx(1.00503, abs=5e-6)
    c = climatological_variance(0.01)
    assert kalman.climatological_posterior(0.0, c, 1.0)[1] == pytest.approx(0.50125, abs=5e-6)
    # q: the variance of K composed Euler steps, by the exact variance recursion.
    dt, K = 0.03, 17
    var = 0.0
    for _ in range(K):
        var = (1 - dt) ** 2 * var + 2 * dt
    assert interval_noise_variance(dt, K) == pytest.approx(var, rel=1e-13)
    # The steady cycling variance is the fixed point of the Kalman recursion.
    A, q, r = 0.9**2, 0.3, 0.7
    p = c
    for _ in range(500):
        p = (A * A * p + q) * r / (A * A * p + q + r)
    assert kalman.steady_cycling_variance(A, q, r) == pytest.approx(p, rel=1e-13)
    assert kalman.steady_cycling_variance(0.0, q, r) == pytest.approx(q * r / (q + r))


def test_ou_model_step_and_advance_have_the_discrete_climatology():
    model = OrnsteinUhlenbeck(0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(20000, 1, dtype=torch.float64)
    for _ in range(100):
        x = model.step(x, generator=g)
    c = climatological_variance(0.1)
    assert x.var().item() == pytest.approx(c, rel=0.03)
    y = advance(np.zeros(20000), 0.1, 100, np.random.default_rng(0).standard_normal(20000))
    assert y.var() == pytest.approx(interval_noise_variance(0.1, 100), rel=0.03)
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        model.step(x)


@pytest.mark.parametrize("K, r", [(1, 1.0), (10, 1.0), (10, 0.1), (50, 10.0)])
def test_extended_fixed_point_is_the_kalman_filter(K, r):
    setup = LinearSetup(obs_every=K, obs_var=r)
    A, q, c = setup.A, setup.q, setup.c
    fp = kalman.extended_fixed_point(A, q, c, r)
    alpha, beta = kalman.kalman_consistent_parameters(A, q, c, r)
    assert fp.alpha == pytest.approx(alpha, rel=1e-8)
    assert fp.beta == pytest.approx(beta, rel=1e-8)
    st = kalman.extended_stationary(A, q, c, r, fp.alpha, fp.beta)
    # Calibrated: stationary MSE = assumed variance = the cycling posterior variance.
    assert st.mse == pytest.approx(st.var, rel=1e-8)
    assert st.var == pytest.approx(kalman.steady_cycling_variance(A, q, r), rel=1e-8)
    # And strictly better than the climatological prior.
    assert st.var < c * r / (c + r)


def test_extended_stationary_matches_simulation_and_flags_instability():
    setup = LinearSetup(obs_every=10, cycles=4000, spinup=100, n=20, seed=1)
    data = make_truth_and_obs(setup)
    alpha, beta = 0.4, 0.3
    st = kalman.extended_stationary(setup.A, setup.q, setup.c, 1.0, alpha, beta)
    run = run_kalman("extended", setup, data, alpha, beta)
    mse = np.mean((run.mean[100:] - data.truth[101:]) ** 2)
    assert mse == pytest.approx(st.mse, rel=0.05)
    assert abs(st.mse - st.var) > 0.05  # mis-specified (alpha, beta): miscalibrated
    unstable = kalman.extended_stationary(setup.A, setup.q, setup.c, 1.0, 0.34, 0.05)
    assert unstable.mse == float("inf")
    # Re-estimation by simulation converges to the analytic fixed point.
    fit = reestimate_alpha_beta(setup, data)
    fp = kalman.extended_fixed_point(setup.A, setup.q, setup.c, 1.0)
    assert fit.converged
    assert fit.alpha == pytest.approx(fp.alpha, abs=0.02)
    assert fit.beta == pytest.approx(fp.beta, rel=0.05)


@pytest.mark.parametrize("K, r", [(1, 1.0), (10, 1.0), (10, 0.1), (50, 10.0)])
def test_stochastic_forecast_fixed_point_lies_between_cycling_and_climatological(K, r):
    setup = LinearSetup(obs_every=K, obs_var=r)
    A, q, c = setup.A, setup.q, setup.c
    fp = kalman.extended_fixed_point(A, q, c, r, forecast="stochastic")
    assert fp.residual < 1e-10
    st = kalman.extended_stationary(A, q, c, r, fp.alpha, fp.beta, "stochastic")
    assert st.alpha_fit == pytest.approx(fp.alpha, abs=1e-9)
    assert st.mse == pytest.approx(st.var, rel=1e-8)  # calibrated at its fixed point
    cycling, clim = kalman.steady_cycling_variance(A, q, r), c * r / (c + r)
    assert cycling * (1 + 1e-3) < st.var < clim * (1 - 1e-3)
    # the deterministic forecast's fixed point differs: it is the Kalman filter
    det = kalman.extended_fixed_point(A, q, c, r)
    assert abs(det.alpha - fp.alpha) > 1e-3
    with pytest.raises(ValueError, match="forecast"):
        kalman.extended_fixed_point(A, q, c, r, forecast="noisy")


def test_stochastic_forecast_simulated_matches_its_fixed_point():
    # dt 0.01, every 10 steps, r = 1: between 0.2998 (cycling) and 0.5013 (climatological)
    setup = LinearSetup(obs_every=10, cycles=3000, spinup=100, n=20, seed=3, members=200)
    res = run_steady(setup, methods=("kalman", "diffusion"), paper=False)
    fp = kalman.extended_fixed_point(setup.A, setup.q, setup.c, 1.0, forecast="stochastic")
    assert res["extended_stochastic_var"] == pytest.approx(
        kalman.extended_stationary(setup.A, setup.q, setup.c, 1.0, fp.alpha, fp.beta,
                                   "stochastic").var, abs=1e-12)
    assert 0.385 < res["extended_stochastic_var"] < 0.392
    # 2900 x 20 errors, autocorrelated over a few cycles: a few per cent of Monte Carlo error
    for method in ("kalman", "diffusion"):
        assert res[f"extended_stochastic_mse_{method}"] == pytest.approx(
            res["extended_stochastic_var"], rel=0.04), method
    assert res["extended_stochastic_kalman_var"] == pytest.approx(
        res["extended_stochastic_var"], rel=1e-9)
    # re-estimation by simulation (truth-based) finds the stochastic fixed point too
    fit = reestimate_alpha_beta(setup, make_truth_and_obs(setup), name="extended_stochastic")
    assert fit.converged
    assert fit.alpha == pytest.approx(fp.alpha, abs=0.02)
    assert fit.beta == pytest.approx(fp.beta, rel=0.05)


def test_paper_recipe_stops_once_slope_estimates_agree():
    setup = LinearSetup(obs_every=10, cycles=2000, spinup=100, n=20, seed=2)
    fit = paper_alpha_beta(setup, make_truth_and_obs(setup))
    h = fit.history[-1]
    assert fit.converged
    assert abs(h["alpha_slope"] - h["alpha_quadratic"]) < setup.paper_tol
    assert 0 < fit.alpha < 1 and fit.beta > 0


def test_gaussian_denoiser_score_is_gradient_of_log_density():
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([0.5, 1.5, 0.1], dtype=torch.float64)
    den = DiagonalGaussianDenoiser(mean, var)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for sigma in (0.05, 0.7, 5.0):
        (grad,) = torch.autograd.grad(den.log_density(x, sigma).sum(), x)
        score = (den(x, sigma) - x) / sigma**2
        torch.testing.assert_close(score, grad)


def test_em_composition_equals_stepping_the_chain():
    mu, s2, t_max, steps = np.array([0.5, -2.0]), np.array([0.3, 0.05]), 5.0, 60
    em_var = em_output_variance(s2, t_max, steps)
    # Exact variance recursion of the EM chain.
    h, var = t_max / steps, t_max**2 + s2
    for t in t_max - np.arange(steps) * h:
        var = (1 - 2 * t * h / (s2 + t * t)) ** 2 * var + 2 * t * h
    np.testing.assert_allclose(em_var, var, rtol=1e-12)
    # Monte Carlo of the stepped chain agrees (numpy and torch versions).
    x = sample_em_stepwise_numpy(mu, s2, 20000, t_max, steps, np.random.default_rng(0))
    se_var = em_var * np.sqrt(2 / 20000)
    assert np.all(np.abs(x.var(0) - em_var) < 4 * se_var)
    assert np.all(np.abs(x.mean(0) - mu) < 4 * np.sqrt(em_var / 20000))
    g = torch.Generator().manual_seed(1)
    den = DiagonalGaussianDenoiser(torch.from_numpy(mu), torch.from_numpy(s2))
    x0 = torch.from_numpy(mu) + torch.from_numpy(np.sqrt(t_max**2 + s2)) * torch.randn(
        20000, 2, generator=g, dtype=torch.float64)
    xt = reverse_sde_em(den, x0, t_max, steps, g).numpy()
    assert np.all(np.abs(xt.var(0) - em_var) < 4 * se_var)
    # The EM error shrinks with the step count; the table reproduces the exact function.
    assert abs(em_output_variance(0.3, 10.0, 1000) / 0.3 - 1) < 1e-3
    err = [abs(em_output_variance(0.3, 10.0, steps) - 0.3) for steps in (100, 1000)]
    assert err[1] < err[0]
    table = EMVarianceTable(10.0, 1000)
    s = np.array([1e-3, 0.0371, 0.3, 2.0])
    np.testing.assert_allclose(table(s), em_output_variance(s, 10.0, 1000), rtol=1e-7)


@pytest.mark.parametrize("sampler", ["composed", "em"])
def test_diffusion_matches_kalman_for_all_three_posteriors(sampler):
    kw = dict(SMALL, sampler=sampler)
    if sampler == "em":  # stepping the chain costs steps x members x n draws per cycle
        kw.update(cycles=120, spinup=20, members=100, sde_steps=100, t_max=5.0)
    setup = LinearSetup(**kw)
    data = make_truth_and_obs(setup)
    fp = kalman.extended_fixed_point(setup.A, setup.q, setup.c, setup.obs_var)
    alpha, beta = fp.alpha, fp.beta
    for name in ("climatological", "cycling", "extended"):
        k = run_kalman(name, setup, data, alpha, beta)
        d = run_diffusion(name, setup, data, alpha, beta)
        s = setup.spinup
        kvar = k.var[s:].mean()
        # Ensemble variance: sampling error ~ sqrt(2/members) per value, averaged.
        assert d.var[s:].mean() == pytest.approx(kvar, rel=0.03), name
        # The diffusion mean tracks the Kalman mean up to Monte Carlo error (var/members),
        # plus, when cycling, the propagated effect of earlier sampling errors.
        gap = np.mean((d.mean[s:] - k.mean[s:]) ** 2)
        assert gap < 5 * kvar / setup.members, name
        kmse = np.mean((k.mean[s:] - data.truth[1 + s:]) ** 2)
        dmse = np.mean((d.mean[s:] - data.truth[1 + s:]) ** 2)
        assert dmse == pytest.approx(kmse, rel=0.05), name


def test_enkf_approaches_kalman_as_ensemble_grows():
    base = dict(n=6, cycles=400, spinup=50, seed=4)
    errors = []
    for members in (5, 50, 800):
        setup = LinearSetup(members=members, **base)
        data = make_truth_and_obs(setup)
        k, e = run_kalman("cycling", setup, data), run_enkf(setup, data)
        errors.append(np.mean((e.mean[50:] - k.mean[50:]) ** 2))
        if members == 800:
            assert e.var[50:].mean() == pytest.approx(k.var[50:].mean(), rel=0.05)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02 * k.var[50:].mean()


def test_enkf_analysis_single_step_against_kalman():
    rng = np.random.default_rng(0)
    M = 20000
    cov = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 0.5]])
    mean = np.array([0.1, -0.2, 0.3])
    E = torch.from_numpy(rng.multivariate_normal(mean, cov, size=M))
    H = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    Ea = stochastic_enkf_analysis(E, y, H, 0.4, torch.from_numpy(rng.standard_normal((M, 2))))
    Hn = H.numpy()
    S = Hn @ cov @ Hn.T + 0.4 * np.eye(2)
    K = cov @ Hn.T @ np.linalg.inv(S)
    np.testing.assert_allclose(Ea.mean(0).numpy(), mean + K @ (y.numpy() - Hn @ mean), atol=0.03)
    np.testing.assert_allclose(np.cov(Ea.numpy().T), (np.eye(3) - K @ Hn) @ cov, atol=0.03)
    with pytest.raises(ValueError, match="at least 2 members"):
        stochastic_enkf_analysis(E[:1], y, H, 0.4, torch.zeros(1, 2, dtype=torch.float64))


def test_subset_observed_and_fixed_seed_reproducible():
    setup = LinearSetup(n=6, observed=(0, 2), cycles=300, spinup=20, members=50, seed=9)
    data = make_truth_and_obs(setup)
    assert np.all(np.isnan(data.obs[:, [1, 3, 4, 5]]))
    clim = run_kalman("climatological", setup, data)
    assert np.allclose(clim.var[:, 1], setup.c) and np.allclose(clim.mean[:, 1], 0.0)
    a = run_steady(setup, paper=False)
    b = run_steady(setup, paper=False)
    c = run_steady(LinearSetup(**{**setup.__dict__, "seed": 10}), paper=False)
    keys = [k for k in a if k.endswith(("_mse", "_var"))]
    assert all(a[k] == b[k] for k in keys)
    assert a["cycling_enkf_mse"] != c["cycling_enkf_mse"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(obs_var=-1.0), "obs_var = -1.0"),
        (dict(dt=1.0), "dt = 1.0"),
        (dict(observed=()), "observed = \\(\\): the observed set is empty"),
        (dict(observed=(0, 99), n=4), "outside 0..3"),
        (dict(members=1), "members = 1"),
    ],
)
def test_bad_setups_fail_with_clear_messages(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LinearSetup(**kwargs)


def test_cli_steady_json_config_and_errors(tmp_path, capsys):
    from diffda.cycler.cli.main import main

    args = ["linear", "steady", "--n", "4", "--cycles", "300", "--spinup", "20",
            "--members", "50", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("clim_prior_var", "climatological_var", "cycling_var", "extended_var",
                "cycling_kalman_mse", "cycling_diffusion_var", "cycling_diffusion_mse",
                "cycling_enkf_var", "cycling_enkf_mse", "extended_diffusion_mse",
                "climatological_kalman_mse", "alpha", "beta", "alpha_paper", "beta_paper",
                "extended_paper_var", "extended_stochastic_var", "alpha_stochastic",
                "beta_stochastic", "extended_stochastic_mse_kalman",
                "extended_stochastic_mse_diffusion"):
        assert np.isfinite(res[key]), key
    assert res["setup"]["n"] == 4
    # A config file, with an option overriding one of its values.
    cfg = tmp_path / "lin.toml"
    cfg.write_text("n = 3\nobs_var = 2.0\ncycles = 300\nspinup = 20\nmembers = 20\n")
    assert main(["linear", "steady", "--config", str(cfg), "--obs-var", "0.5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["setup"]["n"] == 3 and res["setup"]["obs_var"] == 0.5
    assert res["climatological_var"] == pytest.approx(res["clim_prior_var"] * 0.5
                                                      / (res["clim_prior_var"] + 0.5))
    # Errors name the key and the value (and the file), and exit with status 2.
    assert main(args[:2] + ["--obs-var", "-2"]) == 2
    assert "obs_var = -2.0" in capsys.readouterr().err
    cfg.write_text("dt = 1.5\n")
    assert main(["linear", "steady", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "lin.toml" in err and "dt = 1.5" in err
    with pytest.raises(SystemExit):
        main(args[:2] + ["--observed", "x"])
    assert "--observed 'x'" in capsys.readouterr().err
