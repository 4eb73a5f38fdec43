"""Figures of cycling runs (from ``metrics.jsonl`` and the netCDF files of the run).

- :func:`plot_rmse_by_lead`: RMSE of the ensemble mean at each analysis time per mode
  (paper Fig. 18);
- :func:`plot_spread_skill`: spread-skill ratio ``sqrt((M+1)/M) spread / RMSE`` at each
  analysis time (1 for a reliable ensemble; see :mod:`diffda.cycler.metrics`);
- :func:`plot_point_series`: time series at a station's grid cell, truth and each mode's
  mean ± std (paper Fig. 19);
- :func:`plot_maps`: truth, ensemble mean, std and error of the last analysis per mode,
  with coastlines (the world's ``land_sea_mask`` at 0.5) and the stations;
- :func:`plot_compare`: each (run, mode)'s RMSE relative to a reference mode (the free
  emulator forecast where the runs have it), for ``cycler compare`` and ``cycler sweep``
  (the tables are in :mod:`.compare`).

A mode has the same colour in every figure (:data:`MODE_COLOURS`). The time axis of a
run's figures is the analysis time (days since the cycling's start ``t0``, ticks at
00 UTC labelled with the date); :func:`plot_compare`, whose runs may start on different
dates, shows days since ``t0`` (the days of the comparison table).
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
from matplotlib.ticker import FuncFormatter  # noqa: E402

#: The colour of each mode, the same in every figure of a run, a comparison or a sweep.
MODE_COLOURS: dict[str, str] = {
    "climatological": "tab:blue",
    "precomputed": "tab:orange",
    "reinitialized": "tab:green",
    "enkf": "tab:red",
    "oracle_enkf": "tab:cyan",
    "free": "tab:purple",
    "unconditional": "tab:gray",
}
TRUTH_COLOUR = "black"
#: Colours of modes not in :data:`MODE_COLOURS` (picked by name, so stable across figures).
_SPARE_COLOURS = ("tab:brown", "tab:pink", "tab:olive")
#: Line styles that tell runs apart in :func:`plot_compare` (modes keep their colours).
RUN_STYLES = ("-", "--", ":", "-.")
#: Station markers on the maps.
STATION_STYLE = {"s": 14, "marker": "^", "facecolors": "white", "edgecolors": "black",
                 "linewidths": 0.5}
#: The mode RMSE is compared with in ``compare.png`` when every run has it.
REFERENCE_MODE = "free"


def mode_colour(mode: str) -> str:
    """The colour of ``mode`` in every figure (:data:`MODE_COLOURS`; a spare colour chosen
    by the name for any other mode)."""
    if mode in MODE_COLOURS:
        return MODE_COLOURS[mode]
    return _SPARE_COLOURS[sum(map(ord, mode)) % len(_SPARE_COLOURS)]


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


def _save(fig: plt.Figure, path: Path, dpi: int = 100) -> Path:
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    plt.close(fig)
    return path


def _axes(n: int, width: float = 4.6, height: float = 3.2) -> tuple[plt.Figure, np.ndarray]:
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 0.6, height * rows + 0.5),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _legend_outside(fig: plt.Figure, axes: Sequence[plt.Axes]) -> None:
    """One legend for the figure, below the panels (it hides no data)."""
    handles, labels = {}, {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles[lab], labels[lab] = h, lab
    if handles:
        fig.legend(list(handles.values()), list(labels), loc="outside lower center",
                   ncol=min(len(handles), 7), fontsize=8, frameon=False)


def _analysis_time_axis(ax: plt.Axes, records: Sequence[dict[str, Any]]) -> None:
    """x = days since the cycling's start ``t0``; ticks at the 00 UTC analyses, labelled
    with their date (``MM-DD``), the year in the axis label."""
    at = sorted({(r["lead_hours"] / 24, str(r["time"])) for r in records})
    midnight = [(d, t) for d, t in at if t[11:13] == "00"]
    if len(midnight) >= 3:
        ticks = midnight[::max(1, math.ceil(len(midnight) / 8))]
        ax.set_xticks([d for d, _ in ticks], [t[5:10] for _, t in ticks])
    else:  # a short run: every analysis, with its hour
        ax.set_xticks([d for d, _ in at], [f"{t[5:10]} {t[11:13]}h" for _, t in at])
    year = at[0][1][:4] if at else ""
    ax.set_xlabel(f"analysis time (UTC, month-day of {year})")


def _unit(units: dict[str, str] | None, v: str) -> str:
    return (units or {}).get(v, "") or "physical units"


def plot_rmse_by_lead(records: Sequence[dict[str, Any]], path: Path, units: dict[str, str]
                      | None = None, label_prefix: str = "") -> Path:
    """RMSE (latitude-weighted, ensemble mean) at each analysis time per mode, one panel
    per variable."""
    variables = variables_of(records)
    fig, axes = _axes(len(variables))
    for ax, v in zip(axes, variables, strict=False):
        for mode, rs in by_mode(records).items():
            ax.plot([r["lead_hours"] / 24 for r in rs], [r[v]["rmse"] for r in rs],
                    marker="o", ms=3, color=mode_colour(mode), label=label_prefix + mode)
        ax.set_title(v)
        _analysis_time_axis(ax, records)
        ax.set_ylabel(f"RMSE ({_unit(units, v)})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    fig.suptitle("RMSE of the ensemble mean against the truth at each analysis "
                 "(latitude-weighted; cf. paper Fig. 18)")
    return _save(fig, path)


def plot_spread_skill(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Spread-skill ratio ``sqrt((M+1)/M) spread / rmse`` at each analysis, ensemble modes
    only."""
    variables = variables_of(records)
    fig, axes = _axes(len(variables))
    for ax, v in zip(axes, variables, strict=False):
        for mode, rs in by_mode(records).items():
            if rs[0]["members"] < 2:
                continue
            m = rs[0]["members"]
            ratio = [math.sqrt((m + 1) / m) * r[v]["spread"] / r[v]["rmse"]
                     if r[v]["rmse"] > 0 else float("nan") for r in rs]
            ax.plot([r["lead_hours"] / 24 for r in rs], ratio, marker="o", ms=3,
                    color=mode_colour(mode), label=f"{mode} ({m} members)")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(v)
        _analysis_time_axis(ax, records)
        ax.set_ylabel("spread / RMSE (1)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    fig.suptitle("spread-skill ratio sqrt((M+1)/M) spread / RMSE at each analysis "
                 "(1 = reliable; below 1: overconfident)")
    return _save(fig, path)


