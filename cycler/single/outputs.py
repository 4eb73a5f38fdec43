"""Files of a single-analysis experiment: the summary as strict JSON with its spectra, the
scores as CSV, and the analysis ensemble as CF netCDF (all written atomically)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from diffda.core.io import atomic_write_text
from diffda.cycler.single.ablation import AblationResult
from diffda.cycler.single.experiments import (
    ExperimentConfig,
    ExperimentResult,
    pool_summaries,
    run_experiment,
)
from diffda.cycler.single.truth import select_index
from diffda.emulators.prior.model import DiffusionPrior


def _finite(x: Any) -> Any:
    """JSON-safe: non-finite floats become ``None``; numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(summary: Mapping[str, Any], indent: int | None = 1) -> str:
    """Strict JSON (NaN/inf as ``null``)."""
    return json.dumps(_finite(dict(summary)), indent=indent, allow_nan=False)


def scores_csv(result: ExperimentResult) -> str:
    """One row per variable, one column per score."""
    columns = sorted({k for s in result.scores.values() for k in s})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["experiment", "time", "members", "variable", *columns])
    for v, s in result.scores.items():
        w.writerow([result.name, result.time, result.members, v,
                    *(f"{s[c]:.6g}" if c in s else "" for c in columns)])
    return buf.getvalue()


def ablation_csv(result: AblationResult) -> str:
    """One row per ``(Sigma_y, Gamma, variable)``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ("rmse", "rmse_member_mean", "rmse_member_std", "spread", "spread_skill", "crps",
            "rmse_ratio_bicubic")
    w.writerow(["sigma_y", "gamma", "sigma_y_paper", "gamma_paper", "variable", "diverged",
                *keys, "rmse_bicubic"])
    for row in result.rows:
        for v in result.variables:
            vals = row.get(v, {})
            w.writerow([f"{row['sigma_y']:.6g}", f"{row['gamma']:.6g}",
                        f"{row['sigma_y_paper']:.6g}", f"{row['gamma_paper']:.6g}", v,
                        row["diverged"], *(f"{vals[k]:.6g}" if k in vals else "" for k in keys),
                        f"{result.rmse_bicubic[v]:.6g}"])
    return buf.getvalue()


def write_tables(result: ExperimentResult | AblationResult, out: Path) -> list[Path]:
    """``out/<name>.json`` (summary, spectra) and ``out/<name>.csv`` (scores), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(result, AblationResult):
        stem = "ablation"
        summary = result.summary()
        table = ablation_csv(result)
    else:
        stem = result.name
        summary = result.summary()
        k = np.arange(result.grid.nlon // 2 + 1)
        summary["spectra"] = {"wavenumber": k.tolist(), **{
            name: {v: spec[i].tolist() for i, v in enumerate(result.variables)}
            for name, spec in result.spectra.items()}}
        table = scores_csv(result)
    paths = [atomic_write_text(out / f"{stem}.json", to_json(summary) + "\n"),
             atomic_write_text(out / f"{stem}.csv", table)]
    return paths


def write_ensemble_netcdf(result: ExperimentResult, out: Path) -> Path:
    """``out/<name>_ensemble.nc``: the analysis ensemble, the truth and the baseline field,
    CF attributes, dims ``(member, lat, lon)`` / ``(lat, lon)`` per variable."""
    from diffda.emulators.dataio import write_netcdf
    from diffda.observations.stations import VARIABLE_ATTRS

    g = result.grid
    data: dict[str, Any] = {}
    ens = result.fields["ensemble"]
    for k, v in enumerate(result.variables):
        attrs = dict(VARIABLE_ATTRS.get(v, {"long_name": v}))
        data[v] = (("member", "lat", "lon"), ens[:, k].astype(np.float32), attrs)
        data[f"{v}_truth"] = (("lat", "lon"), result.fields["truth"][k].astype(np.float32),
                              {**attrs, "long_name": f"{attrs.get('long_name', v)} (truth)"})
        if "bicubic" in result.fields:
            data[f"{v}_bicubic"] = (("lat", "lon"),
                                    result.fields["bicubic"][k].astype(np.float32),
                                    {**attrs, "long_name": f"{attrs.get('long_name', v)} "
                                     "(bicubic interpolation of the low-resolution field)"})
    for a in data.values():
        a[2].pop("coordinates", None)
    ds = xr.Dataset(data, coords={
        "member": ("member", np.arange(ens.shape[0]), {"long_name": "ensemble member"}),
        "lat": ("lat", g.lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", g.lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }, attrs={"Conventions": "CF-1.8", "title": f"diffda experiment {result.name}",
              "valid_time": result.time,
              "source": "zero-shot posterior sampling (Algorithm 1) from the EDM prior"})
    if result.valid_time is not None:
        ds = ds.assign_coords(time=((), result.valid_time, {"standard_name": "time"}))
        ds["time"].encoding.update({"units": "hours since 0001-01-01 00:00:00",
                                    "calendar": result.valid_time.calendar,
                                    "dtype": "float64"})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.name}_ensemble.nc"
    write_netcdf(ds, path)
    return path


def write_outputs(result: ExperimentResult, folder: Path, plots: bool = True) -> list[Path]:
    """Tables, the ensemble's netCDF and (``plots``) the figures of one experiment."""
    from diffda.cycler.single.plots import plot_experiment

    files = write_tables(result, folder)
    files.append(write_ensemble_netcdf(result, folder))
    if plots:
        files += plot_experiment(result, folder)
    return files


def run_pooled(
    name: str, prior: DiffusionPrior, ds: xr.Dataset, times: Sequence[str],
    config: ExperimentConfig, source: str, out: Path, *, plots: bool = True,
    progress: bool = False, extra: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """One experiment at each of ``times`` (into ``out/<time>``), scores pooled over them
    (:func:`~diffda.cycler.single.experiments.pool_summaries`, with ``extra`` fields and each
    time's summary under ``by_time``), written to ``out/<name>_pooled.json``; returns the
    pooled summary and that path."""
    summaries = []
    for t in times:
        index = select_index(ds, t, None, source)
        result = run_experiment(name, prior, ds, index, config, None, source, progress=progress)
        folder = out / str(result.time).replace(" ", "T").replace(":", "")
        files = write_outputs(result, folder, plots=plots)
        summaries.append({**result.summary(), "files": [str(f) for f in files]})
    pooled = pool_summaries(summaries)
    pooled.update({**dict(extra or {}), "by_time": summaries})
    out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(out / f"{name}_pooled.json", to_json(pooled, indent=1) + "\n")
    return pooled, path
