"""Figures of cycling runs (from ``metrics.jsonl`` and the analysis netCDF files).

- :func:`plot_rmse_by_lead`: RMSE of the ensemble mean vs lead time per mode (paper Fig. 18);
- :func:`plot_spread_skill`: spread-skill ratio ``sqrt((M+1)/M) spread / RMSE`` by lead
  (1 for a reliable ensemble; see :mod:`diffda.cycler.metrics`);
- :func:`plot_point_series`: time series at a point, truth and each mode's mean +- std
  (paper Fig. 19);
- :func:`plot_maps`: ensemble mean and std of the last analysis per mode;
- :func:`plot_compare`: RMSE by lead per (run, mode), for ``cycler compare`` and
  ``cycler sweep`` (the tables are in :mod:`.compare`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from diffda.core.io import atomic_write_bytes  # noqa: E402


def variables_of(records: Sequence[dict[str, Any]]) -> list[str]:
    """The variables of score records (the entries that hold an ``rmse``)."""
    return [k for k, v in records[0].items() if isinstance(v, dict) and "rmse" in v] \
        if records else []


def by_mode(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by mode (in first-seen order), each sorted by lead time."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[r["mode"]].append(r)
    return {m: sorted(rs, key=lambda r: r["lead_hours"]) for m, rs in out.items()}


def _save(fig: plt.Figure, path: Path) -> Path:
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def _axes(n: int) -> tuple[plt.Figure, np.ndarray]:
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def plot_rmse_by_lead(records: Sequence[dict[str, Any]], path: Path, units: dict[str, str]
                      | None = None, label_prefix: str = "") -> Path:
    """RMSE (latitude-weighted, ensemble mean) vs lead days per mode, one panel per variable."""
    variables = variables_of(records)
    fig, axes = _axes(len(variables))
    for ax, v in zip(axes, variables, strict=False):
        for mode, rs in by_mode(records).items():
            lead = [r["lead_hours"] / 24 for r in rs]
            ax.plot(lead, [r[v]["rmse"] for r in rs], marker="o", ms=3,
                    label=label_prefix + mode)
        ax.set_title(v)
        ax.set_xlabel("lead time (days)")
        ax.set_ylabel(f"RMSE ({(units or {}).get(v, 'physical units')})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("RMSE of the ensemble mean by lead time (cf. paper Fig. 18)")
    return _save(fig, path)


def plot_spread_skill(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Spread-skill ratio ``sqrt((M+1)/M) spread / rmse`` by lead, ensemble modes only."""
    variables = variables_of(records)
    fig, axes = _axes(len(variables))
    for ax, v in zip(axes, variables, strict=False):
        for mode, rs in by_mode(records).items():
            if rs[0]["members"] < 2:
                continue
            m = rs[0]["members"]
            ratio = [math.sqrt((m + 1) / m) * r[v]["spread"] / r[v]["rmse"]
                     if r[v]["rmse"] > 0 else float("nan") for r in rs]
            ax.plot([r["lead_hours"] / 24 for r in rs], ratio, marker="o", ms=3, label=mode)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(v)
        ax.set_xlabel("lead time (days)")
        ax.set_ylabel("spread-skill ratio")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("spread / skill (1 = reliable)")
    return _save(fig, path)


