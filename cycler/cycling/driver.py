"""The cycle driver: a cycling experiment over a schedule of 00/12 UTC analysis times.

One cycle of ``cadence_hours`` (DESIGN.md, "Data flow of one cycle")::

    analysis (t_{k-1}) --coarsen--> emulator grid --emulator, cadence/dt steps--> forecast (t_k)
    observations at t_k: stations (points) + the forecast on the emulator grid (Eq. 14)
    --> Algorithm 1 (prior denoiser + sum_j lambda_j grad log p(y_j | x)) --> analysis (t_k)

Modes (:data:`MODE_STEPS`, one function each, ``step(world, k, previous) -> CycleResult``):

- ``climatological``: stations only (weight 1); every cycle independent.
- ``precomputed``: the emulator's free forecast from the coarsened truth at ``t_0``, never
  corrected; its value at ``t_k`` is the forecast term (weight 1) beside the stations
  (weight ``lambda``) (the paper's IGRA+LUCIE).
- ``reinitialized``: the previous analysis, coarsened to the emulator grid, restarts the
  emulator for one cycle (``reinitialize_from = "mean"``: one forecast from the ensemble
  mean, the same observation for all members; ``"members"``: one forecast per member, each
  member guided by its own) (Fig. 17b). Cycle 1 starts from the truth, like ``precomputed``.
- ``enkf``: the localized, inflated stochastic EnKF (:mod:`diffda.cycler.analysis.letkf`) on the
  emulator grid: an ensemble of emulator forecasts updated with the same station
  observations (bicubic point operator on the emulator grid, same error std), in the
  prior's normalised units. The initial ensemble is the coarsened truth at ``t_0`` plus
  ``initial_spread`` times anomalies of states at random times outside the window.
  Scored after **bilinear** interpolation to the full grid (periodic in longitude,
  constant beyond the outermost latitude centres).
- reference lines: ``free`` (the emulator's free forecast from the truth, one member,
  bilinear to the full grid) and ``unconditional`` (prior samples without observations,
  drawn once: their law does not depend on time, so one ensemble is scored at every cycle).

The posterior sampler works in the prior's normalised space; the station term normalises
the observations with the prior's per-variable mean/std, the forecast term normalises the
emulator forecast the same way; truth, observations, analyses and scores are in physical
units. Random numbers: the sampler's members draw from ``(seed, "analysis", cycle,
member)`` in every sampler mode (common random numbers make the modes' differences less
noisy), the EnKF's perturbations from ``(seed, "enkf", cycle, member)``.

Outputs (``RUN_DIR``): ``config.json`` (resolved, with its hash), ``checkpoints/<mode>/
cycle_<k>.pt`` (atomic, verified on resume), ``metrics.jsonl`` (rewritten from the records
after every cycle, so a resumed run's file equals an uninterrupted one's),
``analyses/<mode>.nc`` (CF netCDF, ensemble mean and std, members optional),
``truth.nc``, ``observations.nc``, ``timings.json`` and plots (:mod:`.run_plots`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid, coarsen_to
from diffda.core.io import atomic_write_bytes, atomic_write_text, file_sha256
from diffda.core.rng import member_generators, numpy_generator, torch_generator
from diffda.core.times import iso
from diffda.cycler.analysis.letkf import LocalizedEnKF, PointObservations
from diffda.cycler.analysis.sampler import StepDiagnostics, sample_posterior
from diffda.cycler.cycling.checkpoint import (
    CycleCheckpoint,
    complete_cycles,
    cycle_path,
    load_cycle,
    save_cycle,
)
from diffda.cycler.cycling.config import SAMPLER_MODES, RunConfig, config_hash, write_resolved
from diffda.cycler.metrics import ensemble_scores, station_cell_mask
from diffda.emulators.dataio import bilinear_weights
from diffda.emulators.forecast.model import SFNOEmulator, open_nature
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations.likelihood import (
    ErrorModel,
    gaussian_log_likelihood,
    likelihood_variance,
    normalise_observations,
    station_term,
)
from diffda.observations.operators import forecast_grid_operator
from diffda.observations.stations import (
    StationNetwork,
    default_network,
    grid_land,
    read_station_list,
)
from diffda.observations.synthetic import (
    TIME_UNITS,
    grid_of,
    point_observations_at,
    synthetic_station_observations,
    write_observations,
)
from torch import Tensor, nn
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------- the world


@dataclass
class World:
    """Everything a run reads once: truth on the schedule, observations, models.

    ``truth``: ``(N + 1, var, lat, lon)`` float32 physical at ``times = [t_0..t_N]``;
    ``free``: ``(N + 1, 1, var, lat_e, lon_e)`` the emulator's free forecast from the
    coarsened truth at ``t_0`` (index 0 is that initial state).
    """

    config: RunConfig
    variables: tuple[str, ...]
    grid: Grid
    times: list[cftime.datetime]
    truth: Tensor
    attrs: dict[str, dict[str, Any]]
    dataset: xr.Dataset
    network: StationNetwork
    observations: xr.Dataset
    station_mask: np.ndarray
    emulator: SFNOEmulator
    prior: DiffusionPrior
    config_hash: str
    weights: dict[str, str]
    free: Tensor = field(default_factory=lambda: torch.empty(0))

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
    return emulator, prior


def _truth_on_schedule(ds: xr.Dataset, times: Sequence[cftime.datetime],
                       variables: Sequence[str], source: str) -> Tensor:
    have = {t: i for i, t in enumerate(ds["time"].values)}
    missing = [iso(t) for t in times if t not in have]
    if missing:
        raise KeyError(f"{source}: no truth at {missing[:3]}{' ...' if len(missing) > 3 else ''}"
                       f" (the schedule needs every {len(times)} cycle time)")
    idx = [have[t] for t in times]
    sub = ds[list(variables)].isel(time=idx).load()
    return torch.as_tensor(np.stack(
        [sub[v].transpose("time", "lat", "lon").values for v in variables], axis=1),
        dtype=torch.float32)


def make_network(cfg: RunConfig, ds: xr.Dataset) -> StationNetwork:
    """The station network: drawn on the dataset's land (``default``) or an IGRA list."""
    sc = cfg.stations
    if sc.network == "default":
        land = grid_land(np.asarray(ds["land_sea_mask"].transpose("lat", "lon").values))
        return default_network(sc.n, seed=sc.network_seed, is_land=land,
                               min_separation_km=sc.min_separation_km)
    network, _ = read_station_list(sc.network)
    return network


