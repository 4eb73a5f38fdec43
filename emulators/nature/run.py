"""The nature run ("reanalysis") of the default world: run, coarsen, store, diagnose.

The forced shallow-water model (:mod:`diffda.emulators.nature.shallow_water`, 64x128 Legendre-Gauss
grid, T42) is spun up, then stored every 6 hours on the WeatherBench 5.625 deg grid
(:data:`OUTPUT_GRID`, 32x64 cell centres) in the canonical form of
:mod:`diffda.emulators.dataio`:

- state ``height`` (free-surface height, m), ``u``, ``v`` (m s-1), ``tracer`` (kg kg-1);
- forcing ``height_eq`` (m, the relaxation target of ``height``; :data:`FORCING_VARIABLES`);
- static ``orography`` (m) and ``land_sea_mask`` (1 = land);
- per-variable climatology (area-weighted mean and std) in each variable's attributes.

Coarsening ("spectral evaluation + area-weighted coarsening"): each model field is
evaluated spectrally (exactly, from its spherical-harmonic coefficients) at the cell
centres of the 64x128 WeatherBench grid and coarsened to 32x64 with
:func:`~diffda.core.grid.coarsen`, whose stencil is centred on the coarse labels, so
that each stored value is the area mean over the cell centred at the stored (lat, lon),
made by the same operator as every other coarse field of the system. Winds go through
``u cos(lat)``, ``v cos(lat)`` (smooth scalars on the sphere). The tracer is clipped at zero.

Forcing and static fields are pure functions of (time, point): :func:`forcing_fields` and
:func:`static_fields` give them on any grid at any cftime time, and reproduce the stored ones
exactly on :data:`OUTPUT_GRID` at the stored times.

Long runs are written in chunks appended to a zarr store next to the output
(``PATH.partial.zarr``) with a model checkpoint after each chunk, so a killed run resumes
where it stopped and gives the same numbers as one that never stopped (:func:`run_nature`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid, coarsen_to
from diffda.core.rng import torch_generator
from diffda.emulators import dataio
from diffda.emulators.nature.landmask import land_sea_mask, smooth_land
from diffda.emulators.nature.shallow_water import (
    DAY,
    ForcingConfig,
    ShallowWaterConfig,
    ShallowWaterModel,
    SWState,
    equilibrium_height,
    orography,
    synthesize,
)
from safetensors.torch import load_file, save_file
from torch import Tensor

OUTPUT_GRID = Grid(32, 64)
STATE_VARIABLES: tuple[str, ...] = ("height", "u", "v", "tracer")
#: Forcing channels of :func:`forcing_fields`, in order: ``height_eq`` (m), the equilibrium
#: free-surface height toward which ``height`` relaxes (season, time of day, land).
FORCING_VARIABLES: tuple[str, ...] = ("height_eq",)
STATIC_VARIABLES: tuple[str, ...] = ("orography", "land_sea_mask")
CALENDAR = "noleap"
EPOCH = cftime.DatetimeNoLeap(2000, 1, 1)
STORE_HOURS = 6.0
TIME_UNITS = "hours since 2000-01-01 00:00:00"
#: rms white-noise height perturbation of the twin experiment, m (0.16% of the height std)
TWIN_PERTURBATION_M = 1.0


@dataclass(frozen=True, kw_only=True)
class NatureConfig:
    """What :func:`run_nature` runs. ``days`` is the stored period (after ``spinup_days``).

    ``start_index``: the first stored time, in 6-hourly steps after :data:`EPOCH` (0: a run
    from spin-up; > 0: the continuation of an earlier run from its final state, see
    :func:`run_nature`'s ``initial``)."""

    days: float
    spinup_days: float = 180.0
    seed: int = 0
    chunk_days: float = 30.0
    model: ShallowWaterConfig = field(default_factory=ShallowWaterConfig)
    start_index: int = 0

    def __post_init__(self) -> None:
        if self.start_index < 0:
            raise ValueError(f"start_index = {self.start_index} must be >= 0")
        if self.days <= 0 or self.spinup_days < 0 or self.chunk_days <= 0:
            raise ValueError(f"days = {self.days}, spinup_days = {self.spinup_days} and "
                             f"chunk_days = {self.chunk_days} must be positive")
        steps = STORE_HOURS * 3600.0 / self.model.dt_seconds
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"dt_seconds = {self.model.dt_seconds} must divide {STORE_HOURS} h")

    @property
    def n_times(self) -> int:
        return int(round(self.days * 24 / STORE_HOURS))


