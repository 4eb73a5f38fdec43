"""``cycler obs ...`` (inspect and make observations) and ``cycler bench operators``.

Thin entry points: they parse the options, call one library function and print. The
science lives in :mod:`~diffda.observations.describe` (inspect),
:mod:`~diffda.observations.synthetic` (make) and :mod:`~diffda.observations.bench`.

Usage::

    cycler obs inspect FILE [--json] [--active-years 2000:2026] [--lenient]
    cycler obs make --truth TRUTH.nc --out OBS.nc [--network default|IGRA_LIST]
                    [--n-stations 200] [--seed 0] [--variables height,u,v,tracer]
                    [--error-std height=20,u=1.5,v=1.5] [--hours 0,12]
                    [--active-years 2000:2026] [--igra-dir DIR] [--no-progress]
    cycler bench operators [--grid 32x64] [--n-stations 250] [--members 16]
                           [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from diffda.core.grid import Grid
from diffda.cycler.cli.common import print_record
from diffda.emulators.dataio import open_dataset
from diffda.observations.bench import BENCH_VARIABLES, interpolation_errors, time_operators
from diffda.observations.describe import describe
from diffda.observations.synthetic import make_observations

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


def inspect(args: argparse.Namespace) -> int:
    """Describe the file; exit 1 if some of its lines could not be read (unless
    ``--lenient``), 2 (a ValueError) if it is not an observation file at all."""
    d = describe(args.file, parse_years(args.active_years))
    print_record(d, args.json, _print_description, indent=1)
    problems = d.get("n_problems", 0)
    if problems and not args.lenient:
        print(f"cycler obs inspect: {args.file}: {problems} line(s) could not be read (listed "
              "above); --lenient accepts the file as it is", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- make


def make(args: argparse.Namespace) -> int:
    # --active-years filters a station list: with the default network it is not read
    years = parse_years(args.active_years) if args.network != "default" else None
    truth = Path(args.truth)
    if not truth.exists():
        raise FileNotFoundError(f"truth dataset {truth} does not exist")
    make_observations(
        open_dataset(truth), args.out, network=args.network, n_stations=args.n_stations,
        active_years=years, seed=args.seed,
        variables=[v.strip() for v in args.variables.split(",") if v.strip()],
        error_std=parse_error_std(args.error_std),
        hours=[int(h) for h in args.hours.split(",")], igra_dir=args.igra_dir,
        progress=not args.no_progress, log=print,
    )
    return 0


# --------------------------------------------------------------------------- entry points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("inspect", help="describe an IGRA v2 station list or sounding file, "
                       "or a station-observation netCDF file")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--active-years", default=None, help="station lists: FIRST:LAST")
    p.add_argument("--lenient", action="store_true",
                   help="exit 0 even if some lines could not be read (they are listed)")
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
        return inspect(args)
    return make(args)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="32x64", help="state grid NLATxNLON")
    parser.add_argument("--n-stations", type=int, default=250, help="stations (x 4 variables)")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)


def bench(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    grid = parse_grid(args.grid)
    print(f"grid {grid}, {args.members} members x {len(BENCH_VARIABLES)} variables, "
          f"{args.threads} thread(s), median of {args.repeats}")
    timings, unavailable = time_operators(grid, args.n_stations, args.members, args.repeats)
    for name, err in unavailable.items():
        print(f"{name}: {err}")
    print(f"{'operator':<16} {'n_obs':>7} {'forward ms':>11} {'fwd+bwd ms':>11} {'jvp ms':>8}")
    for t in timings:
        print(f"{t.name:<16} {t.n_obs:7d} {t.forward_ms:11.3f} {t.forward_backward_ms:11.3f} "
              f"{t.jvp_ms:8.3f}")

    print("\naccuracy on smooth fields (max abs error; s: degree-3 polynomial on the sphere,"
          " u/v: tilted rotation + projected constant)")
    print(f"{'grid':<8} {'keys-0.5 s':>11} {'keys-0.5 u,v':>13} {'grid_sample s':>14} "
          f"{'(|lat|<=85)':>12}")
    for e in interpolation_errors():
        print(f"{str(e.grid):<8} {e.keys_scalar:11.2e} {e.keys_vector:13.2e} "
              f"{e.grid_sample_scalar:14.2e}")
    return 0
