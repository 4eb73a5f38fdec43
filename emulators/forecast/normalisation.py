"""The emulator's normalisation, fitted on its training data.

Per variable ``z = (T(x) - mean) / std`` with ``T = log(x + offset)`` for positive variables
(:data:`POSITIVE_VARIABLES`, the tracer: so forecasts stay positive) and the identity
otherwise; the std of the normalised ``dt_hours`` tendency (the residual scale of the
network); mean and std of each forcing channel. All area-weighted
(:func:`fit_normalisation`, :class:`Normalisation`).
"""

from __future__ import annotations

import dataclasses

import torch
from diffda.emulators.forecast.data import CoarseStates, window_starts
from torch import Tensor

POSITIVE_VARIABLES: frozenset[str] = frozenset({"tracer"})

@dataclasses.dataclass
class Normalisation:
    """Per-variable statistics of the training data (see :func:`fit_normalisation`)."""

    state_mean: Tensor
    state_std: Tensor
    tendency_std: Tensor
    log_offset: Tensor
    forcing_mean: Tensor
    forcing_std: Tensor


def _weighted_moments(x: Tensor, w: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    ww = w.expand_as(x)
    mean = (x * ww).sum(dims) / ww.sum(dims)
    shape = [1] * x.ndim
    keep = [d for d in range(x.ndim) if d not in dims]
    for d in keep:
        shape[d] = x.shape[d]
    var = ((x - mean.reshape(shape)) ** 2 * ww).sum(dims) / ww.sum(dims)
    return mean, var.sqrt()


def fit_normalisation(
    data: CoarseStates, forcing: Tensor | None, dt_hours: float,
    positive: frozenset[str] = POSITIVE_VARIABLES, log_offset_fraction: float = 1e-3,
) -> Normalisation:
    """Area-weighted per-variable mean/std of the (log-)transformed training states, std of
    their normalised ``dt_hours`` tendencies, and mean/std of each forcing channel.

    ``data.states``: ``(time, var, lat, lon)``; ``forcing``: ``(time, n_forcing, lat, lon)``.
    Positive variables get ``log(x + offset)`` with ``offset = log_offset_fraction * mean``.
    """
    x = data.states.double()
    w = torch.as_tensor(data.grid.area_weights(), dtype=torch.float64)[:, None]
    mean_raw, _ = _weighted_moments(x, w, (0, 2, 3))
    offset = torch.tensor(
        [log_offset_fraction * float(mean_raw[i]) if v in positive else 0.0
         for i, v in enumerate(data.variables)], dtype=torch.float64,
    )
    if (offset[[v in positive for v in data.variables]] <= 0).any():
        raise ValueError(f"positive variables {sorted(positive)} need a positive mean")
    off = offset[:, None, None]
    t = torch.where(off > 0, torch.log(x.clamp_min(0) + off.clamp_min(1e-30)), x)
    mean, std = _weighted_moments(t, w, (0, 2, 3))
    z = (t - mean[:, None, None]) / std[:, None, None]
    starts = window_starts(data.times, dt_hours, 1)
    dz = z[starts + 1] - z[starts]
    _, tend_std = _weighted_moments(dz, w, (0, 2, 3))
    if forcing is not None and forcing.shape[1]:
        f_mean, f_std = _weighted_moments(forcing.double(), w, (0, 2, 3))
        f_std = f_std.clamp_min(1e-6 * f_mean.abs().clamp_min(1.0))
    else:
        f_mean = f_std = torch.zeros(0, dtype=torch.float64)
    return Normalisation(
        state_mean=mean.float(), state_std=std.float(), tendency_std=tend_std.float(),
        log_offset=offset.float(), forcing_mean=f_mean.float(), forcing_std=f_std.float(),
    )

