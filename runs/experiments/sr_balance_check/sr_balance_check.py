"""How much of v's small-scale error could geostrophic balance remove? A diagnostic of the
super-resolution ensembles that `cycler experiment sample-lr` writes (`*_ensemble.nc`).

    python runs/experiments/sr_balance_check/sr_balance_check.py OUT/*/sample-lr_ensemble.nc

(OUT: the folder of a `cycler experiment sample-lr` run with several --time values,
default outputs/experiments/sample-lr.)

Between 25 and 70 degrees of latitude (both hemispheres, cos-latitude weights) it prints,
pooled over the files as mean squares, the RMS error against the truth's v of: the
ensemble mean's v, bicubic v, and the geostrophic wind v_g = g / (f a cos(lat)) dh/dlon of
the truth's height (balance's own floor), of the ensemble mean's height and of bicubic
height; for all zonal wavenumbers and for k >= 8 only (the scales the 8x16 grid cannot
hold). Last, blends of the two: the ensemble mean's v with its k >= 8 part moved a
fraction b of the way to v_g of the ensemble-mean height (b = 0 is the ensemble mean).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import xarray as xr
from diffda.cycler.metrics import zonal_high_pass
from diffda.emulators.nature.shallow_water import GRAVITY, OMEGA, RADIUS

BLENDS = (0.1, 0.2, 0.3, 0.5)


def zonal_derivative(x: np.ndarray) -> np.ndarray:
    n = x.shape[-1]
    k = np.fft.rfftfreq(n, 1 / n)
    return np.fft.irfft(1j * k * np.fft.rfft(x, axis=-1), n=n, axis=-1)


def high_pass(x: np.ndarray, k_min: int = 8) -> np.ndarray:
    return zonal_high_pass(torch.from_numpy(x), k_min).numpy()


def v_geostrophic(height: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """Geostrophic meridional wind of a height field (m) on rows ``lat_deg``."""
    phi = np.deg2rad(lat_deg)[:, None]
    return GRAVITY / (2 * OMEGA * np.sin(phi) * RADIUS * np.cos(phi)) * zonal_derivative(height)


def main(paths: list[str]) -> None:
    if paths and paths[0] in ("-h", "--help"):
        print(__doc__)
        return
    if not paths:
        sys.exit(__doc__)
    sums: dict[tuple[str, str], list[float]] = {}
    for path in paths:
        ds = xr.open_dataset(path)
        lat = ds["lat"].values
        rows = (np.abs(lat) > 25) & (np.abs(lat) < 70)
        w = np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], (lat.size, ds.sizes["lon"]))[rows]

        truth = ds["v_truth"].values
        mean_height = ds["height"].mean("member").values
        v_mean = ds["v"].mean("member").values
        v_g = v_geostrophic(mean_height, lat)
        estimates = {
            "ensemble-mean v": v_mean,
            "bicubic v": ds["v_bicubic"].values,
            "v_g of the truth's height": v_geostrophic(ds["height_truth"].values, lat),
            "v_g of the ensemble-mean height": v_g,
            "v_g of bicubic height": v_geostrophic(ds["height_bicubic"].values, lat),
        }
        for b in BLENDS:
            estimates[f"blend, b = {b}"] = v_mean + b * high_pass(v_g - v_mean)
        estimates["zero (the truth's own RMS)"] = np.zeros_like(truth)
        for name, est in estimates.items():
            for scales, filt in (("all k", lambda x: x), ("k >= 8", high_pass)):
                err = filt(est - truth)[rows]
                sums.setdefault((name, scales), []).append(float(np.sum(w * err**2) / w.sum()))
    head = f"{'estimate of v (25-70 deg)':34s} {'all k':>8s} {'k >= 8':>8s}"
    print(f"{head}   (m/s, {len(paths)} files)")
    for name in estimates:
        row = [np.sqrt(np.mean(sums[(name, s)])) for s in ("all k", "k >= 8")]
        print(f"{name:34s} {row[0]:8.2f} {row[1]:8.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
