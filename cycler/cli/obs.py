"""``cycler obs ...`` (inspect and make observations) and ``cycler bench operators``.

Thin entry points; the science lives in :mod:`~diffda.observations.stations`,
:mod:`~diffda.observations.igra`, :mod:`~diffda.observations.synthetic` and
:mod:`~diffda.observations.operators`.

Usage::

    cycler obs inspect FILE [--json] [--active-years 2000:2026]
    cycler obs make --truth TRUTH.nc --out OBS.nc [--network default|IGRA_LIST]
                    [--n-stations 200] [--seed 0] [--variables height,u,v,tracer]
                    [--error-std height=20,u=1.5,v=1.5] [--hours 0,12]
                    [--active-years 2000:2026] [--igra-dir DIR] [--no-progress]
    cycler bench operators [--grid 32x64] [--n-stations 250] [--members 16]
                           [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from diffda.core.grid import Grid

# --------------------------------------------------------------------------- parsing helpers


def parse_years(text: str | None) -> tuple[int, int] | None:
    """``"2000:2026"`` -> ``(2000, 2026)``."""
    if text is None:
        return None
    try:
        a, b = (int(p) for p in text.split(":"))
    except ValueError:
        raise ValueError(f"--active-years {text!r}: expected FIRST:LAST, e.g. 2000:2026") from None
    if a > b:
        raise ValueError(f"--active-years {text!r}: first year after last year")
    return a, b


def parse_error_std(text: str | None) -> dict[str, float]:
    """``"height=20,u=1.5"`` -> ``{"height": 20.0, "u": 1.5}``."""
    out: dict[str, float] = {}
    if not text:
        return out
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--error-std item {item!r}: expected NAME=VALUE") from None
    return out


def parse_grid(text: str) -> Grid:
    try:
        nlat, nlon = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--grid {text!r}: expected NLATxNLON, e.g. 32x64") from None
    return Grid(nlat, nlon)


# --------------------------------------------------------------------------- inspect


def file_kind(path: Path) -> str:
    """``"netcdf"``, ``"soundings"`` (IGRA v2 data) or ``"station-list"`` (IGRA v2 list)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"CDF") or head.startswith(b"\x89HDF"):
        return "netcdf"
    with path.open(encoding="latin-1") as f:
        for line in f:
            if line.strip():
                return "soundings" if line.startswith("#") else "station-list"
    raise ValueError(f"{path} is empty")


def describe(path: Path, active_years: tuple[int, int] | None = None) -> dict[str, Any]:
    """A JSON-able description of an IGRA v2 station list, sounding file or obs netCDF."""
    kind = file_kind(path)
    if kind == "soundings":
        from diffda.observations.igra import read_igra

        f = read_igra(path)
        return {
            "file": str(path), "kind": "IGRA v2 soundings", "n_soundings": len(f.soundings),
            "soundings": [
                {
                    "station": s.header.id,
                    "time": f"{s.header.year:04d}-{s.header.month:02d}-{s.header.day:02d}"
                            f"T{s.header.hour:02d}" if s.header.hour != 99 else
                            f"{s.header.year:04d}-{s.header.month:02d}-{s.header.day:02d}T??",
                    "lat": s.header.lat, "lon": s.header.lon,
                    "levels_read": len(s.levels), "levels_declared": s.header.numlev,
                    "line": s.line,
                }
                for s in f.soundings
            ],
            "skipped": [{"line": k.line, "reason": k.reason} for k in f.skipped],
        }
    if kind == "station-list":
        from diffda.observations.stations import read_station_list

        net, skipped = read_station_list(path, active_years=active_years)
        reasons: dict[str, int] = {}
        for k in skipped:
            key = k.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "file": str(path), "kind": "IGRA v2 station list",
            "active_years": list(active_years) if active_years else None,
            "n_stations": len(net),
            "stations": [
                {"id": s.id, "lat": s.lat, "lon": s.lon, "name": s.name,
                 "years": [s.first_year, s.last_year]}
                for s in net.stations
            ],
            "skipped_by_reason": reasons,
            "skipped": [{"line": k.line, "reason": k.reason} for k in skipped],
        }
    from diffda.observations.synthetic import read_observations

    ds = read_observations(path)
    times = ds["time"].values
    return {
        "file": str(path), "kind": "station observations (netCDF)",
        "n_times": int(ds.sizes.get("time", 0)), "n_stations": int(ds.sizes.get("station", 0)),
        "first_time": str(times[0]) if len(times) else None,
        "last_time": str(times[-1]) if len(times) else None,
        "variables": {
            v: {"units": ds[v].attrs.get("units", ""),
                "observation_error_std": ds[v].attrs.get("observation_error_std"),
                "n_missing": int(np.isnan(ds[v].values).sum())}
            for v in ds.data_vars
        },
    }


