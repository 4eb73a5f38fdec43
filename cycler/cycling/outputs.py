"""What a cycling run writes besides its checkpoints: ``metrics.jsonl`` (one record per
mode and cycle, rewritten from the records after every cycle, so a resumed run's file
equals an uninterrupted one's), CF netCDF of the analyses and the truth, and
``timings.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.io import atomic_write_bytes, atomic_write_text
from diffda.core.variables import global_attrs, portable_path, variable_attrs
from diffda.cycler.cycling.config import SAMPLER_MODES, RunConfig
from diffda.cycler.cycling.world import World
from diffda.emulators.forecast.data import open_nature
from diffda.observations.synthetic import TIME_UNITS
from torch import Tensor


def write_metrics(run_dir: Path, records: dict[str, list[dict[str, Any]]],
                  modes: Sequence[str]) -> Path:
    """``metrics.jsonl``: one JSON object per (mode, cycle), modes in config order."""
    lines = [json.dumps(r) for m in modes for r in records.get(m, [])]
    return atomic_write_text(run_dir / "metrics.jsonl", "".join(s + "\n" for s in lines))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file (or of ``RUN_DIR/metrics.jsonl``)."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (has the run started?)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return _with_term_variance(records, path.parent / "config.json")


def _with_term_variance(records: list[dict[str, Any]], config: Path) -> list[dict[str, Any]]:
    """Add to the ensemble mode's innovation statistics ``hbh_term``: the forecast error
    variance its forecast term assumes at the stations, the forecast ensemble's
    (``hbh_ensemble``) times the run's ``analysis.ensemble_inflation`` (read from the run's
    ``config.json``), for the innovation check against the term's own error model; runs
    that recorded it (adaptive inflation) keep theirs."""
    if not config.is_file():
        return records
    analysis = json.loads(config.read_text()).get("config", {}).get("analysis", {})
    inflation = float(analysis.get("ensemble_inflation", 1.0))
    for r in records:
        if r.get("mode") != "ensemble":
            continue
        for row in (r.get("innovations") or {}).values():
            if "hbh_ensemble" in row and "hbh_term" not in row:  # runs that did not record it
                row["hbh_term"] = inflation * row["hbh_ensemble"]
    return records


def _encoding(times: Sequence[cftime.datetime]) -> dict[str, Any]:
    return {"units": TIME_UNITS, "calendar": times[0].calendar, "dtype": "float64"}


def analyses_dataset(world: World, mode: str, analyses: Tensor, members: bool) -> xr.Dataset:
    """CF Dataset of a mode's analyses ``(cycle, member, var, lat, lon)``: ensemble mean
    ``<var>`` and standard deviation ``<var>_std`` per analysis time, optionally the members
    ``<var>_members`` with a ``realization`` dim."""
    g, times = world.grid, world.times[1:]
    coords = {
        "time": ("time", np.asarray(times, dtype=object), {"standard_name": "time", "axis": "T"}),
        "lat": ("lat", g.lat, {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"}),
        "lon": ("lon", g.lon, {"units": "degrees_east", "standard_name": "longitude", "axis": "X"}),
    }
    data = {}
    a = analyses.double()
    n_members = a.shape[1]
    for j, v in enumerate(world.variables):
        named = variable_attrs(v, world.attrs[v])
        base = {k: named[k] for k in ("units", "standard_name", "long_name", "comment",
                                      "diffda_name") if k in named}
        data[v] = (("time", "lat", "lon"), a[:, :, j].mean(1).float().numpy(),
                   {**base, "cell_methods": "realization: mean"})
        std = a[:, :, j].std(1, unbiased=True) if n_members > 1 else torch.zeros_like(a[:, 0, j])
        data[f"{v}_std"] = (("time", "lat", "lon"), std.float().numpy(),
                            {**{k: x for k, x in base.items()
                                if k not in ("standard_name", "comment", "diffda_name")},
                             "long_name": "ensemble standard deviation of "
                                          f"{base.get('long_name', v)}",
                             "cell_methods": "realization: standard_deviation"})
        if members:
            coords["realization"] = ("realization", np.arange(n_members),
                                     {"standard_name": "realization"})
            data[f"{v}_members"] = (("time", "realization", "lat", "lon"),
                                    a[:, :, j].float().numpy(), base)
    ds = xr.Dataset(data, coords=coords)
    ds["time"].encoding.update(_encoding(times))
    ds.attrs.update({
        "title": f"analyses of cycling mode {mode!r}",
        "source": "diffda cycler", "mode": mode, "members": n_members,
        "config_hash": world.config_hash,
    })
    return ds


def write_netcdf(ds: xr.Dataset, path: Path) -> Path:
    """Atomic netCDF write, with the global attributes every output carries
    (``Conventions``, a ``history`` line of this command, no absolute ``source`` path:
    :func:`~diffda.core.variables.global_attrs`); readable by others (umask)."""
    out = ds.copy()
    out.attrs = global_attrs(ds.attrs)
    return atomic_write_bytes(path, lambda tmp: out.to_netcdf(tmp, engine="netcdf4"))


def truth_dataset(world: World) -> xr.Dataset:
    """The truth at the analysis times and the world's land-sea mask, CF (for plots and
    users)."""
    g, times = world.grid, world.times[1:]
    ds = xr.Dataset(
        {v: (("time", "lat", "lon"), world.truth[1:, j].numpy(),
             variable_attrs(v, world.attrs[v])) for j, v in enumerate(world.variables)},
        coords={"time": ("time", np.asarray(times, dtype=object),
                         {"standard_name": "time", "axis": "T"}),
                "lat": ("lat", g.lat, {"units": "degrees_north", "standard_name": "latitude",
                                       "axis": "Y"}),
                "lon": ("lon", g.lon, {"units": "degrees_east", "standard_name": "longitude",
                                       "axis": "X"})},
        attrs={"title": "truth at the analysis times",
               "source": portable_path(world.config.data.path)},
    )
    data = open_nature(world.config.data.path)  # the world's land: coastlines of the maps
    try:
        if "land_sea_mask" in data:
            land = data["land_sea_mask"].transpose("lat", "lon").values.astype(np.float32)
            ds["land_sea_mask"] = (("lat", "lon"), land,
                                   variable_attrs("land_sea_mask", data["land_sea_mask"].attrs))
    finally:
        data.close()
    ds["time"].encoding.update(_encoding(times))
    return ds


def update_timings(run_dir: Path, mode: str, seconds: list[float], cfg: RunConfig) -> None:
    path = run_dir / "timings.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    entry = data.get(mode, {"seconds_per_cycle": []})
    entry["seconds_per_cycle"] = entry["seconds_per_cycle"] + [round(s, 3) for s in seconds]
    entry["total_seconds"] = round(sum(entry["seconds_per_cycle"]), 3)
    entry["mean_seconds_per_cycle"] = round(entry["total_seconds"]
                                            / max(len(entry["seconds_per_cycle"]), 1), 3)
    if mode in SAMPLER_MODES:
        entry["nfe_per_analysis"] = cfg.analysis.sampler.nfe
    entry["threads"] = cfg.runtime.threads
    data[mode] = entry
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
