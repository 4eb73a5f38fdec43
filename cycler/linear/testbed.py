"""The linear-Gaussian test bed: Kalman, EnKF and diffusion DA side by side.

Setting and equations: ``LINEAR_THEORY.md`` (from Hodyss and Morzfeld, "Diffusion models
for data assimilation"). A truth run of the discrete OU model (:mod:`diffda.emulators.linear`) is
observed every ``obs_every`` model steps; three posteriors are computed by the exact Kalman
formulas (:mod:`diffda.cycler.analysis.kalman`), by diffusion (the exact denoiser of each posterior
and the reverse SDE, :mod:`diffda.cycler.analysis.reverse_sde`) and, for the cycling prior, by a
stochastic EnKF (:mod:`diffda.cycler.analysis.enkf`).

As in the paper, each diffusion DA system runs on its own: the cycling one propagates its
*ensemble's* mean and variance to the next cycle, the extended ones forecast from their own
ensemble mean; only the climatological one has no memory.

The extended likelihood's forecast is made two ways (:data:`~diffda.cycler.analysis.kalman.
FORECASTS`): ``extended`` integrates the previous posterior mean deterministically,
``f = A m``; ``extended_stochastic`` as the paper does (its Eq. 73, the model step with its
random draw), ``f = A m + w'``, ``w' ~ N(0, q)``. Each has its own self-consistent
``(alpha, beta)`` (:func:`~diffda.cycler.analysis.kalman.extended_fixed_point`).

Random streams (numpy generators seeded from ``seed``): the truth run and the observation
errors use one generator each; the EnKF and the diffusion samplers use one generator per
cycle, derived from (seed, stream, cycle), and draw all members of that cycle in one call
(the test bed is vectorised over members; member-level streams would only cost time here).
Forecasts over one observation interval use the K-step transition of the discrete model,
exact in law (:func:`diffda.emulators.linear.advance`), so one draw stands for K steps.

Diffusion samplers (``sampler``): ``"em"`` steps the Euler-Maruyama chain with a draw at
every step; ``"composed"`` (default) draws the same chain's output in one step, exactly in
law, because the exact denoiser is affine (see :mod:`diffda.cycler.analysis.reverse_sde`).
Both carry the EM discretisation error; the tests check that they agree.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffda.core.config import require
from diffda.core.rng import numpy_generator
from diffda.cycler.analysis import kalman
from diffda.cycler.analysis.enkf import stochastic_enkf_analysis
from diffda.cycler.analysis.reverse_sde import (
    EMVarianceTable,
    em_output_variance,
    sample_em_stepwise_numpy,
)
from diffda.emulators.linear import (
    advance,
    climatological_variance,
    decay,
    interval_noise_variance,
)

POSTERIORS = ("climatological", "cycling", "extended", "extended_stochastic")
#: The extended posteriors and how each makes its forecast.
EXTENDED = {"extended": "deterministic", "extended_stochastic": "stochastic"}


@dataclass(frozen=True, kw_only=True)
class LinearSetup:
    """One linear-Gaussian experiment. ``observed=None`` observes every component."""

    dt: float = 0.01
    obs_every: int = 10
    obs_var: float = 1.0
    n: int = 40
    observed: tuple[int, ...] | None = None
    cycles: int = 5000
    spinup: int = 200
    members: int = 500
    seed: int = 0
    sde_steps: int = 1000
    t_max: float = 10.0
    sampler: Literal["composed", "em"] = "composed"
    paper_max_iter: int = 30
    paper_tol: float = 0.005
    paper_init: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        require(0 < self.dt < 1, "dt", self.dt, "the discrete OU model needs 0 < dt < 1")
        require(self.obs_every >= 1, "obs_every", self.obs_every, "must be >= 1 model step")
        require(self.obs_var > 0, "obs_var", self.obs_var, "observation error variance must be > 0")
        require(self.n >= 1, "n", self.n, "need at least one component")
        if self.observed is not None:
            require(len(self.observed) > 0, "observed", self.observed,
                    "the observed set is empty (use None to observe every component)")
            bad = [i for i in self.observed if not 0 <= i < self.n]
            require(not bad, "observed", self.observed, f"indices {bad} outside 0..{self.n - 1}")
            require(len(set(self.observed)) == len(self.observed), "observed", self.observed,
                    "indices repeat")
        require(self.cycles > self.spinup >= 0, "cycles", self.cycles,
                f"must exceed spinup = {self.spinup}")
        require(self.members >= 2, "members", self.members, "need at least 2 members")
        require(self.sde_steps >= 1, "sde_steps", self.sde_steps, "must be >= 1")
        require(self.t_max > 0, "t_max", self.t_max, "must be > 0")
        require(self.sampler in ("composed", "em"), "sampler", self.sampler,
                "expected 'composed' or 'em'")
        if self.paper_init is not None:
            require(len(self.paper_init) == 2 and self.paper_init[1] > 0, "paper_init",
                    self.paper_init, "expected (alpha, beta) with beta > 0")

    # Constants of the discrete model over one observation interval.
    @property
    def c(self) -> float:
        return climatological_variance(self.dt)

    @property
    def A(self) -> float:
        return decay(self.dt, self.obs_every)

    @property
    def q(self) -> float:
        return interval_noise_variance(self.dt, self.obs_every)

    @property
    def mask(self) -> np.ndarray:
        """Boolean ``(n,)``: which components are observed."""
        m = np.zeros(self.n, dtype=bool)
        m[list(self.observed) if self.observed is not None else slice(None)] = True
        return m


@dataclass(frozen=True)
class TruthAndObs:
    """``truth``: ``(cycles + 1, n)`` at analysis times (row 0: the initial state);
    ``obs``: ``(cycles + 1, n)``, row ``k`` observes ``truth[k]`` (row 0 unused; NaN where
    a component is not observed); ``forecast_noise``: ``(cycles + 1, n)``, row ``k`` the
    model draw ``w' ~ N(0, q)`` of the stochastic forecast valid at cycle ``k`` (shared by
    the Kalman and diffusion versions: common random numbers)."""

    truth: np.ndarray
    obs: np.ndarray
    forecast_noise: np.ndarray | None = None


def make_truth_and_obs(setup: LinearSetup) -> TruthAndObs:
    """Run the truth with the discrete OU model and draw the observations."""
    rng = numpy_generator(setup.seed, "truth")
    noise = rng.standard_normal((setup.cycles + 1, setup.n))
    truth = np.empty_like(noise)
    truth[0] = setup.c**0.5 * noise[0]
    for k in range(1, setup.cycles + 1):
        truth[k] = advance(truth[k - 1], setup.dt, setup.obs_every, noise[k])
    e = numpy_generator(setup.seed, "obs").standard_normal(truth.shape)
    obs = truth + setup.obs_var**0.5 * e
    obs[:, ~setup.mask] = np.nan
    w = numpy_generator(setup.seed, "forecast-noise").standard_normal(truth.shape)
    return TruthAndObs(truth, obs, setup.q**0.5 * w)


# --- Kalman runs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Means ``(cycles, n)`` and variances ``(cycles, n)`` of one method, cycles 1..N."""

    mean: np.ndarray
    var: np.ndarray