# --------------------------------------------------------------------------- pure fields


def day_of_year(times: Sequence[cftime.datetime]) -> Tensor:
    """Fractional day of year (0 = Jan 1 00 UTC) of cftime ``times``, ``(time,)`` float64."""
    return torch.tensor([t.dayofyr - 1 + (t.hour * 3600 + t.minute * 60 + t.second) / DAY
                         for t in times], dtype=torch.float64)


def time_of(seconds: float) -> cftime.datetime:
    """The noleap cftime ``seconds`` (rounded to whole seconds) after :data:`EPOCH`."""
    return EPOCH + datetime.timedelta(seconds=round(seconds))


@lru_cache(maxsize=8)
def _grid_points(grid: Grid) -> tuple[Tensor, Tensor, Tensor]:
    lat2, lon2 = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    land = smooth_land(lat2, lon2)
    return torch.as_tensor(lat2), torch.as_tensor(lon2), torch.as_tensor(land)


def forcing_fields(times: Sequence[cftime.datetime], grid: Grid,
                   cfg: ForcingConfig | None = None) -> Tensor:
    """Forcing at cftime ``times`` on the cell centres of ``grid``.

    Returns ``(time, n_forcing, nlat, nlon)`` float32 in physical units, channels
    :data:`FORCING_VARIABLES` (``height_eq`` in m, :func:`shallow_water.equilibrium_height`).
    Exactly the stored ``height_eq`` for the stored times on :data:`OUTPUT_GRID`.
    """
    lat2, lon2, land = _grid_points(grid)
    h_eq = equilibrium_height(lat2, lon2, land, day_of_year(times), cfg or ForcingConfig())
    return h_eq[:, None].to(torch.float32)


def static_fields(grid: Grid, cfg: ForcingConfig | None = None) -> Tensor:
    """``(2, nlat, nlon)`` float32: orography (m, smooth, at the cell centres) and the
    land-sea mask (1 = land: land fraction >= 0.5), channels :data:`STATIC_VARIABLES`."""
    _, _, land = _grid_points(grid)
    oro = orography(land, cfg or ForcingConfig())
    lsm = torch.as_tensor(land_sea_mask(grid), dtype=torch.float64)
    return torch.stack([oro, lsm]).to(torch.float32)


# --------------------------------------------------------------------------- model -> output


class OutputMap:
    """Model spectral state -> stored fields on ``grid`` (cell centres, lat ascending).

    Evaluates ``height``, ``u cos``, ``v cos``, ``tracer`` spectrally at the cell centres of
    the grid twice as fine as ``grid`` and coarsens them with
    :func:`~diffda.core.grid.coarsen_to`, the area-weighted operator centred on the
    coarse labels that every other coarse field of the system uses.
    """

    def __init__(self, model: ShallowWaterModel, grid: Grid = OUTPUT_GRID) -> None:
        self.model = model
        self.grid = grid
        self.fine = Grid(grid.nlat * 2, grid.nlon * 2)
        cos_model = torch.cos(torch.deg2rad(model.lat_deg)).to(model.dtype)[:, None]
        self.cos_model = cos_model
        self.cos_fine = torch.cos(torch.deg2rad(torch.as_tensor(self.fine.lat)))[:, None]

    def __call__(self, spec: Tensor) -> Tensor:
        """``(B, 4, L, M)`` -> ``(B, 4, nlat, nlon)`` float32 (height, u, v, tracer)."""
        m = self.model
        g = m.grid_fields(spec)  # (B, 4, nlat_m, nlon_m) north->south, tracer clipped
        g = torch.stack([g[:, 0], g[:, 1] * self.cos_model, g[:, 2] * self.cos_model, g[:, 3]], 1)
        coeffs = m.to_spec(g).to(torch.complex128)
        fine = synthesize(coeffs, self.fine.lat, self.fine.nlon, 0.0)
        fine = torch.stack([fine[:, 0], fine[:, 1] / self.cos_fine, fine[:, 2] / self.cos_fine,
                            fine[:, 3].clamp_min(0.0)], 1)
        return coarsen_to(fine, self.grid).to(torch.float32)


