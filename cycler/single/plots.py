"""Figures of the single-analysis experiments (:mod:`diffda.cycler.single.experiments`).

One function per figure kind of the paper, each taking plain arrays from an
:class:`~diffda.cycler.single.experiments.ExperimentResult` and returning the path it wrote:

- :func:`plot_super_resolution`: low-resolution input, truth, ensemble mean, bicubic and
  the two error maps per variable (paper Figs. 1-3);
- :func:`plot_spectra`: zonal power spectra of the truth, the members, the ensemble mean
  and bicubic, and the kinetic-energy spectrum from ``u`` and ``v`` (Fig. 5);
- :func:`plot_mean_std`: truth, ensemble mean, ensemble std and error maps with the
  stations marked (Figs. 4, 12-16);
- :func:`plot_station_scatter`: ensemble mean against truth at the station points, next to
  the unconditional ensemble mean (Figs. 7-9);
- :func:`plot_ablation`: RMSE relative to bicubic per ``(Sigma_y, Gamma)`` (Table 1).

Maps are drawn on each field's cell centres with lat/lon ticks, longitude 0..360;
stations as triangles (the style of :mod:`diffda.cycler.cycling.plots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from diffda.cycler.single.ablation import AblationResult
    from diffda.cycler.single.experiments import ExperimentResult

DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Save atomically (temp file in the same folder, then rename)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=DPI)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        _pyplot().close(fig)
    return path


def _map(ax: Any, img: np.ndarray, title: str, vmin: float | None = None,
         vmax: float | None = None, cmap: str = "viridis") -> Any:
    """``img`` ``(lat, lon)`` on its own WeatherBench grid, with lat/lon ticks."""
    from diffda.core.grid import Grid
    from diffda.cycler.cycling.plots import map_axes

    g = Grid(*img.shape)
    im = ax.pcolormesh(g.lon, g.lat, img, vmin=vmin, vmax=vmax, cmap=cmap, shading="nearest")
    map_axes(ax, g.lat, g.lon)
    ax.set_title(title, fontsize=8)
    return im


def _units(v: str) -> str:
    from diffda.core.variables import VARIABLE_ATTRS

    return VARIABLE_ATTRS.get(v, {}).get("units", "physical units")


def _weighted_rms(e: np.ndarray) -> float:
    """Area-weighted RMS of a ``(lat, lon)`` field (the scores' latitude weighting)."""
    from diffda.core.grid import Grid

    w = Grid(*e.shape).area_weights()[:, None]
    return float(np.sqrt((w * e**2).mean()))


def _stations_note(fields: dict[str, Any]) -> str:
    return (f" (triangles: the {len(fields['station_lat'])} stations)"
            if "station_lat" in fields else "")


def _stations(ax: Any, fields: dict[str, Any]) -> None:
    if "station_lat" in fields:
        from diffda.cycler.cycling.plots import STATION_STYLE

        ax.scatter(fields["station_lon"], fields["station_lat"], **STATION_STYLE)


def plot_super_resolution(result: ExperimentResult, path: Path) -> Path:
    """Per variable (rows): LR input, truth, ensemble mean, bicubic, |errors| (Figs. 1-3).
    Fields share the truth's colour range; the two error maps share theirs."""
    plt = _pyplot()
    f = result.fields
    truth, mean = f["truth"], f["ensemble"].mean(0)
    has_lr, has_bic = "lr" in f, "bicubic" in f
    panels = ["LR input"] * has_lr + ["truth", "ensemble mean"] + ["bicubic"] * has_bic + [
        "error: ensemble mean"] + ["error: bicubic"] * has_bic
    nv = len(result.variables)
    fig, ax = plt.subplots(nv, len(panels), figsize=(2.6 * len(panels), 1.9 * nv),
                           squeeze=False)
    for k, v in enumerate(result.variables):
        lo, hi = float(truth[k].min()), float(truth[k].max())
        err = mean[k] - truth[k]
        errs = [err] + ([f["bicubic"][k] - truth[k]] if has_bic else [])
        emax = max((float(np.nanmax(np.abs(e))) for e in errs if np.isfinite(e).any()),
                   default=1.0) or 1.0  # bicubic is NaN for a variable not observed
        imgs = ([f["lr"][k]] if has_lr else []) + [truth[k], mean[k]] + (
            [f["bicubic"][k]] if has_bic else [])
        c = 0
        for img, title in zip(imgs, panels, strict=False):
            im = _map(ax[k, c], img, f"{v}: {title}", lo, hi)
            c += 1
        fig.colorbar(im, ax=ax[k, c - 1], shrink=0.8, label=f"{v} ({_units(v)})")
        for e, title in zip(errs, panels[c:], strict=True):
            rms = _weighted_rms(e)
            ime = _map(ax[k, c], e, f"{v}: {title} (rms {rms:.3g})", -emax, emax, "RdBu_r")
            _stations(ax[k, c], f)
            c += 1
        fig.colorbar(ime, ax=ax[k, c - 1], shrink=0.8, label=f"error ({_units(v)})")
    fig.suptitle(f"{result.name}: fields and errors against the truth, valid {result.time}, "
                 f"{result.members} members" + _stations_note(f), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_spectra(result: ExperimentResult, path: Path) -> Path:
    """Zonal power spectra per variable and the kinetic energy ``(P_u + P_v) / 2`` (Fig. 5):
    truth, mean of the members' spectra, spectrum of the ensemble mean, bicubic."""
    plt = _pyplot()
    spectra = result.spectra
    names = list(result.variables)
    ke = "u" in names and "v" in names
    ncol = len(names) + int(ke)
    fig, ax = plt.subplots(1, ncol, figsize=(3.2 * ncol, 3.0), squeeze=False)
    styles = {"truth": "k-", "members": "r--", "ensemble_mean": "b:", "bicubic": "g-."}
    k = np.arange(1, next(iter(spectra.values())).shape[1])

    def draw(a: Any, get: Any, title: str, unit: str) -> None:
        top = float(get(spectra["truth"])[1:].max()) or 1.0
        floor = 1e-8 * top  # power below this is round-off: drawn at the floor
        for key, style in styles.items():
            if key in spectra:
                a.loglog(k, np.maximum(get(spectra[key])[1:], floor), style,
                         label=key.replace("_", " "))
        a.set_ylim(bottom=floor)
        a.set_title(title, fontsize=8)
        a.set_xlabel("zonal wavenumber", fontsize=7)
        a.set_ylabel(f"power ({unit})", fontsize=7)
        a.tick_params(labelsize=6)

    for i, v in enumerate(names):
        draw(ax[0, i], lambda s, i=i: s[i], f"{v}: zonal power", f"({_units(v)})²")
    if ke:
        iu, iv = names.index("u"), names.index("v")
        draw(ax[0, -1], lambda s: 0.5 * (s[iu] + s[iv]), "kinetic energy (u, v)", "m2 s-2")
    ax[0, 0].legend(fontsize=6)
    fig.suptitle(f"{result.name}: zonal power spectra, valid {result.time}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_mean_std(result: ExperimentResult, path: Path) -> Path:
    """Per variable: truth, ensemble mean, ensemble std, error of the mean; stations as
    dots (Figs. 4, 12-16)."""
    plt = _pyplot()
    f = result.fields
    ens, truth = f["ensemble"], f["truth"]
    mean = ens.mean(0)
    std = ens.std(0, ddof=1) if ens.shape[0] > 1 else np.zeros_like(mean)
    nv = len(result.variables)
    fig, ax = plt.subplots(nv, 4, figsize=(11, 1.9 * nv), squeeze=False)
    for k, v in enumerate(result.variables):
        lo, hi = float(truth[k].min()), float(truth[k].max())
        _map(ax[k, 0], truth[k], f"{v}: truth", lo, hi)
        im = _map(ax[k, 1], mean[k], f"{v}: ensemble mean", lo, hi)
        fig.colorbar(im, ax=ax[k, 1], shrink=0.8, label=f"{v} ({_units(v)})")
        im = _map(ax[k, 2], std[k], f"{v}: ensemble std", 0.0, None, "magma")
        _stations(ax[k, 2], f)
        fig.colorbar(im, ax=ax[k, 2], shrink=0.8, label=f"std ({_units(v)})")
        e = mean[k] - truth[k]
        emax = float(np.abs(e).max()) or 1.0
        im = _map(ax[k, 3], e, f"{v}: mean − truth", -emax, emax, "RdBu_r")
        _stations(ax[k, 3], f)
        fig.colorbar(im, ax=ax[k, 3], shrink=0.8, label=f"error ({_units(v)})")
    fig.suptitle(f"{result.name}: ensemble mean and std, valid {result.time}, "
                 f"{result.members} members" + _stations_note(f), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_station_scatter(result: ExperimentResult, path: Path) -> Path:
    """Per observed variable: ensemble mean at the stations against the truth there, for
    the posterior and the unconditional baseline, with the observations (Figs. 7-9)."""
    plt = _pyplot()
    f = result.fields
    names = f["station_observed"]
    fig, ax = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    for j, v in enumerate(names):
        a = ax[0, j]
        t = f["station_truth"][:, j]
        if "station_unconditional" in f:
            a.plot(t, f["station_unconditional"][:, j], ".", color="0.6", ms=3,
                   label="unconditional mean")
        a.plot(t, f["station_obs"][:, j], "g+", ms=3, alpha=0.6, label="observation")
        a.plot(t, f["station_mean"][:, j], "r.", ms=3, label="posterior mean")
        lo, hi = float(np.nanmin(t)), float(np.nanmax(t))
        a.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        a.set_title(f"{v} at stations", fontsize=8)
        a.set_xlabel(f"truth ({_units(v)})", fontsize=7)
        a.set_ylabel(f"estimate ({_units(v)})", fontsize=7)
        a.tick_params(labelsize=6)
    handles, labels = ax[0, 0].get_legend_handles_labels()
    fig.suptitle(f"{result.name}: estimates at the stations against the truth, valid "
                 f"{result.time}", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7,
               frameon=False)
    return _save(fig, path)


def plot_ablation(result: AblationResult, path: Path) -> Path:
    """RMSE of the ensemble mean relative to bicubic per ``(Sigma_y, Gamma)`` and variable
    (bars; diverged pairs are marked), with the target line 0.6 (40% below bicubic)."""
    plt = _pyplot()
    rows = result.rows
    names = list(result.variables)
    x = np.arange(len(rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 3.2))
    for i, v in enumerate(names):
        vals = [r[v]["rmse_ratio_bicubic"] if not r["diverged"] else np.nan for r in rows]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=v)
    for j, r in enumerate(rows):
        if r["diverged"]:
            ax.text(j, 0.05, "diverged", rotation=90, ha="center", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(0.6, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f"Σy={r['sigma_y']:.3g}\nΓ={r['gamma']:.3g}" for r in rows], fontsize=7)
    ax.set_xlabel("(Σy, Γ): normalised error variances of Eq. 13 (1)")
    ax.set_ylabel("RMSE / RMSE of bicubic (1)")
    ax.set_title(f"(Σy, Γ) ablation on the LR task at {result.time}, {result.members} members",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def plot_experiment(result: ExperimentResult, folder: Path) -> list[Path]:
    """All figures that apply to ``result``, in ``folder`` (named after the experiment)."""
    paths = [plot_super_resolution(result, folder / f"{result.name}_fields.png"),
             plot_spectra(result, folder / f"{result.name}_spectra.png"),
             plot_mean_std(result, folder / f"{result.name}_mean_std.png")]
    if "station_truth" in result.fields:
        paths.append(plot_station_scatter(result, folder / f"{result.name}_stations.png"))
    return paths
