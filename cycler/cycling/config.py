"""The configuration of a cycling experiment (``cycler run CONFIG.toml``).

A run is fully described by one TOML file, read into the frozen dataclass :class:`RunConfig`
(:func:`load_run_config`); see ``runs/sevenday.toml`` for every key with its meaning.
Relative paths are resolved against the current directory when the file is loaded, so the
resolved config written into the run directory (``config.json``) is complete on its own.

:func:`config_hash` is a stable SHA-256 of the resolved config without its ``[runtime]``
table (threads, progress bars: how the run is executed, not what it computes). Checkpoints
carry it, so a run directory refuses to be resumed with another config.

The TOML key ``analysis.lambda`` (the station weight of paper Eq. 14) is a Python keyword;
it is the field ``AnalysisConfig.lambda_`` and is spelt ``lambda`` in files and messages.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cftime
from diffda.core.config import (
    ConfigError,
    deep_merge,
    from_mapping,
    read_toml,
    require,
    set_dotted,
    to_mapping,
)
from diffda.core.execution import PRECISIONS, check_device_spec
from diffda.core.times import parse_time
from diffda.cycler.analysis.sampler import SamplerConfig

#: The analysis methods and reference lines a run can contain, in their plotting order.
MODES: tuple[str, ...] = (
    "climatological", "precomputed", "reinitialized", "ensemble", "enkf", "oracle_enkf",
    "free", "unconditional",
)
#: The modes a run has when ``analysis.modes`` is not given: all but the oracle (which
#: needs data from a nature run of this system and costs a nature-model ensemble) and the
#: ensemble-forecast mode (an experiment names it).
DEFAULT_MODES: tuple[str, ...] = tuple(m for m in MODES if m not in ("oracle_enkf",
                                                                     "ensemble"))
#: Modes that run the posterior sampler (their cost dominates a run).
SAMPLER_MODES: frozenset[str] = frozenset({"climatological", "precomputed", "reinitialized",
                                           "ensemble"})
#: What a run starts from at t_0 (``data.init``).
INITS: tuple[str, ...] = ("truth", "background", "climatology")
CALENDARS = ("noleap", "365_day", "standard", "gregorian", "proleptic_gregorian", "360_day",
             "julian", "all_leap", "366_day")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The truth (nature run or reanalysis, canonical form) and the cycling window."""

    path: str = "outputs/data/nature.zarr"
    start: str = "0005-01-01T00:00"  # first analysis time is start + cadence
    days: float = 7.0
    cadence_hours: int = 12
    calendar: str = "noleap"
    # what the cycling starts from at t_0 (the free forecast, the precomputed and
    # reinitialized modes' first forecast, the EnKF's ensemble centre): "truth" (the truth
    # at t_0), "background" (the state of another date: one seeded draw among the data's
    # times outside the window) or "climatology" (the mean of those states)
    init: str = "truth"

    def __post_init__(self) -> None:
        require(self.init in INITS, "data.init", self.init, f"expected one of {list(INITS)}")
        require(self.calendar in CALENDARS, "data.calendar", self.calendar,
                f"expected one of {list(CALENDARS)}")
        require(self.cadence_hours > 0 and 24 % self.cadence_hours == 0, "data.cadence_hours",
                self.cadence_hours, "must divide 24 (12: radiosonde cadence, 00/12 UTC)")
        require(self.days > 0, "data.days", self.days, "must be positive")
        n = self.days * 24 / self.cadence_hours
        require(abs(n - round(n)) < 1e-9, "data.days", self.days,
                f"must be a whole number of {self.cadence_hours} h cycles")
        t0 = parse_time(self.start, self.calendar, key="data.start")
        require(t0.hour % self.cadence_hours == 0 and t0.minute == 0 and t0.second == 0,
                "data.start", self.start,
                f"must be on the {self.cadence_hours}-hourly schedule (00/12 UTC)")

    @property
    def n_cycles(self) -> int:
        return int(round(self.days * 24 / self.cadence_hours))

    def schedule(self) -> list[cftime.datetime]:
        """``[t_0, t_1, ..., t_N]``: the start and the ``N`` analysis times (cftime)."""
        t0 = parse_time(self.start, self.calendar, key="data.start")
        step = datetime.timedelta(hours=self.cadence_hours)
        return [t0 + k * step for k in range(self.n_cycles + 1)]


