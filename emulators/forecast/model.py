"""The forecast emulator: a LUCIE-style SFNO stepping the coarse-grid state by 6 hours.

:class:`SFNOEmulator` satisfies :class:`diffda.core.protocols.Emulator`. Conventions:

- ``step(state, time)`` takes and returns **physical units**, ``(member, var, lat, lon)`` on
  the emulator grid (default 16x32, latitude ascending, longitude 0..360), variables in the
  order of ``emulator.variables`` (default ``height, u, v, tracer``); ``time`` is the valid
  time of ``state`` (a cftime datetime), where the forcing is evaluated.
  ``step_normalised(z, time)`` and ``forward`` work on normalised states.
- Normalisation (buffers, saved with the weights; fitted by
  :mod:`diffda.emulators.forecast.normalisation`): per variable ``z = (T(x) - mean) / std``
  with ``T = log(x + offset)`` for positive variables (the tracer; so forecasts stay
  positive) and the identity otherwise; mean/std of the training climate on the emulator
  grid.
- Inputs of the network at a step: ``[z(t), forcing(t), static]`` with the forcing fields
  normalised by their own climate mean/std and static = (orography, land-sea mask,
  sin lat, cos lat), orography normalised (:mod:`diffda.emulators.forecast.forcing`).
- Residual form (LUCIE, Guan et al. 2024): ``z(t + dt) = z(t) + s * SFNO(inputs)`` with ``s``
  the per-variable std of the normalised 6-hour tendency, so the network's targets have
  unit variance and an untrained network (zero last layer) is persistence.
- Optional additions to the step, fitted after training and saved with the weights: a
  zonal-mean tendency correction (:meth:`SFNOEmulator.set_tendency_correction`, a climate
  adjustment from :mod:`diffda.emulators.forecast.adjustment`, applied at every step), additive
  noise (:meth:`SFNOEmulator.set_noise`, from :mod:`diffda.emulators.forecast.stochastic`, drawn
  only when a step is given a generator) and a global-mean budget
  (:meth:`SFNOEmulator.set_global_budget`, from :mod:`diffda.emulators.forecast.budget`: the
  area-weighted global mean of a variable after each step is set by a linear budget law
  fitted on the data, applied last).

:func:`build_emulator` makes a fresh one from training data (:mod:`diffda.emulators.forecast.data`);
training is in :mod:`diffda.emulators.forecast.training`, scores in
:mod:`diffda.emulators.forecast.evaluation` and :mod:`diffda.emulators.forecast.climate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cftime
import torch
from diffda.core.grid import Grid, lat_weighted_mean
from diffda.core.profiling import clock
from diffda.core.weights import WeightsError, export_weights, load_weights
from diffda.emulators.forecast.data import CoarseStates
from diffda.emulators.forecast.forcing import (
    FORCINGS,
    STATIC_CHANNELS,
    ForcingFn,
    as_forcing_tensor,
    static_channels,
)
from diffda.emulators.forecast.normalisation import fit_normalisation
from diffda.emulators.forecast.sfno import SFNO, SFNOConfig, SFNOEnsemble, build_sfno
from torch import Tensor, nn
from tqdm.auto import tqdm

DEFAULT_WEIGHTS = Path(__file__).parents[1] / "weights" / "emulator.safetensors"
"""The shipped emulator (trained by ``cycler train emulator runs/emulator.toml``)."""


class SFNOEmulator(nn.Module):
    """The SFNO forecast emulator (see the module docstring for units and inputs).

    Buffers (all saved with the weights): ``state_mean``, ``state_std``, ``tendency_std``,
    ``log_offset`` (``(var,)``; ``log_offset > 0`` marks a log-transformed variable),
    ``forcing_mean``, ``forcing_std`` (``(n_forcing,)``), ``static`` ``(4, nlat, nlon)``;
    optionally ``tendency_correction`` ``(var, lat)``, ``noise_modes`` ``(K, var, lat, lon)``,
    ``noise_bounds`` ``(2, var, lat)``, and ``budget_coef`` ``(var, n_forcing + 2)`` with
    ``budget_mask`` ``(var,)``.
    """

    def __init__(
        self,
        net: SFNO | SFNOEnsemble,
        *,
        variables: Sequence[str],
        grid: Grid,
        state_mean: Tensor,
        state_std: Tensor,
        tendency_std: Tensor,
        log_offset: Tensor,
        forcing_mean: Tensor,
        forcing_std: Tensor,
        static: Tensor,
        forcing: ForcingFn | None = None,
        forcing_name: str = "none",
        dt_hours: float = 6.0,
        noise_modes: Tensor | None = None,
        noise_bounds: Tensor | None = None,
        tendency_correction: Tensor | None = None,
        budget_coef: Tensor | None = None,
        budget_mask: Tensor | None = None,
    ):
        super().__init__()
        n_var, n_forcing = len(variables), len(forcing_mean)
        expected_in = n_var + n_forcing + static.shape[0]
        if net.config.in_channels != expected_in or net.config.out_channels != n_var:
            raise ValueError(
                f"SFNO has {net.config.in_channels} -> {net.config.out_channels} channels; the "
                f"emulator needs {expected_in} ({n_var} variables + {n_forcing} forcing + "
                f"{static.shape[0]} static) -> {n_var}"
            )
        if (net.config.nlat, net.config.nlon) != (grid.nlat, grid.nlon):
            raise ValueError(f"SFNO grid {net.config.nlat}x{net.config.nlon} != {grid}")
        if n_forcing and forcing is None:
            raise ValueError(f"the network expects {n_forcing} forcing channels: give forcing")
        self.net = net
        self.variables = tuple(variables)
        self.grid = grid
        self.dt_hours = float(dt_hours)
        self.forcing = forcing
        self.forcing_name = forcing_name
        f32 = torch.float32
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=f32))
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=f32))
        self.register_buffer("tendency_std", torch.as_tensor(tendency_std, dtype=f32))
        self.register_buffer("log_offset", torch.as_tensor(log_offset, dtype=f32))
        self.register_buffer("forcing_mean", torch.as_tensor(forcing_mean, dtype=f32))
        self.register_buffer("forcing_std", torch.as_tensor(forcing_std, dtype=f32))
        self.register_buffer("static", torch.as_tensor(static, dtype=f32))
        self.noise_modes: Tensor | None
        self.noise_bounds: Tensor | None
        self.set_noise(noise_modes, noise_bounds)
        self.tendency_correction: Tensor | None
        self.set_tendency_correction(tendency_correction)
        self.budget_coef: Tensor | None
        self.budget_mask: Tensor | None
        self.set_global_budget(budget_coef, budget_mask)

    def set_noise(self, modes: Tensor | None, bounds: Tensor | None = None) -> None:
        """Make the emulator stochastic with additive noise ``sum_k xi_k modes[k]``,
        ``xi ~ N(0, I)``, in normalised units at every step (``modes``:
        ``(K, var, lat, lon)``, e.g. from
        :func:`~diffda.emulators.forecast.stochastic.fit_residual_noise`), or deterministic again
        (``None``). ``bounds`` ``(2, var, lat)``: normalised lower and upper limits by
        latitude to which a stochastic step clamps its result. The noise is drawn (and the
        bounds applied) only when a step is given a generator; without one every method
        stays deterministic."""
        expected = (len(self.variables), self.grid.nlat, self.grid.nlon)
        if modes is not None:
            modes = torch.as_tensor(modes, dtype=torch.float32)
            if modes.ndim != 4 or tuple(modes.shape[1:]) != expected:
                raise ValueError(f"noise modes must be (K, {', '.join(map(str, expected))}), "
                                 f"got {tuple(modes.shape)}")
        if bounds is not None:
            bounds = torch.as_tensor(bounds, dtype=torch.float32)
            if modes is None or tuple(bounds.shape) != (2, *expected[:2]):
                raise ValueError(f"noise bounds must be (2, {expected[0]}, {expected[1]}) and "
                                 f"come with noise modes, got {tuple(bounds.shape)}")
            if not bool((bounds[0] < bounds[1]).all()):
                raise ValueError("noise bounds: every lower limit must be below its upper one")
        self.register_buffer("noise_modes", modes)
        self.register_buffer("noise_bounds", bounds)

    def set_tendency_correction(self, correction: Tensor | None) -> None:
        """Add the constant, zonally uniform ``correction`` ``(var, lat)`` (normalised units
        per step) to every step, deterministic or not (a climate adjustment, e.g. from
        :func:`~diffda.emulators.forecast.adjustment.fit_tendency_correction`), or none
        (``None``)."""
        if correction is not None:
            correction = torch.as_tensor(correction, dtype=torch.float32)
            expected = (len(self.variables), self.grid.nlat)
            if tuple(correction.shape) != expected:
                raise ValueError(f"tendency correction must be {expected}, "
                                 f"got {tuple(correction.shape)}")
            if not bool(torch.isfinite(correction).all()):
                raise ValueError("tendency correction: values must be finite")
            device = self.state_mean.device
            correction = correction.to(device)
        self.register_buffer("tendency_correction", correction)

    def set_global_budget(self, coef: Tensor | None, mask: Tensor | None = None) -> None:
        """Constrain the area-weighted global mean ``<z_v>`` (normalised units) of the
        variables where ``mask`` ``(var,)`` is 1 after every step to the linear budget law

            <z_v>(t + dt) = <z_v>(t) + coef[v] . [<z_v>(t), <f_1>(t), ..., <f_F>(t), 1]

        (``coef`` ``(var, n_forcing + 2)``, e.g. from
        :func:`~diffda.emulators.forecast.budget.fit_global_budget`), by a uniform shift of that
        variable's step; or no constraint (``None``). Applied last in a step, after the
        correction and the noise, to deterministic and stochastic steps alike."""
        if (coef is None) != (mask is None):
            raise ValueError("global budget: give both coef and mask, or neither")
        if coef is not None:
            coef = torch.as_tensor(coef, dtype=torch.float32)
            mask = torch.as_tensor(mask, dtype=torch.float32)
            n_var = len(self.variables)
            expected = (n_var, len(self.forcing_mean) + 2)
            if tuple(coef.shape) != expected or tuple(mask.shape) != (n_var,):
                raise ValueError(f"global budget: coef must be {expected} and mask ({n_var},), "
                                 f"got {tuple(coef.shape)} and {tuple(mask.shape)}")
            if not bool(torch.isfinite(coef).all()):
                raise ValueError("global budget: coefficients must be finite")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"global budget: mask must be 0 or 1, got {mask.tolist()}")
            logged = [v for v, m, o in zip(self.variables, mask.tolist(),
                                           self.log_offset.tolist(), strict=True) if m and o > 0]
            if logged:
                raise ValueError(f"global budget: {logged} are log-transformed; the global "
                                 "mean of their logarithm has no budget")
            coef, mask = coef.to(self.state_mean.device), mask.to(self.state_mean.device)
        self.register_buffer("budget_coef", coef)
        self.register_buffer("budget_mask", mask)

    def budget_target(self, z: Tensor, f: Tensor) -> Tensor:
        """``(B, var)``: the global means the budget law gives after a step from ``z``
        ``(B, var, lat, lon)`` with normalised forcing ``f`` (rows of unconstrained
        variables: their current global mean)."""
        gz = lat_weighted_mean(z)
        if self.budget_coef is None:
            return gz
        coef = self.budget_coef.to(z.dtype)
        gf = lat_weighted_mean(f.to(z.dtype)) if f.shape[1] else z.new_zeros(z.shape[0], 0)
        n_f = gf.shape[1]
        tendency = coef[:, 0] * gz + gf @ coef[:, 1:1 + n_f].T + coef[:, -1]
        return gz + self.budget_mask.to(z.dtype) * tendency

    @property
    def stochastic(self) -> bool:
        """Whether the emulator has noise modes (drawn when a step gets a generator)."""
        return self.noise_modes is not None

    # -- normalisation ------------------------------------------------------------------

    def _bcast(self, v: Tensor, x: Tensor) -> Tensor:
        return v.to(x.dtype)[:, None, None]

    def normalise(self, x: Tensor) -> Tensor:
        """Physical ``(..., var, lat, lon)`` -> normalised (log transform where marked)."""
        off = self._bcast(self.log_offset, x)
        t = torch.where(off > 0, torch.log(x.clamp_min(0) + off.clamp_min(1e-30)), x)
        return (t - self._bcast(self.state_mean, x)) / self._bcast(self.state_std, x)

    def denormalise(self, z: Tensor) -> Tensor:
        """Normalised ``(..., var, lat, lon)`` -> physical units (inverse of :meth:`normalise`;
        log-transformed variables come back >= 0)."""
        t = z * self._bcast(self.state_std, z) + self._bcast(self.state_mean, z)
        off = self._bcast(self.log_offset, z)
        return torch.where(off > 0, (torch.exp(t) - off).clamp_min(0), t)

    def forcing_at(self, times: Sequence[cftime.datetime]) -> Tensor:
        """Normalised forcing ``(time, n_forcing, nlat, nlon)`` at ``times``."""
        if self.forcing is None or len(self.forcing_mean) == 0:
            return torch.zeros(len(times), 0, self.grid.nlat, self.grid.nlon,
                               device=self.state_mean.device)
        f = as_forcing_tensor(self.forcing(list(times), self.grid), len(times))
        f = f.to(self.state_mean.device)
        return (f - self.forcing_mean[:, None, None]) / self.forcing_std[:, None, None]

    # -- dynamics -----------------------------------------------------------------------

    def step_from(self, z: Tensor, f: Tensor, generator: torch.Generator | None = None
                  ) -> Tensor:
        """One normalised step: ``z + tendency_std * SFNO([z, f, static])``, plus the
        :meth:`set_tendency_correction` if any, plus the noise of :meth:`set_noise` when the
        emulator has some and ``generator`` is given, then the global means of
        :meth:`set_global_budget` if any.

        ``z``: ``(B, var, lat, lon)``; ``f``: ``(B, n_forcing, lat, lon)`` normalised forcing
        at the valid time of ``z``. Returns ``(B, var, lat, lon)``.
        """
        static = self.static.to(z.dtype).expand(z.shape[0], *self.static.shape)
        with clock.section("emulator"):
            dz = self.net(torch.cat([z, f.to(z.dtype), static], dim=1))
        out = z + self._bcast(self.tendency_std, z) * dz
        if self.tendency_correction is not None:
            out = out + self.tendency_correction.to(z.dtype)[..., None]
        if generator is not None and self.noise_modes is not None:
            modes = self.noise_modes.to(z.dtype)
            xi = torch.randn(z.shape[0], modes.shape[0], generator=generator,
                             dtype=z.dtype).to(z.device)
            out = out + (xi @ modes.reshape(modes.shape[0], -1)).reshape(out.shape)
            if self.noise_bounds is not None:
                lo, hi = self.noise_bounds.to(out.dtype)[..., None]
                out = torch.minimum(torch.maximum(out, lo), hi)
        if self.budget_coef is not None:
            shift = self.budget_target(z, f) - lat_weighted_mean(out)
            out = out + (self.budget_mask.to(z.dtype) * shift)[..., None, None]
        return out

    def forward(self, z0: Tensor, forcings: Tensor) -> Tensor:
        """Normalised rollout ``(B, var, lat, lon), (B, R, n_forcing, lat, lon) ->
        (B, R, var, lat, lon)``: the states after 1..R steps (one call, so DDP sees one
        forward per backward)."""
        out, z = [], z0
        for k in range(forcings.shape[1]):
            z = self.step_from(z, forcings[:, k])
            out.append(z)
        return torch.stack(out, dim=1)

    def step_normalised(self, z: Tensor, time: cftime.datetime | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
        """One 6-hour step on normalised states ``(member, var, lat, lon)`` valid at ``time``
        (noise from ``generator`` if the emulator is stochastic)."""
        if time is None:
            if len(self.forcing_mean):
                raise ValueError("this emulator is forced: step(state, time) needs the time")
            f = z.new_zeros(z.shape[0], 0, *z.shape[-2:])
        else:
            f = self.forcing_at([time]).expand(z.shape[0], -1, -1, -1)
        return self.step_from(z, f, generator)

    @torch.no_grad()
    def step(
        self,
        state: Tensor,
        time: cftime.datetime | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The :class:`~diffda.core.protocols.Emulator` step, in physical units:
        ``(member, var, lat, lon)`` valid at ``time`` -> the same 6 hours later.
        Deterministic unless the emulator is :attr:`stochastic` and ``generator`` is given
        (one generator for the batch: the members get different draws)."""
        self._check_state(state)
        return self.denormalise(self.step_normalised(self.normalise(state), time, generator))

    @torch.no_grad()
    def rollout(
        self,
        state: Tensor,
        time: cftime.datetime,
        n_steps: int,
        every: int = 1,
        progress: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, list[cftime.datetime]]:
        """Free run from ``state`` (physical, ``(member, var, lat, lon)``) valid at ``time``.

        Returns ``(states, times)``: ``states`` ``(n_out, member, var, lat, lon)`` in physical
        units after ``every, 2 every, ..., n_steps`` steps (the initial state excluded).
        ``generator``: the noise of a :attr:`stochastic` emulator (deterministic without).
        """
        self._check_state(state)
        dt = _timedelta_hours(self.dt_hours)
        z, t = self.normalise(state), time
        out, times = [], []
        for k in tqdm(range(1, n_steps + 1), desc="rollout", disable=not progress):
            z = self.step_normalised(z, t, generator)
            t = t + dt
            if k % every == 0:
                out.append(self.denormalise(z))
                times.append(t)
        return torch.stack(out), times

    def _check_state(self, state: Tensor) -> None:
        expected = (len(self.variables), self.grid.nlat, self.grid.nlon)
        if state.ndim != 4 or tuple(state.shape[1:]) != expected:
            raise ValueError(
                f"state must be (member, var, lat, lon) = (*, {', '.join(map(str, expected))}) "
                f"for variables {self.variables}, got {tuple(state.shape)}"
            )

    # -- weights ------------------------------------------------------------------------

    def card(self) -> dict[str, Any]:
        """The model part of the weights card: everything needed to rebuild it."""
        return {
            "kind": "sfno-emulator",
            "variables": list(self.variables),
            "grid": {"nlat": self.grid.nlat, "nlon": self.grid.nlon,
                     "convention": "WeatherBench cell centres, lat ascending, lon 0..360"},
            "dt_hours": self.dt_hours,
            "forcing": self.forcing_name,
            "n_forcing": len(self.forcing_mean),
            "static_channels": list(STATIC_CHANNELS),
            "model": dataclasses.asdict(self.net.config),
            "n_networks": len(getattr(self.net, "members", [self.net])),
            "n_parameters": sum(p.numel() for p in self.net.parameters()),
            "n_parameters_note": "trainable tensor elements; complex spectral weights count once",
            "normalisation": {
                "state_mean": self.state_mean.tolist(),
                "state_std": self.state_std.tolist(),
                "tendency_std": self.tendency_std.tolist(),
                "log_offset": self.log_offset.tolist(),
                "forcing_mean": self.forcing_mean.tolist(),
                "forcing_std": self.forcing_std.tolist(),
                "transform": "z = (T(x) - mean) / std, T = log(x + log_offset) where "
                             "log_offset > 0 else identity",
            },
        }

    def export(self, path: str | Path, **card: Any) -> tuple[Path, Path]:
        """Write ``path`` (safetensors) and its JSON card (:meth:`card` plus ``card``)."""
        return export_weights(path, self.state_dict(), {**self.card(), **card})

    @classmethod
    def from_weights(
        cls, path: str | Path, forcing: ForcingFn | None = None,
        map_location: str | torch.device = "cpu",
    ) -> SFNOEmulator:
        """Load an emulator written by :meth:`export`. ``forcing``: overrides the forcing
        named in the card (looked up in :data:`FORCINGS`)."""
        state, card = load_weights(path, map_location=map_location)
        if card.get("kind") != "sfno-emulator":
            raise WeightsError(f"{path}: card kind {card.get('kind')!r} is not 'sfno-emulator'")
        name = card.get("forcing", "none")
        if forcing is None and card.get("n_forcing", 0):
            if name not in FORCINGS:
                raise WeightsError(f"{path}: unknown forcing {name!r}; known: {sorted(FORCINGS)}")
            forcing = FORCINGS[name]()
        net = build_sfno(SFNOConfig(**card["model"]), int(card.get("n_networks", 1)))
        emu = cls(
            net,
            variables=card["variables"],
            grid=Grid(card["grid"]["nlat"], card["grid"]["nlon"]),
            state_mean=state["state_mean"], state_std=state["state_std"],
            tendency_std=state["tendency_std"], log_offset=state["log_offset"],
            forcing_mean=state["forcing_mean"], forcing_std=state["forcing_std"],
            static=state["static"], forcing=forcing, forcing_name=name,
            dt_hours=card["dt_hours"], noise_modes=state.get("noise_modes"),
            noise_bounds=state.get("noise_bounds"),
            tendency_correction=state.get("tendency_correction"),
            budget_coef=state.get("budget_coef"), budget_mask=state.get("budget_mask"),
        )
        try:
            emu.load_state_dict(state)
        except RuntimeError as err:
            raise WeightsError(f"{path}: weights do not match their card ({err})") from None
        return emu.eval().to(map_location)


