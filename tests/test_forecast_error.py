"""The forecast's own error model from innovations: the estimator recovers known (alpha,
beta) from observations and forecasts alone, pools by adding, refuses what cannot be
fitted, and on the linear test bed the cycle-fit-cycle loop finds the exact fixed point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffda.core.grid import Grid
from diffda.cycler.analysis import kalman
from diffda.cycler.analysis.forecast_error import (
    Moments,
    PairMoments,
    correlation_inflation,
    correlation_length,
    equivalent_observation,
    error_correlation,
    fit_from_moments,
    innovation_moments,
    pair_moments,
    soar,
)
from diffda.cycler.analysis.letkf import great_circle_km
from diffda.cycler.linear.testbed import (
    EXTENDED,
    LinearSetup,
    innovation_alpha_beta,
    make_truth_and_obs,
    run_ensemble_extended,
    run_kalman,
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


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.05), (0.7, 0.2)])
def test_direct_form_recovers_the_forecast_error_variance(alpha, beta):
    """The direct form: alpha = 1 and beta = E[(f - x)^2], from observations and forecasts
    alone; for a forecast that regresses to the climatology (alpha < 1) that is its
    regression's error plus the lost anomaly, (1 - alpha)^2 c + beta."""
    rng = np.random.default_rng(2)
    n, c, r = 200_000, 1.3, 0.2
    mu = rng.normal(0, 3, n)
    x = mu + np.sqrt(c) * rng.standard_normal(n)
    y = x + np.sqrt(r) * rng.standard_normal(n)
    f = alpha * x + (1 - alpha) * mu + np.sqrt(beta) * rng.standard_normal(n)
    fit = fit_from_moments(innovation_moments(y, f, r, mu), form="direct")
    assert fit.alpha == 1.0
    assert fit.beta == pytest.approx((1 - alpha) ** 2 * c + beta, rel=0.03)
    assert fit.beta == pytest.approx(float(np.mean((f - x) ** 2)), rel=0.03)
    with pytest.raises(ValueError, match="form 'both'"):
        fit_from_moments(innovation_moments(y, f, r, mu), form="both")


def test_innovation_inflation_recovers_how_much_too_narrow_an_ensemble_is():
    """An ensemble whose variance at the stations is 1/3 (variable 0) or 3x (variable 1) of
    its mean's error variance: the innovations give back 3 and the floor 1; a variable
    without observations keeps the floor."""
    from diffda.cycler.analysis.forecast_error import innovation_inflation

    rng = np.random.default_rng(5)
    n, r = 100_000, 0.3
    idx = torch.as_tensor(np.repeat([0, 1], n))
    hbh = torch.as_tensor(np.concatenate([np.full(n, 0.5), np.full(n, 4.5)]))
    err_var = np.concatenate([np.full(n, 1.5), np.full(n, 1.5)])
    d = torch.as_tensor(rng.standard_normal(2 * n) * np.sqrt(err_var + r))
    lam = innovation_inflation(d, torch.full((2 * n,), r), hbh, idx, 3)
    assert lam[0] == pytest.approx(3.0, rel=0.02)
    assert lam[1] == 1.0 and lam[2] == 1.0


def test_recovers_a_known_correlation_length_from_station_innovations():
    """Hollingsworth-Lonnberg without the truth: the truth's anomalies and the forecast
    errors both spatially correlated (different lengths), independent observation errors;
    the station-pair sums give back the forecast error's SOAR length."""
    rng = np.random.default_rng(1)
    p, draws, alpha, beta, r, length = 300, 400, 0.6, 0.5, 0.3, 900.0
    lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, p)))
    lon = rng.uniform(0, 360, p)
    d = great_circle_km(*(torch.as_tensor(a) for a in (lat, lon, lat, lon))).numpy()
    chol_eps = np.linalg.cholesky(soar(d, length) + 1e-8 * np.eye(p))
    chol_x = np.linalg.cholesky(soar(d, 2500.0) + 1e-8 * np.eye(p))
    m, pairs = Moments.zero(), PairMoments.zero()
    for _ in range(draws):
        x = chol_x @ rng.standard_normal(p)
        f = alpha * x + np.sqrt(beta) * (chol_eps @ rng.standard_normal(p))
        y = x + np.sqrt(r) * rng.standard_normal(p)
        m = m + innovation_moments(y, f, r, 0.0)
        pairs = pairs + pair_moments(y, f, 0.0, lat, lon)
    fit = fit_from_moments(m)
    assert fit.alpha == pytest.approx(alpha, abs=0.03)
    centres, rho, n = error_correlation(pairs, fit)
    assert correlation_length(centres, rho, n) == pytest.approx(length, rel=0.15)
    # the round trip of the recorded form
    assert PairMoments.from_dict(pairs.as_dict()) == pairs