@dataclass(frozen=True, kw_only=True)
class ModelsConfig:
    """Weights of the forecast emulator and of the diffusion prior (safetensors + card)."""

    emulator: str = "emulators/weights/emulator.safetensors"
    prior: str = "emulators/weights/prior.safetensors"


@dataclass(frozen=True, kw_only=True)
class StationsConfig:
    """The station network and its synthetic observations (made from the truth)."""

    network: str = "default"  # "default" (drawn on the world's land) or an IGRA list path
    n: int = 150  # stations of the default network
    network_seed: int = 0
    min_separation_km: float = 300.0
    observed: tuple[str, ...] = ("height", "u", "v", "tracer")
    error_std: dict[str, float] = field(default_factory=dict)  # physical units; else 10 %
    noise_seed: int = 1

    def __post_init__(self) -> None:
        require(self.network == "default" or bool(self.network), "stations.network",
                self.network, "'default' or the path of an IGRA v2 station list")
        require(self.n >= 1, "stations.n", self.n, "must be >= 1")
        require(self.network_seed >= 0, "stations.network_seed", self.network_seed, "must be >= 0")
        require(self.noise_seed >= 0, "stations.noise_seed", self.noise_seed, "must be >= 0")
        require(self.min_separation_km >= 0, "stations.min_separation_km",
                self.min_separation_km, "must be >= 0")
        require(len(self.observed) >= 1, "stations.observed", self.observed,
                "must name at least one variable")
        for k, v in self.error_std.items():
            require(k in self.observed, f"stations.error_std.{k}", v,
                    f"is not an observed variable {list(self.observed)}")
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            require(ok and v >= 0, f"stations.error_std.{k}", v,
                    "must be a finite number >= 0")


@dataclass(frozen=True, kw_only=True)
class ErrorModelConfig:
    """``Sigma_y`` and ``Gamma`` of paper Eq. 13, normalised units (variances)."""

    sigma_y: float
    gamma: float

    def __post_init__(self) -> None:
        require(self.sigma_y >= 0, "sigma_y", self.sigma_y, "must be >= 0")
        require(self.gamma >= 0, "gamma", self.gamma, "must be >= 0")
        require(self.sigma_y > 0 or self.gamma > 0, "sigma_y", self.sigma_y,
                "sigma_y and gamma cannot both be 0")


