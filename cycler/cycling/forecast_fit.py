"""The forecast term's fitted error model: estimated from the cycling's own innovations,
written to a small file, read by a run (``analysis.forecast.error_model = "fitted:PATH"``).

Each cycle of a mode with a forecast records, per variable, the innovation moments of
:mod:`diffda.cycler.analysis.forecast_error` (observation and forecast anomalies about the
climatology at the stations, in the prior's normalised units; no truth). :func:`fit_runs`
pools them over the cases and the steady cycles of one mode and fits ``(alpha, beta)`` per
variable (per lead for the precomputed mode, whose forecast error grows with lead:
:data:`FITTED_MODES`); :func:`write_fitted` stores them with the configuration they belong to.
:func:`read_fitted` refuses a file of other variables, another emulator grid or another
configuration, naming the mismatch. ``cycler calibrate`` iterates run -> fit -> run on the
tuning cases toward the self-consistent fixed point (:func:`diffda.cycler.cycling.cases.
calibrate`).

Each cycle also records the innovations' products between station pairs by distance; from
them :func:`fit_lengths` measures the forecast error's spatial correlation (Hollingsworth and
Lönnberg's method, no truth) and fits its length per variable.

Both forms of :func:`~diffda.cycler.analysis.forecast_error.fit_from_moments` can be
fitted (``cycler calibrate --form``): the extended likelihood, and the forecast as a direct
observation whose variance is the forecast's error variance the innovations show
(``alpha = 1``); the file records which.

In a run, :func:`fitted_forecast_term` turns the fitted extended likelihood
``N(f; alpha x + (1 - alpha) mu, beta)`` into the equivalent Gaussian term in ``x`` on the
emulator grid (``mu`` the climatology there), its variance grown per latitude row by the
sum of the fitted correlations of a cell with all others
(:func:`~diffda.cycler.analysis.forecast_error.correlation_inflation`): the cells of one
coherent error are not independent observations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffda.core.config import ConfigError
from diffda.core.grid import Grid
from diffda.core.io import atomic_write_text
from diffda.cycler.analysis.ensemble_covariance import (
    extended_likelihood,
    localized_covariance,
)
from diffda.cycler.analysis.forecast_error import (
    FORMS,
    PAIR_BIN_EDGES_KM,
    ForecastError,
    Moments,
    PairMoments,
    correlation_inflation,
    correlation_length,
    ensemble_correlation_length,
    equivalent_observation,
    error_covariance_sums,
    fit_from_moments,
)
from diffda.cycler.cycling.config import RunConfig
from diffda.cycler.cycling.tuning import _differences, identity, identity_hash
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations.likelihood import ObservationTerm
from diffda.observations.operators import ProjectedOperator, forecast_grid_operator
from torch import Tensor

FORMAT = "diffda-forecast-error-v1"
PREFIX = "fitted:"
#: The config keys a fitted file does not depend on (besides those of any tuning).
_FITTED_KEYS = ("analysis.forecast",)


#: The modes whose forecast term is fitted, and whether per lead: the precomputed mode's
#: forecast is the free run from ``t_0`` (its error grows with lead), the reinitialized
#: mode's always a one-cycle forecast (one set of parameters).
FITTED_MODES: dict[str, bool] = {"precomputed": True, "reinitialized": False}


@dataclass(frozen=True)
class FittedErrorModel:
    """Per mode and variable ``(alpha, beta)`` (normalised units), per lead in hours for
    the modes fitted per lead (:data:`FITTED_MODES`), else under the lead key ``0``:
    ``{mode: {variable: {lead: ForecastError}}}``."""

    variables: tuple[str, ...]
    grid: Grid
    parameters: dict[str, dict[str, dict[int, ForecastError]]]
    path: str = ""
    #: ``{mode: {variable: L}}``: the forecast error's correlation length (km); a variable
    #: without one is treated as independent between cells.
    lengths: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: ``"extended"`` (``alpha`` fitted) or ``"direct"`` (``alpha = 1``, ``beta`` the
    #: forecast's error variance): :data:`~diffda.cycler.analysis.forecast_error.FORMS`.
    form: str = "extended"

    def length(self, mode: str, variable: str) -> float | None:
        return self.lengths.get(mode, {}).get(variable)

    def at(self, mode: str, variable: str, lead_hours: float) -> ForecastError:
        if mode not in self.parameters:
            raise ConfigError(f"{self.path}: no fitted forecast error for mode {mode!r} (it "
                              f"has {sorted(self.parameters)})")
        table = self.parameters[mode][variable]
        key = int(round(lead_hours)) if FITTED_MODES.get(mode, False) else 0
        if key not in table:
            raise ConfigError(f"{self.path}: no fitted forecast error for {mode} {variable} "
                              f"at lead {key} h (it has leads {sorted(table)})")
        return table[key]


def _pooled(records: Sequence[Mapping[str, Any]], mode: str, from_hours: float,
            by_lead: bool, name: str, parse: Callable[[Any], Any]) -> dict[str, dict[int, Any]]:
    """The innovation sums ``name`` of ``mode`` in ``records`` (any number of cases' metrics)
    at leads above ``from_hours``, each read with ``parse`` and added per variable (and per
    lead if ``by_lead``)."""
    out: dict[str, dict[int, Any]] = {}
    for r in records:
        if r.get("mode") != mode or r["lead_hours"] <= from_hours:
            continue
        for v, row in (r.get("innovations") or {}).items():
            if row.get(name) is None:
                continue
            key = int(round(r["lead_hours"])) if by_lead else 0
            table = out.setdefault(v, {})
            value = parse(row[name])
            table[key] = table[key] + value if key in table else value
    return out


def pooled_moments(records: Sequence[Mapping[str, Any]], mode: str, from_hours: float,
                   by_lead: bool) -> dict[str, dict[int, Moments]]:
    """The innovation moments of ``mode``, summed per variable (and lead): :func:`_pooled`."""
    return _pooled(records, mode, from_hours, by_lead, "forecast_moments",
                   lambda m: Moments(**m))


def pooled_pairs(records: Sequence[Mapping[str, Any]], mode: str, from_hours: float,
                 by_lead: bool) -> dict[str, dict[int, PairMoments]]:
    """As :func:`pooled_moments`, the station-pair sums by distance."""
    return _pooled(records, mode, from_hours, by_lead, "forecast_pairs",
                   PairMoments.from_dict)


def fit_lengths(records: Sequence[Mapping[str, Any]], mode: str, from_hours: float,
                by_lead: bool, fits: Mapping[str, Mapping[int, ForecastError]],
                min_pairs: int = 20) -> dict[str, float]:
    """The forecast error's correlation length (km) per variable: the covariance by station
    distance of every lead with that lead's ``(alpha, beta)``, pooled over leads, divided by
    the pooled variance (bins of at least ``min_pairs`` pairs), fitted with a SOAR function.
    Variables without enough pairs (or runs of an older version) are left out."""
    edges = np.asarray(PAIR_BIN_EDGES_KM)
    centres = 0.5 * (edges[1:] + edges[:-1])
    out: dict[str, float] = {}
    for v, table in pooled_pairs(records, mode, from_hours, by_lead).items():
        cov = np.zeros(len(centres))
        var = np.zeros(len(centres))
        count = np.zeros(len(centres))
        for key, pairs in table.items():
            cov += error_covariance_sums(pairs, fits[v][key])
            var += fits[v][key].beta * np.asarray(pairs.n, dtype=np.float64)
            count += np.asarray(pairs.n, dtype=np.float64)
        ok = count >= min_pairs
        if ok.any():
            out[v] = correlation_length(centres[ok], cov[ok] / var[ok], count[ok])
    return out


def fit_runs(records: Sequence[Mapping[str, Any]], mode: str, from_hours: float,
             by_lead: bool = False, form: str = "extended"
             ) -> dict[str, dict[int, ForecastError]]:
    """``(alpha, beta)`` per variable (and lead) from the pooled innovation moments, of the
    extended or the direct ``form`` (:func:`~diffda.cycler.analysis.forecast_error.
    fit_from_moments`)."""
    moments = pooled_moments(records, mode, from_hours, by_lead)
    if not moments:
        raise ValueError(f"no innovation moments of mode {mode!r} after lead {from_hours:g} h "
                         "(runs of a mode with a forecast term, made by this version)")
    return {v: {k: fit_from_moments(m, form=form) for k, m in sorted(t.items())}
            for v, t in moments.items()}


def write_fitted(path: str | Path, cfg: RunConfig, variables: Sequence[str], grid: Grid,
                 parameters: Mapping[str, Mapping[str, Mapping[int, ForecastError]]],
                 history: Sequence[Mapping[str, Any]] = (),
                 lengths: Mapping[str, Mapping[str, float]] | None = None,
                 form: str = "extended") -> dict[str, Any]:
    """Write the fitted parameters (``{mode: {variable: {lead: fit}}}``) of ``form`` and
    correlation lengths (``{mode: {variable: km}}``) with the configuration they belong to;
    returns the record."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {FORMS}")
    ident = identity(cfg, list(_FITTED_KEYS))
    record = {
        "format": FORMAT, "form": form, "variables": list(variables),
        "emulator_grid": [grid.nlat, grid.nlon], "units": "normalised",
        "parameters": {mode: {v: {str(k): {"alpha": e.alpha, "beta": e.beta, "n": e.n}
                                  for k, e in t.items()} for v, t in table.items()}
                       for mode, table in parameters.items()},
        "correlation_km": {m: dict(t) for m, t in (lengths or {}).items()},
        "history": list(history), "identity": ident, "identity_hash": identity_hash(ident),
    }
    atomic_write_text(Path(path), json.dumps(record, indent=1) + "\n")
    return record