# --------------------------------------------------------------------------- checkpoints


def _atomic_json(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: SWState, meta: dict, pending: Tensor | None) -> None:
    """Write the model state (+ the chunk of output not yet appended) atomically.

    Tensors go to ``path`` (safetensors, no pickled code), metadata to ``path.json``.
    """
    tensors = {"spec_real": state.spec.real.contiguous(), "spec_imag": state.spec.imag.contiguous()}
    for i, h in enumerate(state.history):
        tensors[f"hist{i}_real"] = h.real.contiguous()
        tensors[f"hist{i}_imag"] = h.imag.contiguous()
    if pending is not None:
        tensors["pending"] = pending.contiguous()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, path)
    _atomic_json(path.with_suffix(".json"), {**meta, "seconds": state.seconds,
                                             "n_history": len(state.history)})


def load_checkpoint(path: Path) -> tuple[SWState, dict, Tensor | None]:
    t = load_file(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    spec = torch.complex(t["spec_real"], t["spec_imag"])
    hist = [torch.complex(t[f"hist{i}_real"], t[f"hist{i}_imag"])
            for i in range(meta["n_history"])]
    return SWState(spec, float(meta["seconds"]), hist), meta, t.get("pending")


# --------------------------------------------------------------------------- dataset


def chunk_dataset(fields: Tensor, start_index: int, grid: Grid = OUTPUT_GRID) -> xr.Dataset:
    """Canonical dataset of stored fields ``(time, 4, nlat, nlon)`` whose first time is the
    ``start_index``-th 6-hourly time after :data:`EPOCH`, with the forcing at those times."""
    times = [time_of((start_index + i) * STORE_HOURS * 3600.0) for i in range(len(fields))]
    forcing = forcing_fields(times, grid)
    data = {name: fields[:, i].numpy() for i, name in enumerate(STATE_VARIABLES)}
    data.update({name: forcing[:, i].numpy() for i, name in enumerate(FORCING_VARIABLES)})
    return dataio.make_dataset(data, times, grid)


def static_dataset(grid: Grid = OUTPUT_GRID) -> xr.Dataset:
    st = static_fields(grid)
    return dataio.make_dataset({n: st[i].numpy() for i, n in enumerate(STATIC_VARIABLES)},
                               None, grid)


def _append(store: Path, ds: xr.Dataset, first: bool) -> None:
    if first:
        enc = {v: {"chunks": (16, *ds[v].shape[1:])} for v in ds.data_vars if "time" in ds[v].dims}
        ds.to_zarr(store, mode="w", zarr_format=3, encoding=enc, consolidated=False)
    else:
        ds.to_zarr(store, mode="a", append_dim="time", consolidated=False)


def _store_length(store: Path) -> int:
    if not store.exists():
        return 0
    return int(xr.open_zarr(store, consolidated=False).sizes["time"])


# --------------------------------------------------------------------------- the run


def run_nature(cfg: NatureConfig, out: Path, *, progress: bool = True,
               callback: Callable[[int, int], None] | None = None,
               initial: SWState | None = None) -> Path:
    """Run the nature run and write it to ``out`` (``.zarr`` or ``.nc``), resumably.

    ``initial``: a model state at time ``cfg.start_index`` x 6 h (the final state of an
    earlier run, :func:`restart_path`) to continue from instead of spinning up; the stirring
    is a function of time, so the continuation is what one longer run would have stored.

    Work goes to ``out.partial.zarr`` with a checkpoint ``out.checkpoint.safetensors`` after
    spin-up and after each ``chunk_days``; calling again with the same config continues from
    the last checkpoint. At the end the climatology is computed and stored, the store is
    moved (or converted, for netCDF) to ``out`` atomically and the partial files removed.
    Returns ``out``.
    """
    from tqdm import tqdm

    out = Path(out)
    if out.suffix not in (".zarr", ".nc"):
        raise ValueError(f"output path {out} must end in .zarr or .nc")
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.zarr")
    ckpt = out.with_name(out.name + ".checkpoint.safetensors")
    config_record = json.dumps(asdict(cfg), sort_keys=True)

    model = ShallowWaterModel(cfg.model)
    output = OutputMap(model)
    steps_per_store = int(round(STORE_HOURS * 3600.0 / cfg.model.dt_seconds))
    chunk_times = max(1, int(round(cfg.chunk_days * 24 / STORE_HOURS)))
    n_total = cfg.n_times

    if ckpt.exists():
        state, meta, pending = load_checkpoint(ckpt)
        if meta["config"] != config_record:
            raise ValueError(f"{ckpt} was written by a different configuration; remove it "
                             f"and {partial} to start again")
        n_done = int(meta["n_done"])
        if pending is not None:  # finish the append that the checkpoint announced
            have = _store_length(partial)
            if have == n_done - len(pending):
                _append(partial, chunk_dataset(pending, have), first=have == 0)
            elif have != n_done:
                raise ValueError(f"{partial} has {have} times, checkpoint expects {n_done}")
            save_checkpoint(ckpt, state, {**meta}, None)
    elif initial is not None:
        if abs(initial.seconds - cfg.start_index * STORE_HOURS * 3600.0) > 1e-3:
            raise ValueError(f"the initial state is at {time_of(initial.seconds)}, the run "
                             f"starts at {time_of(cfg.start_index * STORE_HOURS * 3600.0)}")
        if partial.exists():
            shutil.rmtree(partial)
        state, n_done = initial, 0
        save_checkpoint(ckpt, state, {"config": config_record, "n_done": 0}, None)
    else:
        if cfg.start_index != 0:
            raise ValueError(f"start_index = {cfg.start_index} needs an initial state")
        if partial.exists():
            shutil.rmtree(partial)
        gen = torch_generator(cfg.seed, "nature-initial")
        state = model.initial_state(-cfg.spinup_days * DAY, gen)
        n_spin = int(round(cfg.spinup_days * DAY / cfg.model.dt_seconds))
        with torch.no_grad():
            for _ in tqdm(range(n_spin), desc="spin-up", unit="step", disable=not progress,
                          mininterval=2.0):
                state = model.step(state)
        n_done = 0
        save_checkpoint(ckpt, state, {"config": config_record, "n_done": 0}, None)

    bar = tqdm(total=n_total, initial=n_done, desc="nature run", unit="x6h",
               disable=not progress, mininterval=2.0)
    buffer: list[Tensor] = []
    with torch.no_grad():
        while n_done + len(buffer) < n_total:
            index = cfg.start_index + n_done + len(buffer)
            if abs(state.seconds - index * STORE_HOURS * 3600.0) > 1e-3:
                raise RuntimeError(f"model time {state.seconds} s is not that of output {index}")
            if not torch.isfinite(state.spec).all():
                raise FloatingPointError(
                    f"nature run became non-finite at {time_of(state.seconds)}")
            buffer.append(output(state.spec)[0])
            bar.update(1)
            for _ in range(steps_per_store):
                state = model.step(state)
            if len(buffer) == chunk_times or n_done + len(buffer) == n_total:
                pending = torch.stack(buffer)
                meta = {"config": config_record, "n_done": n_done + len(buffer)}
                save_checkpoint(ckpt, state, meta, pending)
                _append(partial, chunk_dataset(pending, cfg.start_index + n_done),
                        first=n_done == 0)
                n_done += len(buffer)
                buffer = []
                save_checkpoint(ckpt, state, meta, None)
                if callback is not None:
                    callback(n_done, n_total)
    bar.close()
    finalize(partial, out)
    restart = restart_path(out)
    os.replace(ckpt, restart)
    os.replace(ckpt.with_suffix(".json"), restart.with_suffix(".json"))
    return out


def restart_path(out: Path) -> Path:
    """Where a finished run keeps its final model state (safetensors + .json): the state
    after the last stored time, to extend the run or start twin experiments from."""
    return Path(out).with_name(Path(out).name + ".restart.safetensors")


def finalize(partial: Path, out: Path) -> None:
    """Add statics and climatology to ``partial`` and move/convert it to ``out``."""
    ds = xr.open_zarr(partial, consolidated=False, decode_times=dataio.TIME_CODER)
    static_dataset().to_zarr(partial, mode="a", consolidated=False)
    clim = dataio.climatology(ds, [*STATE_VARIABLES, *FORCING_VARIABLES])
    dataio.write_climatology_attrs(partial, clim)
    import warnings

    import zarr

    with warnings.catch_warnings():  # "consolidated metadata is not part of zarr v3 spec"
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(partial), zarr_format=3)
    if out.suffix == ".zarr":
        os.replace(partial, out)
    else:
        full = xr.open_zarr(partial, consolidated=False, decode_times=dataio.TIME_CODER).load()
        dataio.write_netcdf(full, out)
        shutil.rmtree(partial)


