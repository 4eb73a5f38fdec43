"""Single-analysis experiments of the paper (Sec. 4.1-4.3, Table 1): zero-shot posterior
sampling (Algorithm 1) of one held-out truth state from its observations, scored against
the truth and a baseline.

Experiments (:data:`EXPERIMENTS`):

- ``sample-lr``: super-resolution from the low-resolution field (the truth coarsened to
  8x16 with :func:`diffda.core.grid.coarsen_to`) against bicubic interpolation of that
  field on the sphere (:func:`bicubic_upsample`; paper Figs. 1-3, 5);
- ``sample-igra``: station profiles only (synthetic radiosonde-like observations of the
  truth at a default network on land, or a station file), against unconditional prior
  samples (Figs. 7-9, 12-16);
- ``sample-igra-lr``: stations and the low-resolution field together (Eq. 14), against
  unconditional samples (and, for reference, bicubic);
- ``ablation``: the ``(Sigma_y, Gamma)`` grid of Table 1 on the low-resolution task.

Units: the truth and every score are physical at the edges; the sampler, the observations
``y`` and the error variances ``Sigma_y``, ``Gamma`` are in the prior's normalised units
(per-variable mean and std of the training climate). The coarse-grid operator is linear
with weights summing to 1, so coarsening then normalising equals normalising then
coarsening: the low-resolution observation is exact in both units.

Scores (per variable, latitude-weighted as in WeatherBench2, :mod:`diffda.cycler.metrics`):
RMSE of the ensemble mean, spread, spread-skill ratio ``sqrt((M + 1) / M) spread / rmse``
(1 for a reliable ensemble of ``M`` members, Fortin et al. 2014), fair CRPS, RMSE over
station and non-station cells, and the mean and std over members of each member's RMSE
(Table 1's "Mean +- Std"). For the low-resolution tasks, ``rmse_unresolved`` is the RMS of
the truth's zonal wavenumbers at and beyond the low-resolution grid's Nyquist
(:func:`unresolved_rmse`): the error of an estimate that had every longer zonal scale
exactly right and nothing shorter. An ensemble mean can beat it only through what the
prior knows about small scales given large ones.

Random numbers: member ``m`` of the posterior draws from ``(seed, "experiment-posterior",
hours(t), m)``, the unconditional baseline from ``(seed, "experiment-unconditional",
hours(t), m)``, the synthetic station noise from ``(seed, "synthetic-observations",
hours(t))`` and the default network from ``(seed, "stations")``: a run is reproducible and
a member does not depend on the ensemble size.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time as timer
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.config import require
from diffda.core.grid import Grid, coarsen_to
from diffda.core.io import atomic_write_text
from diffda.core.rng import member_generators, torch_generator
from diffda.core.times import parse_time
from diffda.cycler.analysis.sampler import SamplerConfig, StepDiagnostics, sample_posterior
from diffda.cycler.metrics import (
    crps,
    masked_rmse,
    rmse,
    spread,
    station_cell_mask,
    zonal_power_spectrum,
)
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations.likelihood import DEFAULT_ERROR_MODELS, ErrorModel, ObservationTerm
from diffda.observations.operators import LOW_RESOLUTION_GRID, CoarseGridOperator, PointOperator
from diffda.observations.stations import StationNetwork, default_network, grid_land
from diffda.observations.synthetic import (
    grid_of,
    hours_key,
    network_from_dataset,
    synthetic_station_observations,
    truth_at_stations,
)
from torch import Tensor

EXPERIMENTS: tuple[str, ...] = ("sample-lr", "sample-igra", "sample-igra-lr", "ablation")
#: Which observation kinds each experiment assimilates.
TERMS_OF: dict[str, tuple[str, ...]] = {
    "sample-lr": ("low_resolution",),
    "sample-igra": ("stations",),
    "sample-igra-lr": ("stations", "low_resolution"),
    "ablation": ("low_resolution",),
}
#: The baseline each experiment is compared with (its RMSE is ``rmse_<baseline>``).
BASELINE_OF: dict[str, str] = {
    "sample-lr": "bicubic",
    "sample-igra": "unconditional",
    "sample-igra-lr": "unconditional",
    "ablation": "bicubic",
}
POSTERIOR_STREAM = "experiment-posterior"
UNCONDITIONAL_STREAM = "experiment-unconditional"

#: Table 1 of the paper, ``(Sigma_y, Gamma)`` as written there, i.e. for Eq. 13 *without*
#: the factor 1/2; :func:`paper_to_project` converts them to this project's Eq. 13.
TABLE1_PAPER: tuple[tuple[float, float], ...] = (
    (1e-1, 1e-2), (1e-1, 1e-3), (1e-1, 5e-3), (5e-1, 1e-3), (5e-1, 5e-3), (5e-2, 5e-3),
)


def paper_to_project(sigma_y: float, gamma: float) -> tuple[float, float]:
    """The paper's ``(Sigma_y, Gamma)`` in this project's convention.

    The paper's Eq. 13 is ``-||r||^2 / (Sigma_y + t^2 Gamma)``; here it is
    ``-||r||^2 / (2 (Sigma_y' + t^2 Gamma'))`` (:mod:`diffda.observations.likelihood`), so
    the same guidance needs ``Sigma_y' = Sigma_y / 2`` and ``Gamma' = Gamma / 2``.
    """
    return sigma_y / 2.0, gamma / 2.0


def default_ablation_grid() -> tuple[tuple[float, float], ...]:
    """Table 1's six pairs in this project's convention, then the project default for the
    low-resolution term (:data:`~diffda.observations.likelihood.DEFAULT_ERROR_MODELS`)."""
    lr = DEFAULT_ERROR_MODELS["low_resolution"]
    return (*(paper_to_project(s, g) for s, g in TABLE1_PAPER), (lr.sigma_y, lr.gamma))


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """What one experiment does besides its name.

    ``low_resolution``: error model of the low-resolution term (normalised variances).
    ``station_sigma_y``: ``Sigma_y`` of every station observation, or ``None`` for each
    observation's own, from the station file's ``observation_error_std`` normalised by the
    climate std; ``station_gamma``: ``Gamma`` of the station term.
    ``observed``: the variables the observations contain (default: all of the prior's).
    ``station_relative_error``: std of the synthetic station noise as a fraction of the
    std of the station values at that time, per variable.
    ``lr_noise``: draw the low-resolution observations with noise of the likelihood's own
    variance ``Sigma_y`` (from ``(seed, "lr-noise")``) instead of noise-free; the bicubic
    baseline then interpolates the same noisy field.
    """

    members: int = 16
    seed: int = 0
    sampler: SamplerConfig = SamplerConfig()
    low_resolution: ErrorModel = DEFAULT_ERROR_MODELS["low_resolution"]
    station_sigma_y: float | None = None
    station_gamma: float = DEFAULT_ERROR_MODELS["point"].gamma
    lr_grid: Grid = LOW_RESOLUTION_GRID
    n_stations: int = 200
    station_relative_error: float = 0.1
    observed: tuple[str, ...] | None = None
    lr_noise: bool = False

    def __post_init__(self) -> None:
        require(self.members >= 1, "members", self.members, "must be >= 1")
        require(self.seed >= 0, "seed", self.seed, "must be >= 0")
        require(self.n_stations >= 1, "n_stations", self.n_stations, "must be >= 1")
        require(self.station_sigma_y is None or self.station_sigma_y > 0, "station_sigma_y",
                self.station_sigma_y, "must be positive (or absent for the file's errors)")
        require(self.station_gamma >= 0, "station_gamma", self.station_gamma, "must be >= 0")
        require(self.station_relative_error > 0, "station_relative_error",
                self.station_relative_error, "must be positive")


# --------------------------------------------------------------------------- the truth


@dataclasses.dataclass(frozen=True)
class Truth:
    """One truth state: ``state`` ``(var, lat, lon)`` float64, physical units."""

    state: Tensor
    time: cftime.datetime
    index: int
    grid: Grid
    variables: tuple[str, ...]
    land_sea_mask: np.ndarray | None  # (lat, lon), 1 = land


def select_index(ds: xr.Dataset, time: str | None = None, index: int | None = None,
                 source: str = "dataset") -> int:
    """The time index of ``ds`` named by ``time`` (ISO text, exact match) or ``index``
    (negative counts from the end). ``ValueError`` naming ``source`` and the time range if
    the time is not in the data."""
    if (time is None) == (index is None):
        raise ValueError("give exactly one of a time or an index")
    times = ds["time"].values
    n = len(times)
    if n == 0:
        raise ValueError(f"{source} has no times")
    span = f"{times[0]} .. {times[-1]} ({n} times)"
    if index is not None:
        if not -n <= index < n:
            raise ValueError(f"time index {index} is outside {source}: it has {span}")
        return int(index) % n
    assert time is not None
    calendar = getattr(times[0], "calendar", None)
    if not calendar:
        raise ValueError(f"{source}: times must be cftime objects (open with use_cftime)")
    t = parse_time(time, calendar, key="time")
    hits = np.nonzero(np.array([x == t for x in times]))[0]
    if len(hits) == 0:
        raise ValueError(f"time {t} is not in {source}: it has {span}")
    return int(hits[0])


def truth_at(ds: xr.Dataset, variables: Sequence[str], index: int, grid: Grid | None = None,
             source: str = "dataset") -> Truth:
    """Load the state of ``variables`` at time ``index`` (only that time is read).

    ``grid``: the prior's grid. A finer dataset is coarsened to it with the area-weighted
    :func:`~diffda.core.grid.coarsen_to` (as the prior's training data were); a grid
    that is not an integer refinement of it is an error."""
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise KeyError(f"{source} has no variable(s) {missing} that the prior needs; "
                       f"it has {sorted(map(str, ds.data_vars))}")
    native = grid_of(ds)
    at = ds.isel(time=index)
    state = torch.as_tensor(np.stack([
        np.asarray(at[v].transpose("lat", "lon").values, dtype=np.float64) for v in variables
    ]))
    if not bool(torch.isfinite(state).all()):
        bad = [v for k, v in enumerate(variables) if not bool(torch.isfinite(state[k]).all())]
        raise ValueError(f"{source}: variable(s) {bad} have non-finite values at "
                         f"{ds['time'].values[index]}")
    lsm = (torch.as_tensor(np.asarray(ds["land_sea_mask"].transpose("lat", "lon").values,
                                      dtype=np.float64))
           if "land_sea_mask" in ds else None)
    grid = grid or native
    if grid != native:
        try:
            state = coarsen_to(state, grid)
            lsm = coarsen_to(lsm, grid) if lsm is not None else None
        except ValueError:
            raise ValueError(f"{source} is on the {native} grid, which cannot be coarsened to "
                             f"the prior's {grid} grid; use weights trained for its grid"
                             ) from None
    return Truth(state, ds["time"].values[index], int(index), grid, tuple(variables),
                 None if lsm is None else lsm.numpy())


def check_observed(observed: Sequence[str] | None, variables: Sequence[str]) -> tuple[str, ...]:
    """The observed variables (default all); ``ValueError`` naming an unknown one."""
    if observed is None:
        return tuple(variables)
    unknown = [v for v in observed if v not in variables]
    if unknown or not observed:
        raise ValueError(f"unknown observed variable(s) {unknown or list(observed)}; "
                         f"the prior has {list(variables)}")
    return tuple(observed)


# --------------------------------------------------------------------------- observations


def low_resolution_term(
    prior: DiffusionPrior, truth: Truth, lr_grid: Grid, error: ErrorModel,
    observed: Sequence[str], noise_generator: torch.Generator | None = None,
) -> tuple[ObservationTerm, Tensor]:
    """The low-resolution term: ``y = coarsen(normalise(truth))`` for the ``observed``
    variables, flattened ``(var, lat, lon)``; returns the term and the physical coarse field
    ``(n_observed, lr_lat, lr_lon)``. Noise-free as in the paper's sample-LR, unless
    ``noise_generator`` is given: then ``y`` (and the coarse field) get Gaussian noise of
    the likelihood's own variance ``Sigma_y``, so that the likelihood is the true one and
    the ensemble's spread can be checked against its error."""
    op = CoarseGridOperator(prior.grid, lr_grid, prior.variables, observed)
    z = prior.normalise(truth.state.to(torch.float64))
    with torch.no_grad():
        y = op(z[None])[0]
    coarse = coarsen_to(truth.state, lr_grid)[op.var_index]
    if noise_generator is not None:
        eps = math.sqrt(error.sigma_y) * torch.randn(y.shape, generator=noise_generator,
                                                     dtype=y.dtype)
        y = y + eps
        std = prior.std.to(coarse.dtype)[op.var_index][:, None, None]
        coarse = coarse + std * eps.reshape(coarse.shape).to(coarse.dtype)
    return ObservationTerm(op, y, error.sigma_y, error.gamma, name="low_resolution"), coarse


def station_network_for(truth: Truth, n: int, seed: int) -> StationNetwork:
    """The default network on the truth's own land (its ``land_sea_mask``), or on the
    Earth's land (``global-land-mask``) when the dataset has no mask."""
    if truth.land_sea_mask is not None:
        return default_network(n, seed=seed, is_land=grid_land(truth.land_sea_mask))
    return default_network(n, seed=seed)


def synthetic_stations_at(
    ds: xr.Dataset, truth: Truth, network: StationNetwork, seed: int,
    observed: Sequence[str], relative_error: float,
) -> xr.Dataset:
    """Synthetic station observations of the truth at its time only (CF station form):
    bicubic values plus Gaussian noise of std ``relative_error`` times the std of the
    noise-free station values of each variable (:mod:`diffda.observations.synthetic`)."""
    one = ds.isel(time=[truth.index])
    clean = truth_at_stations(one, network, observed, progress=False)[0]  # (station, var)
    error_std = {v: relative_error * float(clean[:, k].std()) for k, v in enumerate(observed)}
    return synthetic_station_observations(one, network, seed, observed, error_std,
                                          hours=(truth.time.hour,), progress=False)


def station_term(
    prior: DiffusionPrior, obs: xr.Dataset, truth: Truth, sigma_y: float | None, gamma: float,
    observed: Sequence[str],
) -> ObservationTerm:
    """The station term at the truth's time from a CF station Dataset (normalised units).

    ``sigma_y = None``: ``Sigma_y`` per observation from the file's ``observation_error_std``
    normalised by the climate std (:func:`diffda.observations.likelihood.station_term`);
    otherwise ``sigma_y`` for all. ``gamma``: the term's ``Gamma``."""
    from diffda.observations.likelihood import station_term as make_term

    mean, std = prior.mean.double().numpy(), prior.std.double().numpy()
    fallback = ErrorModel(sigma_y=sigma_y or DEFAULT_ERROR_MODELS["point"].sigma_y, gamma=gamma)
    term = make_term(obs, truth.time, prior.grid, prior.variables, mean, std,
                     error_model=fallback, observed=observed)
    if sigma_y is not None:  # the file's errors are replaced by the chosen Sigma_y
        term = ObservationTerm(term.operator, term.y, sigma_y, gamma, name="stations")
    return term


# --------------------------------------------------------------------------- baselines


def bicubic_upsample(coarse: Tensor, fine: Grid, variables: Sequence[str]) -> Tensor:
    """Bicubic interpolation on the sphere of ``(..., var, h, w)`` cell values to the cell
    centres of ``fine``: ``(..., var, fine.nlat, fine.nlon)``.

    The Keys (a = -0.5) 4x4 stencil of :class:`~diffda.observations.operators.PointOperator`
    on the coarse grid: periodic in longitude, continued across the poles (with the sign
    of ``u``, ``v`` reversed there). The coarse values are cell means, taken as centre
    values, as a bicubic upsampling of a coarse field does.
    """
    *lead, nv, h, w = coarse.shape
    if nv != len(variables):
        raise ValueError(f"{nv} coarse variables for names {list(variables)}")
    lat2, lon2 = np.meshgrid(fine.lat, fine.lon, indexing="ij")
    n = lat2.size
    op = PointOperator(Grid(h, w), variables, np.tile(lat2.ravel(), nv),
                       np.tile(lon2.ravel(), nv), [v for v in variables for _ in range(n)])
    flat = coarse.reshape(-1, nv, h, w)
    out = op(flat)  # weights are cast to the input's dtype
    return out.reshape(*lead, nv, fine.nlat, fine.nlon)


# --------------------------------------------------------------------------- scores


def spread_skill_ratio(rmse_value: float, spread_value: float, members: int) -> float:
    """``sqrt((M + 1) / M) spread / rmse``: 1 for a reliable ``M``-member ensemble, since
    ``E[rmse^2] = (1 + 1/M) E[spread^2]`` (Fortin et al. 2014). NaN if ``rmse = 0``."""
    if rmse_value == 0.0:
        return math.nan
    return math.sqrt((members + 1) / members) * spread_value / rmse_value


def member_rmse(ensemble: Tensor, truth: Tensor) -> Tensor:
    """Latitude-weighted RMSE of each member, ``(member, var)``."""
    return torch.stack([rmse(ensemble[m:m + 1], truth) for m in range(ensemble.shape[0])])


def score(ensemble: Tensor, truth: Tensor, variables: Sequence[str],
          station_mask: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Per variable ``{rmse, spread, spread_skill, crps, rmse_member_mean,
    rmse_member_std[, rmse_station, rmse_nonstation]}``, physical units, in float64.

    ``ensemble``: ``(member, var, lat, lon)``; ``truth``: ``(var, lat, lon)``."""
    e, t = ensemble.double(), truth.double()
    m = e.shape[0]
    table = {"rmse": rmse(e, t), "spread": spread(e), "crps": crps(e, t)}
    per_member = member_rmse(e, t)
    table["rmse_member_mean"] = per_member.mean(0)
    table["rmse_member_std"] = (per_member.std(0) if m > 1 else torch.zeros(len(variables)))
    if station_mask is not None:
        mask = torch.as_tensor(station_mask, dtype=torch.bool)
        table["rmse_station"] = masked_rmse(e, t, mask)
        table["rmse_nonstation"] = masked_rmse(e, t, ~mask)
    out: dict[str, dict[str, float]] = {}
    for k, v in enumerate(variables):
        row = {name: float(val[k]) for name, val in table.items()}
        row["spread_skill"] = spread_skill_ratio(row["rmse"], row["spread"], m)
        out[v] = row
    return out


def unresolved_rmse(truth: Tensor, lr_grid: Grid) -> Tensor:
    """``(var,)``: latitude-weighted RMS of the part of ``truth`` ``(var, lat, lon)`` at
    zonal wavenumbers ``k >= lr_grid.nlon // 2`` (the low-resolution grid's Nyquist and
    beyond), which a field on ``lr_grid`` cannot hold."""
    k_cut = lr_grid.nlon // 2
    if k_cut > truth.shape[-1] // 2:
        raise ValueError(f"low-resolution grid {lr_grid} is not coarser in longitude than "
                         f"the truth's {truth.shape[-1]} points")
    truth = truth.double()
    return rmse((truth - zonal_high_pass(truth, k_cut))[None], truth)


def zonal_high_pass(x: Tensor, k_min: int) -> Tensor:
    """The part of ``x`` ``(..., lon)`` at zonal wavenumbers ``k >= k_min``."""
    spec = torch.fft.rfft(x, dim=-1)
    spec[..., :k_min] = 0
    return torch.fft.irfft(spec, n=x.shape[-1], dim=-1)


def lr_misfit_rmse(ensemble: Tensor, lr: Tensor, lr_grid: Grid) -> Tensor:
    """``(var,)``: latitude-weighted RMS on ``lr_grid`` of the ensemble mean's coarsened
    field minus the low-resolution field ``lr`` ``(var, lr_lat, lr_lon)`` (physical units):
    how closely the estimate fits the observation it was conditioned on, to set against
    ``sqrt(Sigma_y)``. An error that the misfit does not explain lies in the scales the
    observation cannot see."""
    coarse = coarsen_to(ensemble.mean(0).to(lr.dtype), lr_grid)
    return rmse(coarse[None], lr)


def zonal_spectra(fields: Tensor, grid: Grid) -> np.ndarray:
    """Zonal power spectra ``(var, nlon // 2 + 1)`` of ``(sample, var, lat, lon)`` fields,
    averaged over samples and (area-weighted) latitude (:func:`zonal_power_spectrum`); the
    zonal mean is not removed: ``k = 0`` holds its power."""
    x = fields.double().numpy()
    w = grid.area_weights()
    return np.stack([zonal_power_spectrum(x[:, v], w) for v in range(x.shape[1])])


# --------------------------------------------------------------------------- sampling


class SamplerDivergedError(ValueError):
    """The sampler produced non-finite values (guidance overshoot); the message says what
    to change. A ``ValueError``: a choice of parameters, not a bug."""


@dataclasses.dataclass
class SampledEnsemble:
    """One sampled ensemble, physical units: ``ensemble`` ``(member, var, lat, lon)``."""

    ensemble: Tensor
    seconds: float
    diagnostics: list[StepDiagnostics]


def sample(
    prior: DiffusionPrior, terms: Sequence[ObservationTerm], config: ExperimentConfig,
    stream: str, key: int, progress: bool = False,
) -> SampledEnsemble:
    """Algorithm 1 with ``terms`` (normalised units), all members in one batch; member ``m``
    draws from ``(config.seed, stream, key, m)``. Returns the ensemble de-normalised."""
    gens = member_generators(config.seed, stream, key, config.members)
    diagnostics: list[StepDiagnostics] = []
    t0 = timer.perf_counter()
    z = sample_posterior(prior, gens, prior.state_shape, list(terms), config.sampler,
                         diagnostics=diagnostics, progress=progress)
    seconds = timer.perf_counter() - t0
    x = prior.denormalise(z.detach().double())
    if not bool(torch.isfinite(x).all()):
        raise SamplerDivergedError(
            f"the sampler produced non-finite values (max guidance/prior drift ratio "
            f"{max((d.guidance_ratio_max for d in diagnostics), default=0.0):.3g}): "
            "increase Gamma or Sigma_y, or set a guidance ratio cap"
        )
    return SampledEnsemble(x, seconds, diagnostics)


# --------------------------------------------------------------------------- experiments


@dataclasses.dataclass
class ExperimentResult:
    """Everything an experiment measured, physical units; :meth:`summary` is JSON-ready.

    ``scores``: per variable (see :func:`score`) plus ``rmse_<baseline>`` etc.;
    ``fields``: numpy arrays for the figures: ``truth`` ``(var, lat, lon)``, ``ensemble``
    ``(member, var, lat, lon)``, ``bicubic`` ``(var, lat, lon)`` (NaN for variables not
    observed) and ``lr`` ``(var, lr_lat, lr_lon)`` (NaN likewise) where there is a low-resolution
    term, ``unconditional`` ``(member, var, lat, lon)`` and the station values
    (:func:`station_values`) where there are stations.
    """

    name: str
    time: str
    index: int
    variables: tuple[str, ...]
    observed: tuple[str, ...]
    members: int
    baseline: str
    scores: dict[str, dict[str, float]]
    seconds_per_analysis: float
    nfe: int
    guidance_ratio_max: float
    terms: list[dict[str, Any]]
    grid: Grid
    valid_time: cftime.datetime | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    spectra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "experiment": self.name, "time": self.time, "index": self.index,
            "grid": str(self.grid), "variables": list(self.variables),
            "observed": list(self.observed), "members": self.members,
            "baseline": self.baseline, "seconds_per_analysis": round(self.seconds_per_analysis, 3),
            "seconds_per_member": round(self.seconds_per_analysis / self.members, 4),
            "nfe": self.nfe, "guidance_ratio_max": round(self.guidance_ratio_max, 4),
            "terms": self.terms, "scores": self.scores,
        }


#: Scores pooled as root-mean-squares over analysis times (the others are averaged).
_RMS_KEYS = ("rmse", "spread", "rmse_bicubic", "rmse_unresolved", "rmse_lr_misfit",
             "sigma_y_lr", "rmse_unconditional",
             "spread_unconditional", "rmse_member_mean", "rmse_station", "rmse_nonstation")
_MEAN_KEYS = ("crps", "crps_bicubic", "crps_unconditional")


def pool_summaries(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Scores of several analysis times of one experiment, pooled: RMSE-like scores as
    ``sqrt(mean_t x_t^2)`` (so the pooled RMSE is that of all times' errors together),
    CRPS as the mean, the spread-skill ratio ``sqrt((M + 1) / M) spread / rmse`` of the
    pooled values, the baseline ratio ``rmse / rmse_<baseline>``, and each time's own
    spread-skill ratio. One summary per time, as :meth:`ExperimentResult.summary` gives."""
    if not summaries:
        raise ValueError("pool_summaries: no summaries to pool")
    first = summaries[0]
    for s in summaries[1:]:
        if (s["experiment"], s["members"], s["variables"]) != (
                first["experiment"], first["members"], first["variables"]):
            raise ValueError("pool_summaries: summaries of different experiments, ensemble "
                             "sizes or variables cannot be pooled")
    m, base = first["members"], first["baseline"]
    pooled: dict[str, dict[str, Any]] = {}
    for v in first["variables"]:
        rows = [s["scores"][v] for s in summaries]
        row: dict[str, Any] = {}
        for k in _RMS_KEYS:
            if all(k in r for r in rows):
                row[k] = math.sqrt(sum(r[k] ** 2 for r in rows) / len(rows))
        for k in _MEAN_KEYS:
            if all(k in r for r in rows):
                row[k] = sum(r[k] for r in rows) / len(rows)
        row["spread_skill"] = spread_skill_ratio(row["rmse"], row["spread"], m)
        row["spread_skill_by_time"] = [r["spread_skill"] for r in rows]
        if f"rmse_{base}" in row:
            row[f"rmse_ratio_{base}"] = row["rmse"] / row[f"rmse_{base}"]
        pooled[v] = row
    return {"experiment": first["experiment"], "pooled_over": [s["time"] for s in summaries],
            "members": m, "baseline": base, "variables": list(first["variables"]),
            "nfe": first["nfe"],
            "seconds_per_analysis": sum(s["seconds_per_analysis"] for s in summaries)
            / len(summaries),
            "scores": pooled}


def _term_record(term: ObservationTerm) -> dict[str, Any]:
    sy = term.sigma_y
    return {"name": term.name, "n_obs": int(term.y.numel()),
            "sigma_y": float(sy) if sy.dim() == 0 else
            {"min": float(sy.min()), "max": float(sy.max())},
            "gamma": term.gamma, "weight": term.weight}


def run_experiment(
    name: str, prior: DiffusionPrior, ds: xr.Dataset, index: int,
    config: ExperimentConfig | None = None, stations: xr.Dataset | None = None,
    source: str = "dataset", progress: bool = False,
) -> ExperimentResult:
    """Run ``sample-lr``, ``sample-igra`` or ``sample-igra-lr`` at time ``index`` of ``ds``.

    ``stations``: a CF station Dataset (``cycler obs make``) with observations at that time;
    default: synthetic observations of the truth at the default network.
    """
    if name not in TERMS_OF or name == "ablation":
        raise ValueError(f"unknown experiment {name!r}; choose one of "
                         f"{[e for e in EXPERIMENTS if e != 'ablation']} (or run_ablation)")
    config = config or ExperimentConfig()
    truth = truth_at(ds, prior.variables, index, prior.grid, source)
    observed = check_observed(config.observed, prior.variables)
    key = hours_key(truth.time)
    kinds = TERMS_OF[name]
    terms: list[ObservationTerm] = []
    fields: dict[str, Any] = {"truth": truth.state.numpy()}
    station_mask = None
    lr = None
    if "stations" in kinds:
        if stations is None:
            network = station_network_for(truth, config.n_stations, config.seed)
            stations = synthetic_stations_at(ds, truth, network, config.seed, observed,
                                             config.station_relative_error)
        else:
            network = network_from_dataset(stations)
        at_stations = tuple(v for v in observed if v in stations.data_vars)
        if not at_stations:
            raise KeyError(f"the station observations have none of the variables "
                           f"{list(observed)}; they have {sorted(map(str, stations.data_vars))}")
        terms.append(station_term(prior, stations, truth, config.station_sigma_y,
                                  config.station_gamma, at_stations))
        station_mask = station_cell_mask(truth.grid, network.lat, network.lon)
        fields["station_lat"], fields["station_lon"] = network.lat, network.lon
    if "low_resolution" in kinds:
        term, lr = low_resolution_term(
            prior, truth, config.lr_grid, config.low_resolution, observed,
            noise_generator=torch_generator(config.seed, "lr-noise") if config.lr_noise
            else None)
        terms.append(term)
        lr_all = np.full((len(prior.variables), *lr.shape[1:]), np.nan)
        lr_all[[prior.variables.index(v) for v in observed]] = lr.numpy()
        fields["lr"] = lr_all
    post = sample(prior, terms, config, POSTERIOR_STREAM, key, progress)
    scores = score(post.ensemble, truth.state, prior.variables, station_mask)
    fields["ensemble"] = post.ensemble.numpy()
    spectra = {"truth": zonal_spectra(truth.state[None], truth.grid),
               "members": zonal_spectra(post.ensemble, truth.grid),
               "ensemble_mean": zonal_spectra(post.ensemble.mean(0, keepdim=True), truth.grid)}
    # Baselines: bicubic of the LR field (observed variables only; NaN for the others),
    # unconditional samples.
    if lr is not None:
        idx = [prior.variables.index(v) for v in observed]
        bicubic = torch.full_like(truth.state, math.nan)
        bicubic[idx] = bicubic_upsample(lr, truth.grid, observed)
        b = score(bicubic[idx][None], truth.state[idx], observed, station_mask)
        unresolved = unresolved_rmse(truth.state, config.lr_grid)
        misfit = lr_misfit_rmse(post.ensemble[:, idx], lr, config.lr_grid)
        sigma = math.sqrt(config.low_resolution.sigma_y) * prior.std.double()
        for j, v in enumerate(observed):
            scores[v]["rmse_bicubic"] = b[v]["rmse"]
            scores[v]["rmse_unresolved"] = float(unresolved[prior.variables.index(v)])
            scores[v]["rmse_lr_misfit"] = float(misfit[j])
            scores[v]["sigma_y_lr"] = float(sigma[prior.variables.index(v)])
            scores[v]["crps_bicubic"] = b[v]["crps"]
        fields["bicubic"] = bicubic.numpy()
        spectra["bicubic"] = zonal_spectra(bicubic[None], truth.grid)
    if BASELINE_OF[name] == "unconditional":
        unc = sample(prior, [], config, UNCONDITIONAL_STREAM, key, progress)
        u = score(unc.ensemble, truth.state, prior.variables, station_mask)
        for v in prior.variables:
            for s in ("rmse", "spread", "crps", "spread_skill", "rmse_station",
                      "rmse_nonstation"):
                scores[v][f"{s}_unconditional"] = u[v][s]
        fields["unconditional"] = unc.ensemble.numpy()
    if "stations" in kinds:
        fields.update(station_values(prior, truth, stations, at_stations, fields))
        for j, v in enumerate(at_stations):
            t = fields["station_truth"][:, j]
            scores[v]["rmse_at_stations"] = _rms(fields["station_mean"][:, j] - t)
            if "station_unconditional" in fields:
                scores[v]["rmse_at_stations_unconditional"] = _rms(
                    fields["station_unconditional"][:, j] - t)
    return ExperimentResult(
        name=name, time=str(truth.time), index=truth.index, variables=prior.variables,
        observed=observed, members=config.members, baseline=BASELINE_OF[name],
        scores=scores, seconds_per_analysis=post.seconds, nfe=config.sampler.nfe,
        guidance_ratio_max=max((d.guidance_ratio_max for d in post.diagnostics), default=0.0),
        terms=[_term_record(t) for t in terms], grid=truth.grid, valid_time=truth.time,
        fields=fields,
        spectra=spectra,
    )


def _rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(e))))


