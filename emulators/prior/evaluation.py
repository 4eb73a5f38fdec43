"""Scores of the diffusion prior: unconditional samples against held-out nature-run states.

- :func:`climate_statistics`, :func:`compare_climates`: per-variable mean and std by
  latitude, zonal power spectra and negative fractions of samples against the truth;
  :func:`acceptance` against the issue's thresholds.
- :func:`sample_unconditional`: seeded samples, one generator per member, from a sampler
  given as a function (the assimilation's sampler, Algorithm 1 without likelihood terms:
  the emulators layer does not import it).
- :func:`evaluate_prior`: all of it for a weights file and a store (what
  ``cycler evaluate prior`` prints), with :func:`plot_climates`.

The zonal power spectrum is also passed in (``spectrum(x, area_weights)``: the command
line gives the assimilation metrics' ``zonal_power_spectrum``), so that the prior's scores
and the assimilation's metrics share one definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffda.core.grid import Grid
from diffda.core.io import atomic_write_bytes
from diffda.core.rng import member_generators
from diffda.emulators.forecast.data import load_coarse_states
from diffda.emulators.prior.model import DiffusionPrior, negative_fraction
from torch import Tensor
from tqdm.auto import tqdm

Spectrum = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``spectrum(x (..., lat, lon), area_weights (lat,)) -> (nlon // 2 + 1,)``: a zonal power
spectrum whose sum over wavenumbers is the area-weighted mean of ``x^2``."""

Sampler = Callable[[DiffusionPrior, list[torch.Generator]], Tensor]
"""``sample(prior, generators) -> (len(generators), var, lat, lon)`` normalised samples."""


def climate_statistics(states: np.ndarray, grid: Grid, spectrum: Spectrum
                       ) -> dict[str, np.ndarray]:
    """Per-variable statistics of ``(sample, var, lat, lon)`` states: ``mean_by_lat`` and
    ``std_by_lat`` ``(var, lat)`` over samples and longitude, ``spectrum`` ``(var, k)`` of
    anomalies from the zonal-and-sample mean (by ``spectrum``), ``std`` ``(var,)``
    (area-weighted, global)."""
    w = grid.area_weights()
    mean_lat = states.mean(axis=(0, 3))
    std_lat = states.std(axis=(0, 3))
    anom = states - mean_lat[None, :, :, None]
    spec = np.stack([spectrum(anom[:, v], w) for v in range(states.shape[1])])
    gmean = (states.mean(axis=(0, 3)) * w).sum(-1) / w.sum()
    gvar = (((states - gmean[None, :, None, None]) ** 2).mean(axis=(0, 3)) * w).sum(-1) / w.sum()
    return {"mean_by_lat": mean_lat, "std_by_lat": std_lat, "spectrum": spec,
            "std": np.sqrt(gvar)}


def compare_climates(
    samples: np.ndarray, truth: np.ndarray, grid: Grid, variables: tuple[str, ...],
    spectrum: Spectrum,
) -> dict[str, Any]:
    """Scores of unconditional samples against held-out states, per variable (zonal power
    by ``spectrum``):

    - ``mean_by_lat_error``: area-weighted mean (``_max``: max) over latitude of
      ``|mean_s - mean_t| / std_t(global)``;
    - ``std_by_lat_error``: same of ``|std_s - std_t| / std_t`` (by latitude);
    - ``spectrum_ratio_min/max``: range of sample/truth zonal power for ``k = 1..nlon/2``
      (wavenumbers where the truth has no power are left out: ``None`` in ``_by_k``);
    - ``negative_fraction`` (samples and truth), for positive variables.
    """
    s, t = climate_statistics(samples, grid, spectrum), climate_statistics(truth, grid, spectrum)
    w = grid.area_weights() / grid.area_weights().sum()
    out: dict[str, Any] = {}
    for v, name in enumerate(variables):
        mean_err = np.abs(s["mean_by_lat"][v] - t["mean_by_lat"][v]) / t["std"][v]
        std_err = np.abs(s["std_by_lat"][v] - t["std_by_lat"][v]) / t["std_by_lat"][v]
        # wavenumbers where the truth has power (> 1e-10 of its total): a ratio is defined
        tp, sp = t["spectrum"][v, 1:], s["spectrum"][v, 1:]
        has = tp > 1e-10 * t["spectrum"][v].sum()
        ratio = np.where(has, sp / np.where(has, tp, 1.0), np.nan)
        out[name] = {
            "mean_by_lat_error": float((w * mean_err).sum()),
            "mean_by_lat_error_max": float(mean_err.max()),
            "std_by_lat_error": float((w * std_err).sum()),
            "std_by_lat_error_max": float(std_err.max()),
            "spectrum_ratio_min": float(np.nanmin(ratio)) if has.any() else None,
            "spectrum_ratio_max": float(np.nanmax(ratio)) if has.any() else None,
            "spectrum_ratio_by_k": [round(float(r), 4) if h else None
                                    for r, h in zip(ratio, has, strict=True)],
            "global_std_samples": float(s["std"][v]),
            "global_std_truth": float(t["std"][v]),
            "negative_fraction_samples": negative_fraction(samples[:, v]),
            "negative_fraction_truth": negative_fraction(truth[:, v]),
        }
    out["_stats"] = {"samples": s, "truth": t}
    return out