# --------------------------------------------------------------------------- diagnostics


def global_mean(x: np.ndarray, grid: Grid) -> np.ndarray:
    """Area-weighted mean over the last two dims ``(..., lat, lon)``."""
    w = grid.area_weights()[:, None]
    return (x * w).mean(axis=(-2, -1))


def yearly_steadiness(ds: xr.Dataset, grid: Grid = OUTPUT_GRID) -> dict:
    """Per year (365 days of stored data): global KE ``<(u^2+v^2)/2>`` and height variance
    (spatial, area-weighted, averaged over time); and each year's relative deviation from the
    mean of the *other* years: ``|X_y - mean_{k != y} X_k| / mean_{k != y} X_k``."""
    per_year = int(round(365 * 24 / STORE_HOURS))
    n_years = ds.sizes["time"] // per_year
    ke, hv = [], []
    for y in range(n_years):
        sl = slice(y * per_year, (y + 1) * per_year)
        u = ds["u"].isel(time=sl).values
        v = ds["v"].isel(time=sl).values
        h = ds["height"].isel(time=sl).values
        ke.append(float(global_mean(0.5 * (u**2 + v**2), grid).mean()))
        hm = global_mean(h, grid)[:, None, None]
        hv.append(float(global_mean((h - hm) ** 2, grid).mean()))

    def dev(x: list[float]) -> list[float]:
        if len(x) < 2:
            return []
        return [abs(x[i] - np.mean(x[:i] + x[i + 1:])) / np.mean(x[:i] + x[i + 1:])
                for i in range(len(x))]

    return {"years": n_years, "kinetic_energy": ke, "height_variance": hv,
            "kinetic_energy_rel_dev": dev(ke), "height_variance_rel_dev": dev(hv)}