def test_correlation_inflation_counts_the_cells_one_error_spans():
    grid = Grid(16, 32)
    torch.testing.assert_close(correlation_inflation(grid, None),
                               torch.ones(16, dtype=torch.float64))
    assert torch.allclose(correlation_inflation(grid, 1.0), torch.ones(16, dtype=torch.float64),
                          atol=1e-6)  # far below the spacing: independent
    short, long = correlation_inflation(grid, 800.0), correlation_inflation(grid, 2000.0)
    assert bool((long > short).all()) and bool((short > 1).all())
    torch.testing.assert_close(short, short.flip(0))  # north and south alike
    assert short[0] > short[8]  # polar cells are closer together


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


def test_ensemble_forecast_likelihood_becomes_the_kalman_filter_as_the_ensemble_grows():
    setup = LinearSetup(obs_every=10, cycles=2000, spinup=100, n=20, seed=4)
    data = make_truth_and_obs(setup)
    kal = run_kalman("cycling", setup, data)

    def mse(run):
        return float(np.mean((run.mean[100:] - data.truth[101:]) ** 2))

    small, large = (run_ensemble_extended(setup, data, m) for m in (10, 1000))
    steady = kalman.steady_cycling_variance(setup.A, setup.q, 1.0)
    assert mse(large) == pytest.approx(mse(kal), rel=0.02)
    assert float(large.var[100:].mean()) == pytest.approx(steady, rel=0.01)
    assert mse(small) > 1.1 * mse(large)  # sampling error of a small ensemble
    # P_f >= c: the forecast term carries nothing (alpha ~ 0), never a negative alpha
    alpha, beta = kalman.ensemble_forecast_parameters(np.array([0.5, 2.0]), 1.0)
    assert alpha[0] == pytest.approx(0.5) and beta[0] == pytest.approx(0.25)
    assert 0 < alpha[1] < 1e-5 and alpha[1] ** 2 / beta[1] < 1e-10


# ------------------------------------------------------------------ the atmosphere's loop