@dataclass(frozen=True, kw_only=True)
class ForecastErrorConfig(ErrorModelConfig):
    """The forecast term's error model: ``error_model = "fixed"`` (``Sigma_y``, ``Gamma`` as
    given, the forecast taken at face value: ``alpha = 1``) or ``"fitted:PATH"``: the
    extended likelihood's ``(alpha, beta)`` per variable fitted from the cycling's own
    innovations, or of the direct form the forecast's error variance with ``alpha = 1``
    (``cycler calibrate [--form direct]``; the file says which; ``Gamma`` still applies)."""

    error_model: str = "fixed"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.error_model == "fixed" or (self.error_model.startswith("fitted:")
                                                and len(self.error_model) > 7),
                "analysis.forecast.error_model", self.error_model,
                "expected 'fixed' or 'fitted:PATH'")


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig:
    """Modes to run and the diffusion analysis (Algorithm 1, composite likelihood Eq. 14)."""

    modes: tuple[str, ...] = DEFAULT_MODES
    lambda_: float = 1.0  # TOML `lambda`: weight of the stations next to the forecast (1)
    reinitialize_from: str = "mean"  # "mean" (one forecast) or "members" (one per member)
    # the ensemble mode: its forecast ensemble's variance is multiplied by this
    ensemble_inflation: float = 1.0
    # the ensemble mode: the term's variance grown per latitude row by the forecast error's
    # spatial correlation, its SOAR length measured on the forecast ensemble itself
    ensemble_correlation: bool = False
    # the ensemble mode: > 0, the forecast ensemble's covariance between all cells and
    # variables, localized with this Gaspari-Cohn half-width (km); 0, per-cell variances only
    ensemble_localization_km: float = 0.0
    # ... and the share of each cell's forecast variance kept uncorrelated (0 < w <= 1)
    ensemble_uncorrelated_share: float = 0.5
    # the ensemble mode: relaxation of the analysis ensemble's spread toward the forecast
    # ensemble's (RTPS, Whitaker and Hamill 2012), per cell: 0 none, 1 the forecast's spread
    ensemble_rtps: float = 0.0
    # the ensemble mode's forecast term: "extended" (the extended likelihood whose product
    # with the climatological prior is the forecast distribution, alpha = 1 - P_f / c) or
    # "direct" (the forecast mean as a direct observation of x with the ensemble's variance,
    # N(f; x, P_f), as the fixed term of the other modes: the climatology counted twice in
    # the Gaussian theory)
    ensemble_term: str = "extended"
    # the ensemble mode: each cycle, per variable, the forecast ensemble's variance is first
    # inflated to what the stations' innovations show, (<d^2> - <R>) / <HBH> (at least 1;
    # innovation-based inflation after Wang and Bishop 2003, Li et al. 2009), then
    # multiplied by ensemble_inflation
    ensemble_adaptive_inflation: bool = False
    station: ErrorModelConfig = ErrorModelConfig(sigma_y=1e-2, gamma=0.3)
    # Gamma 0.1, not the 1e-2 of an 8x16 grid: the 2x2 coarsening to the emulator grid has
    # lambda_max(A A^T) = 1/4 (4x that of 4x4 averaging), so the guidance gain (NOTES.md) is
    # 4x larger; 1e-2 diverged with 3-6 sampler steps in the tests' tiny world.
    forecast: ForecastErrorConfig = ForecastErrorConfig(sigma_y=1e-2, gamma=0.1)
    # the driver's own default (churn 2, no cap), not the experiments' SamplerConfig()
    sampler: SamplerConfig = SamplerConfig(num_steps=12, s_churn=2.0, max_guidance_ratio=None)

    def __post_init__(self) -> None:
        require(len(self.modes) >= 1, "analysis.modes", self.modes, "must name a mode")
        for m in self.modes:
            require(m in MODES, "analysis.modes", m, f"expected modes from {list(MODES)}")
        require(len(set(self.modes)) == len(self.modes), "analysis.modes", self.modes,
                "names a mode twice")
        require(self.lambda_ >= 0 and math.isfinite(self.lambda_), "analysis.lambda",
                self.lambda_, "must be a finite number >= 0")
        require(self.reinitialize_from in ("mean", "members"), "analysis.reinitialize_from",
                self.reinitialize_from, "expected 'mean' or 'members'")
        require(self.ensemble_inflation >= 1.0, "analysis.ensemble_inflation",
                self.ensemble_inflation, "must be >= 1")
        require(self.ensemble_localization_km >= 0, "analysis.ensemble_localization_km",
                self.ensemble_localization_km, "must be >= 0 (0: per-cell variances)")
        require(0 < self.ensemble_uncorrelated_share <= 1, "analysis.ensemble_uncorrelated_share",
                self.ensemble_uncorrelated_share, "must be in (0, 1]")
        require(self.ensemble_term in ("extended", "direct"), "analysis.ensemble_term",
                self.ensemble_term, "expected 'extended' or 'direct'")
        require(not (self.ensemble_term == "direct" and self.ensemble_localization_km > 0),
                "analysis.ensemble_term", self.ensemble_term,
                "the localized covariance is built as the extended likelihood only")
        require(0 <= self.ensemble_rtps <= 1, "analysis.ensemble_rtps", self.ensemble_rtps,
                "must be in [0, 1] (0: no relaxation to the forecast spread)")
        require(not (self.ensemble_correlation and self.ensemble_localization_km > 0),
                "analysis.ensemble_correlation", self.ensemble_correlation,
                "cannot be combined with ensemble_localization_km > 0 (the localized "
                "covariance already holds the correlations)")