def _gaussian_analysis(
    name: str, setup: LinearSetup, y: np.ndarray, m_prev: np.ndarray, p_prev: np.ndarray,
    alpha: float = 1.0, beta: float = 1.0, w: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The posterior mean and variance ``(n,)`` of posterior ``name`` at one cycle.

    ``m_prev, p_prev``: previous analysis (used by ``cycling``; the extended posteriors use
    ``m_prev`` only, through the forecast ``f = A m_prev`` (``extended``) or
    ``f = A m_prev + w`` (``extended_stochastic``, ``w`` the cycle's model draw)).
    """
    mask, c, r = setup.mask, setup.c, setup.obs_var
    if name == "climatological":
        mean, var = np.zeros(setup.n), np.full(setup.n, c)
        mean[mask], var[mask] = kalman.climatological_posterior(y[mask], c, r)
    elif name == "cycling":
        mean, var = kalman.kalman_forecast(m_prev, p_prev, setup.A, setup.q)
        mean, var = mean.copy(), np.array(var, dtype=float)
        mean[mask], var[mask] = kalman.kalman_update(mean[mask], var[mask], y[mask], r)
    elif name in EXTENDED:
        f = setup.A * m_prev
        if name == "extended_stochastic":
            if w is None:
                raise ValueError("the stochastic forecast needs the cycle's model draw w")
            f = f + w
        mean, v0 = kalman.forecast_only_posterior(f, c, alpha, beta)
        var = np.full(setup.n, v0)
        mean[mask], var[mask] = kalman.extended_posterior(y[mask], f[mask], c, r, alpha, beta)
    else:
        raise ValueError(f"unknown posterior {name!r}; expected one of {POSTERIORS}")
    return mean, var


def _w(data: TruthAndObs, k: int) -> np.ndarray | None:
    return None if data.forecast_noise is None else data.forecast_noise[k]


def run_kalman(
    name: str, setup: LinearSetup, data: TruthAndObs, alpha: float = 1.0, beta: float = 1.0
) -> Run:
    """Cycle the exact Kalman version of posterior ``name`` through the observations."""
    if name == "climatological":  # no memory: vectorised over cycles
        mean = np.zeros_like(data.obs[1:])
        var = np.full_like(mean, setup.c)
        mk = setup.mask
        mean[:, mk], v = kalman.climatological_posterior(data.obs[1:, mk], setup.c, setup.obs_var)
        var[:, mk] = v
        return Run(mean, var)
    m, p = np.zeros(setup.n), np.full(setup.n, setup.c)
    means, variances = [], []
    for k in range(1, setup.cycles + 1):
        m, p = _gaussian_analysis(name, setup, data.obs[k], m, p, alpha, beta, _w(data, k))
        means.append(m)
        variances.append(np.broadcast_to(p, (setup.n,)))
    return Run(np.array(means), np.array(variances))


# --- Diffusion runs ------------------------------------------------------------------------

class _Sampler:
    """Draws ensembles ``(members, *mu.shape)`` from the reverse SDE for ``N(mu, s2)``."""

    def __init__(self, setup: LinearSetup) -> None:
        self.setup = setup
        self.table = EMVarianceTable(setup.t_max, setup.sde_steps)

    def __call__(self, mu: np.ndarray, s2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        st = self.setup
        s2 = np.broadcast_to(s2, mu.shape)
        if st.sampler == "em":
            return sample_em_stepwise_numpy(mu, s2, st.members, st.t_max, st.sde_steps, rng)
        # The EM chain's output law, N(mu, em_var): see diffda.cycler.analysis.reverse_sde.
        return mu + np.sqrt(self.table(s2)) * rng.standard_normal((st.members, *mu.shape))


def run_diffusion(
    name: str, setup: LinearSetup, data: TruthAndObs, alpha: float = 1.0, beta: float = 1.0
) -> Run:
    """Diffusion DA for posterior ``name``: each cycle, the exact denoiser of that cycle's
    posterior and the reverse SDE give an ensemble; its mean and variance are the analysis
    (and, for ``cycling``/``extended``, what the next cycle starts from)."""
    stream = f"diffusion-{name}"
    draw = _Sampler(setup)
    m, p = np.zeros(setup.n), np.full(setup.n, setup.c)
    means, variances = [], []
    for k in range(1, setup.cycles + 1):
        mu, s2 = _gaussian_analysis(name, setup, data.obs[k], m, p, alpha, beta, _w(data, k))
        ens = draw(mu, s2, numpy_generator(setup.seed, stream, k))
        m, p = ens.mean(0), ens.var(0, ddof=1)
        means.append(m)
        variances.append(p)
    return Run(np.array(means), np.array(variances))


def run_enkf(setup: LinearSetup, data: TruthAndObs) -> Run:
    """Stochastic EnKF (perturbed observations) with the cycling prior: members forecast
    with the discrete OU model, ensemble initialised from the climatology."""
    rng0 = numpy_generator(setup.seed, "enkf-init")
    ens = setup.c**0.5 * rng0.standard_normal((setup.members, setup.n))
    idx = np.flatnonzero(setup.mask)
    H = torch.eye(setup.n, dtype=torch.float64)[idx]
    means, variances = [], []
    for k in range(1, setup.cycles + 1):
        rng = numpy_generator(setup.seed, "enkf", k)
        ens = advance(ens, setup.dt, setup.obs_every, rng.standard_normal(ens.shape))
        z = torch.from_numpy(rng.standard_normal((setup.members, len(idx))))
        y = torch.from_numpy(data.obs[k, idx])
        ens = stochastic_enkf_analysis(torch.from_numpy(ens), y, H, setup.obs_var, z).numpy()
        means.append(ens.mean(0))
        variances.append(ens.var(0, ddof=1))
    return Run(np.array(means), np.array(variances))


def run_ensemble_extended(setup: LinearSetup, data: TruthAndObs, members: int | None = None
                          ) -> Run:
    """The ensemble-forecast likelihood (the atmosphere's ``ensemble`` mode): every member
    forecast from its own analysis with the discrete model (noise included); the forecast
    term is the extended likelihood with the ensemble's mean and variance,
    ``(alpha, beta) = (1 - P_f/c, alpha P_f)`` (:func:`~diffda.cycler.analysis.kalman.
    ensemble_forecast_parameters`), beside the climatological prior and the observations;
    the members are then drawn from that Gaussian posterior (what the exact sampler
    draws). As the ensemble grows this is the Kalman filter."""
    m = members or setup.members
    ens = setup.c**0.5 * numpy_generator(setup.seed, "ensemble-init").standard_normal(
        (m, setup.n))
    mk, c, r = setup.mask, setup.c, setup.obs_var
    means, variances = [], []
    for k in range(1, setup.cycles + 1):
        rng = numpy_generator(setup.seed, "ensemble", k)
        ens = advance(ens, setup.dt, setup.obs_every, rng.standard_normal(ens.shape))
        f, p_f = ens.mean(0), ens.var(0, ddof=1)
        alpha, beta = kalman.ensemble_forecast_parameters(p_f, c)
        v = 1.0 / (1.0 / c + alpha**2 / beta)
        mean = v * alpha * f / beta
        v_obs = 1.0 / (1.0 / v[mk] + 1.0 / r)
        mean[mk] = v_obs * (mean[mk] / v[mk] + data.obs[k, mk] / r)
        v[mk] = v_obs
        ens = mean + np.sqrt(v) * rng.standard_normal((m, setup.n))
        means.append(mean)
        variances.append(v)
    return Run(np.array(means), np.array(variances))


# --- (alpha, beta) of the extended likelihood --------------------------------------------

@dataclass(frozen=True)
class PaperFit:
    alpha: float
    beta: float
    iterations: int
    converged: bool
    history: list[dict[str, float]]


def forecast_truth_pairs(
    setup: LinearSetup, data: TruthAndObs, run: Run, name: str = "extended"
) -> tuple[np.ndarray, np.ndarray]:
    """(truth, forecast) pairs after spin-up: ``f_k = A m_{k-1}`` (``+ w_k`` for
    ``extended_stochastic``) against ``x_k``."""
    f = setup.A * run.mean[setup.spinup:-1]
    if name == "extended_stochastic":
        assert data.forecast_noise is not None
        f = f + data.forecast_noise[setup.spinup + 2:]
    x = data.truth[setup.spinup + 2:]
    mk = setup.mask
    return x[:, mk].ravel(), f[:, mk].ravel()


def paper_alpha_beta(setup: LinearSetup, data: TruthAndObs, name: str = "extended"
                     ) -> PaperFit:
    """The paper's recipe (section 4.2.1): cycle the extended Kalman filter, then fit
    (i) the slope of forecast on truth, ``E[f | x] = alpha x`` -> ``alpha_1``, and
    (ii) a quadratic to the forecast's squared error, ``E[(f - x)^2 | x] =
    (alpha - 1)^2 x^2 + beta`` -> ``alpha_2 = 1 - sqrt(x^2 coefficient)`` and ``beta``;
    re-run with (alpha_1, beta) until ``|alpha_1 - alpha_2| < paper_tol`` ("agree to two
    decimal places"). ``name``: which extended posterior (how its forecast is made,
    :data:`EXTENDED`). Starts from ``setup.paper_init``, by default the regression of the
    forecast of a perfect analysis
    (:func:`diffda.cycler.analysis.kalman.perfect_forecast_parameters`).

    Note: for jointly Gaussian (x, f), ``E[(f - x)^2 | x]`` *is* ``(alpha_1 - 1)^2 x^2 +
    beta``, so the two estimates agree up to sampling error after any run: the stopping
    rule is met at once and the result is the regression of the first run, which depends
    on the initial guess. :func:`diffda.cycler.analysis.kalman.extended_fixed_point` finds the
    self-consistent pair instead.
    """
    alpha, beta = setup.paper_init or kalman.perfect_forecast_parameters(setup.A, setup.c)
    history = []
    for it in range(1, setup.paper_max_iter + 1):
        run = run_kalman(name, setup, data, alpha, beta)
        x, f = forecast_truth_pairs(setup, data, run, name)
        alpha1 = float(np.dot(f, x) / np.dot(x, x))
        c2, _, c0 = np.polyfit(x, (f - x) ** 2, 2)
        alpha2 = float(1.0 - np.sqrt(max(c2, 0.0)))
        history.append({"alpha": alpha, "beta": beta, "alpha_slope": alpha1,
                        "alpha_quadratic": alpha2, "beta_quadratic": float(c0)})
        if abs(alpha1 - alpha2) < setup.paper_tol:
            return PaperFit(alpha1, float(c0), it, True, history)
        alpha, beta = alpha1, max(float(c0), 1e-12)
    return PaperFit(alpha, beta, setup.paper_max_iter, False, history)


def reestimate_alpha_beta(
    setup: LinearSetup, data: TruthAndObs, damping: float = 0.5, tol: float = 1e-3,
    max_iter: int = 40, name: str = "extended",
) -> PaperFit:
    """Plain re-estimation by simulation: cycle the extended Kalman filter, regress its
    forecasts on the truth (slope ``alpha``, residual variance ``beta``), move the
    parameters by ``damping`` toward the fit, repeat until they change by less than ``tol``.
    The simulated counterpart of :func:`diffda.cycler.analysis.kalman.extended_fixed_point`.
    """
    alpha, beta = setup.paper_init or kalman.perfect_forecast_parameters(setup.A, setup.c)
    history = []
    for it in range(1, max_iter + 1):
        run = run_kalman(name, setup, data, alpha, beta)
        x, f = forecast_truth_pairs(setup, data, run, name)
        a_fit = float(np.dot(f, x) / np.dot(x, x))
        b_fit = float(np.mean((f - a_fit * x) ** 2))
        history.append({"alpha": alpha, "beta": beta, "alpha_fit": a_fit, "beta_fit": b_fit})
        if max(abs(a_fit - alpha), abs(b_fit - beta)) < tol:
            return PaperFit(a_fit, b_fit, it, True, history)
        alpha = (1 - damping) * alpha + damping * a_fit
        beta = (1 - damping) * beta + damping * b_fit
    return PaperFit(alpha, beta, max_iter, False, history)


def innovation_alpha_beta(
    setup: LinearSetup, data: TruthAndObs, name: str = "extended_stochastic",
    damping: float = 0.5, tol: float = 1e-3, max_iter: int = 40,
) -> PaperFit:
    """The truth-free estimate (what a real centre can do): cycle the extended Kalman
    filter, fit ``(alpha, beta)`` from its forecasts and the observations alone, with the
    known observation-error variance (:func:`~diffda.cycler.analysis.forecast_error.
    fit_from_moments`), move toward the fit by ``damping``, repeat until the change is
    below ``tol``. The same estimator the atmosphere's forecast term uses."""
    from diffda.cycler.analysis.forecast_error import fit_from_moments, innovation_moments

    alpha, beta = setup.paper_init or kalman.perfect_forecast_parameters(setup.A, setup.c)
    history = []
    s, mk = setup.spinup, setup.mask
    for it in range(1, max_iter + 1):
        run = run_kalman(name, setup, data, alpha, beta)
        f = setup.A * run.mean[s:-1]
        if name == "extended_stochastic":
            assert data.forecast_noise is not None
            f = f + data.forecast_noise[s + 2:]
        y = data.obs[s + 2:]
        fit = fit_from_moments(innovation_moments(y[:, mk], f[:, mk], setup.obs_var, 0.0))
        history.append({"alpha": alpha, "beta": beta, "alpha_fit": fit.alpha,
                        "beta_fit": fit.beta})
        if max(abs(fit.alpha - alpha), abs(fit.beta - beta)) < tol:
            return PaperFit(fit.alpha, fit.beta, it, True, history)
        alpha = (1 - damping) * alpha + damping * fit.alpha
        beta = (1 - damping) * beta + damping * fit.beta
    return PaperFit(alpha, beta, max_iter, False, history)


# --- The steady-state experiment ------------------------------------------------------------

def _scores(run: Run, data: TruthAndObs, setup: LinearSetup) -> tuple[float, float]:
    """Time-averaged (after spin-up) MSE of the mean and mean variance, observed components."""
    s, mk = setup.spinup, setup.mask
    err = run.mean[s:, mk] - data.truth[1 + s:, mk]
    return float(np.mean(err**2)), float(np.mean(run.var[s:, mk]))


def exact_variances(setup: LinearSetup) -> dict[str, float]:
    """Closed-form steady-state posterior variances of observed components, and each
    extended posterior's self-consistent ``(alpha, beta)`` (``alpha``, ``beta`` for the
    deterministic forecast; ``alpha_stochastic``, ``beta_stochastic`` for the paper's)."""
    out: dict[str, float] = {
        "clim_prior_var": setup.c,
        "climatological_var": kalman.climatological_posterior(0.0, setup.c, setup.obs_var)[1],
        "cycling_var": float(kalman.steady_cycling_variance(setup.A, setup.q, setup.obs_var)),
    }
    for name, forecast in EXTENDED.items():
        fp = kalman.extended_fixed_point(setup.A, setup.q, setup.c, setup.obs_var,
                                         forecast=forecast)
        st = kalman.extended_stationary(setup.A, setup.q, setup.c, setup.obs_var, fp.alpha,
                                        fp.beta, forecast)
        tag = "" if forecast == "deterministic" else "_stochastic"
        out.update({f"{name}_var": st.var, f"{name}_mse_exact": st.mse,
                    f"alpha{tag}": fp.alpha, f"beta{tag}": fp.beta,
                    f"fixed_point_residual{tag}": fp.residual,
                    f"fixed_point_iterations{tag}": fp.iterations})
    return out


def _parameters(out: dict[str, object], name: str) -> tuple[float, float]:
    """The self-consistent ``(alpha, beta)`` of posterior ``name`` in ``out``."""
    tag = "_stochastic" if name == "extended_stochastic" else ""
    return float(out[f"alpha{tag}"]), float(out[f"beta{tag}"])  # type: ignore[arg-type]


def run_steady(setup: LinearSetup, methods: tuple[str, ...] = ("kalman", "diffusion", "enkf"),
               paper: bool = True) -> dict[str, object]:
    """Run every method on one truth and report the numbers of ``cycler linear steady``.

    Keys ``<posterior>_<method>_mse`` / ``_var`` for every posterior of :data:`POSTERIORS`
    and method; the stochastic-forecast extended posterior also as
    ``extended_stochastic_mse_kalman`` / ``_mse_diffusion``."""
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    data = make_truth_and_obs(setup)
    timings["truth"] = time.perf_counter() - tic
    out: dict[str, object] = {"setup": dataclasses.asdict(setup)}
    out.update(exact_variances(setup))
    out["em_var_ratio"] = float(
        em_output_variance(out["cycling_var"], setup.t_max, setup.sde_steps) / out["cycling_var"]
    )
    for name in POSTERIORS:
        alpha, beta = _parameters(out, name)
        for method, runner in (("kalman", run_kalman), ("diffusion", run_diffusion)):
            if method in methods:
                tic = time.perf_counter()
                run = runner(name, setup, data, alpha, beta)
                out[f"{name}_{method}_mse"], out[f"{name}_{method}_var"] = _scores(run, data,
                                                                                 setup)
                timings[f"{name}_{method}"] = time.perf_counter() - tic
    for method in ("kalman", "diffusion"):
        if f"extended_stochastic_{method}_mse" in out:
            out[f"extended_stochastic_mse_{method}"] = out[f"extended_stochastic_{method}_mse"]
    if "enkf" in methods:
        tic = time.perf_counter()
        enkf = run_enkf(setup, data)
        out["cycling_enkf_mse"], out["cycling_enkf_var"] = _scores(enkf, data, setup)
        timings["cycling_enkf"] = time.perf_counter() - tic
    if paper:
        tic = time.perf_counter()
        fit = paper_alpha_beta(setup, data)
        st = kalman.extended_stationary(
            setup.A, setup.q, setup.c, setup.obs_var, fit.alpha, fit.beta
        )
        out.update(alpha_paper=fit.alpha, beta_paper=fit.beta, extended_paper_var=st.var,
                   extended_paper_mse_exact=st.mse, paper_iterations=fit.iterations,
                   paper_converged=fit.converged, paper_history=fit.history)
        timings["paper_recipe"] = time.perf_counter() - tic
        tic = time.perf_counter()
        fit = paper_alpha_beta(setup, data, "extended_stochastic")
        st = kalman.extended_stationary(setup.A, setup.q, setup.c, setup.obs_var, fit.alpha,
                                        fit.beta, "stochastic")
        out.update(alpha_paper_stochastic=fit.alpha, beta_paper_stochastic=fit.beta,
                   extended_stochastic_paper_var=st.var,
                   extended_stochastic_paper_mse_exact=st.mse,
                   paper_stochastic_iterations=fit.iterations,
                   paper_stochastic_converged=fit.converged)
        timings["paper_recipe_stochastic"] = time.perf_counter() - tic
        tic = time.perf_counter()
        fit = reestimate_alpha_beta(setup, data)
        out.update(alpha_reestimated=fit.alpha, beta_reestimated=fit.beta,
                   reestimation_iterations=fit.iterations,
                   reestimation_converged=fit.converged)
        timings["reestimation"] = time.perf_counter() - tic
        tic = time.perf_counter()
        fit = innovation_alpha_beta(setup, data)
        out.update(alpha_innovations_stochastic=fit.alpha,
                   beta_innovations_stochastic=fit.beta,
                   innovations_iterations=fit.iterations,
                   innovations_converged=fit.converged)
        timings["innovation_estimate"] = time.perf_counter() - tic
    out["seconds"] = timings
    return out


def time_steady(setup: LinearSetup) -> dict[str, object]:
    """Wall time of :func:`run_steady` in all (``seconds_total``, s) and per part
    (``seconds``), with the size of the run (``cycles``, ``members``, ``n``, ``sampler``,
    ``sde_steps``): the numbers of ``cycler bench linear``."""
    tic = time.perf_counter()
    res = run_steady(setup)
    total = time.perf_counter() - tic
    return {"seconds_total": total, "seconds": res["seconds"], "cycles": setup.cycles,
            "members": setup.members, "n": setup.n, "sampler": setup.sampler,
            "sde_steps": setup.sde_steps}