def _tiny_experiment(folder):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "driver_helpers", Path(__file__).with_name("test_driver.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    cfg = helpers.tiny_world(folder, modes=("precomputed", "reinitialized"))
    path = folder / "cases.toml"
    # 40 stations: enough pairs by distance to measure the forecast error's correlation
    path.write_text(cfg.read_text().replace("n = 12", "n = 40") + "\n[cases]\n"
                    + f"starts = {json.dumps(['0001-01-02T00:00'])}"
                    + f"\ntuning = {json.dumps(['0001-01-04T00:00'])}\nsteady_from_days = 0.5\n")
    return path


def test_calibrate_fits_each_forecast_mode_and_runs_read_the_file(tmp_path):
    import json

    from diffda.core.config import ConfigError
    from diffda.core.grid import coarsen_to
    from diffda.cycler.cli.main import main as cli_main
    from diffda.cycler.cycling.cases import load_experiment
    from diffda.cycler.cycling.driver import run_experiment
    from diffda.cycler.cycling.outputs import read_metrics
    from diffda.cycler.cycling.world import load_world

    torch.set_num_threads(1)
    path = _tiny_experiment(tmp_path / "world")
    out = tmp_path / "cal"
    assert cli_main(["calibrate", str(path), "--iterations", "2", "--out", str(out)]) == 0
    record = json.loads((out / "fitted.json").read_text())
    assert set(record["parameters"]) == {"precomputed", "reinitialized"}
    assert set(record["parameters"]["precomputed"]["height"]) == {"12", "24"}  # per lead
    assert set(record["parameters"]["reinitialized"]["height"]) == {"0"}
    assert len(record["history"]) == 2 and record["history"][1]["error_model"].startswith(
        "fitted:")
    # the forecast error's correlation lengths, from the station pairs (km, within bounds)
    for mode in ("precomputed", "reinitialized"):
        lengths = record["correlation_km"][mode]
        assert lengths and all(50 <= km <= 5000 for km in lengths.values()), lengths
    for table in record["parameters"].values():
        for leads in table.values():
            assert all(e["alpha"] > 0 and e["beta"] > 0 and e["n"] > 0 for e in leads.values())
    # a verification run reads it: its forecast term differs from the fixed one
    spec = f"fitted:{out / 'fitted.json'}"
    exp = load_experiment(path, {"analysis.forecast.error_model": spec})
    label, cfg = exp.case_configs()[0]
    run_experiment(cfg, tmp_path / "verify", plots=False)
    fixed = load_experiment(path)
    run_experiment(fixed.case_configs()[0][1], tmp_path / "fixed", plots=False)
    a, b = read_metrics(tmp_path / "verify"), read_metrics(tmp_path / "fixed")
    assert [r["height"]["rmse"] for r in a] != [r["height"]["rmse"] for r in b]
    # the term's variance: beta / alpha^2 times the correlation inflation of its row
    from diffda.cycler.cycling.forecast_fit import fitted_forecast_term, read_fitted

    world = load_world(cfg)
    model = read_fitted(spec, cfg, world.variables, world.emulator.grid)
    fc = world.climatology.expand(2, -1, -1, -1)
    term = fitted_forecast_term(world.prior, coarsen_to(fc, model.grid),
                                coarsen_to(world.climatology, model.grid), model,
                                "reinitialized", 12.0, gamma=0.0)
    e = model.at("reinitialized", "height", 12.0)
    rows = correlation_inflation(model.grid, model.length("reinitialized", "height"))
    sig = term.sigma_y.reshape(len(world.variables), model.grid.nlat, model.grid.nlon)[0]
    torch.testing.assert_close(sig, (e.beta / e.alpha**2 * rows)[:, None].expand_as(sig))
    assert bool((rows > 1).all())
    # refused: another configuration, other variables, another grid
    with pytest.raises(ConfigError, match=r"fitted for another configuration: members"):
        load_world(load_experiment(path, {"analysis.forecast.error_model": spec,
                                          "members": 4}).case_configs()[0][1])
    bad = dict(record, variables=["height", "u"])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="fitted for variables"):
        load_world(load_experiment(path, {"analysis.forecast.error_model":
                                          f"fitted:{tmp_path / 'bad.json'}"}).case_configs()[0][1])
    bad = dict(record, emulator_grid=[4, 8])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="emulator grid 4x8"):
        load_world(load_experiment(path, {"analysis.forecast.error_model":
                                          f"fitted:{tmp_path / 'bad.json'}"}).case_configs()[0][1])
    with pytest.raises(ConfigError, match="expected 'fixed' or 'fitted:PATH'"):
        load_experiment(path, {"analysis.forecast.error_model": "auto"})


