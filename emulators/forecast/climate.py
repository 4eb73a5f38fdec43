"""The emulator's climate: free runs from each year's first state and their climate errors.

- :func:`perturbed_members`, :func:`yearly_free_runs`: seeded free-run ensembles, one per
  calendar year of the data.
- :func:`climatology_by_latitude`, :func:`climate_errors` (and
  :func:`climate_errors_from_moments`): zonal-time mean and std by latitude of a run
  against the truth's, in units of the truth's variability.
- :func:`bootstrap_climate_errors`: the sampling interval of pooled climate errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffda.core.grid import Grid
from diffda.emulators.forecast.data import CoarseStates, year_segments
from diffda.emulators.forecast.model import SFNOEmulator
from torch import Tensor


def perturbed_members(emulator: SFNOEmulator, x0: Tensor, members: int,
                      generator: torch.Generator, amplitude: float = 0.01) -> Tensor:
    """``(members, var, lat, lon)``: the state ``x0`` ``(1, var, lat, lon)`` unperturbed
    and ``members - 1`` copies perturbed by ``amplitude`` x the normalised std (white
    noise from ``generator``), in physical units: the starts of a free-run ensemble."""
    if members <= 1:
        return x0
    with torch.no_grad():
        z0 = emulator.normalise(x0)
        noise = torch.randn((members - 1, *z0.shape[1:]), generator=generator)
        return torch.cat([x0, emulator.denormalise(z0 + amplitude * noise)])


@torch.no_grad()
def yearly_free_runs(
    emulator: SFNOEmulator, data: CoarseStates, members: int, steps: int | None = None,
    seed: int = 0, names: tuple[str, str] = ("free-run", "free-run-noise"),
    noise: bool = True, progress: bool = False,
) -> list[tuple[int, Tensor, Tensor]]:
    """Free runs from the first state of each calendar year of ``data``: ``[(year, runs,
    truth)]`` with ``runs`` ``(steps, members, var, lat, lon)`` (``steps`` default: to the
    year's last state) and ``truth`` the data over the same times, ``(n, var, lat, lon)``,
    ``n = min(steps, the year's states - 1)`` (a run may go on past its year's data; it
    is compared over the times they share). Years with fewer than two states are skipped.

    Draws, per year ``y``: the members' starts (:func:`perturbed_members`) from
    ``torch_generator(seed, names[0], y)``, a stochastic emulator's noise (unless
    ``noise`` is false) from ``torch_generator(seed, names[1], y)``."""
    from diffda.core.rng import torch_generator

    if members < 1:
        raise ValueError(f"members = {members} must be >= 1")
    out = []
    for y, s in year_segments(data).items():
        available = s.stop - s.start - 1
        if available < 1:
            continue
        n = available if steps is None else steps
        x0 = perturbed_members(emulator, data.states[s.start:s.start + 1], members,
                               torch_generator(seed, names[0], y))
        gen = torch_generator(seed, names[1], y) if noise and emulator.stochastic else None
        runs, _ = emulator.rollout(x0, data.times[s.start], n, progress=progress,
                                   generator=gen)
        out.append((y, runs, data.states[s.start + 1:s.start + 1 + min(n, available)]))
    if not out:
        raise ValueError("the data hold no year with at least two states")
    return out


def climatology_by_latitude(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std over time and longitude: ``(time, var, lat, lon) -> 2 x (var, lat)``."""
    x = x.double()
    mean = x.mean((0, 3))
    std = ((x - mean[None, :, :, None]) ** 2).mean((0, 3)).sqrt()
    return mean, std