@dataclass(frozen=True)
class TwinResult:
    days: np.ndarray  # (n,) lead time in days
    error: np.ndarray  # (member, n) global rms height difference, m
    efold_days: float
    saturation_days: float
    saturation_m: float


def error_growth(days: np.ndarray, err: np.ndarray) -> tuple[float, float, float]:
    """e-folding time, saturation time and level of an error curve ``err(days)``.

    Saturation level ``E_s``: mean of the last quarter. e-folding time: ``1 / slope`` of a
    least-squares fit of ``log err`` over the exponential phase: from the smallest error
    after day 0.5 (a white-noise perturbation first loses its damped small scales) to the
    first time ``err > E_s / 4``. Saturation time: first day with ``err >= 0.8 E_s``.
    """
    sat = float(err[int(len(err) * 0.75):].mean())
    reach = np.nonzero(err > sat / 4)[0]
    end = int(reach[0]) if len(reach) else len(err)
    first = int(np.nonzero(days >= 0.5)[0][0]) if np.any(days >= 0.5) else 0
    start = first + int(np.argmin(err[first:max(end, first + 1)]))
    idx = np.arange(len(days))
    sel = (idx >= start) & (idx <= end)
    if sel.sum() >= 3:
        slope = np.polyfit(days[sel], np.log(err[sel]), 1)[0]
        efold = float(1.0 / slope) if slope > 0 else math.inf
    else:
        efold = math.nan
    hit = np.nonzero(err >= 0.8 * sat)[0]
    sat_day = float(days[hit[0]]) if len(hit) else math.inf
    return efold, sat_day, sat


