"""The forecast emulator: a LUCIE-style SFNO stepping the coarse-grid state by 6 hours.

:class:`SFNOEmulator` satisfies :class:`diffda.core.protocols.Emulator`. Conventions:

- ``step(state, time)`` takes and returns **physical units**, ``(member, var, lat, lon)`` on
  the emulator grid (default 16x32, latitude ascending, longitude 0..360), variables in the
  order of ``emulator.variables`` (default ``height, u, v, tracer``); ``time`` is the valid
  time of ``state`` (a cftime datetime), where the forcing is evaluated.
  ``step_normalised(z, time)`` and ``forward`` work on normalised states.
- Normalisation (buffers, saved with the weights): per variable ``z = (T(x) - mean) / std``
  with ``T = log(x + offset)`` for positive variables (the tracer; so forecasts stay
  positive) and the identity otherwise; mean/std of the training climate on the emulator
  grid.
- Inputs of the network at a step: ``[z(t), forcing(t), static]`` with the forcing fields
  normalised by their own climate mean/std and static = (orography, land-sea mask,
  sin lat, cos lat), orography normalised.
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

The training data comes from the coarsened nature run (:func:`load_coarse_states`: the
canonical dataset coarsened with :func:`diffda.core.grid.coarsen_to`, the same function
the observation operators use). Evaluation functions (RMSE by lead time next to persistence,
free-run climatology by latitude) are here too; the command line is in ``emulator_cli``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid, coarsen_to, lat_weighted_mean
from diffda.core.weights import WeightsError, export_weights, load_weights
from diffda.emulators.forecast.sfno import SFNO, SFNOConfig, SFNOEnsemble, build_sfno
from torch import Tensor, nn
from tqdm.auto import tqdm

VARIABLES: tuple[str, ...] = ("height", "u", "v", "tracer")
POSITIVE_VARIABLES: frozenset[str] = frozenset({"tracer"})
STATIC_CHANNELS: tuple[str, ...] = ("orography", "land_sea_mask", "sin_lat", "cos_lat")

DEFAULT_WEIGHTS = Path(__file__).parents[1] / "weights" / "emulator.safetensors"
"""The shipped emulator (trained by ``cycler train emulator runs/emulator.toml``)."""

ForcingFn = Callable[[Sequence[cftime.datetime], Grid], Tensor]
"""``forcing(times, grid) -> (time, n_forcing, nlat, nlon)`` in physical units."""


# --------------------------------------------------------------------------- forcing


def as_forcing_tensor(obj: Any, n_times: int) -> Tensor:
    """Convert what a forcing function returns into ``(time, n_forcing, lat, lon)`` float32.

    Accepts an ``xr.Dataset`` (data variables with a ``time`` dim, in name order), an
    ``xr.DataArray``, a numpy array or a tensor of shape ``(time, lat, lon)`` or
    ``(time, n_forcing, lat, lon)``.
    """
    if isinstance(obj, xr.Dataset):
        names = sorted(n for n, v in obj.data_vars.items() if "time" in v.dims)
        obj = np.stack([obj[n].transpose("time", "lat", "lon").values for n in names], axis=1)
    elif isinstance(obj, xr.DataArray):
        obj = obj.values
    t = torch.as_tensor(np.asarray(obj) if not isinstance(obj, Tensor) else obj)
    t = t.to(torch.float32)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[0] != n_times:
        raise ValueError(
            f"forcing must be (time={n_times}, [n_forcing,] lat, lon), got shape {tuple(t.shape)}"
        )
    return t


def _nature_forcing() -> ForcingFn:
    """The nature run's forcing, ``diffda.emulators.nature.run.forcing_fields(times, grid)``."""
    nature = importlib.import_module("diffda.emulators.nature.run")

    def forcing(times: Sequence[cftime.datetime], grid: Grid) -> Tensor:
        return as_forcing_tensor(nature.forcing_fields(list(times), grid), len(times))

    return forcing


FORCINGS: dict[str, Callable[[], ForcingFn | None]] = {
    "nature": _nature_forcing,
    "none": lambda: None,
}
"""Registry of forcing sources by the name stored in a weights card."""


def static_channels(orography: Tensor, land_sea_mask: Tensor, grid: Grid) -> Tensor:
    """Static inputs ``(4, nlat, nlon)``: orography / its area-weighted std (m / m), the
    land-sea mask (1 = land), sin and cos of latitude."""
    w = torch.as_tensor(grid.area_weights(), dtype=torch.float32)[:, None]
    oro = orography.to(torch.float32)
    oro_std = torch.sqrt((w * oro**2).mean()).clamp_min(1.0)
    lat = torch.deg2rad(torch.as_tensor(grid.lat, dtype=torch.float32))[:, None]
    ones = torch.ones(grid.nlat, grid.nlon)
    return torch.stack(
        [oro / oro_std, land_sea_mask.to(torch.float32), torch.sin(lat) * ones,
         torch.cos(lat) * ones]
    )