def read_fitted(spec: str, cfg: RunConfig, variables: Sequence[str], grid: Grid
                ) -> FittedErrorModel:
    """The fitted error model of ``spec`` (``"fitted:PATH"``), checked against the run's
    variables, emulator grid and configuration; ``ConfigError`` naming the mismatch."""
    path = Path(spec.removeprefix(PREFIX))
    key = "analysis.forecast.error_model"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{key} = {spec!r}: no such file (make it with cycler "
                          "calibrate)") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not a fitted forecast-error file ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a fitted forecast-error file (no format {FORMAT!r})")
    if list(record["variables"]) != list(variables):
        raise ConfigError(f"{path}: fitted for variables {record['variables']}, the models "
                          f"have {list(variables)}")
    if list(record["emulator_grid"]) != [grid.nlat, grid.nlon]:
        raise ConfigError(f"{path}: fitted on the emulator grid "
                          f"{record['emulator_grid'][0]}x{record['emulator_grid'][1]}, the "
                          f"emulator's grid is {grid.nlat}x{grid.nlon}")
    for mode, table in record["parameters"].items():
        missing = [v for v in variables if v not in table]
        if missing:
            raise ConfigError(f"{path}: no fitted parameters of {mode} for {missing}")
    mine = identity(cfg, list(_FITTED_KEYS))
    if identity_hash(mine) != record["identity_hash"]:
        diff = _differences(mine, record["identity"])
        raise ConfigError(f"{path} was fitted for another configuration: "
                          + "; ".join(diff[:5]) + (" ..." if len(diff) > 5 else ""))
    form = record.get("form", "extended")  # files written before the direct form
    if form not in FORMS:
        raise ConfigError(f"{path}: form {form!r}, expected one of {list(FORMS)}")
    params = {mode: {v: {int(k): ForecastError(e["alpha"], e["beta"], e["n"])
                         for k, e in t.items()} for v, t in table.items()}
              for mode, table in record["parameters"].items()}
    lengths = {m: {v: float(km) for v, km in t.items()}
               for m, t in record.get("correlation_km", {}).items()}
    return FittedErrorModel(tuple(variables), grid, params, str(path), lengths, form)


