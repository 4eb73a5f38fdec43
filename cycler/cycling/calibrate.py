"""``cycler calibrate``: the forecast term's error model, iterated to its fixed point on the
tuning cases (the nonlinear analogue of the linear test bed's self-consistent
``(alpha, beta)``; :mod:`diffda.cycler.cycling.forecast_fit`).

Iteration ``i`` runs the tuning cases with the forecast modes of the experiment
(:data:`~diffda.cycler.cycling.forecast_fit.FITTED_MODES`) and the current error model
(iteration 0: the config's, normally the fixed one), fits ``(alpha, beta)`` (or, with
``form = "direct"``, the forecast's error variance with ``alpha = 1``) per mode and
variable from the innovation moments those runs recorded (no truth) and the forecast error's
correlation length from their station-pair products (Hollingsworth-Lönnberg), and writes
``fitted_<i + 1>.json``; the next iteration runs with it. From the second iteration on, the
model written is relaxed toward the fit, ``p_next = p_run + omega (fit - p_run)`` (``alpha``
linearly, ``beta`` and the lengths geometrically; ``omega = relaxation``): the undamped map
oscillated (the reinitialized mode's parameters changed by 1.2, then 4.1 relative), as a
fixed-point iteration does when its slope is below -1. It stops when the fixed-point
residual, the largest relative difference between the fit and the model the runs used, is
below ``tol``, or after ``iterations``; ``fitted.json`` is the last model written, with the
history of every iteration (the fits, the residuals and the tuning cases' steady RMSE and
spread-skill).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffda.core.config import ConfigError
from diffda.cycler.analysis.forecast_error import FORMS, ForecastError
from diffda.cycler.cycling.cases import load_cases, load_experiment, run_cases
from diffda.cycler.cycling.confidence import compare_cases
from diffda.cycler.cycling.forecast_fit import (
    FITTED_MODES,
    PREFIX,
    fit_lengths,
    fit_runs,
    write_fitted,
)

Fits = dict[str, dict[str, dict[int, ForecastError]]]


def _largest_change(old: Fits | None, new: Fits) -> float:
    if old is None:
        return float("inf")
    change = 0.0
    for mode, table in new.items():
        for v, leads in table.items():
            for k, e in leads.items():
                o = old.get(mode, {}).get(v, {}).get(k)
                if o is None:
                    return float("inf")
                change = max(change, abs(e.alpha - o.alpha) / max(abs(o.alpha), 1e-12),
                             abs(e.beta - o.beta) / max(o.beta, 1e-12))
    return change


def relax(applied: Fits, fit: Fits, omega: float) -> Fits:
    """``applied + omega (fit - applied)``: ``alpha`` linearly, ``beta`` geometrically
    (a variance); parameters only in ``fit`` are taken as they are."""
    out: Fits = {}
    for mode, table in fit.items():
        out[mode] = {}
        for v, leads in table.items():
            out[mode][v] = {}
            for k, e in leads.items():
                o = applied.get(mode, {}).get(v, {}).get(k)
                out[mode][v][k] = e if o is None else ForecastError(
                    o.alpha + omega * (e.alpha - o.alpha),
                    math.exp(math.log(o.beta) + omega * (math.log(e.beta) - math.log(o.beta))),
                    e.n)
    return out


Lengths = dict[str, dict[str, float | None]]


def relax_lengths(applied: Lengths, fit: Lengths, omega: float) -> Lengths:
    """Correlation lengths relaxed geometrically (a missing one: the fit's)."""
    out: Lengths = {}
    for mode, table in fit.items():
        out[mode] = {}
        for v, km in table.items():
            o = applied.get(mode, {}).get(v)
            out[mode][v] = (km if km is None or o is None
                            else math.exp(math.log(o) + omega * (math.log(km) - math.log(o))))
    return out


def calibrate(
    path: str | Path, out: str | Path, *, iterations: int = 3, tol: float = 0.05,
    relaxation: float = 0.5, form: str = "extended",
    overrides: Mapping[str, Any] | None = None,
    scheduler: str | None = None, threads: int | None = None,
) -> dict[str, Any]:
    """Iterate run -> fit on the tuning cases of the experiment file ``path`` into
    ``out/iteration_<i>/``; returns the record of ``out/fitted.json``. ``relaxation``: the
    step toward each new fit after the first (1: the undamped iteration). ``form``: fit the
    extended likelihood's ``(alpha, beta)`` or the direct term's error variance
    (:data:`~diffda.cycler.analysis.forecast_error.FORMS`)."""
    if not 0 < relaxation <= 1:
        raise ConfigError(f"relaxation = {relaxation}: must be in (0, 1]")
    if form not in FORMS:
        raise ConfigError(f"form = {form!r}: expected one of {list(FORMS)}")
    from diffda.emulators.forecast.model import SFNOEmulator
    from diffda.emulators.prior.model import DiffusionPrior

    out = Path(out)
    over = dict(overrides or {})
    reference = load_experiment(path, over)
    modes = [m for m in reference.base.analysis.modes if m in FITTED_MODES]
    if not modes:
        raise ConfigError(f"{path}: analysis.modes has none of the modes with a forecast term "
                          f"{sorted(FITTED_MODES)}")
    cadence = reference.base.data.cadence_hours
    prior = DiffusionPrior.load(reference.base.models.prior)
    grid = SFNOEmulator.from_weights(reference.base.models.emulator).grid
    current = reference.base.analysis.forecast.error_model
    history: list[dict[str, Any]] = []
    applied: Fits | None = None  # the model the runs of this iteration use (None: the config's)
    applied_lengths: Lengths = {}
    record: dict[str, Any] = {}
    for it in range(iterations):
        experiment = load_experiment(path, {**over, "analysis.modes": modes,
                                            "analysis.forecast.error_model": current})
        folder = out / f"iteration_{it}"
        run_cases(experiment, folder, which="tuning", scheduler=scheduler, threads=threads)
        _, cases, _ = load_cases([folder])
        records = [r for case in cases for r in case]
        # the precomputed mode: every lead (its forecast is the free run from t0); the
        # reinitialized mode: after its first cycle (which forecasts from t0 as well)
        start = {m: 0.0 if FITTED_MODES[m] else cadence for m in modes}
        new: Fits = {m: fit_runs(records, m, start[m], FITTED_MODES[m], form) for m in modes}
        lengths = {m: fit_lengths(records, m, start[m], FITTED_MODES[m], new[m])
                   for m in modes}
        table = compare_cases(cases, 24.0 * experiment.cases.steady_from_days)
        change = _largest_change(applied, new)  # the fixed-point residual
        history.append({
            "iteration": it, "error_model": current, "form": form,
            "largest_relative_change": change,
            "relaxation": 1.0 if applied is None else relaxation,
            "steady_rmse": {m: {v: s["steady_rmse"] for v, s in table["modes"][m].items()}
                            for m in modes},
            "spread_skill_steady": {m: {v: s.get("steady_spread_skill")
                                        for v, s in table["modes"][m].items()}
                                    for m in modes},
            "parameters": {m: {v: {str(k): [e.alpha, e.beta] for k, e in leads.items()}
                               for v, leads in t.items()} for m, t in new.items()},
            "correlation_km": lengths,
        })
        target = out / f"fitted_{it + 1}.json"
        if applied is not None:
            new = relax(applied, new, relaxation)
            lengths = relax_lengths(applied_lengths, lengths, relaxation)
        record = write_fitted(target, experiment.base, prior.variables, grid, new, history,
                              lengths, form)
        applied, applied_lengths, current = new, lengths, f"{PREFIX}{target}"
        if change < tol:
            break
    shutil.copyfile(out / f"fitted_{len(history)}.json", out / "fitted.json")
    return record