@dataclass(frozen=True, kw_only=True)
class EnKFConfig:
    """The localized, inflated stochastic EnKF on the emulator grid (:mod:`.letkf`)."""

    radius_km: float = 2000.0  # Gaspari-Cohn half-width; the taper vanishes at 2x
    inflation: float = 1.1  # multiplicative prior inflation
    initial_spread: float = 0.5  # scale of climatological anomalies around the truth at t0
    # forecast the members with the emulator's stochastic term (additive model error with
    # the covariance of its 6-h residuals; needs an emulator with noise modes)
    model_noise: bool = False

    def __post_init__(self) -> None:
        require(self.radius_km > 0, "enkf.radius_km", self.radius_km, "must be positive")
        require(self.inflation >= 1, "enkf.inflation", self.inflation, "must be >= 1")
        require(self.initial_spread > 0, "enkf.initial_spread", self.initial_spread,
                "must be positive")


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    members: bool = False  # also write every member to the analysis netCDF files
    plots: bool = True


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How the run executes (not hashed: it does not change what is computed, except that
    bit-identical resumes need the same thread count)."""

    #: torch threads per process, or "auto": the cores free when the run starts, shared
    #: among its worker processes (:func:`diffda.core.runtime.auto_threads`); a run records
    #: the number it resolved to
    threads: int | Literal["auto"] = "auto"
    workers: int = 1  # modes run in this many processes at once (1: one after the other)
    progress: bool = True
    #: where the networks run: "auto" (CUDA where there is one), "cpu", "cuda", "cuda:N"
    device: str = "auto"
    #: the networks' arithmetic: "auto" (bfloat16 where the hardware has it), "float32",
    #: "bfloat16" (:mod:`diffda.core.execution`); same law, not the same bits
    precision: str = "auto"

    def __post_init__(self) -> None:
        require(self.threads == "auto" or self.threads >= 1, "runtime.threads", self.threads,
                "must be >= 1 or 'auto'")
        require(self.workers >= 1, "runtime.workers", self.workers, "must be >= 1")
        check_device_spec(self.device)
        require(self.precision == "auto" or self.precision in PRECISIONS, "runtime.precision",
                self.precision, f"must be 'auto' or one of {sorted(PRECISIONS)}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A cycling experiment: truth and window, models, stations, analysis modes, EnKF."""

    name: str = "run"
    seed: int = 0
    members: int = 16
    data: DataConfig = DataConfig()
    models: ModelsConfig = ModelsConfig()
    stations: StationsConfig = StationsConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    enkf: EnKFConfig = EnKFConfig()
    output: OutputConfig = OutputConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self) -> None:
        require(re.fullmatch(r"[A-Za-z0-9_.=,+-]+", self.name) is not None, "name", self.name,
                "letters, digits and _.=,+- only (it names the run directory)")
        require(self.seed >= 0, "seed", self.seed, "must be >= 0")
        require(self.members >= 1, "members", self.members, "must be >= 1")
        for mode in ("enkf", "oracle_enkf", "ensemble"):
            require(self.members >= 2 or mode not in self.analysis.modes, "members",
                    self.members, f"the {mode} mode needs at least 2 members")


def _rename_lambda(data: dict[str, Any], to_field: bool) -> dict[str, Any]:
    a, b = ("lambda", "lambda_") if to_field else ("lambda_", "lambda")
    out = dict(data)
    if isinstance(out.get("analysis"), dict) and a in out["analysis"]:
        analysis = dict(out["analysis"])
        analysis[b] = analysis.pop(a)
        out["analysis"] = analysis
    return out


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    def absolute(p: str) -> str:
        return str((base / p).resolve()) if not Path(p).is_absolute() else p

    stations = cfg.stations
    if stations.network != "default":
        stations = dataclasses.replace(stations, network=absolute(stations.network))
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=absolute(cfg.data.path)),
        models=ModelsConfig(emulator=absolute(cfg.models.emulator),
                            prior=absolute(cfg.models.prior)),
        stations=stations,
    )


