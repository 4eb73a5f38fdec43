"""Diagnostics of a nature run: is its climate steady, is its weather chaotic?

- :func:`yearly_steadiness`: global kinetic energy and height variance year by year;
- :func:`twin_experiment` / :func:`error_growth`: identical twins from the run's final
  state, their error's e-folding and saturation;
- :func:`zonal_spectra`: mean zonal power spectra in the mid-latitudes;
- :func:`diagnose`: all of them for a stored run (``cycler nature --plots/--json``), with
  :func:`write_plots`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from diffda.core.grid import Grid
from diffda.core.rng import torch_generator
from diffda.emulators import dataio
from diffda.emulators.nature.fields import FORCING_VARIABLES
from diffda.emulators.nature.run import (
    OUTPUT_GRID,
    STATE_VARIABLES,
    STORE_HOURS,
    NatureConfig,
    load_checkpoint,
    restart_path,
    spin_up,
    time_of,
)
from diffda.emulators.nature.shallow_water import ShallowWaterModel, SWState

#: rms white-noise height perturbation of the twin experiment, m (0.16% of the height std)
TWIN_PERTURBATION_M = 1.0


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
        state = spin_up(cfg, model, "twin spin-up", progress)
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
    figures = {
        "steadiness.png": lambda: _steadiness_figure(ds, grid, summary["steadiness"]),
        "twin_error.png": lambda: _twin_figure(twin),
        "spectra.png": lambda: _spectra_figure(spectra),
        "snapshot.png": lambda: _snapshot_figure(ds),
    }
    written = []
    for name, make in figures.items():
        fig = make()
        path = folder / name
        fig.savefig(path.with_suffix(".tmp.png"), dpi=110, bbox_inches="tight")
        os.replace(path.with_suffix(".tmp.png"), path)
        plt.close(fig)
        written.append(path)
    return written


def _steadiness_figure(ds: xr.Dataset, grid: Grid, st: dict):
    """Global KE and height variance at every stored time, with the yearly means ``st``."""
    import matplotlib.pyplot as plt

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
    for y in range(st["years"]):
        for a, vals in ((ax[0], st["kinetic_energy"]), (ax[1], st["height_variance"])):
            a.hlines(vals[y], 365 * y, 365 * (y + 1), color="k")
    fig.suptitle("climate steadiness: global means at every stored time (black: yearly means)")
    return fig


def _twin_figure(twin: TwinResult):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in range(twin.error.shape[0]):
        ax.semilogy(twin.days, twin.error[m], lw=0.8)
    ax.axhline(twin.saturation_m, color="k", ls="--", lw=0.8)
    ax.set_xlabel("time since the perturbation (days)")
    ax.set_ylabel("rms height difference of the twins (m)")
    ax.set_title(f"twin experiment: e-folding {twin.efold_days:.2f} d, "
                 f"saturation {twin.saturation_days:.1f} d")
    return fig


def _spectra_figure(spectra: dict[str, np.ndarray]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, p in spectra.items():
        ax.loglog(np.arange(1, len(p)), p[1:] / p[1:].max(), label=k)
    ax.set_xlabel("zonal wavenumber")
    ax.set_ylabel("power / its maximum (1)")
    ax.set_title("zonal spectra, 30-60° latitude (both hemispheres)")
    ax.legend()
    return fig


def _snapshot_figure(ds: xr.Dataset):
    """Maps of the last stored time (and the orography), land outlined."""
    import matplotlib.pyplot as plt

    t = -1
    names = [*STATE_VARIABLES, *FORCING_VARIABLES, "orography"]
    names = [n for n in names if n in ds]
    fig, axs = plt.subplots(3, 2, figsize=(11, 9), layout="constrained")
    for a, k in zip(axs.ravel(), names, strict=False):
        x = ds[k].isel(time=t) if "time" in ds[k].dims else ds[k]
        im = a.pcolormesh(ds["lon"], ds["lat"], x, shading="nearest",
                          cmap="RdBu_r" if k in ("u", "v") else "viridis")
        if "land_sea_mask" in ds:
            a.contour(ds["lon"], ds["lat"], ds["land_sea_mask"], [0.5], colors="k",
                      linewidths=0.5)
        a.set_title(k)
        a.set_xlabel("longitude (°E)")
        a.set_ylabel("latitude (°N)")
        fig.colorbar(im, ax=a, label=f"{k} ({ds[k].attrs.get('units', '')})")
    fig.suptitle(f"nature run at {ds['time'].values[t]} (black: coastlines, land-sea mask 0.5)")
    return fig
