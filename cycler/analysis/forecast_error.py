"""The forecast's own error model, estimated from innovations: the extended likelihood's
``(alpha, beta)`` without the truth.

The theory paper (Hodyss and Morzfeld) enters the forecast ``f`` into the posterior as an
extended likelihood ``p(f | x) = N(f; alpha x + (1 - alpha) mu, beta)`` (``mu`` the
climatological mean; ``mu = 0`` in the linear test bed) whose parameters must be consistent
with the forecasts the cycled system itself makes. A real centre does not know the truth;
it has observations ``y = H x + e`` with a known error variance ``r`` and its forecast at
the same places, ``H f``. With anomalies about the climatology, ``a = y - H mu`` and
``b = H f - H mu``, and ``e`` independent of ``x`` and ``f``::

    E[a b]        = alpha E[(Hx - H mu)^2]         -> alpha = E[a b] / (E[a^2] - r)
    E[a^2] - r    = E[(Hx - H mu)^2]
    E[b^2]        = alpha^2 E[(Hx - H mu)^2] + beta -> beta = E[b^2] - alpha^2 (E[a^2] - r)

so the regression of the forecast on the truth is recovered from observation-space sums
alone (:func:`fit_from_moments`); the sums are what each cycle records
(:func:`innovation_moments`) and they pool over cycles, cases and stations. Used in the
cycle -> fit -> cycle loop, the estimates converge to the self-consistent fixed point; on
the linear test bed that is the exact fixed point of
:func:`~diffda.cycler.analysis.kalman.extended_fixed_point`
(:func:`diffda.cycler.linear.testbed.innovation_alpha_beta`).

Given ``(alpha, beta)`` the likelihood is an ordinary Gaussian term in ``x``:
``N(f; alpha x + (1 - alpha) mu, beta) ∝ N(f'; x, beta / alpha^2)`` with
``f' = (f - (1 - alpha) mu) / alpha`` (:func:`equivalent_observation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class Moments:
    """Sums over ``n`` pairs of anomalies ``a = y - H mu`` (observation) and ``b = H f -
    H mu`` (forecast): ``aa = sum a^2``, ``ab = sum a b``, ``bb = sum b^2``, ``r = sum r``
    (the observation-error variances). Pool by adding."""

    n: int
    aa: float
    ab: float
    bb: float
    r: float

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.aa + other.aa, self.ab + other.ab,
                       self.bb + other.bb, self.r + other.r)

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "aa": self.aa, "ab": self.ab, "bb": self.bb, "r": self.r}

    @classmethod
    def zero(cls) -> Moments:
        return cls(0, 0.0, 0.0, 0.0, 0.0)


def innovation_moments(y: Tensor | np.ndarray, hf: Tensor | np.ndarray,
                       r: Tensor | np.ndarray | float, h_mu: Tensor | np.ndarray | float
                       ) -> Moments:
    """The sums of :class:`Moments` of observations ``y`` ``(p,)``, the forecast at their
    places ``hf`` ``(p,)``, their error variances ``r`` and the climatology there ``h_mu``
    (all in one unit, e.g. the prior's normalised units)."""
    y, hf = np.asarray(y, dtype=np.float64), np.asarray(hf, dtype=np.float64)
    a = y - np.asarray(h_mu, dtype=np.float64)
    b = hf - np.asarray(h_mu, dtype=np.float64)
    rr = np.broadcast_to(np.asarray(r, dtype=np.float64), y.shape)
    return Moments(int(y.size), float((a * a).sum()), float((a * b).sum()),
                   float((b * b).sum()), float(rr.sum()))


@dataclass(frozen=True)
class ForecastError:
    """``alpha``, ``beta`` of ``f = alpha x + (1 - alpha) mu + eps``, ``eps ~ N(0, beta)``,
    and the number of pairs they rest on."""

    alpha: float
    beta: float
    n: int


def fit_from_moments(m: Moments, min_alpha: float = 0.05) -> ForecastError:
    """``(alpha, beta)`` from pooled innovation moments (module docstring). ``alpha`` is
    kept at least ``min_alpha`` (a forecast that carries no information about the truth
    is better left out than inverted), ``beta`` positive."""
    if m.n < 2:
        raise ValueError(f"{m.n} observation-forecast pairs: too few to fit the forecast "
                         "error")
    var_x = (m.aa - m.r) / m.n
    if var_x <= 0:
        raise ValueError(f"observation anomaly variance {m.aa / m.n:.4g} is not above the "
                         f"observation-error variance {m.r / m.n:.4g}: the truth's variance "
                         "about the climatology cannot be estimated")
    alpha = max(m.ab / m.n / var_x, min_alpha)
    beta = m.bb / m.n - alpha**2 * var_x
    return ForecastError(float(alpha), float(max(beta, 1e-8 * var_x)), m.n)


def equivalent_observation(f: Tensor, mu: Tensor, alpha: Tensor | float,
                           beta: Tensor | float) -> tuple[Tensor, Tensor | float]:
    """``(f', Sigma)`` with ``N(f; alpha x + (1 - alpha) mu, beta) ∝ N(f'; x, Sigma)``:
    ``f' = (f - (1 - alpha) mu) / alpha``, ``Sigma = beta / alpha^2``."""
    return (f - (1 - alpha) * mu) / alpha, beta / alpha**2  # type: ignore[operator]
