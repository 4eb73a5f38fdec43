"""A climate adjustment of the emulator: a zonal-mean tendency correction fitted on
free runs of the training years (the "flux adjustment" of coupled climate models).

A free-running emulator drifts to a climate of its own. The stochastic emulator without it
(:mod:`diffda.emulators.forecast.stochastic`) keeps too much mass poleward of 60 degrees and
50-60 m too little in the tropics; the tracer, whose saturation value grows as
``exp(h / 400 m)`` in the nature run, follows that height bias (10-13 % low in the
tropics). Those errors are small per step and persistent, so a constant correction of
the step removes most of them:

    z_{n+1} = F(z_n, f_n) + c + noise,     c: (var, lat), normalised units per step,

a zonally uniform, time-independent tendency added at every step (deterministic and
stochastic). ``c`` is fitted by a damped fixed-point iteration on the training years
only (the held-out years stay unseen):

    c_{k+1} = c_k - b_k / tau,

where ``b_k`` is the bias of the zonal-time mean (normalised units) of one-year free runs
with ``c_k`` against the data of the same years, averaged over the years and ``members``
runs from each year's first state (member 0 unperturbed, the others perturbed by 1 % of
the normalised std), and ``tau`` (steps) is the relaxation time of the iteration: a
correction ``c`` held for ``tau`` steps moves the state by ``c tau``; too short a ``tau``
overshoots. With ``tau = 80`` (20 days), three iterations bring the training-year height
biases to 35-40 % of their size, and the tracer's to 20-35 % (README numbers).

Optionally (``noise_variables``) the same iteration also fits the amplitude of a
stochastic emulator's noise by variable and latitude, ``modes <- s(var, lat) modes``:

    log s_{k+1} = log s_k - g log(std_k / std_data),

with ``std`` the std over time and longitude by latitude of the same runs and data
(the log ratio averaged over the years), ``g`` the gain (``noise_gain``, 1: a step that
would be exact if all of a row's variance came from its noise, so it under-corrects and
does not overshoot) and ``s`` kept within ``noise_scale_range``. It is for a variable
whose free runs are too variable where the noise drives them (the tracer in the tropics
and at 50-60N: 1.2-1.4 times the nature run's std); rows without noise (the polar rows of
:mod:`~diffda.emulators.forecast.stochastic`) are not changed by it.

``cycler train emulator-adjust WEIGHTS --data PATH --out OUT.safetensors`` writes the
emulator with ``c`` (and the rescaled noise modes, if asked; the network is unchanged)
and records the iteration in its card.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from diffda.core.config import require
from diffda.emulators.forecast.climate import (
    climate_errors,
    climatology_by_latitude,
    yearly_free_runs,
)
from diffda.emulators.forecast.data import CoarseStates
from diffda.emulators.forecast.model import SFNOEmulator
from torch import Tensor
from tqdm.auto import tqdm


@torch.no_grad()
def free_run_bias(
    emulator: SFNOEmulator, data: CoarseStates, members: int = 4, seed: int = 0,
    progress: bool = False, statistic: str = "mean",
) -> tuple[Tensor, Tensor, dict[int, dict[str, dict[str, float]]]]:
    """The emulator's climate bias on the years of ``data``: ``(var, lat)``, the zonal-time
    mean of normalised free runs minus that of the data, averaged over the years (each run
    from its year's first state to its last, ``members`` runs pooled; ``statistic =
    "median"``: the median over the runs of each run's zonal-time mean, so that one run in
    a regime of its own does not set the bias); the log ratio of
    their std (over time and longitude) to the data's, ``(var, lat)``, averaged over the
    years; and each year's :func:`~diffda.emulators.forecast.climate.climate_errors` of the pooled
    runs.

    Draws: member perturbations from ``torch_generator(seed, "adjust-members", year)``,
    a stochastic emulator's noise from ``torch_generator(seed, "adjust-noise", year)``
    (the same at every call, so successive iterations differ only by the correction).
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"bias statistic {statistic!r}: expected 'mean' or 'median'")
    runs = yearly_free_runs(emulator, data, members, seed=seed,
                            names=("adjust-members", "adjust-noise"), progress=progress)
    bias = torch.zeros(len(emulator.variables), emulator.grid.nlat, dtype=torch.float64)
    log_ratio = torch.zeros_like(bias)
    errors = {}
    for y, run, truth in runs:
        pooled = run.transpose(0, 1).reshape(-1, *run.shape[2:])
        m_run, s_run = climatology_by_latitude(emulator.normalise(pooled))
        if statistic == "median":
            m_run = torch.stack([climatology_by_latitude(emulator.normalise(run[:, k]))[0]
                                 for k in range(run.shape[1])]).median(0).values
        m_data, s_data = climatology_by_latitude(emulator.normalise(truth))
        bias += (m_run - m_data) / len(runs)
        log_ratio += torch.log(s_run.clamp_min(1e-12) / s_data.clamp_min(1e-12)) / len(runs)
        errors[y] = climate_errors(pooled, truth, emulator.grid, emulator.variables)
    return bias.float(), log_ratio.float(), errors