def _mode_files(run_dir: Path, modes: Sequence[str] = ()) -> list[Path]:
    """``analyses/<mode>.nc`` in the order of ``modes`` (the config's), then any others."""
    files = {f.stem: f for f in sorted((run_dir / "analyses").glob("*.nc"))}
    order = [m for m in modes if m in files] + [m for m in files if m not in modes]
    return [files[m] for m in order]


def _valid_times(ds: xr.Dataset) -> list[str]:
    """ISO strings ``YYYY-MM-DD HH:MM`` of a file's times (any CF calendar)."""
    import cftime

    t = ds["time"]
    times = cftime.num2date(t.values, t.attrs["units"], calendar=t.attrs.get("calendar",
                                                                              "standard"))
    return [x.strftime("%Y-%m-%d %H:%M") for x in np.atleast_1d(times)]


def plot_point_series(run_dir: Path, path: Path, lat: float, lon: float,
                      modes: Sequence[str] = (), station: str = "") -> Path:
    """Truth and each mode's analysis mean ± std at the grid cell nearest ``(lat, lon)``
    (a station's, named ``station``), one panel per variable."""
    truth = xr.open_dataset(run_dir / "truth.nc", decode_times=False)
    files = _mode_files(run_dir, modes)
    variables = [v for v in truth.data_vars if "time" in truth[v].dims]
    i = int(np.abs(truth["lat"].values - lat).argmin())
    j = int(np.abs(((truth["lon"].values - lon + 180) % 360) - 180).argmin())
    fig, axes = _axes(len(variables))
    tv = truth["time"].values.astype(np.float64)  # hours since 0001-01-01
    step = float(tv[1] - tv[0]) if len(tv) > 1 else 12.0
    days = (tv - tv[0] + step) / 24.0  # days since t0 of each analysis
    records = [{"lead_hours": 24 * d, "time": s.replace(" ", "T")}
               for d, s in zip(days, _valid_times(truth), strict=True)]
    for ax, v in zip(axes, variables, strict=False):
        for f in files:
            with xr.open_dataset(f, decode_times=False) as a:
                mean = a[v].values[:, i, j]
                std = a[f"{v}_std"].values[:, i, j]
            colour = mode_colour(f.stem)
            ax.plot(days, mean, lw=1.2, color=colour, marker="o", ms=2.5, label=f.stem)
            ax.fill_between(days, mean - std, mean + std, color=colour, alpha=0.12, lw=0)
        ax.plot(days, truth[v].values[:, i, j], color=TRUTH_COLOUR, lw=2, label="truth")
        ax.set_title(v)
        _analysis_time_axis(ax, records)
        ax.set_ylabel(f"{v} ({truth[v].attrs.get('units', '')})")
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    where = (f"{abs(truth['lat'].values[i]):.1f}°{'N' if truth['lat'].values[i] >= 0 else 'S'}"
             f", {format_lon(float(truth['lon'].values[j]))}")
    truth.close()
    fig.suptitle(f"analysis mean ± ensemble std (shaded) at {where}"
                 + (f", station {station}" if station else "") + " (cf. paper Fig. 19)")
    return _save(fig, path)


