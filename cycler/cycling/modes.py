"""The modes of a cycling run: one class each, behind one seam (:class:`CyclingMode`).

``mode.cycle(world, k, state) -> CycleResult``: the analysis at ``times[k]`` given the
state the previous cycle left (``None`` at the first cycle, or for a mode that carries
nothing). The diffusion modes run Algorithm 1 through
:class:`~diffda.cycler.analysis.sampler.DiffusionAnalysis`, the EnKF through
:class:`~diffda.cycler.analysis.letkf.LocalizedEnKF`: both implement the
:class:`~diffda.core.protocols.Analysis` Protocol. The likelihood terms come from
:mod:`diffda.cycler.terms`, the one place they are built.

- ``climatological``: stations only (weight 1); every cycle independent.
- ``precomputed``: the emulator's free forecast from the coarsened truth at ``t_0``, never
  corrected; its value at ``t_k`` is the forecast term (weight 1) beside the stations
  (weight ``lambda``) (the paper's IGRA+LUCIE).
- ``reinitialized``: the previous analysis, coarsened to the emulator grid, restarts the
  emulator for one cycle (``reinitialize_from = "mean"``: one forecast from the ensemble
  mean, the same observation for all members; ``"members"``: one forecast per member, each
  member guided by its own) (Fig. 17b). Cycle 1 starts from the truth, like ``precomputed``.
- ``ensemble``: every member forecast from its own analysis; the forecast term is the
  extended likelihood of the forecast ensemble's mean and per-cell variance (the prior
  being the climatology, ``alpha = 1 - P_f/c``, ``beta = alpha P_f``), stations weight
  ``lambda``.
- ``enkf``: the localized, inflated stochastic EnKF on the emulator grid: an ensemble of
  emulator forecasts updated with the same station observations (bicubic point operator on
  the emulator grid, same error std), in the prior's normalised units. Scored after
  **bilinear** interpolation to the full grid.
- ``oracle_enkf``: the same EnKF on the full grid with members forecast by the nature
  run's own model (same forcing and stirring): what the observing network allows with a
  perfect model (needs data cut from a nature run of this system).
- reference lines: ``free`` (the emulator's free forecast from the truth, one member,
  bilinear to the full grid) and ``unconditional`` (prior samples without observations,
  drawn once: their law does not depend on time, so one ensemble is scored at every cycle).

Random numbers: the sampler's members draw from ``(seed, "analysis", cycle, member)`` in
every sampler mode (common random numbers make the modes' differences less noisy), the
EnKF's perturbations from ``(seed, "enkf", cycle, member)`` (the oracle's from
``(seed, "oracle-enkf", cycle, member)``) and its model noise from
``(seed, "enkf-model-noise", cycle)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import cftime
import torch
from diffda.core.grid import Grid, coarsen_to
from diffda.core.rng import member_generators, torch_generator
from diffda.cycler.analysis.forecast_error import innovation_inflation
from diffda.cycler.analysis.letkf import (
    LocalizedEnKF,
    PointObservations,
    inflate,
    rtps_factor,
)
from diffda.cycler.analysis.sampler import DiffusionAnalysis, MemberBlocks, StepDiagnostics
from diffda.cycler.cycling.forecast_fit import ensemble_forecast_term, fitted_forecast_term
from diffda.cycler.cycling.world import World
from diffda.cycler.metrics import station_innovations
from diffda.cycler.terms import forecast_term, station_term
from diffda.emulators.forecast.model import SFNOEmulator
from diffda.emulators.nature.forecaster import model_seconds, real_to_spectral, spectral_to_real
from diffda.emulators.regrid import bilinear_weights
from diffda.observations.likelihood import ErrorModel, ObservationTerm
from torch import Tensor


@dataclass(frozen=True)
class CycleState:
    """What a cycle hands to the next: the analysis ``(member, var, lat, lon)`` (physical,
    full grid) and, for a mode that cycles on another grid, its own ``native`` state
    (the EnKF ensemble on the emulator grid)."""

    analysis: Tensor
    native: Tensor | None = None

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> CycleState:
        """The state kept in a cycle checkpoint's tensors."""
        return cls(analysis=tensors["analysis"], native=tensors.get("native"))


