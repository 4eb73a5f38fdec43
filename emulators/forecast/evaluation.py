"""Scores of a trained emulator on held-out data.

- :func:`forecast_scores`: RMSE by lead time next to persistence; :func:`twin_divergence`:
  the emulator's own twin experiment; :func:`efolding_days` of an error curve.
- :func:`evaluate_emulator`: all of them, the free runs' climate errors
  (:mod:`diffda.emulators.forecast.climate`) and the :func:`acceptance` checks;
  :func:`evaluate_weights` does the same for a weights file and the nature-run stores
  (what ``cycler evaluate emulator`` prints), with plots
  (:mod:`diffda.emulators.forecast.plots`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffda.core.config import require
from diffda.core.grid import Grid
from diffda.core.rng import numpy_generator
from diffda.emulators.forecast.climate import (
    bootstrap_climate_errors,
    climate_errors,
    climatology_by_latitude,
    yearly_free_runs,
)
from diffda.emulators.forecast.data import CoarseStates, load_coarse_states, window_starts
from diffda.emulators.forecast.model import SFNOEmulator
from diffda.emulators.forecast.plots import plot_free_run_climate, plot_rmse
from torch import Tensor
from tqdm.auto import tqdm


def lat_weighted_rmse(a: Tensor, b: Tensor, grid: Grid) -> Tensor:
    """``sqrt(mean_{lat,lon} w (a - b)^2)`` over the last two dims, then the RMS over all
    leading dims but the variable one: ``(..., var, lat, lon) -> (var,)``."""
    w = torch.as_tensor(grid.area_weights(), dtype=a.dtype, device=a.device)[:, None]
    mse = ((a - b) ** 2 * w).mean((-2, -1))
    return mse.reshape(-1, mse.shape[-1]).mean(0).sqrt()


def evenly_spaced(starts: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the window ``starts``, evenly spaced over them (first and last
    included), without repeats."""
    pick = np.unique(np.linspace(0, len(starts) - 1, min(n, len(starts))).round())
    return starts[pick.astype(int)]