def _print_description(d: dict[str, Any]) -> None:
    print(f"{d['file']}: {d['kind']}")
    if "soundings" in d:
        print(f"{d['n_soundings']} soundings")
        print(f"{'station':<12} {'time':<14} {'lat':>9} {'lon':>10} {'levels':>7} {'declared':>8}")
        for s in d["soundings"]:
            print(f"{s['station']:<12} {s['time']:<14} {s['lat']:9.4f} {s['lon']:10.4f} "
                  f"{s['levels_read']:7d} {s['levels_declared']:8d}")
    elif "stations" in d:
        print(f"{d['n_stations']} stations kept")
        for reason, n in sorted(d["skipped_by_reason"].items()):
            print(f"  skipped {n:5d}: {reason}")
    else:
        print(f"{d['n_times']} times ({d['first_time']} .. {d['last_time']}), "
              f"{d['n_stations']} stations")
        for v, info in d["variables"].items():
            print(f"  {v:<8} [{info['units']}] error std {info['observation_error_std']}, "
                  f"{info['n_missing']} missing")
    skipped = d.get("skipped", [])
    if skipped and "stations" not in d:
        print(f"skipped ({len(skipped)}):")
        for k in skipped:
            print(f"  line {k['line']}: {k['reason']}")
    elif skipped:
        for k in skipped:
            if k["reason"].startswith(("bad", "duplicate")):
                print(f"  line {k['line']}: {k['reason']}")


# --------------------------------------------------------------------------- make


def open_truth(path: Path) -> xr.Dataset:
    """Open a canonical truth dataset lazily (the data layer's reader when available)."""
    if not path.exists():
        raise FileNotFoundError(f"truth dataset {path} does not exist")
    try:
        from diffda.emulators.dataio import open_dataset  # the data layer's canonical reader
    except ImportError:
        coder = xr.coders.CFDatetimeCoder(use_cftime=True)
        if path.is_dir() or path.suffix == ".zarr":
            return xr.open_zarr(path, decode_times=coder)
        return xr.open_dataset(path, decode_times=coder, chunks={"time": 16})
    return open_dataset(path)


def make(args: argparse.Namespace) -> int:
    from diffda.observations.igra import write_igra_directory
    from diffda.observations.stations import default_network, grid_land, read_station_list
    from diffda.observations.synthetic import synthetic_station_observations, write_observations

    truth = open_truth(Path(args.truth))
    if args.network == "default":
        land = (grid_land(truth["land_sea_mask"].values) if "land_sea_mask" in truth
                else None)
        kwargs = {"is_land": land} if land is not None else {}
        network = default_network(args.n_stations, seed=args.seed, **kwargs)
        print(f"default network: {len(network)} stations on "
              f"{'the dataset land_sea_mask' if land else 'global_land_mask'} land")
    else:
        network, skipped = read_station_list(args.network, parse_years(args.active_years))
        print(f"{args.network}: {len(network)} stations, {len(skipped)} lines skipped")
    variables = [v.strip() for v in args.variables.split(",") if v.strip()]
    hours = [int(h) for h in args.hours.split(",")]
    obs = synthetic_station_observations(
        truth, network, seed=args.seed, variables=variables,
        error_std=parse_error_std(args.error_std), hours=hours, progress=not args.no_progress,
    )
    out = write_observations(obs, args.out)
    print(f"wrote {out}: {obs.sizes['time']} times x {obs.sizes['station']} stations, "
          "error std " + ", ".join(f"{v}={obs[v].attrs['observation_error_std']:.4g}"
                                   for v in variables))
    if args.igra_dir:
        paths, n_bad = write_igra_directory(obs, args.igra_dir)
        print(f"wrote {len(paths)} IGRA v2 files to {args.igra_dir}"
              + (f" ({n_bad} non-positive tracer values written as missing)" if n_bad else ""))
    return 0


