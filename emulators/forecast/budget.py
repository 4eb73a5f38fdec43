"""A global-mean budget for the emulator: the area-weighted global mean of a variable
follows a linear budget law fitted on the data, not the network.

The nature run's height obeys an exact global budget. Advection conserves mass, so the
global mean of the free-surface height changes only by its relaxation toward
``height_eq`` (Eq. 3 of :mod:`diffda.emulators.nature.shallow_water`):

    d<h>/dt = (<h_eq> - <h>) / tau_rad,

with ``<.>`` the area-weighted global mean. On the coarsened nature run a linear fit of the
6-hour change of ``<h>`` on ``<h>`` and ``<h_eq>`` leaves residuals of 0.035 m per step,
against a year-round range of <h> of 56 m. The network knows no such law: in its regime
episodes the global-mean height rises by up to 100 m (README, "The emulator"), which warms
the tropics of the tracer (its saturation value grows as ``exp(h / 400 m)``).

The constraint (in the spirit of the global conservation "correctors" of ACE, Watt-Meyer
et al. 2023, here with the law fitted rather than written down) replaces the global mean of
each step's result by the law's value, a uniform shift of that variable's step:

    <z_v>(t + dt) = <z_v>(t) + a_v <z_v>(t) + sum_j b_vj <f_j>(t) + c_v,

in the emulator's normalised units (``z``: state, ``f``: forcing, both at the step's valid
time). ``a, b, c`` are fitted by least squares on consecutive states of the training
years; the summary reports the law's residual and, for comparison, the network's own
one-step error in the same global mean. A log-transformed variable (the tracer) is refused:
the global mean of its logarithm has no budget.

``cycler train emulator-budget WEIGHTS --data PATH --variables height --out OUT.safetensors``
writes the emulator with the law (the network is unchanged); fit it before
``emulator-adjust``, whose tendency correction then works with the constraint on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffda.core.grid import lat_weighted_mean
from diffda.emulators.forecast.data import CoarseStates, window_starts
from diffda.emulators.forecast.model import SFNOEmulator
from diffda.emulators.forecast.stochastic import one_step_residuals
from torch import Tensor


@torch.no_grad()
def fit_global_budget(
    emulator: SFNOEmulator, data: CoarseStates, variables: Sequence[str] = ("height",),
    batch: int = 256,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The budget law of the module docstring for ``variables``: ``coef``
    ``(var, n_forcing + 2)``, ``mask`` ``(var,)`` for
    :meth:`~diffda.emulators.forecast.model.SFNOEmulator.set_global_budget`, and a summary (per
    variable: the coefficients, the law's residual RMS and R^2 of the 6-hour change, the
    network's own one-step RMS and mean error of the global mean, the first two in physical
    units, and the relaxation time ``-dt / a`` where ``a < 0``)."""
    names = list(emulator.variables)
    unknown = sorted(set(variables) - set(names))
    if unknown or not variables:
        raise ValueError(f"budget variables {list(variables)}: must be some of {names}")
    logged = [v for v in variables if float(emulator.log_offset[names.index(v)]) > 0]
    if logged:
        raise ValueError(f"budget variables {logged} are log-transformed; the global mean of "
                         "their logarithm has no budget")
    starts = window_starts(data.times, emulator.dt_hours, 1)
    if len(starts) < 4:
        raise ValueError(f"need at least 4 pairs of consecutive {emulator.dt_hours} h states "
                         f"to fit a budget, got {len(starts)}")
    z = emulator.normalise(data.states)
    f = emulator.forcing_at(data.times)
    gz = lat_weighted_mean(z.double())  # (time, var)
    gf = lat_weighted_mean(f.double()) if f.shape[1] else gz.new_zeros(len(gz), 0)
    s = torch.as_tensor(starts)
    # the network's own global-mean error, without any budget
    saved = (emulator.budget_coef, emulator.budget_mask)
    emulator.set_global_budget(None)
    try:  # residual = truth - forecast, so the forecast's error is its negative
        net_err = -lat_weighted_mean(one_step_residuals(emulator, data, batch).double())
    finally:
        emulator.set_global_budget(*saved)
    n_var, n_f = len(names), gf.shape[1]
    coef = torch.zeros(n_var, n_f + 2, dtype=torch.float64)
    mask = torch.zeros(n_var)
    info: dict[str, Any] = {"variables": list(variables), "n_pairs": len(s),
                            "units": "coefficients in normalised units per step; errors in "
                                     "physical units"}
    for v in variables:
        i = names.index(v)
        x = torch.cat([gz[s, i:i + 1], gf[s], torch.ones(len(s), 1, dtype=gz.dtype)], 1)
        y = gz[s + 1, i] - gz[s, i]
        sol = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
        resid = y - x @ sol
        coef[i], mask[i] = sol, 1.0
        std = float(emulator.state_std[i])
        a = float(sol[0])
        info[v] = {
            "coefficients": [float(c) for c in sol],
            "coefficient_names": ["state", *[f"forcing_{j}" for j in range(n_f)], "constant"],
            "residual_rms": float(resid.pow(2).mean().sqrt()) * std,
            "r2": float(1 - resid.var() / y.var().clamp_min(1e-30)),
            "change_rms": float(y.pow(2).mean().sqrt()) * std,
            "network_error_rms": float(net_err[:, i].pow(2).mean().sqrt()) * std,
            "network_error_mean": float(net_err[:, i].mean()) * std,
            "relaxation_days": (emulator.dt_hours / 24.0 / -a) if a < 0 else None,
        }
    return coef.float(), mask, info