def twin_experiment(model: ShallowWaterModel, state: SWState, *, days: float = 30.0,
                    members: int = 3, perturbation_m: float = 0.01, seed: int = 0,
                    progress: bool = False) -> TwinResult:
    """Identical twins: ``state`` (one member) and ``members`` copies with white height noise
    of rms ``perturbation_m`` (seeded), run ``days``; error = area-weighted rms height
    difference on the model grid every 6 h."""
    from tqdm import tqdm

    base = SWState(state.spec[:1].repeat(members + 1, 1, 1, 1), state.seconds,
                   [h[:1].repeat(members + 1, 1, 1, 1) for h in state.history])
    pert = model.perturb(base, torch_generator(seed, "nature-twin"), perturbation_m)
    pert.spec[0] = base.spec[0]  # member 0 is the control
    steps = int(round(STORE_HOURS * 3600.0 / model.cfg.dt_seconds))
    n = int(round(days * 24 / STORE_HOURS))
    w = torch.cos(torch.deg2rad(model.lat_deg)).to(model.dtype)[:, None]
    errs, leads = [], []
    s = pert
    with torch.no_grad():
        for i in tqdm(range(n), desc="twin", disable=not progress, mininterval=2.0):
            for _ in range(steps):
                s = model.step(s)
            h = model.grid_fields(s.spec)[:, 0]
            e = (((h[1:] - h[:1]) ** 2 * w).mean((-2, -1)) / w.mean()).sqrt()
            errs.append(e.double().numpy())
            leads.append((i + 1) * STORE_HOURS / 24)
    err = np.stack(errs, 1)
    d = np.asarray(leads)
    efold, sat_day, sat = error_growth(d, np.exp(np.log(err).mean(0)))
    return TwinResult(d, err, efold, sat_day, sat)


def zonal_spectra(ds: xr.Dataset, variables: Sequence[str], lat_band: tuple[float, float] =
                  (30.0, 60.0), n_samples: int = 200) -> dict[str, np.ndarray]:
    """Mean zonal power spectrum ``|FFT_lon|^2`` per variable over ``lat_band`` (both
    hemispheres) and ``n_samples`` evenly spaced times; returns ``{var: (nlon//2+1,)}``."""
    idx = np.linspace(0, ds.sizes["time"] - 1, min(n_samples, ds.sizes["time"])).astype(int)
    lat = np.abs(ds["lat"].values)
    band = (lat >= lat_band[0]) & (lat <= lat_band[1])
    out = {}
    for v in variables:
        x = ds[v].isel(time=idx).values[:, band]
        x = x - x.mean(-1, keepdims=True)
        out[v] = (np.abs(np.fft.rfft(x, axis=-1)) ** 2).mean((0, 1)) / x.shape[-1] ** 2
    return out


def diagnose(path: Path, cfg: NatureConfig, plots: Path | None, *, twin_days: float = 30.0,
             progress: bool = True, state: SWState | None = None,
             twin_perturbation_m: float = TWIN_PERTURBATION_M) -> dict:
    """Acceptance numbers (and plots into ``plots``) of a nature run stored at ``path``.

    The twin experiment starts from ``state``; by default from the run's final state
    (:func:`restart_path`), or, when that file is absent, from the end of spin-up,
    recomputed (deterministic).
    """
    ds = dataio.open_dataset(path)
    summary: dict = {"path": str(path), "times": int(ds.sizes["time"]),
                     "first_time": str(ds["time"].values[0]),
                     "last_time": str(ds["time"].values[-1])}
    summary["steadiness"] = yearly_steadiness(ds)
    model = ShallowWaterModel(cfg.model)
    if state is None and restart_path(path).exists():
        state = load_checkpoint(restart_path(path))[0]
    if state is None:
        from tqdm import tqdm

        state = model.initial_state(-cfg.spinup_days * DAY,
                                    torch_generator(cfg.seed, "nature-initial"))
        with torch.no_grad():
            for _ in tqdm(range(int(round(cfg.spinup_days * DAY / cfg.model.dt_seconds))),
                          desc="twin spin-up", disable=not progress, mininterval=2.0):
                state = model.step(state)
    summary["twin_start"] = str(time_of(state.seconds))
    twin = twin_experiment(model, state, days=twin_days, seed=cfg.seed, progress=progress,
                           perturbation_m=twin_perturbation_m)
    summary["twin"] = {"efold_days": twin.efold_days, "saturation_days": twin.saturation_days,
                       "saturation_height_rms_m": twin.saturation_m,
                       "perturbation_height_rms_m": twin_perturbation_m,
                       "members": int(twin.error.shape[0])}
    spectra = zonal_spectra(ds, STATE_VARIABLES)
    summary["stats"] = {v: {"mean": float(ds[v].mean()), "std": float(ds[v].std()),
                            "min": float(ds[v].min()), "max": float(ds[v].max())}
                        for v in STATE_VARIABLES}
    if plots is not None:
        write_plots(Path(plots), ds, summary, twin, spectra)
    return summary


