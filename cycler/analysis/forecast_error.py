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

The same sums give the forecast's error variance at the stations directly,
``E[(a - b)^2] - r = E[(Hf - Hx)^2]`` (the innovation variance less the observation
error's, what operational centres monitor): the *direct* form of the term, ``N(f; x,
E[(f - x)^2])`` with ``alpha = 1`` (``fit_from_moments(..., form="direct")``). In the
Gaussian theory it counts the climatology twice (the prior already is the climatology);
with the diffusion prior the ensemble mode's direct term was nevertheless the more accurate
(docs/results.md), so both forms can be fitted.

Given ``(alpha, beta)`` the likelihood is an ordinary Gaussian term in ``x``:
``N(f; alpha x + (1 - alpha) mu, beta) ∝ N(f'; x, beta / alpha^2)`` with
``f' = (f - (1 - alpha) mu) / alpha`` (:func:`equivalent_observation`).

Forecast errors are spatially correlated; a term that treats every cell of the forecast as
an independent observation counts a coherent large-scale error once per cell. The
correlation is measured the way Hollingsworth and Lönnberg (1986) measure it, from the
innovations alone: for two stations ``i != j`` (observation errors uncorrelated between
them) ``E[(b_i - alpha a_i)(b_j - alpha a_j)] = cov(eps_i, eps_j)``, the forecast error's
covariance at their distance. :func:`pair_moments` records the sums per distance bin,
:func:`error_correlation` turns them into a correlation by distance once ``(alpha, beta)``
are known, :func:`correlation_length` fits a SOAR function ``(1 + d/L) exp(-d/L)`` to it,
and :func:`correlation_inflation` gives per latitude row the sum of the correlations of one
cell with all cells of a grid: the factor by which the variance of an independent-cell term
must grow for the largest scales (the error field's mean, the eigenvector of a homogeneous
correlation matrix with eigenvalue its row sum) to carry the information they really carry
(the diagonal "variance inflation" treatment of correlated observation errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffda.core.grid import Grid
from diffda.cycler.analysis.letkf import great_circle_km
from torch import Tensor

#: Distance bins (km) of the pair moments: 300 km wide from 0 to 6000 km.
PAIR_BIN_EDGES_KM: tuple[float, ...] = tuple(float(e) for e in np.arange(0.0, 6001.0, 300.0))


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


#: The forms of the fitted forecast term: the extended likelihood ``N(f; alpha x + (1 -
#: alpha) mu, beta)``, or the forecast as a direct observation ``N(f; x, beta)`` (``alpha =
#: 1``, ``beta`` the forecast's error variance).
FORMS = ("extended", "direct")


def fit_from_moments(m: Moments, min_alpha: float = 0.05, form: str = "extended"
                     ) -> ForecastError:
    """``(alpha, beta)`` from pooled innovation moments (module docstring). ``alpha`` is
    kept at least ``min_alpha`` (a forecast that carries no information about the truth
    is better left out than inverted), ``beta`` positive. ``form = "direct"``: ``alpha =
    1`` and ``beta = E[(a - b)^2] - r``, the forecast's error variance."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {FORMS}")
    if m.n < 2:
        raise ValueError(f"{m.n} observation-forecast pairs: too few to fit the forecast "
                         "error")
    if form == "direct":
        scale = max(m.aa, m.bb) / m.n
        var = (m.aa - 2.0 * m.ab + m.bb - m.r) / m.n
        return ForecastError(1.0, float(max(var, 1e-8 * scale, 1e-30)), m.n)
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


def innovation_inflation(d: Tensor, r: Tensor, hbh: Tensor, variable_index: Tensor,
                         n_variables: int, floor: float = 1.0) -> Tensor:
    """Per variable the factor that makes an ensemble's spread at the stations account for
    its innovations: ``max(floor, (<d^2> - <r>) / <HBH>)`` (``E[d^2] = HBH + R`` when the
    ensemble's variance is its error's; Wang and Bishop 2003, Li et al. 2009), ``d`` the
    observations minus the forecast ensemble's mean, ``r`` their error variances, ``hbh``
    the ensemble's variance there, all ``(n_obs,)`` and ``variable_index`` ``(n_obs,)``
    naming each one's variable; a variable without observations keeps ``floor``."""
    out = torch.full((n_variables,), float(floor), dtype=torch.float64)
    for k in range(n_variables):
        sel = variable_index == k
        if bool(sel.any()):
            d2, rr, b = (t[sel].double().mean() for t in (d.square(), r, hbh))
            out[k] = torch.clamp((d2 - rr) / b.clamp_min(1e-30), min=floor)
    return out


@dataclass(frozen=True)
class PairMoments:
    """Sums over station pairs ``i < j`` per distance bin (:data:`PAIR_BIN_EDGES_KM`) of the
    anomalies of :class:`Moments`: ``n`` pairs, ``aa = sum a_i a_j``, ``ab = sum (a_i b_j +
    b_i a_j)``, ``bb = sum b_i b_j``. Pool by adding."""

    n: tuple[int, ...]
    aa: tuple[float, ...]
    ab: tuple[float, ...]
    bb: tuple[float, ...]

    def __add__(self, other: PairMoments) -> PairMoments:
        def add(x: tuple, y: tuple) -> tuple:
            return tuple(a + b for a, b in zip(x, y, strict=True))
        return PairMoments(add(self.n, other.n), add(self.aa, other.aa),
                           add(self.ab, other.ab), add(self.bb, other.bb))

    def as_dict(self) -> dict[str, list]:
        return {"n": list(self.n), "aa": list(self.aa), "ab": list(self.ab),
                "bb": list(self.bb)}

    @classmethod
    def zero(cls) -> PairMoments:
        k = len(PAIR_BIN_EDGES_KM) - 1
        return cls((0,) * k, (0.0,) * k, (0.0,) * k, (0.0,) * k)

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> PairMoments:
        return cls(tuple(int(x) for x in d["n"]), tuple(map(float, d["aa"])),
                   tuple(map(float, d["ab"])), tuple(map(float, d["bb"])))


def pair_moments(y: Tensor | np.ndarray, hf: Tensor | np.ndarray, h_mu: Tensor | np.ndarray
                 | float, lat: Tensor | np.ndarray, lon: Tensor | np.ndarray) -> PairMoments:
    """The sums of :class:`PairMoments` of observations ``y`` ``(p,)`` at ``lat``, ``lon``
    (degrees), the forecast there ``hf`` and the climatology ``h_mu`` (one variable, one
    unit). Pairs at one place (distance 0) are left out: their observation errors may
    not be independent."""
    a = torch.as_tensor(np.asarray(y, dtype=np.float64) - np.asarray(h_mu, dtype=np.float64))
    b = torch.as_tensor(np.asarray(hf, dtype=np.float64) - np.asarray(h_mu,
                                                                         dtype=np.float64))
    la = torch.as_tensor(np.asarray(lat, dtype=np.float64))
    lo = torch.as_tensor(np.asarray(lon, dtype=np.float64))
    d = great_circle_km(la, lo, la, lo)
    i, j = torch.triu_indices(len(a), len(a), offset=1)
    dist = d[i, j]
    edges = torch.tensor(PAIR_BIN_EDGES_KM, dtype=torch.float64)
    keep = (dist > 1e-6) & (dist < edges[-1])
    i, j, dist = i[keep], j[keep], dist[keep]
    k = len(edges) - 1
    bins = (torch.bucketize(dist, edges, right=True) - 1).clamp(0, k - 1)

    def per_bin(x: Tensor) -> tuple[float, ...]:
        return tuple(torch.zeros(k, dtype=torch.float64).index_add_(0, bins, x).tolist())

    n = torch.bincount(bins, minlength=k)
    return PairMoments(tuple(int(c) for c in n.tolist()), per_bin(a[i] * a[j]),
                       per_bin(a[i] * b[j] + b[i] * a[j]), per_bin(b[i] * b[j]))


def error_covariance_sums(pairs: PairMoments, fit: ForecastError) -> np.ndarray:
    """Per distance bin the sum over pairs of ``(b_i - alpha a_i)(b_j - alpha a_j)``, whose
    mean is the forecast error's covariance at that distance: ``bb - alpha ab + alpha^2
    aa`` with ``(alpha, beta)`` fitted to the same forecasts."""
    a = fit.alpha
    return np.asarray(pairs.bb) - a * np.asarray(pairs.ab) + a * a * np.asarray(pairs.aa)


def error_correlation(pairs: PairMoments, fit: ForecastError, min_pairs: int = 20
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centres_km, correlation, n)`` of the forecast error ``eps`` by distance bin
    (:func:`error_covariance_sums` over the pairs, divided by ``beta``), bins with fewer
    than ``min_pairs`` pairs left out."""
    edges = np.asarray(PAIR_BIN_EDGES_KM)
    centres = 0.5 * (edges[1:] + edges[:-1])
    n = np.asarray(pairs.n, dtype=np.float64)
    ok = n >= max(min_pairs, 1)
    return centres[ok], error_covariance_sums(pairs, fit)[ok] / n[ok] / fit.beta, n[ok]


def soar(d: np.ndarray | Tensor, length_km: float) -> np.ndarray | Tensor:
    """The second-order autoregressive correlation ``(1 + d/L) exp(-d/L)``."""
    r = d / length_km
    return (1 + r) * (np.exp(-r) if isinstance(r, np.ndarray) else torch.exp(-r))


def correlation_length(centres_km: np.ndarray, correlation: np.ndarray, n: np.ndarray,
                       bounds_km: tuple[float, float] = (50.0, 5000.0)) -> float:
    """The length ``L`` (km) of the SOAR function closest to ``correlation`` by distance,
    least squares weighted by the number of pairs per bin, searched within ``bounds_km``."""
    from scipy.optimize import minimize_scalar

    if len(centres_km) == 0:
        raise ValueError("no distance bin has enough station pairs to fit a correlation "
                         "length")

    def loss(log_l: float) -> float:
        return float(np.sum(n * (soar(centres_km, float(np.exp(log_l))) - correlation) ** 2))

    res = minimize_scalar(loss, bounds=tuple(np.log(bounds_km)), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def correlation_inflation(grid: Grid, length_km: float | None) -> Tensor:
    """Per latitude row of ``grid``, the sum over all cells of the SOAR correlation (length
    ``length_km``) with one cell of the row, ``(nlat,)`` float64: 1 when ``length_km`` is
    None or 0 (independent cells)."""
    if not length_km:
        return torch.ones(grid.nlat, dtype=torch.float64)
    lat = torch.as_tensor(grid.lat, dtype=torch.float64)
    lon = torch.as_tensor(grid.lon, dtype=torch.float64)
    glat = lat[:, None].expand(grid.nlat, grid.nlon).reshape(-1)
    glon = lon[None, :].expand(grid.nlat, grid.nlon).reshape(-1)
    d = great_circle_km(lat, torch.zeros_like(lat), glat, glon)  # (nlat, cells)
    return soar(d, float(length_km)).sum(1)


def ensemble_correlation_length(anomalies: Tensor, grid: Grid,
                                bounds_km: tuple[float, float] = (50.0, 5000.0)) -> float:
    """The SOAR length (km) of the correlations between the cells of ``grid`` that an
    ensemble's ``anomalies`` ``(member, lat, lon)`` (one variable, members minus their mean)
    show, averaged per distance bin (:data:`PAIR_BIN_EDGES_KM`) over every pair of cells
    and fitted like the station pairs' (:func:`correlation_length`). Cells without spread
    are left out."""
    a = anomalies.double().reshape(anomalies.shape[0], -1)
    std = a.std(0)
    ok = std > 1e-12 * float(std.max().clamp_min(1e-300))
    a = a[:, ok] / std[ok]
    if a.shape[1] < 2:
        raise ValueError("the ensemble has spread in fewer than two cells")
    corr = (a.T @ a) / (a.shape[0] - 1)
    lat = torch.as_tensor(grid.lat, dtype=torch.float64)
    lon = torch.as_tensor(grid.lon, dtype=torch.float64)
    glat = lat[:, None].expand(grid.nlat, grid.nlon).reshape(-1)[ok]
    glon = lon[None, :].expand(grid.nlat, grid.nlon).reshape(-1)[ok]
    d = great_circle_km(glat, glon, glat, glon)
    edges = torch.as_tensor(PAIR_BIN_EDGES_KM, dtype=torch.float64)
    off = ~torch.eye(len(glat), dtype=torch.bool)
    which = torch.bucketize(d[off], edges, right=True) - 1
    keep = (which >= 0) & (which < len(edges) - 1)
    n = torch.bincount(which[keep], minlength=len(edges) - 1).double()
    total = torch.bincount(which[keep], weights=corr[off][keep], minlength=len(edges) - 1)
    has = n > 0
    centres = 0.5 * (edges[1:] + edges[:-1])
    return correlation_length(centres[has].numpy(), (total[has] / n[has]).numpy(),
                              n[has].numpy(), bounds_km)
