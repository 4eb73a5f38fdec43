"""``cycler nature`` (run the nature run) and ``cycler bench nature`` (its speed).

Usage::

    cycler nature (--years Y | --days D) --out PATH.zarr|PATH.nc [--spinup-days S]
                  [--seed 0] [--chunk-days 30] [--plots DIR] [--json FILE]
                  [--twin-days 30] [--twin-perturbation 1.0] [--model-grid 64x128]
                  [--dt S] [--threads 1] [--no-progress] [--continue-from RUN]
    cycler bench nature [--days 2] [--nlat 64] [--nlon 128] [--dt 600] [--batch 1]
                        [--threads 1]

    cycler subset DATA --start YYYY-MM-DDTHH:MM --days D --out FILE.nc [--background 32]

``cycler subset`` cuts a small truth file from a large dataset: the window ``start ..
start + days`` at every stored time, plus ``--background`` states spread evenly over the
rest of the window's calendar year (the EnKF's initial anomalies are drawn from times
outside the window), with statics and the climatology attributes. This is how the
repository's embedded 7-day world (``emulators/data/``) is made.

``--continue-from RUN`` continues a finished run ``RUN`` from its final state (its
``.restart.safetensors``) into a new store ``--out``: the same model and seed, no spin-up,
times from where ``RUN`` ended (e.g. more held-out years for the emulator's climate scores).

A killed ``cycler nature`` resumes when called again with the same arguments. Called on a
finished ``--out`` with ``--plots`` or ``--json``, it only (re)computes the diagnostics.

The science is in :mod:`diffda.emulators.nature` (:mod:`~diffda.emulators.nature.run`,
:mod:`~diffda.emulators.nature.diagnostics`, :mod:`~diffda.emulators.nature.bench`,
:mod:`~diffda.emulators.nature.subset`); this module only wires it up.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from diffda.core.io import atomic_write_text
from diffda.emulators.nature.bench import bench_shallow_water
from diffda.emulators.nature.diagnostics import TWIN_PERTURBATION_M, diagnose
from diffda.emulators.nature.run import NatureConfig, continuation, run_nature
from diffda.emulators.nature.shallow_water import ShallowWaterConfig
from diffda.emulators.nature.subset import truth_window, write_window


def add_arguments(parser: argparse.ArgumentParser) -> None:
    span = parser.add_mutually_exclusive_group(required=True)
    span.add_argument("--years", type=float, help="stored years (365 days) after spin-up")
    span.add_argument("--days", type=float, help="stored days after spin-up")
    parser.add_argument("--out", type=Path, required=True,
                        help="output .zarr or .nc path, e.g. outputs/data/nature.zarr")
    parser.add_argument("--spinup-days", type=float, default=180.0, help="not stored (180)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial noise and of the stirring (0)")
    parser.add_argument("--chunk-days", type=float, default=30.0,
                        help="days per appended chunk and checkpoint (30)")
    parser.add_argument("--plots", type=Path, help="folder for acceptance plots")
    parser.add_argument("--json", type=Path, help="write the acceptance summary here")
    parser.add_argument("--twin-days", type=float, default=30.0,
                        help="length of the twin experiment in the diagnostics (30)")
    parser.add_argument("--twin-perturbation", type=float, default=TWIN_PERTURBATION_M,
                        help=f"rms height perturbation of the twin, m ({TWIN_PERTURBATION_M:g})")
    parser.add_argument("--model-grid", default="64x128",
                        help="model grid NLATxNLON (64x128; T = NLON // 3)")
    parser.add_argument("--dt", type=float, default=None,
                        help="model time step in s, must divide 6 h (model default)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--continue-from", type=Path, default=None, metavar="RUN",
                        help="a finished nature run to continue from its final state (same "
                             "model and seed; --spinup-days, --seed, --model-grid, --dt unused)")


def _model_config(grid: str, dt: float | None, seed: int = 0) -> ShallowWaterConfig:
    try:
        nlat, nlon = (int(x) for x in grid.lower().split("x"))
    except ValueError:
        raise ValueError(f"--model-grid {grid!r}: expected NLATxNLON, e.g. 64x128") from None
    cfg = ShallowWaterConfig(nlat=nlat, nlon=nlon, stir_seed=seed)
    return cfg if dt is None else replace(cfg, dt_seconds=dt)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    days = args.days if args.days is not None else 365.0 * args.years
    initial = None
    if args.continue_from is not None:
        cfg, initial = continuation(args.continue_from, days, args.chunk_days)
    else:
        cfg = NatureConfig(days=days, spinup_days=args.spinup_days, seed=args.seed,
                           chunk_days=args.chunk_days,
                           model=_model_config(args.model_grid, args.dt, args.seed))
    if args.out.exists() and (args.plots is not None or args.json is not None):
        out = args.out  # a finished run: diagnostics only
    else:
        out = run_nature(cfg, args.out, progress=not args.no_progress, initial=initial)
        print(f"wrote {out}")
    if args.plots is not None or args.json is not None:
        summary = diagnose(out, cfg, args.plots, twin_days=args.twin_days,
                           progress=not args.no_progress,
                           twin_perturbation_m=args.twin_perturbation)
        text = json.dumps(summary, indent=2, default=float)
        if args.json is not None:
            atomic_write_text(args.json, text)
        if args.plots is not None:
            atomic_write_text(args.plots / "summary.json", text)
        print(text)
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=float, default=2.0, help="simulated days (2)")
    parser.add_argument("--nlat", type=int, default=64)
    parser.add_argument("--nlon", type=int, default=128)
    parser.add_argument("--dt", type=float, default=None, help="time step, s (model default)")
    parser.add_argument("--batch", type=int, default=1, help="members stepped together (1)")
    parser.add_argument("--threads", type=int, default=1)


def bench(args: argparse.Namespace) -> int:
    """Simulated days per wall-clock second of the shallow-water model (after warm-up)."""
    torch.set_num_threads(args.threads)
    cfg = ShallowWaterConfig(nlat=args.nlat, nlon=args.nlon)
    if args.dt is not None:
        cfg = replace(cfg, dt_seconds=args.dt)
    res = bench_shallow_water(cfg, args.days, args.batch)
    n, wall, days = res["steps"], res["wall"], res["days"]
    print(f"shallow water {cfg.nlat}x{cfg.nlon} T{cfg.lmax - 1} dt={cfg.dt_seconds:g}s "
          f"batch={args.batch} threads={args.threads}: {n} steps in {wall:.2f} s, "
          f"{1e3 * wall / n:.2f} ms/step, {days / wall:.3f} simulated days/s "
          f"({days * args.batch / wall:.3f} member-days/s)")
    return 0


def add_subset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="canonical dataset (.zarr or .nc)")
    parser.add_argument("--start", required=True, nargs="+",
                        help="first time of the window, YYYY-MM-DDTHH:MM; several: one window "
                             "each (the cases of an experiment)")
    parser.add_argument("--days", type=float, required=True, help="length of the window, days")
    parser.add_argument("--out", type=Path, required=True, help="output netCDF file (.nc)")
    parser.add_argument("--background", type=int, default=32,
                        help="extra states outside the window, same calendar year (32)")
    parser.add_argument("--every-hours", type=int, default=None,
                        help="keep only the times on this schedule (e.g. 12: the analysis "
                             "times), for a smaller file")


def subset(args: argparse.Namespace) -> int:
    """Write the window and background states of ``args.data`` to a compressed netCDF."""
    if args.out.suffix != ".nc":
        raise ValueError(f"--out {args.out}: expected a .nc file")
    if args.days <= 0 or args.background < 0:
        raise ValueError(f"--days {args.days} must be positive, --background {args.background} "
                         f"not negative")
    sub, n_window, n_pick = truth_window(args.data, args.start, args.days, args.background,
                                        args.every_hours)
    write_window(sub, args.out)
    print(f"wrote {args.out} ({sub.sizes['time']} times: {n_window} in the window, "
          f"{n_pick} background; {args.out.stat().st_size / 1e6:.2f} MB)")
    return 0