def fit_tendency_correction(
    emulator: SFNOEmulator, data: CoarseStates, iterations: int = 4, tau: float = 80.0,
    members: int = 8, variables: Sequence[str] | None = None, seed: int = 0,
    progress: bool = False, noise_variables: Sequence[str] = (), noise_gain: float = 1.0,
    noise_scale_range: tuple[float, float] = (0.2, 1.5), statistic: str = "mean",
) -> tuple[Tensor, dict[str, Any]]:
    """The correction ``c`` ``(var, lat)`` of the module docstring after ``iterations``
    updates, starting from the emulator's own (zero if it has none), and a summary with
    each iteration's training-year climate errors (before its update). ``variables``: the
    variables corrected (default all; the others keep a zero row). ``noise_variables``:
    those whose noise amplitude by latitude is fitted too (module docstring; a stochastic
    emulator only). The emulator is left with the fitted correction (and noise)."""
    chosen = _checked_variables(emulator, iterations, tau, variables, noise_variables,
                                noise_gain, noise_scale_range)
    lo, hi = noise_scale_range
    names = list(emulator.variables)
    mask = torch.tensor([float(v in chosen) for v in names])[:, None]
    noise_mask = torch.tensor([float(v in noise_variables) for v in names])[:, None]
    c = emulator.tendency_correction
    c = torch.zeros(len(names), emulator.grid.nlat) if c is None else c.detach().cpu().clone()
    base = emulator.noise_modes.detach().cpu().clone() if noise_variables else None
    bounds = emulator.noise_bounds
    log_s = torch.zeros(len(names), emulator.grid.nlat)
    history = []
    for k in tqdm(range(iterations), desc="adjustment", disable=not progress):
        emulator.set_tendency_correction(c)
        if base is not None:
            emulator.set_noise(base * log_s.exp()[None, :, :, None], bounds)
        bias, log_ratio, errors = free_run_bias(emulator, data, members, seed,
                                                statistic=statistic)
        history.append({"iteration": k, "max_abs_correction": float(c.abs().max()),
                        "max_abs_bias": float(bias.abs().max()),
                        "climate_errors": {str(y): e for y, e in errors.items()}})
        if base is not None:
            history[-1]["noise_scale"] = _by_latitude(log_s, names, noise_variables)
            log_s = (log_s - noise_gain * noise_mask * log_ratio).clamp(
                math.log(lo), math.log(hi))
        c = c - mask * bias / tau
    emulator.set_tendency_correction(c)
    info = {
        "iterations": iterations, "tau_steps": tau, "members": members,
        "variables": chosen, "seed": seed, "bias_statistic": statistic,
        "max_abs_correction": {v: float(c[i].abs().max()) for i, v in enumerate(names)},
        "history": history,
        "units": "normalised (the emulator's state_mean / state_std) per step",
    }
    if base is not None:
        emulator.set_noise(base * log_s.exp()[None, :, :, None], bounds)
        info["noise_scale"] = {
            "variables": list(noise_variables), "gain": noise_gain,
            "range": [lo, hi],
            "by_latitude": _by_latitude(log_s, names, noise_variables),
            "note": "factor applied to the base noise modes, by latitude row "
                    "(south to north); rows with zero noise are unaffected"}
    return c, info


def _checked_variables(
    emulator: SFNOEmulator, iterations: int, tau: float, variables: Sequence[str] | None,
    noise_variables: Sequence[str], noise_gain: float, noise_scale_range: tuple[float, float],
) -> list[str]:
    """The variables :func:`fit_tendency_correction` corrects, after checking its
    arguments (each bad one raises, naming it)."""
    require(iterations >= 1, "iterations", iterations, "must be >= 1")
    require(tau > 0, "tau", tau, "must be > 0 (steps)")
    require(noise_gain > 0, "noise_gain", noise_gain, "must be > 0")
    lo, hi = noise_scale_range
    require(0 < lo <= 1 <= hi, "noise_scale_range", noise_scale_range,
            "must satisfy 0 < low <= 1 <= high")
    names = list(emulator.variables)
    chosen = names if variables is None else list(variables)
    unknown = sorted(set(chosen) - set(names)) + sorted(set(noise_variables) - set(names))
    if unknown:
        raise ValueError(f"variables {unknown} are not the emulator's {names}")
    if noise_variables and not emulator.stochastic:
        raise ValueError(f"noise_variables {list(noise_variables)}: the emulator has no noise "
                         "to rescale (cycler train emulator-noise makes one)")
    return chosen


def _by_latitude(log_s: Tensor, names: list[str], noise_variables: Sequence[str]
                 ) -> dict[str, list[float]]:
    """The noise factors ``exp(log_s)`` by latitude of the ``noise_variables``, rounded."""
    return {v: [round(float(x), 4) for x in log_s[i].exp()]
            for i, v in enumerate(names) if v in noise_variables}
