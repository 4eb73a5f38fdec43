"""``cycler run | resume | sweep``: thin entry points around :mod:`.driver` (``cycler compare``
and ``cycler cases`` are in :mod:`.cases`).

- ``cycler run CONFIG.toml [--out DIR] [--set KEY=VALUE ...] [--threads N] [--workers N]
  [--no-plots]``
- ``cycler resume RUN_DIR [--threads N] [--workers N] [--no-plots]``
- ``cycler sweep CONFIG.toml --param analysis.lambda=0,0.5,1,2,4 [--modes precomputed,...]
  [--scheduler ADDRESS] [--workers N] [--threads-per-run N] [--out DIR]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from diffda.core.config import parse_assignment, parse_overrides, parse_value
from diffda.core.lock import check_unlocked
from diffda.core.runtime import threads_arg
from diffda.cycler.cycling.compare import (
    compare_runs,
    format_table,
    lead_table,
)
from diffda.cycler.cycling.config import RunConfig, load_run_config, read_resolved
from diffda.cycler.cycling.driver import run_experiment
from diffda.cycler.cycling.outputs import read_metrics
from diffda.cycler.cycling.sweep import sweep as run_parameter_sweep
from diffda.cycler.cycling.sweep import sweep_configs


def _with_runtime(cfg: RunConfig, threads: int | str | None, workers: int | None = None
                  ) -> RunConfig:
    """``cfg`` with ``threads``/``workers`` where given; every other runtime setting kept."""
    rt = cfg.runtime
    return dataclasses.replace(cfg, runtime=dataclasses.replace(
        rt, threads=rt.threads if threads is None else threads,
        workers=rt.workers if workers is None else workers))


def _report(run_dir: Path) -> None:
    timings = run_dir / "timings.json"
    if timings.is_file():
        data = json.loads(timings.read_text())
        print(f"{'mode':<15} {'cycles':>6} {'s/cycle':>9} {'total s':>9}")
        for mode, t in data.items():
            print(f"{mode:<15} {len(t['seconds_per_cycle']):>6} "
                  f"{t['mean_seconds_per_cycle']:>9.2f} {t['total_seconds']:>9.1f}")
    print(f"run directory: {run_dir}")
    for name in ("metrics.jsonl", "timings.json", "analyses", "truth.nc", "observations.nc",
                 "plots", "compare.json", "compare.png"):
        if (run_dir / name).exists():
            print(f"  {name:<15} {run_dir / name}")


# --------------------------------------------------------------------------------- run


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="run config (TOML), e.g. runs/sevenday.toml")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory (default outputs/<name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. analysis.lambda=2")
    parser.add_argument("--threads", type=threads_arg, default=None,
                        help="torch threads per process, or auto (the cores free now)")
    parser.add_argument("--workers", type=int, default=None,
                        help="run the modes in this many processes at once")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")


def run(args: argparse.Namespace) -> int:
    """``cycler run CONFIG.toml [--out DIR]``: all modes of the config, then the plots."""
    cfg = load_run_config(args.config, parse_overrides(args.overrides))
    cfg = _with_runtime(cfg, args.threads, args.workers)
    run_dir = args.out or Path("outputs") / cfg.name
    tic = time.perf_counter()
    run_experiment(cfg, run_dir, plots=False if args.no_plots else None)
    print(f"finished in {time.perf_counter() - tic:.1f} s")
    _summarise(run_dir, plots=not args.no_plots)
    return 0


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (holds config.json)")
    parser.add_argument("--threads", type=threads_arg, default=None,
                        help="torch threads (default: the run's recorded count; another "
                             "count changes the numbers slightly, with a warning)")
    parser.add_argument("--workers", type=int, default=None,
                        help="run the modes in this many processes at once")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")


def resume(args: argparse.Namespace) -> int:
    """``cycler resume RUN_DIR``: continue from the last complete cycle of each mode, with
    the run's recorded settings (``runtime`` of its ``config.json``, which is kept) unless
    ``--threads``/``--workers`` say otherwise; other threads than recorded are warned about
    (the numbers then differ slightly from an uninterrupted run's)."""
    check_unlocked(args.run_dir)  # "in use by ..." rather than "no config.json" while it starts
    recorded = read_resolved(args.run_dir / "config.json")
    if args.threads is not None and args.threads != recorded.runtime.threads:
        print(f"cycler resume: warning: --threads {args.threads} differs from the "
              f"{recorded.runtime.threads} recorded in {args.run_dir / 'config.json'}: the "
              "resumed cycles will not be bit-identical to an uninterrupted run",
              file=sys.stderr)
    cfg = _with_runtime(recorded, args.threads, args.workers)
    run_experiment(cfg, args.run_dir, resume=True, plots=False if args.no_plots else None)
    _summarise(args.run_dir, plots=not args.no_plots)
    return 0


def _summarise(run_dir: Path, plots: bool) -> None:
    """The comparison table of the run's modes, printed once (``compare.json``, and
    ``compare.png`` with ``plots``), then where the outputs are. ``cycler compare`` prints
    the same table again only when asked."""
    if plots:
        table = compare_runs([run_dir], run_dir)
    else:
        table = lead_table({run_dir.resolve().name: read_metrics(run_dir)})
    print(format_table(table))
    _report(run_dir)


# ------------------------------------------------------------------------------- sweep


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="base run config (TOML)")
    parser.add_argument("--param", required=True, metavar="KEY=V1,V2,...",
                        help="the swept key and its values, e.g. analysis.lambda=0,0.5,1,2,4")
    parser.add_argument("--modes", default=None,
                        help="modes of each run (comma-separated; default: the config's)")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--threads-per-run", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=None,
                        help="sweep directory (default outputs/sweep-<name>-<key>)")