# --------------------------------------------------------------------------- emulator


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
        :func:`~diffda.emulators.forecast.adjustment.fit_tendency_correction`), or none (``None``)."""
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
            "'cycler train emulator runs/emulator.toml' (see emulators/emulator_cli.py)"
        )
    return SFNOEmulator.from_weights(path, forcing=forcing, map_location=map_location)


def _timedelta_hours(hours: float):
    import datetime

    return datetime.timedelta(hours=hours)


# ------------------------------------------------------------------------------- data


@dataclasses.dataclass
class CoarseStates:
    """Coarsened nature-run states in memory, physical units.

    ``states``: ``(time, var, nlat, nlon)`` float32; ``times``: cftime, length ``time``;
    ``orography``, ``land_sea_mask``: ``(nlat, nlon)``.
    """

    states: Tensor
    times: list[cftime.datetime]
    variables: tuple[str, ...]
    grid: Grid
    orography: Tensor
    land_sea_mask: Tensor


def open_nature(path: str | Path) -> xr.Dataset:
    """Open a canonical dataset lazily (the data layer's ``open_dataset`` when present)."""
    try:
        from diffda.emulators.dataio import open_dataset
    except ImportError:  # the data layer is optional for in-memory datasets in tests
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such dataset") from None
        coder = xr.coders.CFDatetimeCoder(use_cftime=True)
        if path.suffix == ".zarr" or path.is_dir():
            return xr.open_zarr(path, decode_times=coder)
        return xr.open_dataset(path, decode_times=coder)
    return open_dataset(path)


def load_coarse_states(
    data: str | Path | xr.Dataset | Sequence[str | Path],
    grid: Grid,
    variables: Sequence[str] = VARIABLES,
    years: Sequence[int] | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> CoarseStates:
    """Read ``variables`` of a canonical dataset (path or Dataset), keep ``years``
    (calendar years of ``time``; all if None) and coarsen to ``grid`` with
    :func:`~diffda.core.grid.coarsen_to`, ``chunk`` times at a time (the store is never
    loaded whole at full resolution).

    ``data`` may also be a list of paths, e.g. a nature run and its continuation
    (``cycler nature --continue-from``): the times of ``years`` in each are read and
    joined in time order (:func:`~diffda.emulators.dataio.open_datasets`); the stores must
    share their grid and statics and not overlap in time."""
    if isinstance(data, xr.Dataset):
        ds, name = data, "dataset"
    elif isinstance(data, (list, tuple)):
        from diffda.emulators.dataio import open_datasets

        ds, name = open_datasets(list(data)), ", ".join(map(str, data))
    else:
        ds, name = open_nature(data), data
    missing = [v for v in (*variables, "orography", "land_sea_mask") if v not in ds]
    if missing:
        raise KeyError(f"{name}: missing variables {missing}; has {sorted(ds.data_vars)}")
    if years is not None:
        keep = np.isin(ds["time"].dt.year.values, np.asarray(list(years)))
        if not keep.any():
            have = sorted(set(ds["time"].dt.year.values.tolist()))
            raise ValueError(f"{name}: no times in years {list(years)}; years present: {have}")
        ds = ds.isel(time=np.flatnonzero(keep))
    n = ds.sizes["time"]
    out = torch.empty(n, len(variables), grid.nlat, grid.nlon)
    for start in tqdm(range(0, n, chunk), desc="coarsen", disable=not progress):
        block = ds[list(variables)].isel(time=slice(start, start + chunk))
        arr = np.stack([block[v].transpose("time", "lat", "lon").values for v in variables], 1)
        coarse = coarsen_to(torch.as_tensor(arr, dtype=torch.float64), grid)
        out[start:start + chunk] = coarse.float()
    static = [
        coarsen_to(torch.as_tensor(ds[k].transpose("lat", "lon").values, dtype=torch.float64),
                   grid).float()
        for k in ("orography", "land_sea_mask")
    ]
    return CoarseStates(
        states=out, times=list(ds["time"].values), variables=tuple(variables), grid=grid,
        orography=static[0], land_sea_mask=static[1],
    )


def year_segments(data: CoarseStates) -> dict[int, slice]:
    """``{year: slice}`` of the contiguous states of each calendar year in ``data``."""
    years = [t.year for t in data.times]
    out: dict[int, slice] = {}
    for i, y in enumerate(years):
        if y not in out:
            out[y] = slice(i, i + 1)
        elif out[y].stop == i:
            out[y] = slice(out[y].start, i + 1)
        else:
            raise ValueError(f"the states of year {y} are not contiguous in the data")
    return out


def hours_since(times: Sequence[cftime.datetime], ref: cftime.datetime) -> np.ndarray:
    """Hours from ``ref`` to each of ``times`` (float64)."""
    return np.array([(t - ref).total_seconds() / 3600.0 for t in times])


def window_starts(times: Sequence[cftime.datetime], dt_hours: float, length: int) -> np.ndarray:
    """Indices ``i`` such that ``times[i], ..., times[i + length]`` are consecutive steps of
    ``dt_hours`` (windows never cross a gap, e.g. between non-adjacent years)."""
    h = hours_since(times, times[0])
    ok = np.isclose(np.diff(h), dt_hours)
    if length == 0:
        return np.arange(len(times))
    run = np.convolve(ok.astype(int), np.ones(length, dtype=int), mode="valid")
    return np.flatnonzero(run == length)


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


@dataclasses.dataclass
class TrainingWindows:
    """Normalised training tensors and the valid window starts, for batch drawing.

    ``z``: ``(time, var, lat, lon)`` normalised states; ``f``: ``(time, n_forcing, lat,
    lon)`` normalised forcing; ``starts``: indices whose ``rollout + 1`` states are
    consecutive.
    """

    z: Tensor
    f: Tensor
    starts: np.ndarray
    rollout: int

    def draw(self, generator: torch.Generator, batch_size: int) -> tuple[Tensor, Tensor]:
        """A batch ``(z (B, R + 1, var, lat, lon), f (B, R, n_forcing, lat, lon))``."""
        pick = torch.randint(len(self.starts), (batch_size,), generator=generator)
        idx = torch.as_tensor(self.starts)[pick][:, None] + torch.arange(self.rollout + 1)
        return self.z[idx], self.f[idx[:, :-1]]


def training_windows(
    emulator: SFNOEmulator, data: CoarseStates, forcing: Tensor | None, rollout: int
) -> TrainingWindows:
    """Normalise ``data`` (and its physical ``forcing``) with ``emulator``'s statistics."""
    with torch.no_grad():
        z = emulator.normalise(data.states)
        if forcing is not None and forcing.shape[1]:
            f_mean, f_std = emulator.forcing_mean, emulator.forcing_std
            f = (forcing - f_mean[:, None, None]) / f_std[:, None, None]
        else:
            f = torch.zeros(len(data.times), 0, data.grid.nlat, data.grid.nlon)
    starts = window_starts(data.times, emulator.dt_hours, rollout)
    if len(starts) == 0:
        raise ValueError(f"no {rollout + 1} consecutive {emulator.dt_hours} h states in the data")
    return TrainingWindows(z=z, f=f, starts=starts, rollout=rollout)


def rollout_loss(model: nn.Module, batch: tuple[Tensor, Tensor], area_w: Tensor,
                 tendency_std: Tensor) -> Tensor:
    """Area-weighted MSE of a normalised rollout, in units of the tendency std, averaged over
    the ``R`` steps, variables and points: ``mean_k,v,i w_i ((z^_k - z_k) / s_v)^2``.

    ``batch = (z (B, R+1, V, H, W), f (B, R, F, H, W))``; ``area_w``: ``(H,)`` mean 1.
    """
    z, f = batch
    pred = model(z[:, 0], f)
    err = (pred - z[:, 1:]) / tendency_std[:, None, None]
    return (err**2 * area_w[:, None]).mean()


# -------------------------------------------------------------------------- evaluation


def lat_weighted_rmse(a: Tensor, b: Tensor, grid: Grid) -> Tensor:
    """``sqrt(mean_{lat,lon} w (a - b)^2)`` over the last two dims, then the RMS over all
    leading dims but the variable one: ``(..., var, lat, lon) -> (var,)``."""
    w = torch.as_tensor(grid.area_weights(), dtype=a.dtype, device=a.device)[:, None]
    mse = ((a - b) ** 2 * w).mean((-2, -1))
    return mse.reshape(-1, mse.shape[-1]).mean(0).sqrt()


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
    pick = np.unique(np.linspace(0, len(starts_all) - 1, min(n_starts, len(starts_all))).round())
    starts = starts_all[pick.astype(int)]
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
    (:func:`diffda.cycler.cli.prior.compare_climates`): the area-weighted mean of
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


@torch.no_grad()
def twin_divergence(
    emulator: SFNOEmulator,
    data: CoarseStates,
    n_leads: int,
    amplitude: float = 0.01,
    n_starts: int = 16,
    seed: int = 0,
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

    starts_all = window_starts(data.times, emulator.dt_hours, n_leads)
    pick = np.unique(np.linspace(0, len(starts_all) - 1, min(n_starts, len(starts_all))).round())
    starts = starts_all[pick.astype(int)]
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