def format_lon(x: float, _pos: object = None) -> str:
    """Longitude tick label: ``60°E``, ``120°W``, ``0°``, ``180°`` (input 0..360 or ±180)."""
    x = (x + 180) % 360 - 180
    if abs(x) < 1e-6 or abs(abs(x) - 180) < 1e-6:
        return f"{abs(x):.0f}°"
    return f"{abs(x):.0f}°{'E' if x > 0 else 'W'}"


def format_lat(y: float, _pos: object = None) -> str:
    """Latitude tick label: ``30°N``, ``0°``, ``60°S``."""
    return "0°" if abs(y) < 1e-6 else f"{abs(y):.0f}°{'N' if y > 0 else 'S'}"


def map_axes(ax: plt.Axes, lat: np.ndarray, lon: np.ndarray, land: np.ndarray | None = None,
             stations: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Coastlines (``land`` at 0.5), stations ``(lat, lon)``, lat/lon ticks of a map drawn
    on cell centres ``lat``, ``lon`` (degrees, longitude 0..360)."""
    if land is not None:
        ax.contour(lon, lat, land, [0.5], colors="k", linewidths=0.6)
    if stations is not None:
        ax.scatter(stations[1], stations[0], **STATION_STYLE)
    ax.set_xticks(np.arange(0, 361, 90))
    ax.set_yticks(np.arange(-60, 61, 30))
    half = 0.5 * (lon[1] - lon[0]) if len(lon) > 1 else 0.5
    ax.set_xlim(lon[0] - half, lon[-1] + half)  # after the ticks, which widen the limits
    ax.set_ylim(-90, 90)
    ax.xaxis.set_major_formatter(FuncFormatter(format_lon))
    ax.yaxis.set_major_formatter(FuncFormatter(format_lat))
    ax.tick_params(labelsize=6)


def plot_maps(run_dir: Path, path: Path, variable: str | None = None,
              modes: Sequence[str] = ()) -> Path:
    """For one variable at the last analysis: the truth, then per mode the ensemble mean,
    the ensemble std and the error of the mean; coastlines from the world's land-sea mask,
    the stations as triangles, colour bars with units."""
    files = _mode_files(run_dir, modes)
    truth = xr.open_dataset(run_dir / "truth.nc", decode_times=False)
    v = variable or next(v for v in truth.data_vars if "time" in truth[v].dims)
    units = truth[v].attrs.get("units", "")
    lat, lon = truth["lat"].values, truth["lon"].values
    land = truth["land_sea_mask"].values if "land_sea_mask" in truth else None
    valid = _valid_times(truth)[-1]
    t = truth[v].values[-1]
    truth.close()
    stations = None
    obs = run_dir / "observations.nc"
    if obs.is_file():
        with xr.open_dataset(obs, decode_times=False) as o:
            stations = (o["lat"].values, o["lon"].values)
    means, stds = {}, {}
    for f in files:
        with xr.open_dataset(f, decode_times=False) as a:
            means[f.stem], stds[f.stem] = a[v].values[-1], a[f"{v}_std"].values[-1]
    errors = {m: means[m] - t for m in means}
    vmin, vmax = float(np.nanmin(t)), float(np.nanmax(t))
    rows = len(files) + 1
    fig, axes = plt.subplots(rows, 3, figsize=(12.5, 2.1 * rows + 0.6), squeeze=False,
                             layout="constrained")
    kw = {"shading": "nearest"}
    im = axes[0, 0].pcolormesh(lon, lat, t, vmin=vmin, vmax=vmax, cmap="viridis", **kw)
    axes[0, 0].set_title(f"truth {v}", fontsize=8)
    fig.colorbar(im, ax=axes[0, 0], label=f"{v} ({units})")
    axes[0, 1].set_visible(False)
    axes[0, 2].axis("off")
    axes[0, 2].text(0, 0.5, f"valid {valid} UTC\nblack lines: coastlines (land-sea mask 0.5)"
                    f"\ntriangles: the {0 if stations is None else len(stations[0])} stations"
                    f"\nmeans share the truth's colour range",
                    fontsize=8, va="center")
    map_axes(axes[0, 0], lat, lon, land, stations)
    for row, mode in enumerate(means, start=1):
        ax_m, ax_s, ax_e = axes[row]
        im = ax_m.pcolormesh(lon, lat, means[mode], vmin=vmin, vmax=vmax, cmap="viridis", **kw)
        fig.colorbar(im, ax=ax_m, label=f"{v} ({units})")
        ax_m.set_title(f"{mode}: ensemble mean", fontsize=8, color=mode_colour(mode))
        smax = float(np.nanmax(stds[mode]))
        im = ax_s.pcolormesh(lon, lat, stds[mode], vmin=0, vmax=smax or 1.0, cmap="magma", **kw)
        fig.colorbar(im, ax=ax_s, label=f"std ({units})")
        ax_s.set_title(f"{mode}: ensemble std" + ("" if smax else " (one member: 0)"),
                       fontsize=8, color=mode_colour(mode))
        emax = float(np.nanmax(np.abs(errors[mode]))) or 1.0
        im = ax_e.pcolormesh(lon, lat, errors[mode], vmin=-emax, vmax=emax, cmap="RdBu_r", **kw)
        fig.colorbar(im, ax=ax_e, label=f"mean − truth ({units})")
        ax_e.set_title(f"{mode}: mean − truth", fontsize=8, color=mode_colour(mode))
        for ax in (ax_m, ax_s, ax_e):
            map_axes(ax, lat, lon, land, stations)
    fig.suptitle(f"{v} at the last analysis, valid {valid} UTC")
    return _save(fig, path)


def plot_run(run_dir: str | Path) -> list[Path]:
    """All figures of one run directory, into ``RUN_DIR/plots``; returns their paths."""
    from diffda.cycler.cycling.outputs import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    modes = list(by_mode(records))
    out = run_dir / "plots"
    truth = xr.open_dataset(run_dir / "truth.nc", decode_times=False)
    units = {v: truth[v].attrs.get("units", "") for v in truth.data_vars}
    truth.close()
    paths = [plot_rmse_by_lead(records, out / "rmse_by_lead.png", units),
             plot_spread_skill(records, out / "spread_skill.png")]
    obs = run_dir / "observations.nc"
    lat, lon, station = 45.0, 0.0, ""
    if obs.is_file():
        from diffda.observations.stations import station_id_text

        with xr.open_dataset(obs, decode_times=False) as o:
            lat, lon = float(o["lat"].values[0]), float(o["lon"].values[0])
            station = station_id_text(o["station_id"].values[0]) if "station_id" in o else ""
    paths.append(plot_point_series(run_dir, out / "point_series.png", lat, lon, modes,
                                   station))
    paths.append(plot_maps(run_dir, out / "maps_last_cycle.png", modes=modes))
    return paths


def plot_compare(runs: dict[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """Each (run, mode)'s RMSE relative to a reference, in percent, one panel per variable:
    below 0 is better. The reference is each run's own ``free`` forecast where every run
    has one (the skill the assimilation adds to the emulator), else the first mode of the
    first run (e.g. the first value of a sweep). Colour: the mode; line style: the run;
    x: days since the start ``t0`` (the days of the comparison table)."""
    labels = list(runs)
    first = runs[labels[0]]
    variables = variables_of(first)
    grouped = {label: by_mode(records) for label, records in runs.items()}
    per_run = all(REFERENCE_MODE in g for g in grouped.values())
    ref_mode = REFERENCE_MODE if per_run else next(iter(grouped[labels[0]]))
    fig, axes = _axes(len(variables))
    for ax, v in zip(axes, variables, strict=False):
        for n, label in enumerate(labels):
            ref = grouped[label if per_run else labels[0]][ref_mode]
            base = {r["lead_hours"]: r[v]["rmse"] for r in ref}
            for mode, rs in grouped[label].items():
                if mode == ref_mode and (per_run or n == 0):
                    continue
                pts = [(r["lead_hours"] / 24, 100 * (r[v]["rmse"] / base[r["lead_hours"]] - 1))
                       for r in rs if base.get(r["lead_hours"])]
                if not pts:
                    continue
                name = mode if len(runs) == 1 else f"{label}: {mode}"
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, color=mode_colour(mode),
                        ls=RUN_STYLES[n % len(RUN_STYLES)], label=name)
        ax.axhline(0.0, color=mode_colour(ref_mode), lw=1.5,
                   label=f"reference: {ref_mode}" + ("" if per_run else f" of {labels[0]}"))
        ax.set_title(v)
        ax.set_xlabel("days since the start t0 (first analysis at day 0.5)")
        ax.set_ylabel(f"RMSE relative to {ref_mode} (%)")
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    what = (f"each run's own {ref_mode!r} forecast" if per_run
            else f"{ref_mode!r} of {labels[0]}")
    fig.suptitle(f"RMSE of the ensemble mean relative to {what}: below 0 = better "
                 f"({len(runs)} run{'s' if len(runs) > 1 else ''})")
    return _save(fig, path)