# --------------------------------------------------------------------------- entry points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("inspect", help="describe an IGRA v2 station list or sounding file, "
                       "or a station-observation netCDF file")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--active-years", default=None, help="station lists: FIRST:LAST")
    m = sub.add_parser("make", help="synthetic station observations from a truth run")
    m.add_argument("--truth", required=True, help="canonical truth dataset (netCDF or zarr)")
    m.add_argument("--out", required=True, type=Path, help="output netCDF file")
    m.add_argument("--network", default="default",
                   help="'default' (drawn on land) or an IGRA v2 station list file")
    m.add_argument("--n-stations", type=int, default=200, help="size of the default network")
    m.add_argument("--active-years", default=None, help="filter an IGRA list: FIRST:LAST")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--variables", default="height,u,v,tracer")
    m.add_argument("--error-std", default=None,
                   help="physical error std per variable, NAME=VALUE,...; others get "
                        "0.1 x the std of their station values")
    m.add_argument("--hours", default="0,12", help="observation hours (UTC)")
    m.add_argument("--igra-dir", default=None, help="also write IGRA v2 files here")
    m.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.action == "inspect":
        d = describe(args.file, parse_years(args.active_years))
        if args.json:
            print(json.dumps(d, indent=1))
        else:
            _print_description(d)
        return 0
    return make(args)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="32x64", help="state grid NLATxNLON")
    parser.add_argument("--n-stations", type=int, default=250, help="stations (x 4 variables)")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)


def _time_ms(fn: Any, repeats: int) -> float:
    fn()
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(best))


def bench(args: argparse.Namespace) -> int:
    import torch
    from diffda.observations.operators import (
        PointOperator,
        forecast_grid_operator,
        grid_sample_reference,
        low_resolution_operator,
        smooth_sphere_fields,
    )
    from diffda.observations.stations import default_network

    torch.set_num_threads(args.threads)
    grid = parse_grid(args.grid)
    variables = ("height", "u", "v", "tracer")
    net = default_network(args.n_stations, seed=0)
    point = PointOperator.from_network(net, grid, variables)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.members, len(variables), grid.nlat, grid.nlon, generator=gen)
    print(f"grid {grid}, {args.members} members x {len(variables)} variables, "
          f"{args.threads} thread(s), median of {args.repeats}")

    def fwd_bwd(op: torch.nn.Module) -> None:
        xr_ = x.clone().requires_grad_(True)
        op(xr_).square().sum().backward()

    def jvp(op: torch.nn.Module) -> None:
        torch.func.jvp(op, (x,), (x,))

    rows = [("point", point)]
    for name, factory in (("low-res 8x16", low_resolution_operator),
                          ("forecast 16x32", forecast_grid_operator)):
        try:
            rows.append((name, factory(grid, variables)))
        except ValueError as err:
            print(f"{name}: {err}")
    print(f"{'operator':<16} {'n_obs':>7} {'forward ms':>11} {'fwd+bwd ms':>11} {'jvp ms':>8}")
    for name, op in rows:
        with torch.no_grad():
            t_f = _time_ms(lambda op=op: op(x), args.repeats)
        t_b = _time_ms(lambda op=op: fwd_bwd(op), args.repeats)
        t_j = _time_ms(lambda op=op: jvp(op), args.repeats)
        print(f"{name:<16} {op.n_obs:7d} {t_f:11.3f} {t_b:11.3f} {t_j:8.3f}")

    print("\naccuracy on smooth fields (max abs error; s: degree-3 polynomial on the sphere,"
          " u/v: tilted rotation + projected constant)")
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-90, 90, 1000), rng.uniform(85, 90, 100)])
    lon = rng.uniform(0, 360, len(lat))
    exact = smooth_sphere_fields(lat, lon)
    print(f"{'grid':<8} {'keys-0.5 s':>11} {'keys-0.5 u,v':>13} {'grid_sample s':>14} "
          f"{'(|lat|<=85)':>12}")
    for nlat in (32, 64, 128):
        g = Grid(nlat, 2 * nlat)
        la2, lo2 = np.meshgrid(g.lat, g.lon, indexing="ij")
        f = smooth_sphere_fields(la2, lo2)
        xs = torch.as_tensor(np.stack([f["s"], f["u"], f["v"]])[None])
        n = len(lat)
        op = PointOperator(g, ("s", "u", "v"), np.tile(lat, 3), np.tile(lon, 3),
                           ["s"] * n + ["u"] * n + ["v"] * n)
        y = op(xs)[0].numpy()
        err_s = np.abs(y[:n] - exact["s"]).max()
        err_uv = max(np.abs(y[n:2 * n] - exact["u"]).max(), np.abs(y[2 * n:] - exact["v"]).max())
        inner = np.abs(lat) <= 85
        ref = grid_sample_reference(xs, lat[inner], lon[inner])[0, 0].numpy()
        err_ref = np.abs(ref - exact["s"][inner]).max()
        print(f"{str(g):<8} {err_s:11.2e} {err_uv:13.2e} {err_ref:14.2e}")
    return 0