def climate_errors(
    run: Tensor, truth: Tensor, grid: Grid, variables: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Compare the climate of ``run`` with that of ``truth`` (both ``(time, var, lat, lon)``).

    Per variable: ``mean_error`` = area-weighted RMS over latitude of the difference of the
    zonal-time means, divided by the area-weighted RMS of the truth's std (a bias in units of
    the variability: for winds, whose mean is near zero, a ratio of means is meaningless);
    ``std_error`` = area-weighted mean of ``|std_run / std_truth - 1|``; ``finite`` = all
    values finite. Both errors must be below 0.1 for "within 10%".

    ``mean_error_global`` is the prior evaluation's measure of the same thing
    (:func:`diffda.emulators.prior.evaluation.compare_climates`): the area-weighted mean of
    ``|mean_run - mean_truth|`` over latitude divided by the truth's global std, which
    includes the variance of the zonal-mean profile itself. It is the more lenient of the
    two where the mean varies strongly with latitude (height), and is reported for
    comparison only.
    """
    m_r, s_r = climatology_by_latitude(run)
    m_t, s_t = climatology_by_latitude(truth)
    out = climate_errors_from_moments(m_r, s_r, m_t, s_t, grid, variables)
    for i, v in enumerate(variables):
        out[v]["finite"] = bool(torch.isfinite(run[:, i]).all())
    return out


def climate_errors_from_moments(
    m_r: Tensor, s_r: Tensor, m_t: Tensor, s_t: Tensor, grid: Grid, variables: Sequence[str]
) -> dict[str, dict[str, float]]:
    """:func:`climate_errors` (without ``finite``) from the zonal-time means and stds by
    latitude ``(var, lat)`` of the run (``m_r, s_r``) and the truth (``m_t, s_t``)."""
    w = torch.as_tensor(grid.area_weights(), dtype=torch.float64)
    out = {}
    for i, v in enumerate(variables):
        scale = torch.sqrt((w * s_t[i] ** 2).mean())
        global_mean = (w * m_t[i]).mean() / w.mean()
        global_std = torch.sqrt((w * (s_t[i] ** 2 + (m_t[i] - global_mean) ** 2)).mean()
                                / w.mean())
        out[v] = {
            "mean_error": float(torch.sqrt((w * (m_r[i] - m_t[i]) ** 2).mean()) / scale),
            "std_error": float((w * (s_r[i] / s_t[i] - 1).abs()).mean()),
            "mean_error_global": float((w * (m_r[i] - m_t[i]).abs()).mean() / w.mean()
                                       / global_std),
        }
    return out


def bootstrap_climate_errors(
    runs: Sequence[Tensor], truth: Tensor, grid: Grid, variables: Sequence[str],
    resamples: int = 500, level: float = 0.9, generator: np.random.Generator | None = None,
) -> dict[str, Any]:
    """The sampling interval of the pooled :func:`climate_errors` of free runs: ``runs``
    holds one ``(time, member, var, lat, lon)`` tensor per year; the members of each year
    are resampled with replacement (``resamples`` times, stratified by year), the pooled
    zonal-time mean and std recomputed from each run's moments, and the central ``level``
    interval of each score returned, ``{var: {"mean_error": [lo, hi], "std_error": [lo,
    hi]}}``. It measures the realisation noise of the runs, not that of ``truth`` (a few
    years of a chaotic run are a sample of its climate too)."""
    if not runs:
        raise ValueError("no runs to resample")
    rng = generator or np.random.default_rng(0)
    m_t, s_t = climatology_by_latitude(truth)
    # per run: counts, sums and sums of squares over time and longitude, (var, lat)
    s1 = [r.double().sum((0, 4)) for r in runs]            # (member, var, lat)
    s2 = [r.double().pow(2).sum((0, 4)) for r in runs]
    n = [r.shape[0] * r.shape[4] for r in runs]
    draws: dict[str, dict[str, list[float]]] = {v: {"mean_error": [], "std_error": []}
                                                for v in variables}
    for _ in range(resamples):
        a = b = 0.0
        count = 0
        for y, r in enumerate(runs):
            pick = torch.as_tensor(rng.integers(0, r.shape[1], r.shape[1]))
            a = a + s1[y][pick].sum(0)
            b = b + s2[y][pick].sum(0)
            count += n[y] * r.shape[1]
        mean = a / count
        std = (b / count - mean**2).clamp_min(0).sqrt()
        for v, e in climate_errors_from_moments(mean, std, m_t, s_t, grid, variables).items():
            draws[v]["mean_error"].append(e["mean_error"])
            draws[v]["std_error"].append(e["std_error"])
    q = [(1 - level) / 2, (1 + level) / 2]
    return {v: {k: [float(x) for x in np.quantile(d[k], q)] for k in d}
            for v, d in draws.items()}

