"""Exact Kalman formulas of the linear-Gaussian test bed (LINEAR_THEORY.md), per component.

All functions are pure, broadcast over numpy arrays or floats, and work component by
component: the test bed's components are independent, so every covariance is diagonal.
Notation: ``A = a^K`` (decay over one observation interval), ``q`` (model noise over one
interval), ``c`` (climatological variance), ``r`` (observation error variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

Array = np.ndarray | float


# --- The three posteriors -------------------------------------------------------------------

def climatological_posterior(y: Array, c: float, r: float) -> tuple[Array, float]:
    """Posterior 1, p(x) p(y|x) with p(x) = N(0, c): mean ``c/(c+r) y``, var ``c r/(c+r)``."""
    return c / (c + r) * y, c * r / (c + r)


def kalman_forecast(m: Array, p: Array, A: float, q: float) -> tuple[Array, Array]:
    """Posterior 2, forecast step: ``m_f = A m_a``, ``P_f = A^2 P_a + q``."""
    return A * m, A * A * p + q


def kalman_update(m_f: Array, p_f: Array, y: Array, r: float) -> tuple[Array, Array]:
    """Posterior 2, analysis step: gain ``P_f/(P_f + r)``, ``P_a = P_f r/(P_f + r)``."""
    gain = p_f / (p_f + r)
    return m_f + gain * (y - m_f), p_f * r / (p_f + r)


def extended_posterior(
    y: Array, f: Array, c: float, r: float, alpha: float, beta: float
) -> tuple[Array, float]:
    """Posterior 3, p(x) p(y|x) p(f|x) with ``f = alpha x + eps``, ``eps ~ N(0, beta)``:
    precision ``1/c + 1/r + alpha^2/beta``, mean ``v (y/r + alpha f/beta)``."""
    v = 1.0 / (1.0 / c + 1.0 / r + alpha * alpha / beta)
    return v * (y / r + alpha * f / beta), v


def forecast_only_posterior(f: Array, c: float, alpha: float, beta: float) -> tuple[Array, float]:
    """Posterior 3 for an unobserved component: only the forecast term."""
    v = 1.0 / (1.0 / c + alpha * alpha / beta)
    return v * alpha * f / beta, v


def ensemble_forecast_parameters(p_f: Array, c: Array | float) -> tuple[Array, Array]:
    """The extended likelihood's ``(alpha, beta)`` that make ``p(x) p(f | x)`` the forecast
    distribution ``N(f, P_f)`` when the prior is the climatology ``N(mu, c)`` (so the
    climatology is not counted twice): ``alpha = 1 - P_f / c``, ``beta = alpha P_f``. Where
    ``P_f >= c`` the forecast knows no more than the climatology: ``alpha`` is kept at a
    tiny positive value and ``beta`` at ``P_f`` (the term then carries no information)."""
    p_f = np.asarray(p_f, dtype=np.float64)
    alpha = np.maximum(1.0 - p_f / np.asarray(c, dtype=np.float64), 1e-6)
    beta = np.where(alpha > 1e-6, alpha * p_f, p_f)
    return alpha, beta


# --- Steady states --------------------------------------------------------------------------

def steady_cycling_variance(A: float, q: float, r: float) -> float:
    """Fixed point of ``P -> (A^2 P + q) r / (A^2 P + q + r)``.

    It solves ``A^2 P^2 + (q + r - A^2 r) P - q r = 0``; the positive root is written as
    ``2 q r / (b + sqrt(b^2 + 4 A^2 q r))`` with ``b = q + r - A^2 r`` (no cancellation,
    and correct as ``A -> 0``, where it tends to ``q r/(q + r)``).
    """
    b = q + r - A * A * r
    return 2.0 * q * r / (b + np.sqrt(b * b + 4.0 * A * A * q * r))


@dataclass(frozen=True)
class ExtendedStationary:
    """Stationary second moments of the cycled extended-likelihood system (per component).

    ``cov``: the 2x2 stationary covariance of (truth x, posterior mean m) at analysis time.
    ``alpha_fit``, ``beta_fit``: the regression of the forecast ``f = A m_prev`` on the
    truth at the next analysis time that this system produces. ``mse``: the stationary
    ``E[(m - x)^2]``. ``var``: the posterior variance the filter assumes.
    """

    cov: np.ndarray
    alpha_fit: float
    beta_fit: float
    mse: float
    var: float


#: How the extended likelihood's forecast is made from the previous posterior mean ``m``:
#: ``deterministic``: ``f = A m``; ``stochastic`` (the paper's Eq. 73, the model step with
#: its random draw): ``f = A m + w'``, ``w' ~ N(0, q)`` drawn afresh each cycle.
FORECASTS = ("deterministic", "stochastic")


def _check_forecast(forecast: str) -> None:
    if forecast not in FORECASTS:
        raise ValueError(f"forecast = {forecast!r}: expected one of {FORECASTS}")


def extended_stationary(
    A: float, q: float, c: float, r: float, alpha: float, beta: float,
    forecast: str = "deterministic",
) -> ExtendedStationary:
    """Stationary moments of ``z = (x, m)`` under the cycled extended-likelihood filter.

    ``x' = A x + w``; ``y' = x' + e``; ``f' = A m + w'`` (``w' = 0`` for the deterministic
    forecast, ``w' ~ N(0, q)`` for the stochastic one, :data:`FORECASTS`);
    ``m' = v (y'/r + alpha f'/beta)``, so ``z' = F z + G (w, e, w')`` with
    ``F = [[A, 0], [v A/r, v alpha A/beta]]`` and ``G = [[1, 0, 0], [v/r, v/r, v alpha/beta]]``;
    the stationary covariance solves the discrete Lyapunov equation
    ``S = F S F^T + G diag(q, r, q_f) G^T`` (``q_f = 0`` or ``q``). The forecast at the next
    analysis is ``f' = A m + w'`` and the truth ``x' = A x + w`` (``w``, ``w'`` independent
    of ``m`` and of each other), so ``Cov(f', x') = A^2 S_xm``, ``Var(x') = S_xx``,
    ``Var(f') = A^2 S_mm + q_f``.

    If the filter is unstable (its mean recursion gain ``v alpha A / beta >= 1``), there is
    no stationary state: ``mse`` is ``inf`` and the fitted parameters are NaN.
    """
    if not (np.isfinite(alpha) and np.isfinite(beta) and beta > 0):
        raise ValueError(f"extended likelihood needs finite alpha and beta > 0, got "
                         f"alpha={alpha}, beta={beta}")
    _check_forecast(forecast)
    q_f = q if forecast == "stochastic" else 0.0
    v = 1.0 / (1.0 / c + 1.0 / r + alpha * alpha / beta)
    F = np.array([[A, 0.0], [v * A / r, v * alpha * A / beta]])
    G = np.array([[1.0, 0.0, 0.0], [v / r, v / r, v * alpha / beta]])
    if np.max(np.abs(np.linalg.eigvals(F))) >= 1.0:
        nan = float("nan")
        return ExtendedStationary(np.full((2, 2), nan), nan, nan, float("inf"), float(v))
    S = scipy.linalg.solve_discrete_lyapunov(F, G @ np.diag([q, r, q_f]) @ G.T)
    s_xx, s_xm, s_mm = S[0, 0], S[0, 1], S[1, 1]
    alpha_fit = A * A * s_xm / s_xx
    beta_fit = A * A * s_mm + q_f - alpha_fit**2 * s_xx
    return ExtendedStationary(
        cov=S, alpha_fit=float(alpha_fit), beta_fit=float(beta_fit),
        mse=float(s_xx - 2 * s_xm + s_mm), var=float(v),
    )


def perfect_forecast_parameters(A: float, c: float) -> tuple[float, float]:
    """(alpha, beta) of the forecast of a perfect analysis, ``f = A x_prev``, regressed on
    ``x = A x_prev + w``: ``alpha = A^2``, ``beta = A^2 c (1 - A^2)``. A natural start."""
    return A * A, A * A * c * (1.0 - A * A)


def kalman_consistent_parameters(A: float, q: float, c: float, r: float) -> tuple[float, float]:
    """The (alpha, beta) for which the extended likelihood reproduces the cycling Kalman
    filter: ``p(x) p(f|x) = N(f, P_f)`` with ``P_f`` the steady Kalman forecast variance,
    i.e. ``alpha = 1 - P_f/c`` and ``beta = alpha P_f``.

    Why this is the self-consistent pair: if the forecast is the Kalman forecast mean,
    ``E[x | f] = f`` and ``Var(x | f) = P_f`` (the forecast mean is a sufficient statistic of
    the past observations), so the regression of ``f`` on ``x`` returns exactly these
    values, and the filter they define is the Kalman filter again.
    """
    p_f = A * A * steady_cycling_variance(A, q, r) + q
    alpha = 1.0 - p_f / c
    return float(alpha), float(alpha * p_f)


@dataclass(frozen=True)
class FixedPoint:
    alpha: float
    beta: float
    iterations: int
    residual: float
    method: str


def extended_fixed_point(
    A: float, q: float, c: float, r: float, tol: float = 1e-12, max_iter: int = 2_000,
    damping: float = 0.5, forecast: str = "deterministic",
) -> FixedPoint:
    """The self-consistent (alpha, beta) of the cycled extended-likelihood system.

    Finds ``(alpha, beta) = (alpha_fit, beta_fit)(alpha, beta)`` (see
    :func:`extended_stationary`): the parameters that, used in the filter, are what a
    regression of its own forecasts on the truth returns. A damped fixed-point iteration
    (``theta <- (1 - damping) theta + damping G(theta)``; undamped iteration can oscillate)
    gives a starting point, polished by a root solve of ``G(theta) - theta``. At the fixed
    point the filter is calibrated: its stationary MSE equals its posterior variance.
    ``forecast``: how the forecast is made (:data:`FORECASTS`). With the deterministic one
    the fixed point is :func:`kalman_consistent_parameters` (the extended posterior is the
    cycling one); with the stochastic one it lies strictly between cycling and
    climatological.
    """
    _check_forecast(forecast)

    def G(theta: np.ndarray) -> np.ndarray:
        st = extended_stationary(A, q, c, r, theta[0], theta[1], forecast)
        return np.array([st.alpha_fit, st.beta_fit])

    theta = np.array(perfect_forecast_parameters(A, c))
    g = G(theta)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        d = damping
        while True:  # a step that leaves the filter unstable has no stationary state: shorten it
            new = theta + d * (g - theta)
            g_new = G(new) if new[1] > 0 else np.array([np.nan, np.nan])
            if np.all(np.isfinite(g_new)) or d < 1e-8:
                break
            d *= 0.5
        step = np.max(np.abs(new - theta))
        theta, g = new, g_new
        if step < 1e-10:
            break
    sol = scipy.optimize.root(lambda th: G(th) - th, theta, tol=tol)
    if sol.success and sol.x[1] > 0 and np.all(np.isfinite(G(sol.x))):
        theta = sol.x
    residual = float(np.max(np.abs(G(theta) - theta)))
    return FixedPoint(
        float(theta[0]), float(theta[1]), iterations, residual, "damped iteration + root"
    )
