"""A stochastic emulator: additive noise with the covariance of the 6-hour residuals.

The nature run is stirred by a random vorticity forcing the emulator cannot see, so a
deterministic emulator trained with an MSE loss learns the mean 6-hour tendency and
leaves out the stirring's energy input: its free-run circulation is too weak (README,
"The emulator"). This module gives it that input back as a stochastic term, in the
spirit of stochastically perturbed tendencies in weather models:

    z_{n+1} = F(z_n, f_n) + sum_k xi_k e_k,    xi ~ N(0, I) at every step,

with ``e_k = sqrt(lambda_k) v_k`` the leading ``K`` principal components (EOFs) of the
residuals ``r_n = z_{n+1} - F(z_n, f_n)`` of one-step forecasts over the training years,
in the emulator's normalised units (mean residual removed: the noise has zero mean).
The noise is white in time; its spatial and cross-variable covariance is that of the
residuals, truncated to ``K`` modes.

``polar_rows``: the modes are set to zero in that many latitude rows at each pole. There
the residuals are mostly the emulator's own state-dependent error (the pole rows of the
16x32 grid), not weather it cannot know; with noise there, two of four one-year free runs
fell into a spurious northern polar regime (README numbers).

``bounds_margin``: a stochastic step clamps each variable, row by row, to the range the
training data take at that latitude, widened on each side by ``bounds_margin`` times
that range. Without it the noise pushed the southern polar tracer into a runaway (up to
2.8 kg/kg, against 0.002 in the data) in one of four one-year runs.

``cycler train emulator-noise WEIGHTS --data PATH --out OUT.safetensors`` fits the modes
on the card's training years and writes the emulator with them (the network is
unchanged); it then steps stochastically wherever a step is given a generator
(:meth:`~diffda.emulators.forecast.model.SFNOEmulator.set_noise`): in the evaluation's free
runs, and in the EnKF's member forecasts when ``enkf.model_noise = true`` (additive model
error). Deterministic forecasts and the diffusion modes never draw it.
"""

from __future__ import annotations

from typing import Any

import torch
from diffda.core.config import require
from diffda.emulators.forecast.data import CoarseStates, window_starts
from diffda.emulators.forecast.model import SFNOEmulator
from torch import Tensor


@torch.no_grad()
def one_step_residuals(emulator: SFNOEmulator, data: CoarseStates, batch: int = 256) -> Tensor:
    """``(N, var, lat, lon)``: normalised ``z_{n+1} - F(z_n, f_n)`` for every pair of
    consecutive states ``dt_hours`` apart in ``data`` (deterministic steps)."""
    starts = window_starts(data.times, emulator.dt_hours, 1)
    if len(starts) == 0:
        raise ValueError(f"no two consecutive {emulator.dt_hours} h states in the data")
    f_all = emulator.forcing_at(data.times)
    z = emulator.normalise(data.states)  # each state once
    out = []
    for b in range(0, len(starts), batch):
        s = starts[b:b + batch]
        out.append(z[s + 1] - emulator.step_from(z[s], f_all[s]))
    return torch.cat(out)


def latitude_bounds(emulator: SFNOEmulator, data: CoarseStates, margin: float = 0.1) -> Tensor:
    """``(2, var, lat)``: the normalised min and max of ``data`` over time and longitude at
    each latitude, each moved outwards by ``margin`` times their difference."""
    require(margin >= 0, "bounds_margin", margin, "must be >= 0")
    with torch.no_grad():
        z = emulator.normalise(data.states)
    lo, hi = z.amin((0, 3)), z.amax((0, 3))
    width = (hi - lo).clamp_min(1e-6)
    return torch.stack([lo - margin * width, hi + margin * width])


def fit_residual_noise(
    emulator: SFNOEmulator, data: CoarseStates, n_modes: int = 256, polar_rows: int = 2,
    scale: dict[str, float] | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """The noise modes ``(K, var, lat, lon)`` of the module docstring and a summary:
    ``variance_fraction`` (of the residual variance the ``K`` modes hold, before the
    polar rows are zeroed), per-variable residual RMS and the RMS of the mean residual
    (normalised units), and the number of residuals. ``scale``: ``{variable: factor}``
    multiplying that variable's part of every mode (its noise std; the correlations
    between variables keep their sign)."""
    nlat = emulator.grid.nlat
    require(n_modes >= 1, "n_modes", n_modes, "must be >= 1")
    require(0 <= 2 * polar_rows < nlat, "polar_rows", polar_rows,
            f"must be >= 0 and leave rows between the poles (nlat = {nlat})")
    res = one_step_residuals(emulator, data).double()
    n = res.shape[0]
    if n < 2:
        raise ValueError("need at least two residuals to estimate a covariance")
    k = min(n_modes, n - 1, res[0].numel())
    mean = res.mean(0)
    x = (res - mean).reshape(n, -1)
    _, sv, vt = torch.linalg.svd(x, full_matrices=False)
    var = sv**2 / (n - 1)
    modes = (vt[:k] * var[:k, None].sqrt()).reshape(k, *res.shape[1:])
    if polar_rows:
        modes[:, :, :polar_rows] = 0
        modes[:, :, nlat - polar_rows:] = 0
    scale = dict(scale or {})
    for v, factor in scale.items():
        if v not in emulator.variables:
            raise ValueError(f"noise scale: {v!r} is not one of {list(emulator.variables)}")
        require(factor >= 0, f"noise scale of {v}", factor, "must be >= 0")
        modes[:, emulator.variables.index(v)] *= factor
    info = {
        "n_modes": k,
        "polar_rows_zeroed": polar_rows,
        "scale": scale,
        "variance_fraction": float(var[:k].sum() / var.sum()),
        "residual_rms": {v: float(res[:, i].pow(2).mean().sqrt())
                         for i, v in enumerate(emulator.variables)},
        "mean_residual_rms": float(mean.pow(2).mean().sqrt()),
        "n_residuals": n,
        "units": "normalised (the emulator's state_mean / state_std)",
    }
    return modes.float(), info