@dataclass
class CycleResult:
    """One cycle of one mode. ``analysis``: ``(member, var, lat, lon)`` physical on the full
    grid (what is scored); ``native``: the state the mode carries on its own grid, if any;
    ``tensors``: what else the checkpoint keeps (forecast, observations used, generator
    states); ``info``: the method's diagnostics (stored in the record under ``"method"``);
    ``innovations``: statistics of observation minus forecast and minus analysis at the
    stations (:func:`~diffda.cycler.metrics.station_innovations`)."""

    analysis: Tensor
    native: Tensor | None = None
    tensors: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)
    innovations: dict[str, dict[str, float]] = field(default_factory=dict)

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """Everything the cycle checkpoint stores, the analysis (float32) first."""
        native = {} if self.native is None else {"native": self.native}
        return {"analysis": self.analysis.float(), **native, **self.tensors}


class CyclingMode(Protocol):
    """One analysis method of the cycle driver."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult: ...


# ------------------------------------------------------------------------------ helpers


def bilinear_upsample(x: Tensor, fine: Grid) -> Tensor:
    """Bilinear interpolation ``(..., lat_c, lon_c) -> (..., fine.nlat, fine.nlon)`` between
    cell centres: periodic in longitude, constant beyond the outermost latitude centres."""
    coarse = Grid(*x.shape[-2:])
    i0, i1, wy = bilinear_weights(coarse.lat, fine.lat)
    j0, j1, wx = bilinear_weights(coarse.lon, fine.lon, periodic=360.0)
    wy_t = torch.as_tensor(wy, dtype=x.dtype)[:, None]
    wx_t = torch.as_tensor(wx, dtype=x.dtype)
    rows = x[..., i0, :] * (1 - wy_t) + x[..., i1, :] * wy_t
    return rows[..., j0] * (1 - wx_t) + rows[..., j1] * wx_t


def emulator_forecast(emulator: SFNOEmulator, state: Tensor, start: cftime.datetime,
                      n_steps: int, generator: torch.Generator | None = None) -> Tensor:
    """``(member, var, lat_e, lon_e)`` physical at ``start`` -> the state ``n_steps`` later
    (with the emulator's stochastic term if it has one and ``generator`` is given)."""
    device = emulator.state_mean.device  # the run's device; the result comes back to the CPU
    states, _ = emulator.rollout(state.to(device), start, n_steps, every=n_steps,
                                 generator=generator)
    return states[-1].cpu()


def _error(cfg_error: ErrorModel | object) -> ErrorModel:
    return ErrorModel(sigma_y=cfg_error.sigma_y, gamma=cfg_error.gamma)  # type: ignore[attr-defined]


def _generator_states(gens: Sequence[torch.Generator]) -> Tensor:
    return torch.stack([g.get_state() for g in gens])


def _stations(world: World, k: int, weight: float, grid: Grid | None = None
              ) -> tuple[ObservationTerm, dict[str, Tensor]]:
    """The station term at ``times[k]`` (normalised) and the observations it used
    (physical), as the checkpoint keeps them."""
    stations = world.stations[k]
    assert stations is not None
    term = station_term(world.prior, stations, _error(world.config.analysis.station), weight,
                        grid=grid)
    op = term.operator
    used = {"obs_value": torch.as_tensor(stations.value), "obs_lat": torch.as_tensor(op.obs_lat),
            "obs_lon": torch.as_tensor(op.obs_lon),
            "obs_variable_index": op.obs_variable_index.clone()}
    return term, used


def _sample(world: World, terms: Sequence[ObservationTerm], k: int, stream: str = "analysis"
            ) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Algorithm 1 for cycle ``k``: the analysis (physical), the members' initial generator
    states and a summary of the sampler's diagnostics (:func:`_sample_cycles`)."""
    return _sample_cycles(world, [terms], [k], stream)[0]


def _sample_cycles(world: World, terms: Sequence[Sequence[ObservationTerm]],
                   cycles: Sequence[int], stream: str = "analysis"
                   ) -> list[tuple[Tensor, Tensor, dict[str, float]]]:
    """Algorithm 1 for independent analyses at ``cycles`` (``terms[i]`` guiding cycle
    ``cycles[i]``) in one batch of network calls (:class:`~diffda.cycler.analysis.sampler.
    MemberBlocks`); member ``m`` of cycle ``k`` draws from its own generator, so each
    analysis is the one it would be alone. Per cycle: the analysis (physical), the members'
    initial generator states and a summary of the sampler's diagnostics (largest
    guidance/prior drift ratio: above ~1 the observations drive the steps; largest
    fraction of clipped members)."""
    cfg, ex, m = world.config, world.execution, world.config.members
    gens = [g for k in cycles for g in member_generators(cfg.seed, stream, k, m)]
    states = _generator_states(gens)
    if ex.device.type != "cpu":
        terms = [[term.to(ex.device) for term in block] for block in terms]
    guide = (list(terms[0]) if len(cycles) == 1
             else [MemberBlocks(terms, m)] if any(terms) else [])
    diagnostics: list[StepDiagnostics] = []
    method = DiffusionAnalysis(shape=world.prior.state_shape, config=cfg.analysis.sampler,
                               execution=ex)
    z = method.analyse(world.denoiser, guide, gens, diagnostics=diagnostics).cpu()
    analysis = world.prior.denormalise(z)
    out = []
    for i, _ in enumerate(cycles):
        rows = slice(i * m, (i + 1) * m)
        info: dict[str, float] = {"nfe": cfg.analysis.sampler.nfe}
        if terms[i]:
            info["guidance_ratio_max"] = max(max(d.guidance_ratio[rows]) for d in diagnostics)
            info["clipped_fraction_max"] = max(sum(d.clipped[rows]) / m for d in diagnostics)
            # the share of guided evaluations (steps x members) whose guidance was capped
            info["clipped_share"] = sum(sum(d.clipped[rows]) for d in diagnostics) / (
                m * len(diagnostics))
        out.append((analysis[rows], states[rows], info))
    return out


def cycle_group(world: World, k: int) -> list[int]:
    """The cycles analysed in one batch with ``k`` by a mode whose cycles are independent:
    ``world.execution.max_batch // members`` consecutive cycles in fixed groups from cycle 1
    (a resume inside a group computes the rest of it). Each member draws from its own
    generator and the network treats members independently, so an analysis does not depend
    on the batch it shares: on the CPU kernels measured here the numbers are bitwise those
    of the analysis alone (tests/test_execution.py); other kernels may differ in the last
    bits with the batch size."""
    g = max(1, world.execution.max_batch // world.config.members)
    first = (k - 1) // g * g + 1
    return list(range(first, min(first + g, world.n_cycles + 1)))


def _batched(world: World, mode: str, k: int,
             make: Callable[[World, int], tuple[list[ObservationTerm], dict[str, Tensor],
                                                Tensor | None]]) -> CycleResult:
    """Cycle ``k`` of a mode whose cycles do not depend on each other: its whole
    :func:`cycle_group` is analysed at once and the later cycles of the group kept in
    ``world.prefetched`` until the driver asks for them. ``make(world, j)``: the terms of
    cycle ``j``, the observations the checkpoint keeps and the forecast (or None)."""
    key = (mode, k)
    if key not in world.prefetched:
        group = [j for j in cycle_group(world, k) if j >= k]
        made = [make(world, j) for j in group]
        sampled = _sample_cycles(world, [terms for terms, _, _ in made], group)
        for j, (_, used, forecast), (analysis, states, info) in zip(group, made, sampled,
                                                                   strict=True):
            tensors = {**used, **({} if forecast is None else {"forecast": forecast}),
                       "generator_states": states}
            world.prefetched[(mode, j)] = CycleResult(
                analysis, tensors=tensors, info=info,
                innovations=innovations(world, j, analysis, forecast))
    return world.prefetched.pop(key)


def _station_error_var(world: World, k: int, idx: Tensor) -> Tensor:
    """The error variance the station term assumes for each observation of cycle ``k``
    (physical; ``idx`` the variable of each, a station operator's ``obs_variable_index``):
    the file's error std squared, else ``Sigma_y`` times the climate variance."""
    stations = world.stations[k]
    assert stations is not None
    err = torch.as_tensor(stations.error_std)
    return torch.where(torch.isfinite(err), err.square(),
                       world.config.analysis.station.sigma_y
                       * world.prior.std.double()[idx].square())


def adaptive_inflation(world: World, k: int, forecast: Tensor) -> Tensor:
    """Per variable the inflation of the forecast ensemble's variance that its innovations
    at the stations of cycle ``k`` ask for (at least 1;
    :func:`~diffda.cycler.analysis.forecast_error.innovation_inflation`)."""
    stations = world.stations[k]
    assert stations is not None
    op = stations.operator(world.emulator.grid, world.variables)
    with torch.no_grad():
        f = op(forecast.double())
    d = torch.as_tensor(stations.value).double() - f.mean(0)
    idx = op.obs_variable_index
    return innovation_inflation(d, _station_error_var(world, k, idx), f.var(0), idx,
                                len(world.variables))


def innovations(world: World, k: int, analysis: Tensor, forecast: Tensor | None = None
                ) -> dict[str, dict[str, float]]:
    """Observation minus analysis (full grid) and minus forecast (emulator grid) at the
    stations of cycle ``k``, physical units, with the error variance the station term
    assumes (the file's error std, else ``Sigma_y`` times the climate variance)."""
    stations = world.stations[k]
    assert stations is not None
    op = stations.operator(world.grid, world.variables)
    idx = op.obs_variable_index
    std = world.prior.std.double()[idx]
    r = _station_error_var(world, k, idx)
    hf = hf_var = climate = None
    with torch.no_grad():
        ha = op(analysis.double().mean(0, keepdim=True))[0]
        if forecast is not None:
            op_e = stations.operator(world.emulator.grid, world.variables)
            f = op_e(forecast.double())
            hf = f.mean(0)
            hf_var = f.var(0) if f.shape[0] > 1 else None
            if world.climatology.numel():  # the moments of the forecast-error fit
                mu = op_e(coarsen_to(world.climatology.double(), world.emulator.grid))[0]
                climate = (mu, std)
    return station_innovations(torch.as_tensor(stations.value), r, idx, world.variables, ha,
                               hf, hf_var, climate, (stations.lat, stations.lon))


def _guided_terms(world: World, k: int, forecast: Tensor, mode: str, lead_hours: float
                  ) -> tuple[list[ObservationTerm], dict[str, Tensor]]:
    """Forecast term (weight 1) + stations (weight ``lambda``) at cycle ``k``. The forecast
    term is the fixed error model, or the fitted extended likelihood at ``lead_hours``."""
    cfg = world.config
    if world.forecast_error is None:
        fc = forecast_term(world.prior, forecast, world.emulator.grid,
                           _error(cfg.analysis.forecast))
    else:
        mu = coarsen_to(world.climatology, world.emulator.grid)
        fc = fitted_forecast_term(world.prior, forecast, mu, world.forecast_error, mode,
                                  lead_hours, cfg.analysis.forecast.gamma)
    stations, used = _stations(world, k, world.config.analysis.lambda_)
    return [fc, stations], used


def _guided(world: World, k: int, forecast: Tensor, mode: str, lead_hours: float
            ) -> CycleResult:
    """Algorithm 1 with :func:`_guided_terms`."""
    terms, used = _guided_terms(world, k, forecast, mode, lead_hours)
    analysis, states, info = _sample(world, terms, k)
    return CycleResult(analysis, tensors={**used, "forecast": forecast,
                                          "generator_states": states}, info=info,
                       innovations=innovations(world, k, analysis, forecast))


# -------------------------------------------------------------------------------- modes


class Climatological:
    """Stations only (weight 1), every cycle independent (analysed in batches of cycles:
    :func:`cycle_group`)."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        def make(world: World, j: int) -> tuple[list[ObservationTerm], dict[str, Tensor], None]:
            term, used = _stations(world, j, 1.0)
            return [term], used, None

        return _batched(world, "climatological", k, make)


class Precomputed:
    """Forecast term from the uncorrected free forecast (weight 1) + stations (lambda);
    every cycle independent (analysed in batches of cycles: :func:`cycle_group`)."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        def make(world: World, j: int) -> tuple[list[ObservationTerm], dict[str, Tensor],
                                                Tensor]:
            terms, used = _guided_terms(world, j, world.free[j], "precomputed",
                                        j * world.config.data.cadence_hours)
            return terms, used, world.free[j]

        return _batched(world, "precomputed", k, make)


class Reinitialized:
    """The previous analysis restarts the emulator for one cycle (Fig. 17b)."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        if k == 1 or state is None:
            forecast = world.free[1]
        else:
            start = coarsen_to(state.analysis, world.emulator.grid)
            if world.config.analysis.reinitialize_from == "mean":
                start = start.mean(0, keepdim=True)
            forecast = emulator_forecast(world.emulator, start, world.times[k - 1],
                                         world.steps_per_cycle)
        return _guided(world, k, forecast, "reinitialized", world.config.data.cadence_hours)


class EnsembleForecast:
    """The ensemble-forecast likelihood: every member is forecast from its own analysis
    (coarsened; cycle 1 from the EnKF's initial ensemble), and the forecast term is the
    extended likelihood of the forecast ensemble's mean and per-cell variance
    (:func:`~diffda.cycler.cycling.forecast_fit.ensemble_forecast_term`), beside the
    stations (weight ``lambda``): an approximation of the cycling prior without retraining
    the diffusion model. With ``analysis.ensemble_rtps > 0`` the analysis ensemble's spread
    is relaxed toward the forecast ensemble's (RTPS: the factor per emulator cell, from the
    coarsened analysis, interpolated to the analysis grid)."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        cfg = world.config
        start = (world.enkf_initial if state is None
                 else coarsen_to(state.analysis, world.emulator.grid))
        noise = (torch_generator(cfg.seed, "ensemble-model-noise", k)
                 if cfg.enkf.model_noise and world.emulator.stochastic else None)
        forecast = emulator_forecast(world.emulator, start, world.times[k - 1],
                                     world.steps_per_cycle, generator=noise)
        g = world.emulator.grid
        inflation = torch.full((len(world.variables),), cfg.analysis.ensemble_inflation,
                               dtype=torch.float64)
        if cfg.analysis.ensemble_adaptive_inflation and world.stations[k] is not None:
            inflation = inflation * adaptive_inflation(world, k, forecast)
        fc = ensemble_forecast_term(world.prior, forecast, coarsen_to(world.climatology, g),
                                    coarsen_to(world.climatology_var, g), g,
                                    inflation, cfg.analysis.forecast.gamma,
                                    correlated=cfg.analysis.ensemble_correlation,
                                    localization_km=cfg.analysis.ensemble_localization_km,
                                    uncorrelated_share=cfg.analysis.ensemble_uncorrelated_share,
                                    extended=cfg.analysis.ensemble_term == "extended")
        stations, used = _stations(world, k, cfg.analysis.lambda_)
        analysis, states, info = _sample(world, [fc, stations], k)
        if cfg.analysis.ensemble_rtps > 0:
            # RTPS with the spreads compared on the emulator grid, where the forecast
            # ensemble is (the analysis's finer scales have no forecast spread to relax to)
            factor = rtps_factor(coarsen_to(analysis, g), forecast, cfg.analysis.ensemble_rtps)
            analysis = inflate(analysis, bilinear_upsample(factor, world.grid))
        stats = innovations(world, k, analysis, forecast)
        for v, lam in zip(world.variables, inflation.tolist(), strict=True):
            if "hbh_ensemble" in stats.get(v, {}):  # what the term assumed there
                stats[v]["hbh_term"] = lam * stats[v]["hbh_ensemble"]
            if cfg.analysis.ensemble_adaptive_inflation:
                info[f"inflation_{v}"] = lam
        return CycleResult(analysis, tensors={**used, "forecast": forecast,
                                              "generator_states": states}, info=info,
                           innovations=stats)


class EnKF:
    """Forecast the EnKF ensemble one cycle, then the localized inflated EnKF update."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        cfg = world.config
        start = world.enkf_initial if state is None else state.native
        assert start is not None
        noise = (torch_generator(cfg.seed, "enkf-model-noise", k) if cfg.enkf.model_noise
                 else None)
        forecast = emulator_forecast(world.emulator, start, world.times[k - 1],
                                     world.steps_per_cycle, generator=noise)
        native, kept = _enkf_update(world, k, forecast, world.emulator.grid, "enkf")
        native = native.float()
        analysis = bilinear_upsample(native, world.grid)
        return CycleResult(analysis, native=native, tensors={"forecast": forecast, **kept},
                           innovations=innovations(world, k, analysis, forecast))


def _enkf_update(world: World, k: int, forecast: Tensor, grid: Grid | None, stream: str
                 ) -> tuple[Tensor, dict[str, Tensor]]:
    """The localized inflated EnKF update at cycle ``k`` of ``forecast`` ``(member, var,
    lat, lon)`` physical on ``grid`` (the full grid where ``None``), in the prior's
    normalised units; the analysis (physical, float64) and what the checkpoint keeps."""
    cfg, p = world.config, world.prior
    term, used = _stations(world, k, 1.0, grid=grid)
    op = term.operator
    obs = PointObservations(op.double(), term.y, term.sigma_y,
                            torch.as_tensor(op.obs_lat), torch.as_tensor(op.obs_lon))
    gens = member_generators(cfg.seed, stream, k, cfg.members)
    states = _generator_states(gens)
    enkf = LocalizedEnKF(grid=grid or world.grid, radius_km=cfg.enkf.radius_km,
                         inflation=cfg.enkf.inflation)
    analysis = p.denormalise(enkf.analyse(p.normalise(forecast.double()), [obs], gens))
    return analysis, {"generator_states": states, **used}


class OracleEnKF:
    """The oracle row: the same EnKF (stations, inflation, localization, initial draw) on
    the full grid, its members forecast with the nature run's own model at its native
    resolution (same forcing, same stirring): what the observing network allows with a
    perfect model. The members are carried as model states; each analysis increment
    (full grid) is added to them (:meth:`~diffda.emulators.nature.forecaster.
    NatureForecaster.add`)."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        nature = world.nature
        assert nature is not None
        spec = (nature.encode(world.oracle_initial) if state is None
                else real_to_spectral(state.native))
        spec = nature.forecast(spec, model_seconds(world.times[k - 1]),
                               world.config.data.cadence_hours)
        forecast = nature.decode(spec).double()
        analysis, kept = _enkf_update(world, k, forecast, None, "oracle-enkf")
        spec = nature.add(spec, analysis - forecast)
        coarse = coarsen_to(forecast, world.emulator.grid)
        return CycleResult(analysis.float(), native=spectral_to_real(spec),
                           tensors={"forecast": forecast.float(), **kept},
                           innovations=innovations(world, k, analysis, coarse))


class Free:
    """The emulator's free forecast from the truth (one member), bilinear to the full grid."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        analysis = bilinear_upsample(world.free[k], world.grid)
        return CycleResult(analysis, tensors={"forecast": world.free[k]},
                           innovations=innovations(world, k, analysis, world.free[k]))


class Unconditional:
    """Unconditional prior samples, drawn once (cycle key 0) and scored at every cycle."""

    def cycle(self, world: World, k: int, state: CycleState | None) -> CycleResult:
        if state is not None:
            return CycleResult(state.analysis)
        analysis, states, info = _sample(world, [], 0, stream="unconditional")
        return CycleResult(analysis, tensors={"generator_states": states}, info=info)


#: The modes by their config name (``analysis.modes``).
MODES: dict[str, CyclingMode] = {
    "climatological": Climatological(),
    "precomputed": Precomputed(),
    "reinitialized": Reinitialized(),
    "ensemble": EnsembleForecast(),
    "enkf": EnKF(),
    "oracle_enkf": OracleEnKF(),
    "free": Free(),
    "unconditional": Unconditional(),
}