def sweep(args: argparse.Namespace) -> int:
    """``cycler sweep CONFIG.toml --param KEY=V1,V2,...``: independent runs (dask), then a
    table of RMSE by lead time per value (paper Table 2)."""
    key, values_text = parse_assignment(args.param)
    values = [parse_value(v) for v in values_text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--param {args.param!r}: no values")
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else None
    configs = sweep_configs(args.config, key, values, modes, args.threads_per_run)
    out = args.out or Path("outputs") / f"sweep-{configs[0][1].name.rsplit('-', 1)[0]}-{key}"
    tic = time.perf_counter()
    table = run_parameter_sweep(configs, key, out, args.scheduler, args.workers)
    print(format_table(table))
    for mode, per_var in table["best"].items():
        for var, picks in per_var.items():
            days = ", ".join(f"day {d:g}: {p}" for d, p in zip(table["lead_days"], picks,
                                                              strict=True) if p)
            print(f"best {key} for {mode} {var}: {days}")
    print(f"{len(configs)} runs in {time.perf_counter() - tic:.1f} s; written: "
          f"{out / 'sweep.json'}, {out / 'sweep.png'}")
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, nargs="?", default=Path("runs/sevenday.toml"),
                        help="run config (default runs/sevenday.toml, the default experiment)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. data.days=1")
    parser.add_argument("--threads", type=threads_arg, default=None,
                        help="torch threads (default: the config's runtime.threads)")
    parser.add_argument("--out", type=Path, default=None,
                        help="a fresh directory for the checkpoints (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def bench(args: argparse.Namespace) -> int:
    """``cycler bench run [CONFIG] [--json]``: seconds in total, per mode and cycle, network
    evaluations and the share of the time outside the networks."""
    import tempfile

    from diffda.cycler.cycling.bench import bench_run, format_bench

    cfg = _with_runtime(load_run_config(args.config, parse_overrides(args.overrides)),
                        args.threads)
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="diffda-bench-") as tmp:
            result = bench_run(cfg, tmp)
    else:
        result = bench_run(cfg, args.out)
    print(json.dumps(result) if args.json else format_bench(result))
    return 0