def station_values(prior: DiffusionPrior, truth: Truth, obs: xr.Dataset,
                   observed: Sequence[str], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Values at the station points for scatter plots (physical units, noise-free truth):
    ``station_truth``, ``station_mean``, ``station_unconditional``, ``station_obs``
    ``(station, n_observed)`` (NaN where a station did not observe)."""
    network = network_from_dataset(obs)
    op = PointOperator.from_network(network, truth.grid, prior.variables, observed)
    shape = (len(network), len(observed))
    with torch.no_grad():
        out = {"station_truth": op(truth.state[None])[0].reshape(shape).numpy(),
               "station_mean": op(torch.as_tensor(fields["ensemble"]).mean(0, keepdim=True))[0]
               .reshape(shape).numpy()}
        if "unconditional" in fields:
            out["station_unconditional"] = op(
                torch.as_tensor(fields["unconditional"]).mean(0, keepdim=True)
            )[0].reshape(shape).numpy()
    at = obs.sel(time=truth.time)
    out["station_obs"] = np.stack([np.asarray(at[v].values, dtype=float) if v in at
                                   else np.full(len(network), np.nan) for v in observed], -1)
    out["station_observed"] = list(observed)
    return out


@dataclasses.dataclass
class AblationResult:
    """Rows of the ``(Sigma_y, Gamma)`` ablation (one per pair) on the LR task."""

    time: str
    index: int
    members: int
    variables: tuple[str, ...]
    rows: list[dict[str, Any]]
    rmse_bicubic: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {"experiment": "ablation", "time": self.time, "index": self.index,
                "members": self.members, "variables": list(self.variables),
                "rmse_bicubic": self.rmse_bicubic, "rows": self.rows}


def run_ablation(
    prior: DiffusionPrior, ds: xr.Dataset, index: int,
    pairs: Sequence[tuple[float, float]] | None = None,
    config: ExperimentConfig | None = None, source: str = "dataset", progress: bool = False,
) -> AblationResult:
    """The LR experiment for each ``(Sigma_y, Gamma)`` in ``pairs`` (default
    :func:`default_ablation_grid`), the same seeds for every pair. A pair whose sampler
    diverges gets a row with ``diverged: true`` and no scores (Table 1 keeps such rows)."""
    config = config or ExperimentConfig()
    if config.lr_noise:
        raise ValueError("ablation: lr_noise would draw different observations for each "
                         "Sigma_y; run sample-lr with --lr-noise for each pair instead")
    pairs = tuple(pairs or default_ablation_grid())
    truth = truth_at(ds, prior.variables, index, prior.grid, source)
    lr = coarsen_to(truth.state, config.lr_grid)
    bicubic = bicubic_upsample(lr, truth.grid, prior.variables)
    b = score(bicubic[None], truth.state, prior.variables)
    rows = []
    for sigma_y, gamma in pairs:
        err = ErrorModel(sigma_y=sigma_y, gamma=gamma)
        row: dict[str, Any] = {"sigma_y": sigma_y, "gamma": gamma,
                               "sigma_y_paper": 2.0 * sigma_y, "gamma_paper": 2.0 * gamma}
        cfg = dataclasses.replace(config, low_resolution=err)
        try:
            r = run_experiment("sample-lr", prior, ds, index, cfg, source=source,
                               progress=progress)
        except SamplerDivergedError as e:
            row.update({"diverged": True, "message": str(e)})
            rows.append(row)
            continue
        row.update({"diverged": False, "seconds_per_analysis": round(r.seconds_per_analysis, 3),
                    "guidance_ratio_max": round(r.guidance_ratio_max, 4)})
        for v in prior.variables:
            s = r.scores[v]
            row[v] = {k: s[k] for k in ("rmse", "spread", "spread_skill", "crps",
                                        "rmse_member_mean", "rmse_member_std")}
            row[v]["rmse_ratio_bicubic"] = s["rmse"] / b[v]["rmse"]
        rows.append(row)
    return AblationResult(str(truth.time), truth.index, config.members, prior.variables, rows,
                          {v: b[v]["rmse"] for v in prior.variables})


# --------------------------------------------------------------------------- outputs


def _finite(x: Any) -> Any:
    """JSON-safe: non-finite floats become ``None``; numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(summary: Mapping[str, Any], indent: int | None = 1) -> str:
    """Strict JSON (NaN/inf as ``null``)."""
    return json.dumps(_finite(dict(summary)), indent=indent, allow_nan=False)


def scores_csv(result: ExperimentResult) -> str:
    """One row per variable, one column per score."""
    columns = sorted({k for s in result.scores.values() for k in s})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["experiment", "time", "members", "variable", *columns])
    for v, s in result.scores.items():
        w.writerow([result.name, result.time, result.members, v,
                    *(f"{s[c]:.6g}" if c in s else "" for c in columns)])
    return buf.getvalue()