@torch.no_grad()
def forecast_scores(
    emulator: SFNOEmulator,
    data: CoarseStates,
    n_leads: int,
    n_starts: int = 64,
    batch: int = 64,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """RMSE by lead time of emulator forecasts and of persistence, in physical units.

    Forecasts start at ``n_starts`` evenly spaced times of ``data`` whose next ``n_leads``
    steps exist; returns ``lead_hours (L,)``, ``rmse`` and ``rmse_persistence`` ``(L, var)``
    with ``L = n_leads`` (leads ``dt, 2 dt, ...``), the RMS over starts of the area-weighted
    RMSE (WeatherBench2 convention: mean of squared errors, then the root).
    """
    starts_all = window_starts(data.times, emulator.dt_hours, n_leads)
    if len(starts_all) == 0:
        raise ValueError(f"evaluation data has no {n_leads + 1} consecutive states")
    starts = evenly_spaced(starts_all, n_starts)
    V = len(data.variables)
    se = torch.zeros(n_leads, V, dtype=torch.float64)
    se_p = torch.zeros(n_leads, V, dtype=torch.float64)
    w = torch.as_tensor(data.grid.area_weights(), dtype=torch.float64)[:, None]
    f_all = emulator.forcing_at(data.times)  # (time, n_forcing, lat, lon), once
    for b0 in tqdm(range(0, len(starts), batch), desc="forecasts", disable=not progress):
        s = starts[b0:b0 + batch]
        x0 = data.states[s]
        z = emulator.normalise(x0)
        for k in range(n_leads):
            z = emulator.step_from(z, f_all[s + k])  # forcing at each member's valid time
            truth = data.states[s + k + 1].double()
            se[k] += (((emulator.denormalise(z).double() - truth) ** 2) * w).mean((-2, -1)).sum(0)
            se_p[k] += (((x0.double() - truth) ** 2) * w).mean((-2, -1)).sum(0)
    n = len(starts)
    return {
        "lead_hours": np.arange(1, n_leads + 1) * emulator.dt_hours,
        "rmse": (se / n).sqrt().numpy(),
        "rmse_persistence": (se_p / n).sqrt().numpy(),
        "n_starts": np.array(n),
    }

@torch.no_grad()
def twin_divergence(emulator: SFNOEmulator, data: CoarseStates, n_leads: int,
                    amplitude: float = 0.01, n_starts: int = 16, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """The emulator's own twin experiment: RMSE by lead between emulator runs from a state
    and from the same state plus a small perturbation (``amplitude`` x the normalised std,
    white noise from ``torch_generator(seed, "twin", start)``), in physical units.

    Its growth rate is the emulator's predictability, to compare with the nature run's twin
    experiment (error e-folding in 1-4 days, saturation within 5-20 days): an emulator with
    much slower growth would be more predictable than the world it emulates.
    Returns ``lead_hours (L,)`` and ``rmse (L, var)``.
    """
    from diffda.core.rng import torch_generator

    starts = evenly_spaced(window_starts(data.times, emulator.dt_hours, n_leads), n_starts)
    z = emulator.normalise(data.states[starts])
    noise = torch.stack([torch.randn(z.shape[1:], generator=torch_generator(seed, "twin", int(s)))
                         for s in starts])
    za, zb = z, z + amplitude * noise
    f_all = emulator.forcing_at(data.times)
    w = torch.as_tensor(data.grid.area_weights(), dtype=torch.float64)[:, None]
    rmse = torch.zeros(n_leads, z.shape[1], dtype=torch.float64)
    for k in range(n_leads):
        f = f_all[starts + k]
        za, zb = emulator.step_from(za, f), emulator.step_from(zb, f)
        d = emulator.denormalise(za).double() - emulator.denormalise(zb).double()
        rmse[k] = ((d**2) * w).mean((-2, -1)).mean(0).sqrt()
    return {"lead_hours": np.arange(1, n_leads + 1) * emulator.dt_hours, "rmse": rmse.numpy()}


def efolding_days(lead_hours: np.ndarray, rmse: np.ndarray, lo: float = 0.05,
                  hi: float = 0.5, saturation: float | None = None) -> float:
    """E-folding time (days) of an error curve: the least-squares slope of ``log(rmse)``
    against lead time, fitted where ``lo * sat <= rmse <= hi * sat`` (the exponential
    phase; ``sat`` = ``saturation`` or the curve's maximum). NaN if fewer than 2 points."""
    sat = float(np.max(rmse)) if saturation is None else saturation
    keep = (rmse >= lo * sat) & (rmse <= hi * sat) & (rmse > 0)
    if keep.sum() < 2:
        return float("nan")
    slope = np.polyfit(lead_hours[keep] / 24.0, np.log(rmse[keep]), 1)[0]
    return float(1.0 / slope) if slope > 0 else float("inf")


def evaluate_emulator(
    emulator: SFNOEmulator, data: CoarseStates, lead_days: float = 10.0, n_starts: int = 64,
    free_run_days: float = 365.0, progress: bool = False,
    reference: dict[int, CoarseStates] | None = None, free_run_members: int = 1,
    seed: int = 0, free_run_noise: bool = True,
) -> dict[str, Any]:
    """Scores of ``emulator`` on held-out ``data`` (physical units): RMSE by lead and
    variable next to persistence, the 1-day skill, and a free run's climate errors against
    the data over the same period (see :func:`~diffda.emulators.forecast.climate.climate_errors`).

    ``reference``: other years of the nature run (e.g. the training years), whose climate
    errors against the same held-out period are the metric's floor: two years of the truth
    itself differ by that much (``free_run.nature_interannual``).

    Free runs (:func:`~diffda.emulators.forecast.climate.yearly_free_runs`): ``free_run_days``
    from the first state of each held-out year, and from ``free_run_members - 1`` copies
    perturbed by 0.01 x the normalised std (white noise from
    ``torch_generator(seed, "free-run", year)``). One year of a chaotic run is one
    realisation of its climate; the climate errors are those of all members and years
    pooled against the data of all held-out years (``free_run.climate``); each member's own
    (its years pooled, ``climate_by_member``), each year's (``climate_by_year``) and each
    single run's (``climate_by_run``, by year) are listed: their scatter is the realisation
    noise of a one-year score, and a run in a regime of its own stands out.

    A :attr:`~SFNOEmulator.stochastic` emulator makes its free runs with noise (one
    generator ``torch_generator(seed, "free-run-noise", year)`` for a year's batch) unless
    ``free_run_noise`` is false; its forecasts and twin runs are always deterministic."""
    steps_per_day = round(24 / emulator.dt_hours)
    n_leads = max(1, round(lead_days * steps_per_day))
    out = _skill_scores(emulator, data, n_leads, n_starts, progress)
    n_free = round(free_run_days * steps_per_day)
    if n_free > 0:
        require(free_run_members >= 1, "free_run_members", free_run_members, "must be >= 1")
        out["free_run"] = _free_run_scores(emulator, data, n_free, steps_per_day, reference,
                                           free_run_members, seed, free_run_noise, progress)
    out["acceptance"] = acceptance(out)
    return out


def _skill_scores(emulator: SFNOEmulator, data: CoarseStates, n_leads: int, n_starts: int,
                  progress: bool) -> dict[str, Any]:
    """The forecast part of :func:`evaluate_emulator`: RMSE by lead against persistence,
    climatology and saturation, the 1-day skill, and the twin experiment's e-folding."""
    sc = forecast_scores(emulator, data, n_leads, n_starts=n_starts, progress=progress)
    v = list(data.variables)
    day = int(np.argmin(np.abs(sc["lead_hours"] - 24.0)))
    reduction = {x: float(1 - sc["rmse"][day, i] / sc["rmse_persistence"][day, i])
                 for i, x in enumerate(v)}
    # sigma_t: area-weighted RMS of the temporal std at each point = the RMSE of forecasting
    # the period's mean field ("climatology"); two independent states differ by sqrt(2) sigma_t
    std = _temporal_std(data)
    out: dict[str, Any] = {
        "lead_hours": sc["lead_hours"].tolist(),
        "rmse": {x: sc["rmse"][:, i].tolist() for i, x in enumerate(v)},
        "rmse_persistence": {x: sc["rmse_persistence"][:, i].tolist() for i, x in enumerate(v)},
        "rmse_climatology": {x: float(std[i]) for i, x in enumerate(v)},
        "rmse_saturation": {x: float(np.sqrt(2) * std[i]) for i, x in enumerate(v)},
        "n_starts": int(sc["n_starts"]),
        "rmse_reduction_vs_persistence_24h": reduction,
        "rmse_reduction_vs_climatology_24h": {
            x: float(1 - sc["rmse"][day, i] / std[i]) for i, x in enumerate(v)},
    }
    twin = twin_divergence(emulator, data, n_leads, n_starts=min(n_starts, 16))
    out["emulator_twin"] = {
        "perturbation": "0.01 x normalised std, white noise",
        "rmse": {x: twin["rmse"][:, i].tolist() for i, x in enumerate(v)},
        "efolding_days": {x: efolding_days(twin["lead_hours"], twin["rmse"][:, i],
                                           saturation=out["rmse_saturation"][x])
                          for i, x in enumerate(v)},
    }
    out["forecast_efolding_days"] = {
        x: efolding_days(sc["lead_hours"], sc["rmse"][:, i], saturation=out["rmse_saturation"][x])
        for i, x in enumerate(v)
    }
    return out


def _free_run_scores(
    emulator: SFNOEmulator, data: CoarseStates, n_free: int, steps_per_day: int,
    reference: dict[int, CoarseStates] | None, members: int, seed: int, noise: bool,
    progress: bool,
) -> dict[str, Any]:
    """The ``free_run`` part of :func:`evaluate_emulator`."""
    # runs of n_free steps from each held-out year's first state, all checked for
    # finiteness; the climate of the members and years pooled is compared with the data
    # over the times they share (a run may outlast its year)
    runs = yearly_free_runs(emulator, data, members, n_free, seed=seed, noise=noise,
                            progress=progress)
    v = list(data.variables)
    compared = [(r[:len(t)], t) for _, r, t in runs]
    # each year's members pooled, (member x time, var, lat, lon), then all years
    by_year = [r.transpose(0, 1).reshape(-1, *r.shape[2:]) for r, _ in compared]
    pooled = torch.cat(by_year)
    truth = torch.cat([t for _, t in compared])
    # reference years long enough to cover one compared year, cut to it
    n_year = len(compared[0][1])
    others = {str(y): r.states[1:n_year + 1] for y, r in (reference or {}).items()
              if len(r.states) > n_year}
    out: dict[str, Any] = {
        "days": n_free / steps_per_day,
        "members": members,
        "years": [y for y, _, _ in runs],
        "stochastic": noise and emulator.stochastic,
        "finite": all(bool(torch.isfinite(r).all()) for _, r, _ in runs),
        "climate_compared_days": len(truth) / steps_per_day,
        "climate": climate_errors(pooled, truth, data.grid, v),
    }
    if members > 1:
        interval = bootstrap_climate_errors(
            [r for r, _ in compared], truth, data.grid, v,
            generator=numpy_generator(seed, "climate-bootstrap"))
        out["climate_interval"] = {
            "level": 0.9, "resamples": 500,
            "note": "the runs' members resampled within each year; the truth's own "
                    "sampling noise is not included", **interval}
    out.update(_climate_breakdown(runs, compared, by_year, truth, data.grid, v, members))
    if others:
        out["nature_interannual"] = {
            y: climate_errors(x, truth, data.grid, v) for y, x in others.items()}
    out["climatology_by_latitude"] = _climatology_by_latitude(
        {"emulator": pooled, "truth": truth, **others}, v)
    return out


def _climate_breakdown(
    runs: list[tuple[int, Tensor, Tensor]],
    compared: list[tuple[Tensor, Tensor]], by_year: list[Tensor],
    truth: Tensor, grid: Grid, v: list[str], members: int,
) -> dict[str, Any]:
    """The climate errors of each year (several years), of each single run and of each
    member (several members): the realisation noise of a one-year score."""
    out: dict[str, Any] = {}
    if len(runs) > 1:
        out["climate_by_year"] = {
            str(y): climate_errors(x, t, grid, v)
            for (y, _, t), x in zip(runs, by_year, strict=True)}
    if members > 1:
        # each one-year run on its own: where a run fell into a regime of its own
        out["climate_by_run"] = {
            str(y): [climate_errors(r[:, m], t, grid, v) for m in range(members)]
            for (y, _, _), (r, t) in zip(runs, compared, strict=True)}
        out["climate_by_member"] = [
            climate_errors(torch.cat([r[:, m] for r, _ in compared]), truth, grid, v)
            for m in range(members)]
    return out


def _climatology_by_latitude(runs: dict[str, Tensor], variables: list[str]
                             ) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{run: {variable: {"mean": [...], "std": [...]}}}`` by latitude (physical units)."""
    out = {}
    for name, x in runs.items():
        m, s = climatology_by_latitude(x)
        out[name] = {v: {"mean": m[i].tolist(), "std": s[i].tolist()}
                     for i, v in enumerate(variables)}
    return out


def _temporal_std(data: CoarseStates) -> np.ndarray:
    """``(var,)``: sqrt of the area-weighted mean over points of the temporal variance."""
    w = torch.as_tensor(data.grid.area_weights(), dtype=torch.float64)[:, None]
    x = data.states.double()
    var = x.var(0, unbiased=False)  # (var, lat, lon)
    return ((var * w).mean((-2, -1)) / w.mean()).sqrt().numpy()


def acceptance(scores: dict[str, Any]) -> dict[str, Any]:
    """The issue's acceptance checks, each with its measured value."""
    checks: dict[str, Any] = {}
    red = scores["rmse_reduction_vs_persistence_24h"]
    for v in ("height", "u", "v"):
        if v in red:
            checks[f"rmse_24h_{v}_30pct_below_persistence"] = red[v] >= 0.30
    if "free_run" in scores:
        fr = scores["free_run"]
        checks["free_run_finite"] = fr["finite"]
        checks["free_run_climate_within_10pct"] = all(
            c["mean_error"] < 0.1 and c["std_error"] < 0.1 for c in fr["climate"].values()
        )
    lead = np.asarray(scores["lead_hours"])
    growth = {}
    for v, r in scores["rmse"].items():
        r = np.asarray(r)
        growth[v] = bool(np.all(np.diff(r[: max(2, np.searchsorted(lead, 72.0))]) > 0))
    checks["rmse_grows_over_first_3_days"] = all(growth.values())
    checks["all"] = all(bool(x) for x in checks.values())
    return checks


def evaluate_weights(
    weights: Path, data: Sequence[Path], *, years: Sequence[int] | None = None,
    reference_years: Sequence[int] | None = None, lead_days: float = 10.0,
    n_starts: int = 64, free_run_days: float = 365.0, free_run_members: int = 1,
    seed: int = 0, free_run_noise: bool = True, plots: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate_emulator` of the emulator at ``weights`` on the nature-run stores
    ``data``: held-out ``years`` (default: the card's ``valid_years``), reference years
    (default: the card's ``train_years``, less the held-out ones); the data and the time
    taken are recorded in the scores, and with ``plots`` the RMSE by lead and the free-run
    climate by latitude are drawn into that folder (their paths: ``plot``,
    ``plot_climate``)."""
    emulator = SFNOEmulator.from_weights(weights)
    card = json.loads(Path(weights).with_suffix(".json").read_text())
    years = years or card.get("data", {}).get("valid_years")
    states = load_coarse_states(data, emulator.grid, emulator.variables, years,
                                progress=progress)
    ref_years = (reference_years if reference_years is not None
                 else card.get("data", {}).get("train_years", []))
    reference = {y: load_coarse_states(data, emulator.grid, emulator.variables, [y])
                 for y in ref_years if y not in (years or [])}
    t0 = time.perf_counter()
    scores = evaluate_emulator(emulator, states, lead_days, n_starts, free_run_days,
                               progress=progress, reference=reference,
                               free_run_members=free_run_members, seed=seed,
                               free_run_noise=free_run_noise)
    scores["data"] = {"path": [str(d) for d in data], "years": list(years) if years else None}
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    if plots is not None:
        _plot_scores(scores, emulator, Path(weights), data, years, Path(plots))
    return scores


def _plot_scores(scores: dict[str, Any], emulator: SFNOEmulator, weights: Path,
                 data: Sequence[Path], years: Sequence[int] | None, folder: Path) -> None:
    """The plots of :func:`evaluate_weights`; their paths go into ``scores``."""
    p = plot_rmse(scores, folder / "emulator_rmse_by_lead.png",
                  title=f"{weights.name} on "
                        f"{', '.join(d.name for d in data)}, years {years}")
    scores["plot"] = str(p)
    if "free_run" in scores:
        q = plot_free_run_climate(
            scores, emulator.grid.lat, folder / "emulator_free_run_climate.png",
            title=f"{weights.name}: {scores['free_run']['members']} x "
                  f"{scores['free_run']['days']:.0f}-day free runs from each of "
                  f"{scores['free_run']['years']} vs the nature run, by latitude")
        scores["plot_climate"] = str(q)