def plot_point_series(run_dir: Path, path: Path, lat: float, lon: float) -> Path:
    """Truth and each mode's analysis mean +- std at the grid cell nearest ``(lat, lon)``."""
    truth = xr.open_dataset(run_dir / "truth.nc", decode_times=False)
    files = sorted((run_dir / "analyses").glob("*.nc"))
    variables = list(truth.data_vars)
    i = int(np.abs(truth["lat"].values - lat).argmin())
    j = int(np.abs(((truth["lon"].values - lon + 180) % 360) - 180).argmin())
    fig, axes = _axes(len(variables))
    tv = truth["time"].values.astype(np.float64)  # hours since 0001-01-01
    step = float(tv[1] - tv[0]) if len(tv) > 1 else 12.0
    days = (tv - tv[0] + step) / 24.0  # lead time of each analysis
    for ax, v in zip(axes, variables, strict=False):
        ax.plot(days, truth[v].values[:, i, j], color="k", lw=2, label="truth")
        for f in files:
            with xr.open_dataset(f, decode_times=False) as a:
                mean = a[v].values[:, i, j]
                std = a[f"{v}_std"].values[:, i, j]
            line, = ax.plot(days, mean, lw=1, label=f.stem)
            ax.fill_between(days, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{v} at ({truth['lat'].values[i]:.1f}N, {truth['lon'].values[j]:.1f}E)")
        ax.set_xlabel("lead time (days)")
        ax.set_ylabel(truth[v].attrs.get("units", ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    truth.close()
    fig.suptitle("analysis mean +- std at a point (cf. paper Fig. 19)")
    return _save(fig, path)


def plot_maps(run_dir: Path, path: Path, variable: str | None = None) -> Path:
    """Truth, ensemble mean and std of the last analysis of each mode, for one variable."""
    files = sorted((run_dir / "analyses").glob("*.nc"))
    truth = xr.open_dataset(run_dir / "truth.nc", decode_times=False)
    v = variable or list(truth.data_vars)[0]
    t = truth[v].values[-1]
    fig, axes = plt.subplots(len(files) + 1, 2, figsize=(9, 2.2 * (len(files) + 1)),
                             squeeze=False)
    fig.subplots_adjust(hspace=0.45, wspace=0.15, left=0.05, right=0.97, top=0.96, bottom=0.03)
    extent = (0, 360, -90, 90)
    vmin, vmax = float(np.nanmin(t)), float(np.nanmax(t))
    im = axes[0, 0].imshow(t, origin="lower", extent=extent, vmin=vmin, vmax=vmax,
                           cmap="viridis")
    axes[0, 0].set_title(f"truth {v} ({truth[v].attrs.get('units', '')}), last cycle",
                         fontsize=8)
    fig.colorbar(im, ax=axes[0, 0], shrink=0.8)
    axes[0, 1].set_visible(False)
    for row, f in enumerate(files, start=1):
        with xr.open_dataset(f, decode_times=False) as a:
            mean, std = a[v].values[-1], a[f"{v}_std"].values[-1]
        axes[row, 0].imshow(mean, origin="lower", extent=extent, vmin=vmin, vmax=vmax,
                            cmap="viridis")
        axes[row, 0].set_title(f"{f.stem}: mean", fontsize=8)
        im = axes[row, 1].imshow(std, origin="lower", extent=extent, cmap="magma")
        axes[row, 1].set_title(f"{f.stem}: std", fontsize=8)
        fig.colorbar(im, ax=axes[row, 1], shrink=0.8)
    for ax in axes.ravel():
        ax.tick_params(labelsize=6)
    truth.close()
    return _save(fig, path)


def plot_run(run_dir: str | Path) -> list[Path]:
    """All figures of one run directory, into ``RUN_DIR/plots``; returns their paths."""
    from diffda.cycler.cycling.outputs import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    out = run_dir / "plots"
    truth = xr.open_dataset(run_dir / "truth.nc", decode_times=False)
    units = {v: truth[v].attrs.get("units", "") for v in truth.data_vars}
    truth.close()
    paths = [plot_rmse_by_lead(records, out / "rmse_by_lead.png", units),
             plot_spread_skill(records, out / "spread_skill.png")]
    obs = run_dir / "observations.nc"
    lat, lon = 45.0, 0.0
    if obs.is_file():
        with xr.open_dataset(obs, decode_times=False) as o:
            lat, lon = float(o["lat"].values[0]), float(o["lon"].values[0])
    paths.append(plot_point_series(run_dir, out / "point_series.png", lat, lon))
    paths.append(plot_maps(run_dir, out / "maps_last_cycle.png"))
    return paths


def plot_compare(runs: dict[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """RMSE by lead time per (run, mode), one panel per variable."""
    first = next(iter(runs.values()))
    variables = variables_of(first)
    fig, axes = _axes(len(variables))
    for ax, v in zip(axes, variables, strict=False):
        for label, records in runs.items():
            for mode, rs in by_mode(records).items():
                name = mode if len(runs) == 1 else f"{label}: {mode}"
                ax.plot([r["lead_hours"] / 24 for r in rs], [r[v]["rmse"] for r in rs],
                        marker="o", ms=3, label=name)
        ax.set_title(v)
        ax.set_xlabel("lead time (days)")
        ax.set_ylabel("RMSE")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)
