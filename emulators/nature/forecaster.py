"""The nature run's own model as a forecast model of stored states (the oracle's model).

:class:`NatureForecaster` turns stored fields (``height``, ``u``, ``v``, ``tracer`` on the
stored cell-centre grid, :data:`~diffda.emulators.nature.run.OUTPUT_GRID` by default) into
model states at the model's native resolution (T42 on 64x128 by default), integrates them
with the same forcing and the same stochastic stirring as the nature run (both are pure
functions of time and of the run's ``stir_seed``, so a forecast from the true state would
follow the truth up to the information lost on the stored grid), and maps them back with
the nature run's own :class:`~diffda.emulators.nature.run.OutputMap`.

Stored -> model: bilinear interpolation from the cell centres to the model's Gaussian grid
(periodic in longitude, constant beyond the outermost centres), then
``phi = g (height - h_s)``, ``(zeta, delta)`` from ``(u, v)`` through the vector spherical
harmonic transform, and the tracer, all truncated at the model's ``lmax``. :meth:`add`
applies an increment given on the stored grid the same way (no orography term), so the
model keeps the scales the stored grid cannot see.
"""

from __future__ import annotations

import torch
from diffda.core.grid import Grid
from diffda.emulators.nature.run import EPOCH, OUTPUT_GRID, NatureConfig, OutputMap
from diffda.emulators.nature.shallow_water import GRAVITY, ShallowWaterModel, SWState
from diffda.emulators.regrid import bilinear_weights
from torch import Tensor


class NatureForecaster:
    """Forecast stored states with the nature run's model (module docstring).

    ``config``: the nature run's :class:`~diffda.emulators.nature.run.NatureConfig` (its
    model and stirring seed); ``grid``: the stored grid. States are ``(member, 4, lat,
    lon)`` physical (height, u, v, tracer) on ``grid``; model states are the spectral
    ``(member, 4, L, M)`` complex tensors of :class:`~diffda.emulators.nature.
    shallow_water.SWState`.
    """

    def __init__(self, config: NatureConfig, grid: Grid = OUTPUT_GRID) -> None:
        self.config = config
        self.grid = grid
        self.model = ShallowWaterModel(config.model)
        self.output = OutputMap(self.model, grid)
        lat_m = self.model.lat_deg.numpy()
        lon_m = self.model.lon_deg.numpy()
        self._lat = bilinear_weights(grid.lat, lat_m)
        self._lon = bilinear_weights(grid.lon, lon_m, periodic=360.0)

    @property
    def dt_seconds(self) -> float:
        return self.config.model.dt_seconds

    def to_model_grid(self, fields: Tensor) -> Tensor:
        """``(..., lat, lon)`` on the stored grid -> ``(..., nlat_m, nlon_m)`` (bilinear)."""
        i0, i1, wy = self._lat
        j0, j1, wx = self._lon
        wy_t = torch.as_tensor(wy, dtype=fields.dtype)[:, None]
        wx_t = torch.as_tensor(wx, dtype=fields.dtype)
        rows = fields[..., i0, :] * (1 - wy_t) + fields[..., i1, :] * wy_t
        return rows[..., j0] * (1 - wx_t) + rows[..., j1] * wx_t

    def _spectral(self, fields: Tensor, orography: bool) -> Tensor:
        m = self.model
        g = self.to_model_grid(fields.to(m.dtype))
        height = g[:, 0] - m.orography if orography else g[:, 0]
        scalars = m.to_spec(torch.stack([GRAVITY * height, g[:, 3]], 1))
        zeta_delta = m.vort_div(g[:, 1:3])
        return torch.stack([scalars[:, 0], zeta_delta[:, 0], zeta_delta[:, 1], scalars[:, 1]],
                           1) * m.tril

    def encode(self, fields: Tensor) -> Tensor:
        """Stored states ``(member, 4, lat, lon)`` -> spectral model states."""
        self._check(fields)
        return self._spectral(fields, orography=True)

    def add(self, spec: Tensor, increment: Tensor) -> Tensor:
        """The model states ``spec`` plus an increment given on the stored grid."""
        self._check(increment)
        return spec + self._spectral(increment, orography=False)

    def decode(self, spec: Tensor) -> Tensor:
        """Spectral model states -> stored states ``(member, 4, lat, lon)`` float32."""
        return self.output(spec)

    def forecast(self, spec: Tensor, seconds: float, hours: float) -> Tensor:
        """Integrate ``spec`` (valid at model time ``seconds``) for ``hours``: the model's
        semi-implicit AB3 scheme, started afresh (one Euler, one AB2 step) from ``spec``."""
        steps = hours * 3600.0 / self.dt_seconds
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"{hours} h is not a multiple of the nature model's step "
                             f"{self.dt_seconds} s")
        state = SWState(spec, seconds)
        with torch.no_grad():
            for _ in range(int(round(steps))):
                state = self.model.step(state)
        return state.spec

    def _check(self, fields: Tensor) -> None:
        if fields.dim() != 4 or tuple(fields.shape[1:]) != (4, self.grid.nlat, self.grid.nlon):
            raise ValueError(f"nature-model states must be (member, 4 = height u v tracer, "
                             f"{self.grid.nlat}, {self.grid.nlon}); got {tuple(fields.shape)}")


def spectral_to_real(spec: Tensor) -> Tensor:
    """Complex spectral states as a real tensor (a trailing axis of 2), for checkpoints."""
    return torch.view_as_real(spec.contiguous()).clone()


def real_to_spectral(real: Tensor) -> Tensor:
    """The inverse of :func:`spectral_to_real`."""
    return torch.view_as_complex(real.contiguous())


def model_seconds(time: object) -> float:
    """Model time in seconds of a noleap cftime ``time`` (seconds since the nature run's
    epoch, 2000-01-01 00:00; the clock of the forcing and the stirring)."""
    return float((time - EPOCH).total_seconds())  # type: ignore[operator]

