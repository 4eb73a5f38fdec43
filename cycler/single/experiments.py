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

import dataclasses
import math
import time as timer
from collections.abc import Mapping, Sequence
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.config import require
from diffda.core.grid import Grid
from diffda.core.rng import member_generators, torch_generator
from diffda.cycler.analysis.sampler import DiffusionAnalysis, SamplerConfig, StepDiagnostics
from diffda.cycler.metrics import (
    lr_misfit_rmse,
    score,
    spread_skill_ratio,
    station_cell_mask,
    unresolved_rmse,
    zonal_spectra,
)
from diffda.cycler.single.truth import (
    Truth,
    bicubic_upsample,
    check_observed,
    station_network_for,
    station_values,
    synthetic_stations_at,
    truth_at,
)
from diffda.cycler.terms import low_resolution_term, station_term
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations.likelihood import DEFAULT_ERROR_MODELS, ErrorModel, ObservationTerm
from diffda.observations.operators import LOW_RESOLUTION_GRID
from diffda.observations.station_arrays import station_observations
from diffda.observations.stations import StationNetwork, network_from_dataset
from diffda.observations.synthetic import hours_key
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


# --------------------------------------------------------------------------- observations


# --------------------------------------------------------------------------- baselines


# --------------------------------------------------------------------------- scores


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
    method = DiffusionAnalysis(shape=prior.state_shape, config=config.sampler)
    z = method.analyse(prior, list(terms), gens, diagnostics=diagnostics, progress=progress)
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
    """Run ``sample-lr``, ``sample-igra`` or ``sample-igra-lr`` at time ``index`` of ``ds``:
    one analysis, built from the same term builders (:mod:`diffda.cycler.terms`), sampler
    and scores (:mod:`diffda.cycler.metrics`) as a cycle of the cycle driver.

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
    terms: list[ObservationTerm] = []
    fields: dict[str, Any] = {"truth": truth.state.numpy()}
    stations_part = lr = None
    if "stations" in TERMS_OF[name]:
        stations_part = _stations_part(prior, ds, truth, config, observed, stations)
        terms.append(stations_part.term)
        fields["station_lat"] = stations_part.network.lat
        fields["station_lon"] = stations_part.network.lon
    station_mask = None if stations_part is None else stations_part.mask
    if "low_resolution" in TERMS_OF[name]:
        term, lr = low_resolution_term(
            prior, truth.state, config.lr_grid, config.low_resolution, observed,
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
    if lr is not None:
        _bicubic_baseline(prior, truth, lr, config, observed, post.ensemble, station_mask,
                          scores, fields, spectra)
    if BASELINE_OF[name] == "unconditional":
        fields["unconditional"] = _unconditional_baseline(prior, truth, config, key,
                                                          station_mask, scores, progress)
    if stations_part is not None:
        _station_scores(prior, truth, stations_part, scores, fields)
    return ExperimentResult(
        name=name, time=str(truth.time), index=truth.index, variables=prior.variables,
        observed=observed, members=config.members, baseline=BASELINE_OF[name],
        scores=scores, seconds_per_analysis=post.seconds, nfe=config.sampler.nfe,
        guidance_ratio_max=max((d.guidance_ratio_max for d in post.diagnostics), default=0.0),
        terms=[_term_record(t) for t in terms], grid=truth.grid, valid_time=truth.time,
        fields=fields, spectra=spectra,
    )


@dataclasses.dataclass(frozen=True)
class _StationsPart:
    """The station observations of one experiment: the file (CF station Dataset), the
    variables it observes, its network, the term and the mask of station cells."""

    dataset: xr.Dataset
    observed: tuple[str, ...]
    network: StationNetwork
    term: ObservationTerm
    mask: np.ndarray


def _stations_part(prior: DiffusionPrior, ds: xr.Dataset, truth: Truth,
                   config: ExperimentConfig, observed: Sequence[str],
                   stations: xr.Dataset | None) -> _StationsPart:
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
    arrays = station_observations(stations, [truth.time], prior.variables, at_stations)[0]
    fallback = ErrorModel(sigma_y=config.station_sigma_y or DEFAULT_ERROR_MODELS["point"].sigma_y,
                          gamma=config.station_gamma)
    term = station_term(prior, arrays, fallback, sigma_y=config.station_sigma_y)
    return _StationsPart(stations, at_stations, network, term,
                         station_cell_mask(truth.grid, network.lat, network.lon))


def _bicubic_baseline(
    prior: DiffusionPrior, truth: Truth, lr: Tensor, config: ExperimentConfig,
    observed: Sequence[str], ensemble: Tensor, station_mask: np.ndarray | None,
    scores: dict[str, dict[str, float]], fields: dict[str, Any], spectra: dict[str, Any],
) -> None:
    """Bicubic interpolation of the low-resolution field (observed variables only; NaN for
    the others), scored; the unresolved RMSE, the misfit to the LR field and its
    ``sqrt(Sigma_y)`` beside the scores."""
    idx = [prior.variables.index(v) for v in observed]
    bicubic = torch.full_like(truth.state, math.nan)
    bicubic[idx] = bicubic_upsample(lr, truth.grid, observed)
    b = score(bicubic[idx][None], truth.state[idx], observed, station_mask)
    unresolved = unresolved_rmse(truth.state, config.lr_grid)
    misfit = lr_misfit_rmse(ensemble[:, idx], lr, config.lr_grid)
    sigma = math.sqrt(config.low_resolution.sigma_y) * prior.std.double()
    for j, v in enumerate(observed):
        scores[v]["rmse_bicubic"] = b[v]["rmse"]
        scores[v]["rmse_unresolved"] = float(unresolved[prior.variables.index(v)])
        scores[v]["rmse_lr_misfit"] = float(misfit[j])
        scores[v]["sigma_y_lr"] = float(sigma[prior.variables.index(v)])
        scores[v]["crps_bicubic"] = b[v]["crps"]
    fields["bicubic"] = bicubic.numpy()
    spectra["bicubic"] = zonal_spectra(bicubic[None], truth.grid)


def _unconditional_baseline(
    prior: DiffusionPrior, truth: Truth, config: ExperimentConfig, key: int,
    station_mask: np.ndarray | None, scores: dict[str, dict[str, float]], progress: bool,
) -> np.ndarray:
    """Unconditional prior samples, scored beside the analysis (``<score>_unconditional``);
    returns them ``(member, var, lat, lon)``."""
    unc = sample(prior, [], config, UNCONDITIONAL_STREAM, key, progress)
    u = score(unc.ensemble, truth.state, prior.variables, station_mask)
    for v in prior.variables:
        for s in ("rmse", "spread", "crps", "spread_skill", "rmse_station", "rmse_nonstation"):
            scores[v][f"{s}_unconditional"] = u[v][s]
    return unc.ensemble.numpy()


def _station_scores(prior: DiffusionPrior, truth: Truth, part: _StationsPart,
                    scores: dict[str, dict[str, float]], fields: dict[str, Any]) -> None:
    """RMSE at the station points of the ensemble mean (and of the unconditional mean)."""
    fields.update(station_values(prior, truth, part.dataset, part.observed, fields))
    for j, v in enumerate(part.observed):
        t = fields["station_truth"][:, j]
        scores[v]["rmse_at_stations"] = _rms(fields["station_mean"][:, j] - t)
        if "station_unconditional" in fields:
            scores[v]["rmse_at_stations_unconditional"] = _rms(
                fields["station_unconditional"][:, j] - t)


def _rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(e))))


# --------------------------------------------------------------------------- outputs