#: Acceptance thresholds of the issue: mean and std by latitude within 10 % (area-weighted
#: over latitude), zonal power within a factor 1.5 at every resolved wavenumber.
ACCEPT_MEAN, ACCEPT_STD, ACCEPT_SPECTRUM = 0.10, 0.10, 1.5


def acceptance(scores: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """Per variable, whether each acceptance criterion holds (see the thresholds above)."""
    out = {}
    for name, s in scores.items():
        if name.startswith("_"):
            continue
        lo, hi = s["spectrum_ratio_min"], s["spectrum_ratio_max"]
        out[name] = {
            "mean_by_lat": s["mean_by_lat_error"] <= ACCEPT_MEAN,
            "std_by_lat": s["std_by_lat_error"] <= ACCEPT_STD,
            "spectrum": lo is not None and 1 / ACCEPT_SPECTRUM <= lo and hi <= ACCEPT_SPECTRUM,
        }
    return out



def sample_unconditional(
    prior: DiffusionPrior, members: int, seed: int, sample: Sampler,
    batch: int = 16, progress: bool = True,
) -> Tensor:
    """``(members, var, lat, lon)`` unconditional samples in physical units (``sample``:
    Algorithm 1 without likelihood terms), ``batch`` members at a time; member ``m`` uses
    generator ``(seed, "prior-evaluate", 0, m)``."""
    gens = member_generators(seed, "prior-evaluate", 0, members)
    out = []
    for start in tqdm(range(0, members, batch), desc="sample prior", disable=not progress):
        z = sample(prior, gens[start:start + batch])
        out.append(prior.denormalise(z))
    return torch.cat(out)


def evaluate_prior(
    weights: Path, data: str, *, years: Sequence[int] | None, members: int, seed: int,
    sample: Sampler, spectrum: Spectrum, sampler_steps: int, plots: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores (:func:`compare_climates`, :func:`acceptance`) of ``members`` unconditional
    samples of the prior at ``weights`` against the held-out ``years`` (default: the card's
    ``valid_years``) of the store ``data``; with ``plots``, :func:`plot_climates` into that
    folder. ``sampler_steps`` is recorded with the scores."""
    prior = DiffusionPrior.load(weights)
    years = tuple(years or prior.card.get("data", {}).get("valid_years", ()))
    if not years:
        raise ValueError(f"{weights}: the card names no held-out years; pass --years")
    truth = load_coarse_states(data, prior.grid, prior.variables, years).states.numpy()
    samples = sample_unconditional(prior, members, seed, sample, progress=progress).numpy()
    scores = compare_climates(samples, truth, prior.grid, prior.variables, spectrum)
    stats = scores.pop("_stats")
    result = {"weights": str(weights), "data": str(data), "years": list(years),
              "members": members, "n_truth": int(truth.shape[0]),
              "sampler_steps": sampler_steps, "variables": scores,
              "acceptance": acceptance(scores)}
    if plots is not None:
        result["plots"] = [str(p) for p in plot_climates(stats, prior.grid, prior.variables,
                                                         plots, samples, truth)]
    return result


def card_fields(result: dict[str, Any]) -> dict[str, Any]:
    """What :func:`evaluate_prior`'s ``result`` adds to the weights' card: the scores (less
    the spectrum ratio by wavenumber), the acceptance and the data they were measured on."""
    return {
        "scores": {k: {kk: vv for kk, vv in v.items() if kk != "spectrum_ratio_by_k"}
                   for k, v in result["variables"].items()},
        "acceptance": result["acceptance"],
        "scores_data": {"path": result["data"], "years": result["years"],
                        "members": result["members"]},
    }


# ------------------------------------------------------------------------------- plots


def plot_climates(
    stats: dict[str, dict[str, np.ndarray]], grid: Grid, variables: tuple[str, ...],
    folder: Path, samples: np.ndarray, truth: np.ndarray,
) -> list[Path]:
    """Mean and std by latitude, zonal spectra, and maps of samples next to truth."""
    import matplotlib

    matplotlib.use("Agg")

    folder.mkdir(parents=True, exist_ok=True)
    s, t = stats["samples"], stats["truth"]
    return [_plot_mean_std(s, t, grid, variables, folder / "prior_mean_std_by_lat.png"),
            _plot_spectra(s, t, variables, folder / "prior_zonal_spectra.png"),
            _plot_maps(samples, truth, variables, folder / "prior_sample_maps.png")]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:  # atomically: a killed evaluation never leaves half a PNG under the final name
        atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def _plot_mean_std(s: dict[str, np.ndarray], t: dict[str, np.ndarray], grid: Grid,
                   variables: tuple[str, ...], path: Path) -> Path:
    import matplotlib.pyplot as plt

    nv = len(variables)
    fig, ax = plt.subplots(2, nv, figsize=(3.2 * nv, 5.5), squeeze=False)
    for v, name in enumerate(variables):
        for row, key in enumerate(("mean_by_lat", "std_by_lat")):
            ax[row, v].plot(grid.lat, t[key][v], "k-", label="held-out nature run")
            ax[row, v].plot(grid.lat, s[key][v], "r--", label="prior samples")
            stat = key.replace("_by_lat", "")
            ax[row, v].set_title(f"{name}: {stat} by latitude", fontsize=9)
            ax[row, v].set_xlabel("latitude (°N)")
            ax[row, v].set_ylabel(f"{stat} ({_units(name)})", fontsize=8)
    ax[0, 0].legend(fontsize=7)
    fig.suptitle("prior samples against the held-out nature run: zonal mean and std")
    fig.tight_layout()
    return _save(fig, path)


def _plot_spectra(s: dict[str, np.ndarray], t: dict[str, np.ndarray],
                  variables: tuple[str, ...], path: Path) -> Path:
    import matplotlib.pyplot as plt

    nv = len(variables)
    fig, ax = plt.subplots(1, nv, figsize=(3.2 * nv, 3.0), squeeze=False)
    k = np.arange(1, t["spectrum"].shape[1])
    for v, name in enumerate(variables):
        ax[0, v].loglog(k, t["spectrum"][v, 1:], "k-", label="nature run")
        ax[0, v].loglog(k, s["spectrum"][v, 1:], "r--", label="prior")
        ax[0, v].set_title(f"{name}: zonal power", fontsize=9)
        ax[0, v].set_xlabel("zonal wavenumber")
        ax[0, v].set_ylabel(f"power (({_units(name)})²)", fontsize=8)
    ax[0, 0].legend(fontsize=7)
    fig.suptitle("zonal power spectra: prior samples and the held-out nature run")
    fig.tight_layout()
    return _save(fig, path)


def _plot_maps(samples: np.ndarray, truth: np.ndarray, variables: tuple[str, ...],
               path: Path) -> Path:
    import matplotlib.pyplot as plt

    nv = len(variables)
    fig, ax = plt.subplots(nv, 3, figsize=(10, 2.2 * nv + 0.6), squeeze=False,
                           layout="constrained")
    for v, name in enumerate(variables):
        lo, hi = np.percentile(truth[:, v], [1, 99])
        for c, (img, label) in enumerate(((truth[-1, v], "nature run"),
                                          (samples[0, v], "sample 0"),
                                          (samples[1, v], "sample 1"))):
            im = ax[v, c].imshow(img, origin="lower", extent=(0, 360, -90, 90), vmin=lo, vmax=hi,
                                 cmap="viridis", aspect="auto")
            ax[v, c].set_title(f"{name}: {label}", fontsize=8)
            ax[v, c].set_xticks(np.arange(0, 361, 60))
            ax[v, c].set_yticks(np.arange(-60, 61, 30))
            ax[v, c].tick_params(labelsize=6)
        ax[v, 0].set_ylabel("latitude (°N)", fontsize=7)
        fig.colorbar(im, ax=ax[v].tolist(), shrink=0.8, label=f"{name} ({_units(name)})")
    for c in range(3):
        ax[-1, c].set_xlabel("longitude (°E)", fontsize=7)
    fig.suptitle("the nature run's last held-out state next to two prior samples "
                 "(colours: the nature run's 1-99 % range)")
    return _save(fig, path)


def _units(name: str) -> str:
    from diffda.core.variables import VARIABLE_ATTRS

    return VARIABLE_ATTRS.get(name, {}).get("units", "physical units")