def fitted_forecast_term(prior: DiffusionPrior, forecast: Tensor, climatology: Tensor,
                         model: FittedErrorModel, mode: str, lead_hours: float, gamma: float,
                         weight: float = 1.0) -> ObservationTerm:
    """The forecast term with the fitted extended likelihood: ``forecast`` ``(K, var, lat_e,
    lon_e)`` and ``climatology`` ``(1, var, lat_e, lon_e)`` physical on the emulator grid;
    per variable ``f' = (f - (1 - alpha) mu) / alpha`` with variance ``beta / alpha^2``
    times the correlation inflation of its latitude row (plus ``sigma^2 Gamma``, Eq. 13)."""
    op = forecast_grid_operator(prior.grid, prior.variables, coarse=model.grid)
    f = prior.normalise(forecast.double())
    mu = prior.normalise(climatology.double())
    fits = [model.at(mode, v, lead_hours) for v in prior.variables]
    alpha = torch.tensor([e.alpha for e in fits], dtype=f.dtype)[:, None, None]
    beta = torch.tensor([e.beta for e in fits], dtype=f.dtype)[:, None, None]
    y, sigma = equivalent_observation(f, mu, alpha, beta)
    rows = torch.stack([correlation_inflation(model.grid, model.length(mode, v))
                        for v in prior.variables])  # (var, lat_e)
    sigma_y = (torch.as_tensor(sigma) * rows[:, :, None]).expand(f.shape[1:]).reshape(-1)
    return ObservationTerm(op, y.reshape(f.shape[0], -1), sigma_y, gamma, weight,
                           name="forecast")