def _tiny_prior(folder):
    """The tiny world's prior and its emulator grid."""
    import importlib.util
    from pathlib import Path

    from diffda.emulators.prior.model import DiffusionPrior

    spec = importlib.util.spec_from_file_location(
        "driver_helpers", Path(__file__).with_name("test_driver.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.tiny_world(folder)
    return DiffusionPrior.load(folder / "prior.safetensors"), helpers.COARSE


def test_ensemble_term_log_likelihood_equals_a_dense_gaussian(tmp_path):
    """The ensemble mode's term, on a tiny prior: its log-likelihood of states x equals that
    of the dense Gaussian N(f_mean; alpha C(x) + (1 - alpha) mu, diag(beta)) up to a
    constant, with (alpha, beta) = (1 - P_f/c, alpha P_f) per cell."""
    from diffda.core.grid import coarsen_to
    from diffda.cycler.cycling.forecast_fit import ensemble_forecast_term

    prior, coarse = _tiny_prior(tmp_path)
    g = torch.Generator().manual_seed(0)
    std = prior.std.double()[:, None, None]
    shape = (4, coarse.nlat, coarse.nlon)
    mu = prior.mean.double()[:, None, None] + 0.3 * std * torch.randn(shape, generator=g,
                                                                       dtype=torch.float64)
    c_var = (std * (0.8 + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64))) ** 2
    forecast = mu + 0.5 * std * torch.randn((5, *shape), generator=g, dtype=torch.float64)
    forecast[:, 0, :2] = mu[0, :2] + 3.0 * std[0] * torch.randn((5, 2, coarse.nlon), generator=g,
                                                               dtype=torch.float64)  # P_f > c
    term = ensemble_forecast_term(prior, forecast, mu[None], c_var[None], coarse, 1.2, 0.0)
    f = prior.normalise(forecast)
    m = prior.normalise(mu[None])[0]
    c = c_var / std.square()
    p_f = 1.2 * f.var(0)
    informative = p_f < 0.99 * c
    assert not bool(informative.all()) and bool(informative.any())
    alpha, beta = 1 - p_f / c, (1 - p_f / c) * p_f
    x = torch.randn((3, 4, prior.grid.nlat, prior.grid.nlon), generator=g, dtype=torch.float64)
    cx = coarsen_to(x, coarse)
    resid = (f.mean(0) - alpha * cx - (1 - alpha) * m)[:, informative]
    dense = torch.distributions.MultivariateNormal(
        torch.zeros(resid.shape[-1], dtype=torch.float64),
        covariance_matrix=torch.diag(beta[informative]))
    want = dense.log_prob(resid)
    got = term.log_likelihood(x, 0.0)
    # equal up to a constant in x; the uninformative cells add (almost) nothing
    torch.testing.assert_close(got - got[0], want - want[0], rtol=1e-6, atol=1e-4)
    # the direct term: N(f_mean; C(x), diag(P_f)) over every cell
    direct = ensemble_forecast_term(prior, forecast, mu[None], c_var[None], coarse, 1.2, 0.0,
                                    extended=False)
    dense = torch.distributions.MultivariateNormal(
        torch.zeros(p_f.numel(), dtype=torch.float64), covariance_matrix=torch.diag(p_f.flatten()))
    want = dense.log_prob((f.mean(0) - cx).flatten(1))
    got = direct.log_likelihood(x, 0.0)
    torch.testing.assert_close(got - got[0], want - want[0], rtol=1e-6, atol=1e-4)
    # one inflation per variable: the variable's P_f times its own factor
    lam = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    per_var = ensemble_forecast_term(prior, forecast, mu[None], c_var[None], coarse, lam, 0.0,
                                     extended=False)
    want_var = lam[:, None, None] * f.var(0)
    torch.testing.assert_close(per_var.sigma_y.reshape(want_var.shape), want_var)


def test_localized_ensemble_term_is_the_dense_extended_likelihood(tmp_path):
    """The ensemble term with the forecast ensemble's localized covariance ``P`` (all cells
    and variables, Gaspari-Cohn 3000 km, 30 % kept uncorrelated): (1) its log-likelihood of
    states x is the dense Gaussian's ``-1/2 r^T (R + s^2 Gamma C)^-1 r``, ``r = f' - C(x)``,
    ``R^-1 = P^-1 - C^-1``, ``f' = mu + (I - P C^-1)^-1 (f_mean - mu)``, Eq. 13's
    ``sigma^2 Gamma`` added as in every term (``-1/2 r^T (R + s^2 Gamma I)^-1 r``); (2) its product
    with the climatology ``N(mu, C)`` is the forecast distribution ``N(f_mean, P)`` (the
    climatology counted once); (3) with all of the variance uncorrelated it is the diagonal
    term; (4) it refuses the per-row correlation inflation beside it."""
    from diffda.core.grid import coarsen_to
    from diffda.cycler.analysis.ensemble_covariance import VARIANCE_FLOOR
    from diffda.cycler.analysis.letkf import gaspari_cohn
    from diffda.cycler.cycling.forecast_fit import ensemble_forecast_term

    prior, coarse = _tiny_prior(tmp_path)
    g = torch.Generator().manual_seed(1)
    dt, n_member, radius, share, gamma = torch.float64, 6, 3000.0, 0.3, 0.05
    std = prior.std.double()[:, None, None]
    shape = (4, coarse.nlat, coarse.nlon)
    mu = prior.mean.double()[:, None, None] + 0.3 * std * torch.randn(shape, generator=g, dtype=dt)
    c_var = (std * (1.5 + 0.5 * torch.rand(shape, generator=g, dtype=dt))) ** 2
    forecast = mu + 0.5 * std * torch.randn((n_member, *shape), generator=g, dtype=dt)
    term = ensemble_forecast_term(prior, forecast, mu[None], c_var[None], coarse, 1.2, gamma,
                                  localization_km=radius, uncorrelated_share=share)
    # the dense reference, built here from its definition
    f = prior.normalise(forecast).reshape(n_member, -1)
    m = prior.normalise(mu[None]).reshape(-1)
    c = (c_var / std.square()).reshape(-1)
    a = f - f.mean(0)
    lat = torch.as_tensor(coarse.lat, dtype=dt)[:, None].expand(shape[1:]).reshape(-1)
    lon = torch.as_tensor(coarse.lon, dtype=dt)[None, :].expand(shape[1:]).reshape(-1)
    cells = gaspari_cohn(great_circle_km(lat, lon, lat, lon) / radius)
    taper = (1 - share) * torch.kron(torch.ones(4, 4, dtype=dt), cells) + share * torch.eye(
        f.shape[1], dtype=dt)
    p = 1.2 * taper * (a.T @ a) / (n_member - 1)
    cm = torch.diag(c)
    p = p + VARIANCE_FLOOR * cm  # what keeps cells without spread defined
    w = torch.linalg.eigvalsh(p / c.sqrt()[:, None] / c.sqrt()[None, :])
    assert float(w.max()) < 0.99 and float(w.min()) > 0  # every component informative
    r_cov = torch.linalg.inv(torch.linalg.inv(p) - torch.linalg.inv(cm))
    f_eq = m + torch.linalg.solve(torch.eye(len(c), dtype=dt) - p @ torch.linalg.inv(cm),
                                  f.mean(0) - m)
    x = torch.randn((3, 4, prior.grid.nlat, prior.grid.nlon), generator=g, dtype=dt)
    cx = coarsen_to(x, coarse).reshape(3, -1)
    for s in (0.0, 0.7):
        r = f_eq - cx
        r_t = r_cov + s**2 * gamma * torch.eye(len(c), dtype=dt)
        want = -0.5 * (r * torch.linalg.solve(r_t, r.T).T).sum(1)
        torch.testing.assert_close(term.log_likelihood(x, s), want, rtol=1e-7, atol=1e-7)
    # (2) the term's own precision and centre, from its basis, scale and variances
    op = term.operator
    q = op.basis @ torch.diag(1 / term.sigma_y) @ op.basis.T
    centre = m + op.basis @ term.y
    post = torch.linalg.inv(torch.linalg.inv(cm) + q)
    torch.testing.assert_close(post, p, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(post @ (m / c + q @ centre), f.mean(0), rtol=1e-6, atol=1e-8)
    # (3) all of the variance uncorrelated: the diagonal term
    diag = ensemble_forecast_term(prior, forecast, mu[None], c_var[None], coarse, 1.2, gamma)
    full = ensemble_forecast_term(prior, forecast, mu[None], c_var[None], coarse, 1.2, gamma,
                                  localization_km=radius, uncorrelated_share=1.0)
    for s in (0.0, 0.7):  # to the variance floor's 1e-8 of the climate variance
        torch.testing.assert_close(full.log_likelihood(x, s), diag.log_likelihood(x, s),
                                   rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="already holds the forecast error's correlations"):
        ensemble_forecast_term(prior, forecast, mu[None], c_var[None], coarse, 1.2, gamma,
                               correlated=True, localization_km=radius)


def test_ensemble_correlation_length_recovers_a_known_soar_length():
    """An ensemble drawn with SOAR-correlated anomalies (length 1200 km) on the 16x32
    emulator grid: the length its cell pairs show is the one it was drawn with; the
    ensemble term's variance then grows per row by that length's correlation inflation."""
    from diffda.cycler.analysis.forecast_error import ensemble_correlation_length

    grid, length = Grid(16, 32), 1200.0
    lat = torch.as_tensor(grid.lat, dtype=torch.float64)[:, None].expand(16, 32).reshape(-1)
    lon = torch.as_tensor(grid.lon, dtype=torch.float64)[None, :].expand(16, 32).reshape(-1)
    cov = soar(great_circle_km(lat, lon, lat, lon), length)
    chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(len(lat), dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    members = (chol @ torch.randn(len(lat), 400, generator=g, dtype=torch.float64)).T
    anomalies = (members - members.mean(0)).reshape(400, 16, 32)
    assert ensemble_correlation_length(anomalies, grid) == pytest.approx(length, rel=0.15)
    with pytest.raises(ValueError, match="fewer than two cells"):
        ensemble_correlation_length(torch.zeros(4, 16, 32), grid)


def test_ensemble_mode_runs_end_to_end(tmp_path):
    import importlib.util
    from pathlib import Path

    from diffda.core.config import ConfigError
    from diffda.core.grid import coarsen_to
    from diffda.cycler.analysis.letkf import rtps_factor
    from diffda.cycler.cycling.checkpoint import cycle_path
    from diffda.cycler.cycling.config import load_run_config
    from diffda.cycler.cycling.driver import run_experiment
    from diffda.cycler.cycling.modes import bilinear_upsample
    from diffda.cycler.cycling.outputs import read_metrics

    spec = importlib.util.spec_from_file_location(
        "driver_helpers", Path(__file__).with_name("test_driver.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    torch.set_num_threads(1)
    path = helpers.tiny_world(tmp_path / "w", modes=("ensemble",))
    variants = {"diagonal": {}, "correlated": {"analysis.ensemble_correlation": True},
                "localized": {"analysis.ensemble_localization_km": 3000.0},
                "rtps": {"analysis.ensemble_rtps": 1.0},
                "direct": {"analysis.ensemble_term": "direct"},
                "adaptive": {"analysis.ensemble_term": "direct",
                             "analysis.ensemble_adaptive_inflation": True}}
    heights, spreads = {}, {}
    for name, overrides in variants.items():
        cfg = load_run_config(path, {"analysis.ensemble_inflation": 1.1, **overrides})
        run_experiment(cfg, tmp_path / name, plots=False)
        records = read_metrics(tmp_path / name)
        assert [r["cycle"] for r in records] == [1, 2]
        for r in records:
            for v in ("height", "u", "v", "tracer"):
                assert np.isfinite(r[v]["rmse"]) and r[v]["spread"] > 0
                row = r["innovations"][v]
                assert row["hbh_ensemble"] > 0  # the forecast ensemble's spread
                # what the term assumes there: that spread times the inflation (adaptive:
                # times the factor the innovations asked for, at least 1)
                lam = r["method"].get(f"inflation_{v}", 1.1)
                assert lam >= 1.1 - 1e-12 and (name == "adaptive") == (f"inflation_{v}"
                                                                        in r["method"])
                assert row["hbh_term"] == pytest.approx(lam * row["hbh_ensemble"], rel=1e-12)
        heights[name] = [r["height"]["rmse"] for r in records]
        spreads[name] = [r["height"]["spread"] for r in records]
    assert heights["localized"] != heights["diagonal"]
    assert heights["direct"] != heights["diagonal"]
    assert heights["adaptive"] != heights["direct"]
    # RTPS 1: cycle 1 is the diagonal run's analysis (same draws), its anomalies times the
    # factor that gives its coarsened spread the forecast ensemble's, interpolated
    assert spreads["rtps"][0] != spreads["diagonal"][0]
    plain, relaxed = (torch.load(cycle_path(tmp_path / name, "ensemble", 1),
                                 weights_only=True)["tensors"] for name in ("diagonal", "rtps"))
    a, forecast = plain["analysis"], plain["forecast"]
    factor = rtps_factor(coarsen_to(a, Grid(*forecast.shape[-2:])), forecast, 1.0)
    mean = a.mean(0, keepdim=True)
    want = mean + bilinear_upsample(factor, Grid(*a.shape[-2:])) * (a - mean)
    torch.testing.assert_close(relaxed["analysis"], want)
    with pytest.raises(ConfigError, match="ensemble_localization_km > 0"):
        load_run_config(path, {"analysis.ensemble_correlation": True,
                               "analysis.ensemble_localization_km": 3000.0})
    with pytest.raises(ConfigError, match="ensemble_uncorrelated_share"):
        load_run_config(path, {"analysis.ensemble_uncorrelated_share": 0.0})
    with pytest.raises(ConfigError, match="ensemble_rtps"):
        load_run_config(path, {"analysis.ensemble_rtps": 1.5})
    with pytest.raises(ConfigError, match="ensemble_term"):
        load_run_config(path, {"analysis.ensemble_term": "naive"})
    with pytest.raises(ConfigError, match="extended likelihood only"):
        load_run_config(path, {"analysis.ensemble_term": "direct",
                               "analysis.ensemble_localization_km": 3000.0})


def test_relaxation_damps_an_oscillating_fixed_point_iteration():
    """The calibration's relaxed step: alpha moves linearly, beta and the lengths
    geometrically; on a map with slope -1 in log(beta) (beta -> c / beta: the undamped
    iteration cycles forever between two values) the half step lands on the fixed point."""
    from diffda.cycler.analysis.forecast_error import ForecastError
    from diffda.cycler.cycling.calibrate import relax, relax_lengths

    old = {"reinitialized": {"height": {0: ForecastError(0.2, 0.04, 10)}}}
    new = {"reinitialized": {"height": {0: ForecastError(0.6, 0.01, 12)},
                             "u": {0: ForecastError(0.5, 0.3, 12)}}}
    r = relax(old, new, 0.5)["reinitialized"]
    assert r["height"][0].alpha == pytest.approx(0.4) and r["height"][0].beta == pytest.approx(0.02)
    assert r["u"][0] == new["reinitialized"]["u"][0]  # nothing to relax toward
    assert relax(old, new, 1.0)["reinitialized"]["height"][0].beta == pytest.approx(0.01)
    lengths = relax_lengths({"m": {"h": 400.0, "u": None}}, {"m": {"h": 1600.0, "u": 900.0}}, 0.5)
    assert lengths == {"m": {"h": pytest.approx(800.0), "u": 900.0}}

    c = 0.09  # fixed point beta = 0.3
    def step(beta: float, omega: float) -> float:
        fit = {"m": {"v": {0: ForecastError(0.5, c / beta, 1)}}}
        return relax({"m": {"v": {0: ForecastError(0.5, beta, 1)}}}, fit, omega)["m"]["v"][0].beta

    undamped = [0.05]
    for _ in range(4):
        undamped.append(step(undamped[-1], 1.0))
    assert undamped[2] == pytest.approx(undamped[0]) and undamped[1] == pytest.approx(1.8)
    assert step(0.05, 0.5) == pytest.approx(0.3)


def test_direct_form_file_round_trip_and_term(tmp_path):
    """A fitted file of the direct form: written with its form, read back, its term is the
    forecast itself with the fitted variance (times the row's correlation inflation); a
    file of an unknown form is refused naming it."""
    import json

    from diffda.core.config import ConfigError
    from diffda.core.grid import coarsen_to
    from diffda.cycler.analysis.forecast_error import ForecastError
    from diffda.cycler.cycling.forecast_fit import (
        fitted_forecast_term,
        read_fitted,
        write_fitted,
    )

    prior, coarse = _tiny_prior(tmp_path / "world")
    from diffda.cycler.cycling.config import RunConfig

    cfg = RunConfig()
    params = {"reinitialized": {v: {0: ForecastError(1.0, 0.1 * (i + 1), 50)}
                                for i, v in enumerate(prior.variables)}}
    lengths = {"reinitialized": {prior.variables[0]: 900.0}}
    path = tmp_path / "fitted.json"
    record = write_fitted(path, cfg, prior.variables, coarse, params, lengths=lengths,
                          form="direct")
    assert record["form"] == "direct"
    model = read_fitted(f"fitted:{path}", cfg, prior.variables, coarse)
    assert model.form == "direct"
    clim = torch.zeros(1, len(prior.variables), prior.grid.nlat, prior.grid.nlon)
    clim += prior.mean.float()[None, :, None, None]
    forecast = clim + prior.std.float()[None, :, None, None] * torch.randn(
        2, len(prior.variables), prior.grid.nlat, prior.grid.nlon)
    fc = coarsen_to(forecast, coarse)
    term = fitted_forecast_term(prior, fc, coarsen_to(clim, coarse), model, "reinitialized",
                                12.0, gamma=0.0)
    torch.testing.assert_close(term.y, prior.normalise(fc.double()).reshape(2, -1))
    sig = term.sigma_y.reshape(len(prior.variables), coarse.nlat, coarse.nlon)
    rows = correlation_inflation(coarse, 900.0)
    torch.testing.assert_close(sig[0], (0.1 * rows)[:, None].expand_as(sig[0]))
    torch.testing.assert_close(sig[1], torch.full_like(sig[1], 0.2))
    bad = dict(record, form="both")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="form 'both'"):
        read_fitted(f"fitted:{tmp_path / 'bad.json'}", cfg, prior.variables, coarse)
    with pytest.raises(ValueError, match="form 'both'"):
        write_fitted(path, cfg, prior.variables, coarse, params, form="both")


def test_calibrate_direct_form_fits_the_error_variance_with_alpha_one(tmp_path):
    import json

    from diffda.cycler.analysis.forecast_error import fit_from_moments
    from diffda.cycler.cli.main import main as cli_main
    from diffda.cycler.cycling.cases import load_cases
    from diffda.cycler.cycling.forecast_fit import pooled_moments

    torch.set_num_threads(1)
    path = _tiny_experiment(tmp_path / "world")
    out = tmp_path / "cal"
    assert cli_main(["calibrate", str(path), "--iterations", "1", "--form", "direct",
                     "--out", str(out)]) == 0
    record = json.loads((out / "fitted.json").read_text())
    assert record["form"] == "direct" and record["history"][0]["form"] == "direct"
    # the reinitialized mode's parameters: the runs' own innovations, direct form
    _, cases, _ = load_cases([out / "iteration_0"])
    moments = pooled_moments([r for case in cases for r in case], "reinitialized", 12.0, False)
    for v, table in record["parameters"]["reinitialized"].items():
        fit = fit_from_moments(moments[v][0], form="direct")
        assert table["0"]["alpha"] == 1.0
        assert table["0"]["beta"] == pytest.approx(fit.beta, rel=1e-12)
        assert table["0"]["beta"] != pytest.approx(fit_from_moments(moments[v][0]).beta,
                                                   rel=1e-3)
    assert all(e["alpha"] == 1.0 for t in record["parameters"]["precomputed"].values()
               for e in t.values())