def run_config_from_mapping(data: dict[str, Any], base: Path | None = None) -> RunConfig:
    """A :class:`RunConfig` from a (TOML-shaped) mapping; relative paths resolved against
    ``base`` (default: the current directory)."""
    try:
        cfg = from_mapping(RunConfig, _rename_lambda(data, to_field=True))
    except ConfigError as err:
        raise ConfigError(str(err).replace("lambda_", "lambda")) from None
    return _resolve_paths(cfg, Path.cwd() if base is None else base)


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a run config; ``overrides`` maps dotted keys (``analysis.lambda``)
    to values that replace the file's. Errors name the file, the key and the value."""
    path = Path(path)
    data = read_toml(path)
    data = deep_merge(config_to_mapping(RunConfig()), data)  # a partial table keeps defaults
    for key, value in (overrides or {}).items():
        data = set_dotted(data, key, value)
    try:
        return run_config_from_mapping(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_to_mapping(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as a JSON-able mapping (TOML key names, ``lambda``)."""
    return _rename_lambda(to_mapping(cfg), to_field=False)


#: Keys added after run directories, tuning and fitted files were first written, with the
#: value that means the old behaviour: left out of identities while they hold it.
_LATER_KEYS: tuple[tuple[tuple[str, ...], object], ...] = (
    (("data", "init"), "truth"),
    (("analysis", "forecast", "error_model"), "fixed"),
    (("analysis", "ensemble_inflation"), 1.0),
    (("analysis", "ensemble_correlation"), False),
    (("analysis", "ensemble_localization_km"), 0.0),
    (("analysis", "ensemble_uncorrelated_share"), 0.5),
    (("analysis", "ensemble_rtps"), 0.0),
    (("analysis", "ensemble_term"), "extended"),
    (("analysis", "ensemble_adaptive_inflation"), False),
)


def identity_mapping(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as a mapping without ``runtime`` and without the later keys that
    hold their old-behaviour value (:data:`_LATER_KEYS`): what identifies a configuration,
    so that run directories and files of earlier versions are still recognised."""
    data = json.loads(json.dumps(config_to_mapping(cfg)))
    data.pop("runtime", None)
    for path, old in _LATER_KEYS:
        table = data
        for key in path[:-1]:
            table = table[key]
        if table.get(path[-1]) == old:
            del table[path[-1]]
    return data


def config_hash(cfg: RunConfig) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`identity_mapping`."""
    data = identity_mapping(cfg)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_resolved(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config (JSON, with its hash) atomically."""
    from diffda.core.io import atomic_write_text

    body = {"config_hash": config_hash(cfg), "config": config_to_mapping(cfg)}
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")


def read_resolved(path: Path) -> RunConfig:
    """Read a resolved config written by :func:`write_resolved` (checks its hash)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no resolved config (is this a run directory?)")
    try:
        body = json.loads(path.read_text())
        cfg = run_config_from_mapping(body["config"], base=path.parent)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a resolved run config ({err})") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if body.get("config_hash") != config_hash(cfg):
        raise ConfigError(f"{path}: its config_hash {body.get('config_hash')!r} does not match "
                          f"its contents ({config_hash(cfg)}): the file was edited")
    return cfg


def with_resolved_runtime(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the machine-dependent ``"auto"`` of ``runtime`` made concrete, as a run
    records it: ``threads`` the number each of its ``runtime.workers`` processes gets now
    (:func:`diffda.core.runtime.auto_threads`), ``device`` and ``precision`` what this
    machine has (:mod:`diffda.core.execution`)."""
    from diffda.core.execution import precision_name, resolve_device, resolve_precision
    from diffda.core.runtime import resolve_threads

    rt = cfg.runtime
    device = resolve_device(rt.device)
    resolved = dataclasses.replace(
        rt, threads=resolve_threads(rt.threads, rt.workers),
        device=str(device) if rt.device == "auto" else rt.device,
        precision=precision_name(resolve_precision(rt.precision, device)))
    return cfg if resolved == rt else dataclasses.replace(cfg, runtime=resolved)