def ablation_csv(result: AblationResult) -> str:
    """One row per ``(Sigma_y, Gamma, variable)``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ("rmse", "rmse_member_mean", "rmse_member_std", "spread", "spread_skill", "crps",
            "rmse_ratio_bicubic")
    w.writerow(["sigma_y", "gamma", "sigma_y_paper", "gamma_paper", "variable", "diverged",
                *keys, "rmse_bicubic"])
    for row in result.rows:
        for v in result.variables:
            vals = row.get(v, {})
            w.writerow([f"{row['sigma_y']:.6g}", f"{row['gamma']:.6g}",
                        f"{row['sigma_y_paper']:.6g}", f"{row['gamma_paper']:.6g}", v,
                        row["diverged"], *(f"{vals[k]:.6g}" if k in vals else "" for k in keys),
                        f"{result.rmse_bicubic[v]:.6g}"])
    return buf.getvalue()


def write_tables(result: ExperimentResult | AblationResult, out: Path) -> list[Path]:
    """``out/<name>.json`` (summary, spectra) and ``out/<name>.csv`` (scores), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(result, AblationResult):
        stem = "ablation"
        summary = result.summary()
        table = ablation_csv(result)
    else:
        stem = result.name
        summary = result.summary()
        k = np.arange(result.grid.nlon // 2 + 1)
        summary["spectra"] = {"wavenumber": k.tolist(), **{
            name: {v: spec[i].tolist() for i, v in enumerate(result.variables)}
            for name, spec in result.spectra.items()}}
        table = scores_csv(result)
    paths = [atomic_write_text(out / f"{stem}.json", to_json(summary) + "\n"),
             atomic_write_text(out / f"{stem}.csv", table)]
    return paths


def write_ensemble_netcdf(result: ExperimentResult, out: Path) -> Path:
    """``out/<name>_ensemble.nc``: the analysis ensemble, the truth and the baseline field,
    CF attributes, dims ``(member, lat, lon)`` / ``(lat, lon)`` per variable."""
    from diffda.emulators.dataio import write_netcdf
    from diffda.observations.stations import VARIABLE_ATTRS

    g = result.grid
    data: dict[str, Any] = {}
    ens = result.fields["ensemble"]
    for k, v in enumerate(result.variables):
        attrs = dict(VARIABLE_ATTRS.get(v, {"long_name": v}))
        data[v] = (("member", "lat", "lon"), ens[:, k].astype(np.float32), attrs)
        data[f"{v}_truth"] = (("lat", "lon"), result.fields["truth"][k].astype(np.float32),
                              {**attrs, "long_name": f"{attrs.get('long_name', v)} (truth)"})
        if "bicubic" in result.fields:
            data[f"{v}_bicubic"] = (("lat", "lon"),
                                    result.fields["bicubic"][k].astype(np.float32),
                                    {**attrs, "long_name": f"{attrs.get('long_name', v)} "
                                     "(bicubic interpolation of the low-resolution field)"})
    for a in data.values():
        a[2].pop("coordinates", None)
    ds = xr.Dataset(data, coords={
        "member": ("member", np.arange(ens.shape[0]), {"long_name": "ensemble member"}),
        "lat": ("lat", g.lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", g.lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }, attrs={"Conventions": "CF-1.8", "title": f"diffda experiment {result.name}",
              "valid_time": result.time,
              "source": "zero-shot posterior sampling (Algorithm 1) from the EDM prior"})
    if result.valid_time is not None:
        ds = ds.assign_coords(time=((), result.valid_time, {"standard_name": "time"}))
        ds["time"].encoding.update({"units": "hours since 0001-01-01 00:00:00",
                                    "calendar": result.valid_time.calendar,
                                    "dtype": "float64"})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.name}_ensemble.nc"
    write_netcdf(ds, path)
    return path