def ensemble_forecast_term(prior: DiffusionPrior, forecast: Tensor, climatology: Tensor,
                           climatology_var: Tensor, grid: Grid, inflation: float | Tensor,
                           gamma: float,
                           weight: float = 1.0, correlated: bool = False,
                           localization_km: float = 0.0, uncorrelated_share: float = 0.5,
                           extended: bool = True) -> ObservationTerm:
    """The ensemble mode's forecast term: the extended likelihood whose ``(alpha, beta)``
    make ``p(x) p(f | x)`` the forecast ensemble's distribution per cell (the prior already
    is the climatology; :func:`~diffda.cycler.analysis.kalman.ensemble_forecast_parameters`):
    ``P_f`` the ensemble's variance times ``inflation`` (a number, or one per variable
    ``(var,)``), ``c`` the climatology's variance,
    ``alpha = 1 - P_f / c``, ``beta = alpha P_f``. ``forecast`` ``(member, var, lat_e,
    lon_e)``, ``climatology``, ``climatology_var`` ``(1, var, lat_e, lon_e)``, physical on
    the emulator grid ``grid``. Cells where ``P_f >= c`` carry no information (their
    variance is set to 1e6). ``correlated``: each variable's variance grown per latitude
    row by :func:`~diffda.cycler.analysis.forecast_error.correlation_inflation` with the
    SOAR length the forecast ensemble's own anomalies show
    (:func:`~diffda.cycler.analysis.forecast_error.ensemble_correlation_length`), as the
    fitted term does with the length its station pairs show. ``localization_km > 0``: the
    forecast ensemble's covariance between all cells and variables, localized with that
    Gaspari-Cohn half-width and ``uncorrelated_share`` of it kept on the diagonal, in the
    extended likelihood's matrix form (:mod:`~diffda.cycler.analysis.ensemble_covariance`).
    ``extended = False``: instead the forecast mean as a direct observation of ``x`` with
    variance ``P_f`` (``alpha = 1``, ``beta = P_f``), the form of the fixed term."""
    if forecast.shape[0] < 2:
        raise ValueError("the ensemble forecast term needs at least 2 members")
    op = forecast_grid_operator(prior.grid, prior.variables, coarse=grid)
    f = prior.normalise(forecast.double())
    mu = prior.normalise(climatology.double())[0]
    std = prior.std.double()[:, None, None]
    c = climatology_var.double()[0] / std.square()
    if localization_km > 0:
        if not extended:
            raise ValueError("the localized covariance is built as the extended likelihood "
                             "only (extended=True)")
        if correlated:
            raise ValueError("the localized covariance already holds the forecast error's "
                             "correlations: do not also grow the variances (correlated)")
        mean = f.mean(0)
        scale = torch.as_tensor(inflation, dtype=f.dtype).sqrt().reshape(-1, 1, 1)
        scale = scale.expand(f.shape[1:]).reshape(-1)  # D^1/2 P D^1/2, per variable
        p_f = scale[:, None] * localized_covariance(f - mean, grid, localization_km,
                                                    uncorrelated_share) * scale[None, :]
        basis, y, variance = extended_likelihood(mean.reshape(-1), mu.reshape(-1),
                                                 c.reshape(-1), p_f)
        projected = ProjectedOperator(op, mu.reshape(-1), basis)
        return ObservationTerm(projected, y, variance, gamma, weight, name="forecast")
    p_f = torch.as_tensor(inflation, dtype=f.dtype).reshape(-1, 1, 1) * f.var(0)
    if extended:
        informative = p_f < 0.99 * c
        alpha = torch.where(informative, 1.0 - p_f / c, torch.ones_like(c))
    else:  # the direct observation N(f; x, P_f): every cell, alpha = 1
        informative, alpha = torch.ones_like(c, dtype=torch.bool), torch.ones_like(c)
    beta = alpha * p_f
    y, sigma = equivalent_observation(f.mean(0), mu, alpha, beta)
    y = torch.where(informative, y, mu)
    sigma = torch.as_tensor(sigma)
    if correlated:
        anomalies = f - f.mean(0, keepdim=True)
        rows = torch.stack([correlation_inflation(
            grid, ensemble_correlation_length(anomalies[:, v], grid))
            for v in range(f.shape[1])])  # (var, lat_e)
        sigma = sigma * rows[:, :, None]
    sigma = torch.where(informative, sigma, torch.full_like(c, 1e6))
    return ObservationTerm(op, y.reshape(-1), sigma.reshape(-1), gamma, weight, name="forecast")