def load_world(cfg: RunConfig, *, progress: bool = False) -> World:
    """Open the truth, check it against the models, draw stations, make observations and
    the emulator's free forecast."""
    torch.set_num_threads(cfg.runtime.threads)
    emulator, prior = _load_models(cfg)
    variables = tuple(prior.variables)
    if tuple(emulator.variables) != variables:
        raise ValueError(f"emulator variables {list(emulator.variables)} ({cfg.models.emulator})"
                         f" differ from the prior's {list(variables)} ({cfg.models.prior})")
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
    observed = [v for v in cfg.stations.observed if v in variables]
    if len(observed) != len(cfg.stations.observed):
        raise ValueError(f"stations.observed = {list(cfg.stations.observed)}: the models have "
                         f"only {list(variables)}")
    window = ds[observed].isel(time=[list(ds["time"].values).index(t) for t in times[1:]])
    observations = synthetic_station_observations(
        window.load(), network, cfg.stations.noise_seed, observed, cfg.stations.error_std,
        hours=sorted({t.hour for t in times[1:]}), progress=progress,
    )
    weights = {"emulator": file_sha256(cfg.models.emulator), "prior": file_sha256(cfg.models.prior)}
    world = World(
        config=cfg, variables=variables, grid=grid, times=times, truth=truth,
        attrs={v: dict(ds[v].attrs) for v in variables}, dataset=ds, network=network,
        observations=observations,
        station_mask=station_cell_mask(grid, network.lat, network.lon),
        emulator=emulator, prior=prior, config_hash=config_hash(cfg), weights=weights,
    )
    if abs(world.steps_per_cycle * emulator.dt_hours - cfg.data.cadence_hours) > 1e-9:
        raise ValueError(f"data.cadence_hours = {cfg.data.cadence_hours} is not a multiple of "
                         f"the emulator's step {emulator.dt_hours} h")
    world.free = free_forecast(world)
    return world


# ------------------------------------------------------------------------- pure helpers


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
    states, _ = emulator.rollout(state, start, n_steps, every=n_steps, generator=generator)
    return states[-1]


