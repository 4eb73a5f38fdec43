"""The world of a cycling run: everything read once, before the first cycle.

:func:`load_world` opens the truth and checks it against the models, draws the station
network, makes the synthetic observations and turns them into arrays, one
:class:`~diffda.observations.station_arrays.StationObservations` per analysis time, runs
the emulator's free forecast and, where the EnKF runs, draws its initial ensemble. The
cycles then only index tensors: no file is opened and no xarray is looked up inside them.

Shapes: ``truth`` ``(N + 1, var, lat, lon)`` float32 physical at ``times = [t_0..t_N]``;
``free`` ``(N + 1, 1, var, lat_e, lon_e)``, the emulator's free forecast from the
coarsened truth at ``t_0`` (index 0 is that initial state); ``stations[k]`` holds the
observations at ``times[k]`` (``stations[0]`` is ``None``: no analysis at ``t_0``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.execution import SERIAL, Execution
from diffda.core.grid import Grid, coarsen_to
from diffda.core.io import file_sha256
from diffda.core.rng import numpy_generator
from diffda.core.runtime import resolve_threads
from diffda.core.times import iso
from diffda.cycler.cycling.config import RunConfig, config_hash
from diffda.cycler.cycling.forecast_fit import FittedErrorModel, read_fitted
from diffda.cycler.metrics import station_cell_mask
from diffda.emulators.forecast.data import open_nature
from diffda.emulators.forecast.model import SFNOEmulator
from diffda.emulators.nature.forecaster import NatureForecaster
from diffda.emulators.nature.run import STATE_VARIABLES, config_from_record, config_record_of
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations.station_arrays import StationObservations, station_observations
from diffda.observations.stations import (
    StationNetwork,
    default_network,
    grid_land,
    read_station_list,
)
from diffda.observations.synthetic import grid_of, synthetic_station_observations
from torch import Tensor


@dataclass
class World:
    """Everything a run reads once: truth on the schedule, observations, models.

    ``observation_file``: the station observations as a CF Dataset, kept only to be
    written to the run directory; the cycles use ``stations``. ``initial``: the state the
    cycling starts from at ``t_0``, ``(1, var, lat, lon)`` physical (``data.init``: the
    truth, a background state of another date, or the climatology). ``enkf_initial``: the
    EnKF's initial ensemble ``(member, var, lat_e, lon_e)`` (empty unless the EnKF runs).
    ``nature``, ``oracle_initial``: the nature run's own model and the oracle EnKF's initial
    ensemble ``(member, var, lat, lon)`` on the full grid (only where ``oracle_enkf`` runs).
    ``climatology``: the mean of the data's states outside the window, ``(1, var, lat,
    lon)`` physical (the ``mu`` of the forecast term's extended likelihood and of its
    innovation moments), and ``climatology_var`` their variance per cell (the ``c`` of the
    ensemble mode's forecast term). ``forecast_error``: the fitted forecast-error model, if the run
    reads one (``analysis.forecast.error_model = "fitted:PATH"``). ``execution``: where and in
    which precision the networks run (``runtime.device``, ``runtime.precision``); the
    emulator and :attr:`denoiser` live there, ``prior`` (normalisation, shapes) and every other
    tensor of the world on the CPU.
    """

    config: RunConfig
    variables: tuple[str, ...]
    grid: Grid
    times: list[cftime.datetime]
    truth: Tensor
    attrs: dict[str, dict[str, Any]]
    network: StationNetwork
    observation_file: xr.Dataset
    stations: list[StationObservations | None]
    station_mask: np.ndarray
    emulator: SFNOEmulator
    prior: DiffusionPrior
    config_hash: str
    weights: dict[str, str]
    initial: Tensor = field(default_factory=lambda: torch.empty(0))
    free: Tensor = field(default_factory=lambda: torch.empty(0))
    enkf_initial: Tensor = field(default_factory=lambda: torch.empty(0))
    nature: NatureForecaster | None = None
    oracle_initial: Tensor = field(default_factory=lambda: torch.empty(0))
    climatology: Tensor = field(default_factory=lambda: torch.empty(0))
    climatology_var: Tensor = field(default_factory=lambda: torch.empty(0))
    forecast_error: FittedErrorModel | None = None
    execution: Execution = SERIAL
    prior_on_device: DiffusionPrior | None = None
    #: analyses computed ahead in a batch of independent cycles, until the driver asks
    prefetched: dict[tuple[str, int], Any] = field(default_factory=dict)

    @property
    def denoiser(self) -> DiffusionPrior:
        """The prior's denoiser on the run's device (the prior itself on a CPU)."""
        return self.prior if self.prior_on_device is None else self.prior_on_device

    @property
    def steps_per_cycle(self) -> int:
        return int(round(self.config.data.cadence_hours / self.emulator.dt_hours))

    @property
    def n_cycles(self) -> int:
        return len(self.times) - 1


def _load_models(cfg: RunConfig) -> tuple[SFNOEmulator, DiffusionPrior]:
    emulator = SFNOEmulator.from_weights(cfg.models.emulator)
    if cfg.enkf.model_noise and "enkf" in cfg.analysis.modes and not emulator.stochastic:
        raise ValueError(f"enkf.model_noise = true needs a stochastic emulator; "
                         f"{cfg.models.emulator} has no noise modes (add them with "
                         "'cycler train emulator-noise')")
    prior = DiffusionPrior.load(cfg.models.prior)
    variables = tuple(prior.variables)
    if tuple(emulator.variables) != variables:
        raise ValueError(f"emulator variables {list(emulator.variables)} ({cfg.models.emulator})"
                         f" differ from the prior's {list(variables)} ({cfg.models.prior})")
    return emulator, prior


def states_at(ds: xr.Dataset, index: Sequence[int], variables: Sequence[str],
              dtype: torch.dtype) -> Tensor:
    """``(time, var, lat, lon)`` of ``variables`` at time indices ``index`` of ``ds``."""
    sub = ds[list(variables)].isel(time=list(index)).load()
    return torch.as_tensor(np.stack(
        [sub[v].transpose("time", "lat", "lon").values for v in variables], axis=1),
        dtype=dtype)


def _truth_on_schedule(ds: xr.Dataset, times: Sequence[cftime.datetime],
                       variables: Sequence[str], source: str) -> Tensor:
    have = {t: i for i, t in enumerate(ds["time"].values)}
    missing = [iso(t) for t in times if t not in have]
    if missing:
        raise KeyError(f"{source}: no truth at {missing[:3]}{' ...' if len(missing) > 3 else ''}"
                       f" (the schedule needs every {len(times)} cycle time)")
    return states_at(ds, [have[t] for t in times], variables, torch.float32)


def make_network(cfg: RunConfig, ds: xr.Dataset) -> StationNetwork:
    """The station network: drawn on the dataset's land (``default``) or an IGRA list."""
    sc = cfg.stations
    if sc.network == "default":
        land = grid_land(np.asarray(ds["land_sea_mask"].transpose("lat", "lon").values))
        return default_network(sc.n, seed=sc.network_seed, is_land=land,
                               min_separation_km=sc.min_separation_km)
    network, _ = read_station_list(sc.network)
    return network


def _observe(cfg: RunConfig, ds: xr.Dataset, times: Sequence[cftime.datetime],
             variables: Sequence[str], network: StationNetwork, progress: bool
             ) -> xr.Dataset:
    """Synthetic station observations of the truth at the analysis times ``times[1:]``."""
    observed = [v for v in cfg.stations.observed if v in variables]
    if len(observed) != len(cfg.stations.observed):
        raise ValueError(f"stations.observed = {list(cfg.stations.observed)}: the models have "
                         f"only {list(variables)}")
    window = ds[observed].isel(time=[list(ds["time"].values).index(t) for t in times[1:]])
    return synthetic_station_observations(
        window.load(), network, cfg.stations.noise_seed, observed, cfg.stations.error_std,
        hours=sorted({t.hour for t in times[1:]}), progress=progress,
    )


def load_world(cfg: RunConfig, *, progress: bool = False) -> World:
    """Open the truth, check it against the models, draw stations, make observations (as
    arrays, once), the emulator's free forecast and the EnKF's initial ensemble."""
    threads = resolve_threads(cfg.runtime.threads)
    torch.set_num_threads(threads)
    execution = Execution.resolve(cfg.runtime.device, cfg.runtime.precision, threads)
    emulator, prior = _load_models(cfg)
    emulator.to(execution.device)
    variables = tuple(prior.variables)
    ds = open_nature(cfg.data.path)
    missing = [v for v in (*variables, "land_sea_mask") if v not in ds]
    if missing:
        raise KeyError(f"{cfg.data.path}: no variable(s) {missing}; has {sorted(ds.data_vars)}")
    grid = grid_of(ds)
    if grid != prior.grid:
        raise ValueError(f"truth grid {grid} ({cfg.data.path}) differs from the prior's grid "
                         f"{prior.grid} ({cfg.models.prior})")
    times = cfg.data.schedule()
    truth = _truth_on_schedule(ds, times, variables, cfg.data.path)
    network = make_network(cfg, ds)
    observations = _observe(cfg, ds, times, variables, network, progress)
    stations = station_observations(observations, times[1:], variables, cfg.stations.observed)
    weights = {"emulator": file_sha256(cfg.models.emulator), "prior": file_sha256(cfg.models.prior)}
    world = World(
        config=cfg, variables=variables, grid=grid, times=times, truth=truth,
        attrs={v: dict(ds[v].attrs) for v in variables}, network=network,
        observation_file=observations, stations=[None, *stations],
        station_mask=station_cell_mask(grid, network.lat, network.lon),
        emulator=emulator, prior=prior, config_hash=config_hash(cfg), weights=weights,
        execution=execution,
        prior_on_device=None if execution.device.type == "cpu" else copy.deepcopy(prior).to(
            execution.device),
    )
    if abs(world.steps_per_cycle * emulator.dt_hours - cfg.data.cadence_hours) > 1e-9:
        raise ValueError(f"data.cadence_hours = {cfg.data.cadence_hours} is not a multiple of "
                         f"the emulator's step {emulator.dt_hours} h")
    world.climatology, world.climatology_var = climatology_state(cfg, ds, times, variables)
    world.initial = initial_state(cfg, ds, times, variables, truth, world.climatology)
    if cfg.analysis.forecast.error_model != "fixed":
        world.forecast_error = read_fitted(cfg.analysis.forecast.error_model, cfg, variables,
                                           emulator.grid)
        world.weights["forecast_error"] = file_sha256(world.forecast_error.path)
    world.free = free_forecast(world)
    if "enkf" in cfg.analysis.modes or "ensemble" in cfg.analysis.modes:
        world.enkf_initial = initial_enkf_ensemble(world, ds)
    if "oracle_enkf" in cfg.analysis.modes:
        world.nature = nature_forecaster(cfg, ds, grid, variables)
        world.oracle_initial = initial_ensemble(world, ds, world.grid)
    return world


def nature_forecaster(cfg: RunConfig, ds: xr.Dataset, grid: Grid,
                      variables: Sequence[str]) -> NatureForecaster:
    """The nature run's own model for the oracle EnKF, from the data's record of it."""
    if tuple(variables) != STATE_VARIABLES:
        raise ValueError(f"analysis.modes has oracle_enkf: it forecasts {list(STATE_VARIABLES)}"
                         f" with the nature model; the models have {list(variables)}")
    record = config_record_of(Path(cfg.data.path), dict(ds.attrs))
    return NatureForecaster(config_from_record(record), grid)


def free_forecast(world: World) -> Tensor:
    """The emulator's free run from the coarsened initial state at ``t_0`` (the truth unless
    ``data.init`` says otherwise): ``(N + 1, 1, var, ...)``."""
    x0 = coarsen_to(world.initial, world.emulator.grid)
    s = world.steps_per_cycle
    states, _ = world.emulator.rollout(x0.to(world.execution.device), world.times[0],
                                       s * world.n_cycles, every=s)
    states = states.cpu()
    return torch.cat([x0[None], states])


def initial_enkf_ensemble(world: World, ds: xr.Dataset) -> Tensor:
    """``(member, var, lat_e, lon_e)``: the EnKF's initial ensemble on the emulator grid
    (:func:`initial_ensemble`)."""
    return initial_ensemble(world, ds, world.emulator.grid)


def initial_ensemble(world: World, ds: xr.Dataset, grid: Grid) -> Tensor:
    """``(member, var, lat, lon)`` on ``grid``: the initial state at ``t_0`` (coarsened)
    plus ``initial_spread`` times the anomalies (about their mean) of ``member`` states at
    random dataset times outside the experiment window (seeded ``(seed, "enkf-initial")``:
    the EnKF and the oracle EnKF start from the same draw)."""
    cfg = world.config
    candidates = outside_window(ds, world.times)
    if len(candidates) < cfg.members:
        raise ValueError(f"{cfg.data.path}: {len(candidates)} times outside the window, the "
                         f"EnKF's initial ensemble needs {cfg.members}")
    rng = numpy_generator(cfg.seed, "enkf-initial")
    pick = sorted(rng.choice(len(candidates), size=cfg.members, replace=False).tolist())
    states = states_at(ds, [candidates[i] for i in pick], world.variables, torch.float64)
    coarse = coarsen_to(states, grid)
    anomalies = coarse - coarse.mean(0, keepdim=True)
    x0 = coarsen_to(world.initial.double(), grid)
    return (x0 + cfg.enkf.initial_spread * anomalies).float()


def outside_window(ds: xr.Dataset, times: Sequence[cftime.datetime]) -> list[int]:
    """Indices of the dataset's times that are not times of the experiment window."""
    window = set(times)
    return [i for i, t in enumerate(ds["time"].values) if t not in window]


def climatology_state(cfg: RunConfig, ds: xr.Dataset, times: Sequence[cftime.datetime],
                      variables: Sequence[str]) -> tuple[Tensor, Tensor]:
    """The mean and variance per cell of the data's states outside the window, each
    ``(1, var, lat, lon)`` float32 (empty if the data hold no other states)."""
    candidates = outside_window(ds, times)
    needs = cfg.analysis.forecast.error_model != "fixed" or "ensemble" in cfg.analysis.modes
    if needs and len(candidates) < 2:
        raise ValueError(f"{cfg.data.path}: the fitted and ensemble forecast terms need the "
                         f"climatology of the states outside the window {iso(times[0])} .. "
                         f"{iso(times[-1])}; the data has {len(candidates)}")
    if not candidates:
        return torch.empty(0), torch.empty(0)
    states = states_at(ds, candidates, variables, torch.float64)
    var = states.var(0, keepdim=True) if len(candidates) > 1 else torch.empty(0)
    return states.mean(0, keepdim=True).float(), var.float()


def initial_state(cfg: RunConfig, ds: xr.Dataset, times: Sequence[cftime.datetime],
                  variables: Sequence[str], truth: Tensor, climatology: Tensor) -> Tensor:
    """The state the cycling starts from at ``t_0``, ``(1, var, lat, lon)`` float32:
    ``data.init = "truth"``: the truth; ``"background"``: the state at one time outside
    the window, drawn from ``(seed, "background-initial")`` (an analysis-free background:
    right climate, wrong weather); ``"climatology"``: the mean of the states outside the
    window."""
    if cfg.data.init == "truth":
        return truth[:1]
    candidates = outside_window(ds, times)
    if not candidates:
        raise ValueError(f"{cfg.data.path}: data.init = {cfg.data.init!r} needs states outside "
                         f"the window {iso(times[0])} .. {iso(times[-1])}; the data has none")
    if cfg.data.init == "background":
        rng = numpy_generator(cfg.seed, "background-initial")
        return states_at(ds, [candidates[int(rng.integers(len(candidates)))]], variables,
                         torch.float32)
    return climatology