# --------------------------------------------------------------------------- plots


def write_plots(folder: Path, ds: xr.Dataset, summary: dict, twin: TwinResult,
                spectra: dict[str, np.ndarray]) -> list[Path]:
    """Acceptance plots: global KE and height variance time series with yearly means, twin
    error growth, zonal spectra, snapshot maps. Returns the written PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    grid = Grid(ds.sizes["lat"], ds.sizes["lon"])
    written = []

    def save(fig, name: str) -> None:
        path = folder / name
        fig.savefig(path.with_suffix(".tmp.png"), dpi=110, bbox_inches="tight")
        os.replace(path.with_suffix(".tmp.png"), path)
        plt.close(fig)
        written.append(path)

    # time series (daily means)
    u, v, h = (ds[k].values for k in ("u", "v", "height"))
    ke = global_mean(0.5 * (u**2 + v**2), grid)
    hv = global_mean((h - global_mean(h, grid)[:, None, None]) ** 2, grid)
    days = np.arange(len(ke)) * STORE_HOURS / 24
    fig, ax = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    ax[0].plot(days, ke, lw=0.6)
    ax[0].set_ylabel("global KE (m2 s-2)")
    ax[1].plot(days, hv, lw=0.6)
    ax[1].set_ylabel("height variance (m2)")
    ax[1].set_xlabel("days after spin-up")
    st = summary["steadiness"]
    for y in range(st["years"]):
        for a, vals in ((ax[0], st["kinetic_energy"]), (ax[1], st["height_variance"])):
            a.hlines(vals[y], 365 * y, 365 * (y + 1), color="k")
    fig.suptitle("climate steadiness (black: yearly means)")
    save(fig, "steadiness.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in range(twin.error.shape[0]):
        ax.semilogy(twin.days, twin.error[m], lw=0.8)
    ax.axhline(twin.saturation_m, color="k", ls="--", lw=0.8)
    ax.set_xlabel("lead (days)")
    ax.set_ylabel("rms height difference (m)")
    ax.set_title(f"twin experiment: e-folding {twin.efold_days:.2f} d, "
                 f"saturation {twin.saturation_days:.1f} d")
    save(fig, "twin_error.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, p in spectra.items():
        ax.loglog(np.arange(1, len(p)), p[1:] / p[1:].max(), label=k)
    ax.set_xlabel("zonal wavenumber")
    ax.set_ylabel("power (normalised)")
    ax.set_title("zonal spectra, 30-60 deg (both hemispheres)")
    ax.legend()
    save(fig, "spectra.png")

    t = -1
    names = [*STATE_VARIABLES, *FORCING_VARIABLES, "orography"]
    names = [n for n in names if n in ds]
    fig, axs = plt.subplots(3, 2, figsize=(11, 9))
    for a, k in zip(axs.ravel(), names, strict=False):
        x = ds[k].isel(time=t) if "time" in ds[k].dims else ds[k]
        im = a.pcolormesh(ds["lon"], ds["lat"], x, shading="nearest",
                          cmap="RdBu_r" if k in ("u", "v") else "viridis")
        if "land_sea_mask" in ds:
            a.contour(ds["lon"], ds["lat"], ds["land_sea_mask"], [0.5], colors="k",
                      linewidths=0.5)
        a.set_title(f"{k} ({ds[k].attrs.get('units', '')})")
        fig.colorbar(im, ax=a)
    fig.suptitle(f"snapshot {ds['time'].values[t]}")
    save(fig, "snapshot.png")
    return written