def free_forecast(world: World) -> Tensor:
    """The emulator's free run from the coarsened truth at ``t_0``: ``(N + 1, 1, var, ...)``."""
    x0 = coarsen_to(world.truth[:1], world.emulator.grid)
    s = world.steps_per_cycle
    states, _ = world.emulator.rollout(x0, world.times[0], s * world.n_cycles, every=s)
    return torch.cat([x0[None], states])


class ForecastTerm(nn.Module):
    """The forecast term of Eq. 14: ``-||y_m - C(x0_m)||^2 / (2 (Sigma_y + sigma^2 Gamma))``
    with ``C`` the coarsening to the emulator grid (:func:`forecast_grid_operator`) and
    ``y`` ``(K, n_obs)`` the normalised forecast, ``K = 1`` (one forecast for every member)
    or ``K = member`` (member ``m`` guided by its own forecast). A
    :class:`~diffda.core.protocols.LikelihoodTerm`."""

    y: Tensor

    def __init__(self, operator: nn.Module, y: Tensor, error: ErrorModel, weight: float = 1.0
                 ) -> None:
        super().__init__()
        self.operator = operator
        self.register_buffer("y", y)
        self.sigma_y = float(error.sigma_y)
        self.gamma = float(error.gamma)
        self.weight = float(weight)

    def log_likelihood(self, x0: Tensor, sigma: Tensor) -> Tensor:
        r = self.y.to(x0.dtype) - self.operator(x0)
        var = likelihood_variance(torch.tensor(self.sigma_y, dtype=x0.dtype), self.gamma,
                                  torch.as_tensor(sigma, dtype=x0.dtype))
        return gaussian_log_likelihood(r, var)


# ------------------------------------------------------------------------------ cycles


@dataclass
class CycleResult:
    """One cycle of one mode. ``analysis``: ``(member, var, lat, lon)`` physical on the full
    grid (what is scored); ``tensors``: what else the checkpoint keeps; ``info``: the
    method's diagnostics (stored in the record under ``"method"``)."""

    analysis: Tensor
    tensors: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)  # method diagnostics for the record


def _error(cfg_error: Any) -> ErrorModel:
    return ErrorModel(sigma_y=cfg_error.sigma_y, gamma=cfg_error.gamma)


def _generator_states(gens: Sequence[torch.Generator]) -> Tensor:
    return torch.stack([g.get_state() for g in gens])


def _station_term(world: World, k: int, weight: float) -> tuple[nn.Module, dict[str, Tensor]]:
    p = world.prior
    term = station_term(
        world.observations, world.times[k], world.grid, world.variables,
        p.mean.tolist(), p.std.tolist(), _error(world.config.analysis.station), weight,
        observed=world.config.stations.observed,
    )
    op = term.operator
    idx = op.obs_variable_index
    y_phys = term.y.double() * p.std.double()[idx] + p.mean.double()[idx]
    used = {"obs_value": y_phys, "obs_lat": torch.as_tensor(op.obs_lat),
            "obs_lon": torch.as_tensor(op.obs_lon), "obs_variable_index": idx.clone()}
    return term, used


def _forecast_term(world: World, forecast: Tensor) -> ForecastTerm:
    """``forecast``: ``(K, var, lat_e, lon_e)`` physical."""
    op = forecast_grid_operator(world.grid, world.variables, coarse=world.emulator.grid)
    y = world.prior.normalise(forecast.double()).reshape(forecast.shape[0], -1)
    return ForecastTerm(op, y, _error(world.config.analysis.forecast), weight=1.0)


