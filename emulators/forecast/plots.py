"""Plots of the emulator's scores (:func:`diffda.emulators.forecast.evaluation.evaluate_emulator`):
RMSE by lead time, and the free runs' climate by latitude against the nature run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from diffda.core.io import atomic_write_bytes
from diffda.core.variables import VARIABLE_ATTRS


def _units(v: str) -> str:
    return VARIABLE_ATTRS.get(v, {}).get("units", "physical units")


def _legend_below(fig: Any, ax: Any) -> None:
    """The legend of ``ax`` below the panels, where it hides no data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=7,
               frameon=False)


def _save_figure(fig: Any, path: Path, title: str = "") -> Path:
    """Title, tight layout, then an atomic PNG write of ``fig`` to ``path``; closes it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def plot_rmse(scores: dict[str, Any], path: Path, title: str = "") -> Path:
    """RMSE by lead time, one panel per variable: emulator, persistence, saturation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores["rmse"])
    lead = np.asarray(scores["lead_hours"]) / 24
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, v in zip(axes[0], names, strict=True):
        ax.plot(lead, scores["rmse"][v], label="SFNO emulator", color="C0")
        ax.plot(lead, scores["rmse_persistence"][v], label="persistence", color="C1", ls="--")
        if "emulator_twin" in scores:
            ax.plot(lead, scores["emulator_twin"]["rmse"][v], color="C2", lw=1, ls="-.",
                    label="emulator twin (1% perturbation)")
        ax.axhline(scores["rmse_climatology"][v], color="C3", lw=0.8, ls="--",
                   label=r"climatology ($\sigma_t$)")
        ax.axhline(scores["rmse_saturation"][v], color="0.5", lw=0.8, ls=":",
                   label=r"$\sqrt{2}\,\sigma$ (saturation)")
        ax.set_title(v)
        ax.set_xlabel("forecast lead time (days)")
        ax.set_ylabel(f"area-weighted RMSE ({_units(v)})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes[0][0])
    return _save_figure(fig, path, title or "emulator forecast RMSE against the nature run "
                        "by lead time")


def plot_free_run_climate(scores: dict[str, Any], lats: np.ndarray, path: Path,
                          title: str = "") -> Path:
    """Zonal-time mean and std by latitude of the free run, the held-out truth and the
    reference years of the nature run (the spread among those is the interannual floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clim = scores["free_run"]["climatology_by_latitude"]
    names = list(clim["truth"])
    fig, axes = plt.subplots(2, len(names), figsize=(3.4 * len(names), 5.6), squeeze=False)
    for j, v in enumerate(names):
        for i, stat in enumerate(("mean", "std")):
            ax = axes[i][j]
            for run, c in clim.items():
                style = ({"color": "k", "lw": 2.4, "label": "truth (held out)", "zorder": 1}
                         if run == "truth"
                         else {"color": "C3", "lw": 1.4, "label": "emulator free run",
                               "zorder": 3}
                         if run == "emulator" else
                         {"color": "0.6", "lw": 1.0, "ls": "--", "label": f"nature {run}"})
                ax.plot(lats, c[v][stat], **style)
            ax.set_title(f"{v}: zonal-time {stat}", fontsize=9)
            ax.set_ylabel(f"{stat} ({_units(v)})", fontsize=8)
            ax.grid(alpha=0.3)
            if i == 1:
                ax.set_xlabel("latitude (°N)")
    _legend_below(fig, axes[0][0])
    return _save_figure(fig, path, title or "free-run climate by latitude: emulator, "
                        "held-out truth and nature-run years")