def load_emulator(
    path: str | Path | None = None, forcing: ForcingFn | None = None,
    map_location: str | torch.device = "cpu",
) -> SFNOEmulator:
    """The emulator at ``path`` (default: :data:`DEFAULT_WEIGHTS`, the shipped one)."""
    path = DEFAULT_WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no emulator weights; train them with "
            "'cycler train emulator runs/emulator.toml' (see cycler/cli/emulator.py)"
        )
    return SFNOEmulator.from_weights(path, forcing=forcing, map_location=map_location)


def _timedelta_hours(hours: float):
    import datetime

    return datetime.timedelta(hours=hours)


def build_emulator(
    data: CoarseStates,
    forcing_fn: ForcingFn | None,
    forcing_name: str,
    model: dict[str, Any],
    dt_hours: float,
    generator: torch.Generator,
    forcing: Tensor | None = None,
) -> SFNOEmulator:
    """A freshly initialised emulator with its normalisation fitted on ``data``.

    ``model``: keyword arguments of :class:`~diffda.emulators.forecast.sfno.SFNOConfig` other than
    the channel counts and grid. ``forcing``: the physical forcing at ``data.times`` if
    already computed, ``(time, n_forcing, lat, lon)``.
    """
    if forcing is None and forcing_fn is not None:
        forcing = as_forcing_tensor(forcing_fn(data.times, data.grid), len(data.times))
    norm = fit_normalisation(data, forcing, dt_hours)
    static = static_channels(data.orography, data.land_sea_mask, data.grid)
    n_var, n_forcing = len(data.variables), len(norm.forcing_mean)
    cfg = SFNOConfig(
        in_channels=n_var + n_forcing + static.shape[0], out_channels=n_var,
        nlat=data.grid.nlat, nlon=data.grid.nlon, **model,
    )
    return SFNOEmulator(
        SFNO(cfg, generator=generator), variables=data.variables, grid=data.grid,
        state_mean=norm.state_mean, state_std=norm.state_std, tendency_std=norm.tendency_std,
        log_offset=norm.log_offset, forcing_mean=norm.forcing_mean, forcing_std=norm.forcing_std,
        static=static, forcing=forcing_fn, forcing_name=forcing_name, dt_hours=dt_hours,
    )