def _sample(world: World, terms: Sequence[nn.Module], k: int, stream: str = "analysis"
            ) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Algorithm 1 for cycle ``k``: the analysis (physical), the members' initial generator
    states and a summary of the sampler's diagnostics (largest guidance/prior drift ratio:
    above ~1 the observations drive the steps, NOTES.md; fraction of clipped members)."""
    cfg = world.config
    gens = member_generators(cfg.seed, stream, k, cfg.members)
    states = _generator_states(gens)
    diagnostics: list[StepDiagnostics] = []
    z = sample_posterior(world.prior, gens, world.prior.state_shape, terms,  # type: ignore[arg-type]
                         cfg.analysis.sampler, diagnostics=diagnostics)
    info = {"nfe": cfg.analysis.sampler.nfe}
    if terms:
        info["guidance_ratio_max"] = max(d.guidance_ratio_max for d in diagnostics)
        info["clipped_fraction_max"] = max(d.clipped_fraction for d in diagnostics)
    return world.prior.denormalise(z), states, info


def step_climatological(world: World, k: int, previous: dict[str, Tensor] | None
                        ) -> CycleResult:
    """Stations only (weight 1), every cycle independent."""
    term, used = _station_term(world, k, 1.0)
    analysis, states, info = _sample(world, [term], k)
    return CycleResult(analysis, {**used, "generator_states": states}, info)


def step_precomputed(world: World, k: int, previous: dict[str, Tensor] | None) -> CycleResult:
    """Forecast term from the uncorrected free forecast (weight 1) + stations (lambda)."""
    forecast = world.free[k]
    stations, used = _station_term(world, k, world.config.analysis.lambda_)
    analysis, states, info = _sample(world, [_forecast_term(world, forecast), stations], k)
    return CycleResult(analysis, {**used, "forecast": forecast, "generator_states": states},
                       info)


def step_reinitialized(world: World, k: int, previous: dict[str, Tensor] | None
                       ) -> CycleResult:
    """The previous analysis restarts the emulator for one cycle (Fig. 17b)."""
    if k == 1 or previous is None:
        forecast = world.free[1]
    else:
        start = coarsen_to(previous["analysis"], world.emulator.grid)
        if world.config.analysis.reinitialize_from == "mean":
            start = start.mean(0, keepdim=True)
        forecast = emulator_forecast(world.emulator, start, world.times[k - 1],
                                     world.steps_per_cycle)
    stations, used = _station_term(world, k, world.config.analysis.lambda_)
    analysis, states, info = _sample(world, [_forecast_term(world, forecast), stations], k)
    return CycleResult(analysis, {**used, "forecast": forecast, "generator_states": states},
                       info)


def initial_enkf_ensemble(world: World) -> Tensor:
    """``(member, var, lat_e, lon_e)``: the coarsened truth at ``t_0`` plus
    ``initial_spread`` times the anomalies (about their mean) of ``member`` states at random
    dataset times outside the experiment window (seeded ``(seed, "enkf-initial")``)."""
    cfg, ds = world.config, world.dataset
    window = set(world.times)
    candidates = [i for i, t in enumerate(ds["time"].values) if t not in window]
    if len(candidates) < cfg.members:
        raise ValueError(f"{cfg.data.path}: {len(candidates)} times outside the window, the "
                         f"EnKF's initial ensemble needs {cfg.members}")
    rng = numpy_generator(cfg.seed, "enkf-initial")
    pick = sorted(rng.choice(len(candidates), size=cfg.members, replace=False).tolist())
    idx = [candidates[i] for i in pick]
    sub = ds[list(world.variables)].isel(time=idx).load()
    states = torch.as_tensor(np.stack(
        [sub[v].transpose("time", "lat", "lon").values for v in world.variables], axis=1),
        dtype=torch.float64)
    coarse = coarsen_to(states, world.emulator.grid)
    anomalies = coarse - coarse.mean(0, keepdim=True)
    x0 = coarsen_to(world.truth[:1].double(), world.emulator.grid)
    return (x0 + cfg.enkf.initial_spread * anomalies).float()


def step_enkf(world: World, k: int, previous: dict[str, Tensor] | None) -> CycleResult:
    """Forecast the EnKF ensemble one cycle, then the localized inflated EnKF update."""
    cfg, p, egrid = world.config, world.prior, world.emulator.grid
    start = initial_enkf_ensemble(world) if previous is None else previous["native"]
    noise = torch_generator(cfg.seed, "enkf-model-noise", k) if cfg.enkf.model_noise else None
    forecast = emulator_forecast(world.emulator, start, world.times[k - 1],
                                 world.steps_per_cycle, generator=noise)
    op, y, err = point_observations_at(world.observations, world.times[k], egrid,
                                       world.variables, cfg.stations.observed)
    idx = op.obs_variable_index.numpy()
    std = p.std.double().numpy()
    y_n = normalise_observations(y, p.mean.tolist(), p.std.tolist(), idx)
    r = np.where(np.isfinite(err), (err / std[idx]) ** 2, cfg.analysis.station.sigma_y)
    obs = PointObservations(op.double(), y_n, torch.as_tensor(r),
                            torch.as_tensor(op.obs_lat), torch.as_tensor(op.obs_lon))
    gens = member_generators(cfg.seed, "enkf", k, cfg.members)
    states = _generator_states(gens)
    enkf = LocalizedEnKF(grid=egrid, radius_km=cfg.enkf.radius_km, inflation=cfg.enkf.inflation)
    z = enkf.analyse(p.normalise(forecast.double()), [obs], gens)
    native = p.denormalise(z).float()
    return CycleResult(bilinear_upsample(native, world.grid), {
        "native": native, "forecast": forecast, "generator_states": states,
        "obs_value": torch.as_tensor(y), "obs_lat": torch.as_tensor(op.obs_lat),
        "obs_lon": torch.as_tensor(op.obs_lon), "obs_variable_index": op.obs_variable_index,
    })


def step_free(world: World, k: int, previous: dict[str, Tensor] | None) -> CycleResult:
    """The emulator's free forecast from the truth (one member), bilinear to the full grid."""
    return CycleResult(bilinear_upsample(world.free[k], world.grid), {"forecast": world.free[k]})


def step_unconditional(world: World, k: int, previous: dict[str, Tensor] | None
                       ) -> CycleResult:
    """Unconditional prior samples, drawn once (cycle key 0) and scored at every cycle."""
    if previous is not None:
        return CycleResult(previous["analysis"])
    analysis, states, info = _sample(world, [], 0, stream="unconditional")
    return CycleResult(analysis, {"generator_states": states}, info)


ModeStep = Callable[[World, int, "dict[str, Tensor] | None"], CycleResult]
MODE_STEPS: dict[str, ModeStep] = {
    "climatological": step_climatological,
    "precomputed": step_precomputed,
    "reinitialized": step_reinitialized,
    "enkf": step_enkf,
    "free": step_free,
    "unconditional": step_unconditional,
}


# ----------------------------------------------------------------------------- outputs


def write_metrics(run_dir: Path, records: dict[str, list[dict[str, Any]]],
                  modes: Sequence[str]) -> Path:
    """``metrics.jsonl``: one JSON object per (mode, cycle), modes in config order."""
    lines = [json.dumps(r) for m in modes for r in records.get(m, [])]
    return atomic_write_text(run_dir / "metrics.jsonl", "".join(s + "\n" for s in lines))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file (or of ``RUN_DIR/metrics.jsonl``)."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (has the run started?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _encoding(times: Sequence[cftime.datetime]) -> dict[str, Any]:
    return {"units": TIME_UNITS, "calendar": times[0].calendar, "dtype": "float64"}


def analyses_dataset(world: World, mode: str, analyses: Tensor, members: bool) -> xr.Dataset:
    """CF Dataset of a mode's analyses ``(cycle, member, var, lat, lon)``: ensemble mean
    ``<var>`` and standard deviation ``<var>_std`` per analysis time, optionally the members
    ``<var>_members`` with a ``realization`` dim."""
    g, times = world.grid, world.times[1:]
    coords = {
        "time": ("time", np.asarray(times, dtype=object), {"standard_name": "time", "axis": "T"}),
        "lat": ("lat", g.lat, {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"}),
        "lon": ("lon", g.lon, {"units": "degrees_east", "standard_name": "longitude", "axis": "X"}),
    }
    data = {}
    a = analyses.double()
    n_members = a.shape[1]
    for j, v in enumerate(world.variables):
        base = {k: world.attrs[v][k] for k in ("units", "standard_name", "long_name")
                if k in world.attrs[v]}
        data[v] = (("time", "lat", "lon"), a[:, :, j].mean(1).float().numpy(),
                   {**base, "cell_methods": "realization: mean"})
        std = a[:, :, j].std(1, unbiased=True) if n_members > 1 else torch.zeros_like(a[:, 0, j])
        data[f"{v}_std"] = (("time", "lat", "lon"), std.float().numpy(),
                            {**{k: x for k, x in base.items() if k != "standard_name"},
                             "long_name": f"ensemble standard deviation of {v}",
                             "cell_methods": "realization: standard_deviation"})
        if members:
            coords["realization"] = ("realization", np.arange(n_members),
                                     {"standard_name": "realization"})
            data[f"{v}_members"] = (("time", "realization", "lat", "lon"),
                                    a[:, :, j].float().numpy(), base)
    ds = xr.Dataset(data, coords=coords)
    ds["time"].encoding.update(_encoding(times))
    ds.attrs.update({
        "Conventions": "CF-1.8", "title": f"analyses of cycling mode {mode!r}",
        "source": "diffda cycler", "mode": mode, "members": n_members,
        "config_hash": world.config_hash,
    })
    return ds


def write_netcdf(ds: xr.Dataset, path: Path) -> Path:
    """Atomic netCDF write."""
    return atomic_write_bytes(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def truth_dataset(world: World) -> xr.Dataset:
    """The truth at the analysis times, CF (for plots and users)."""
    g, times = world.grid, world.times[1:]
    ds = xr.Dataset(
        {v: (("time", "lat", "lon"), world.truth[1:, j].numpy(), world.attrs[v])
         for j, v in enumerate(world.variables)},
        coords={"time": ("time", np.asarray(times, dtype=object), {"standard_name": "time"}),
                "lat": ("lat", g.lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", g.lon, {"units": "degrees_east", "standard_name": "longitude"})},
        attrs={"Conventions": "CF-1.8", "title": "truth at the analysis times",
               "source": world.config.data.path},
    )
    ds["time"].encoding.update(_encoding(times))
    return ds


# ----------------------------------------------------------------------------- the loop


class InjectedFailure(RuntimeError):
    """Raised by the driver on request (``fail_after``), to test kill-and-resume."""


@dataclass
class RunSummary:
    run_dir: Path
    records: dict[str, list[dict[str, Any]]]
    seconds: dict[str, list[float]]


def run_mode(world: World, mode: str, run_dir: Path, records: dict[str, list[dict[str, Any]]],
             *, on_checkpoint: Callable[[str, int], None] | None = None,
             progress: bool = False, write_jsonl: bool = True) -> tuple[Tensor, list[float]]:
    """Run (or continue) one mode; returns its analyses ``(N, member, var, lat, lon)`` and
    the seconds of the cycles computed now. ``records[mode]`` is filled cycle by cycle and
    ``metrics.jsonl`` rewritten after each (unless ``write_jsonl`` is false: a worker
    process running one mode of several leaves the file to its parent)."""
    cfg = world.config
    done = complete_cycles(run_dir, mode)
    analyses: list[Tensor] = []
    records[mode] = []
    previous: dict[str, Tensor] | None = None
    for k in done:
        ck = load_cycle(cycle_path(run_dir, mode, k), world.config_hash, world.weights)
        if ck.mode != mode or ck.cycle != k or ck.time != iso(world.times[k]):
            raise ValueError(f"{cycle_path(run_dir, mode, k)}: holds {ck.mode} cycle {ck.cycle} "
                             f"at {ck.time}, expected {mode} cycle {k} at {iso(world.times[k])}")
        records[mode].append(ck.record)
        analyses.append(ck.tensors["analysis"])
        previous = ck.tensors
    seconds: list[float] = []
    bar = tqdm(range(len(done) + 1, world.n_cycles + 1), desc=f"{mode:>14}", disable=not progress,
               initial=len(done), total=world.n_cycles)
    for k in bar:
        tic = time.perf_counter()
        result = MODE_STEPS[mode](world, k, previous)
        analysis = result.analysis.float()
        record = {
            "mode": mode, "cycle": k, "time": iso(world.times[k]),
            "lead_hours": k * cfg.data.cadence_hours, "members": int(analysis.shape[0]),
            **ensemble_scores(analysis, world.truth[k], world.variables, world.station_mask),
        }
        if result.info:
            record["method"] = result.info
        tensors = {"analysis": analysis, **result.tensors}
        save_cycle(run_dir, CycleCheckpoint(
            mode=mode, cycle=k, time=iso(world.times[k]), tensors=tensors, record=record,
            config_hash=world.config_hash, weights=world.weights,
        ))
        records[mode].append(record)
        analyses.append(analysis)
        previous = tensors
        if write_jsonl:
            write_metrics(run_dir, records, cfg.analysis.modes)
        seconds.append(time.perf_counter() - tic)
        bar.set_postfix(rmse_height=f"{record[world.variables[0]]['rmse']:.3g}")
        if on_checkpoint is not None:
            on_checkpoint(mode, k)
    return torch.stack(analyses), seconds


def _update_timings(run_dir: Path, mode: str, seconds: list[float], cfg: RunConfig) -> None:
    path = run_dir / "timings.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    entry = data.get(mode, {"seconds_per_cycle": []})
    entry["seconds_per_cycle"] = entry["seconds_per_cycle"] + [round(s, 3) for s in seconds]
    entry["total_seconds"] = round(sum(entry["seconds_per_cycle"]), 3)
    entry["mean_seconds_per_cycle"] = round(entry["total_seconds"]
                                            / max(len(entry["seconds_per_cycle"]), 1), 3)
    if mode in SAMPLER_MODES:
        entry["nfe_per_analysis"] = cfg.analysis.sampler.nfe
    entry["threads"] = cfg.runtime.threads
    data[mode] = entry
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    """Create ``run_dir`` with the resolved config; refuse to overwrite another run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    if path.is_file():
        theirs = json.loads(path.read_text()).get("config_hash")
        if theirs != config_hash(cfg):
            raise ValueError(
                f"{run_dir} holds a run of another config (hash {str(theirs)[:12]}..., this "
                f"{config_hash(cfg)[:12]}...): choose another --out or delete it")
        if not resume and any((run_dir / "checkpoints").glob("*/cycle_*.pt")):
            raise ValueError(f"{run_dir} already holds checkpoints of this run: use "
                             f"'cycler resume {run_dir}' (or another --out)")
    write_resolved(cfg, path)


def run_experiment(
    cfg: RunConfig, run_dir: str | Path, *, resume: bool = False,
    on_checkpoint: Callable[[str, int], None] | None = None, plots: bool | None = None,
) -> RunSummary:
    """Run every mode of ``cfg`` into ``run_dir`` (continuing from checkpoints if
    ``resume``), then write the analyses, truth, timings and plots."""
    run_dir = Path(run_dir)
    prepare_run_dir(cfg, run_dir, resume)
    progress = cfg.runtime.progress
    world = load_world(cfg, progress=progress)
    write_observations(world.observations, run_dir / "observations.nc")
    write_netcdf(truth_dataset(world), run_dir / "truth.nc")
    records: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, list[float]] = {}

    def finish(mode: str, analyses: Tensor, secs: list[float]) -> None:
        seconds[mode] = secs
        if secs:
            _update_timings(run_dir, mode, secs, cfg)
        ds = analyses_dataset(world, mode, analyses, cfg.output.members)
        write_netcdf(ds, run_dir / "analyses" / f"{mode}.nc")

    if cfg.runtime.workers > 1 and len(cfg.analysis.modes) > 1:
        for mode, (recs, analyses, secs) in _run_modes_in_processes(cfg, run_dir).items():
            records[mode] = recs
            finish(mode, analyses, secs)
    else:
        for mode in cfg.analysis.modes:
            analyses, secs = run_mode(world, mode, run_dir, records,
                                      on_checkpoint=on_checkpoint, progress=progress)
            finish(mode, analyses, secs)
    write_metrics(run_dir, records, cfg.analysis.modes)
    if cfg.output.plots if plots is None else plots:
        from diffda.cycler.cycling.plots import plot_run

        plot_run(run_dir)
    return RunSummary(run_dir=run_dir, records=records, seconds=seconds)


def _mode_worker(cfg: RunConfig, run_dir: str, mode: str
                 ) -> tuple[list[dict[str, Any]], Tensor, list[float]]:
    """One mode in a worker process (:func:`_run_modes_in_processes`)."""
    world = load_world(cfg)
    records: dict[str, list[dict[str, Any]]] = {}
    analyses, secs = run_mode(world, mode, Path(run_dir), records, write_jsonl=False)
    return records[mode], analyses, secs


def _run_modes_in_processes(cfg: RunConfig, run_dir: Path
                            ) -> dict[str, tuple[list[dict[str, Any]], Tensor, list[float]]]:
    """Run the modes in ``cfg.runtime.workers`` processes (``spawn``), each with
    ``cfg.runtime.threads`` torch threads; the costly sampler modes are submitted first.
    Modes never share state, so the results equal a serial run's (same thread count)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    order = sorted(cfg.analysis.modes, key=lambda m: m not in SAMPLER_MODES)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.runtime.workers, mp_context=ctx) as pool:
        futures = {m: pool.submit(_mode_worker, cfg, str(run_dir), m) for m in order}
        done = {}
        for m in tqdm(order, desc="modes", disable=not cfg.runtime.progress):
            done[m] = futures[m].result()
    return done


def resume_experiment(run_dir: str | Path, **kwargs: Any) -> RunSummary:
    """Continue the run in ``run_dir`` from its resolved config and checkpoints."""
    from diffda.cycler.cycling.config import read_resolved

    run_dir = Path(run_dir)
    cfg = read_resolved(run_dir / "config.json")
    return run_experiment(cfg, run_dir, resume=True, **kwargs)
