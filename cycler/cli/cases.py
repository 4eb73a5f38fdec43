"""``cycler cases`` (an experiment of several cases) and ``cycler compare`` (the modes of
runs or experiments compared, with 95 % intervals over cases)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffda.core.config import parse_assignment, parse_overrides, parse_value
from diffda.core.io import atomic_write_text
from diffda.core.runtime import threads_arg
from diffda.cycler.analysis.forecast_error import FORMS
from diffda.cycler.cycling.cases import load_cases, load_experiment, run_cases
from diffda.cycler.cycling.cases import tune as run_tuning
from diffda.cycler.cycling.compare import DEFAULT_LEAD_DAYS, compare_runs, format_table
from diffda.cycler.cycling.confidence import (
    compare_cases,
    format_confidence,
    plot_confidence,
)
from diffda.cycler.cycling.tuning import point_label

# --------------------------------------------------------------------------------- cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path,
                        help="experiment file: a run config with a [cases] table "
                             "(e.g. runs/cases.toml)")
    parser.add_argument("--out", type=Path, default=None,
                        help="experiment folder (default outputs/<name>[-tuning])")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. "
                        "--set cases.workers=2 --set enkf.inflation=1.05 (repeatable)")
    parser.add_argument("--cases", dest="which", default="verification",
                        choices=("verification", "tuning"), help="which set of cases")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running dask scheduler (default: cases.workers "
                             "local processes)")
    parser.add_argument("--threads", type=threads_arg, default=None,
                        help="torch threads per case (default: runtime.threads)")


def run(args: argparse.Namespace) -> int:
    """``cycler cases CONFIG``: every case (resuming those started), then the comparison."""
    experiment = load_experiment(args.config, parse_overrides(args.overrides))
    suffix = "" if args.which == "verification" else "-tuning"
    out = args.out or Path("outputs") / f"{experiment.base.name}{suffix}"
    run_cases(experiment, out, which=args.which, scheduler=args.scheduler, threads=args.threads)
    labels, cases, steady = load_cases([out])
    table = compare_cases(cases, 24.0 * (steady or 0.0))
    atomic_write_text(out / "confidence.json", json.dumps(table, indent=1) + "\n")
    plot = plot_confidence(table, out / "confidence.png")
    print(format_confidence(table))
    print(f"{len(labels)} cases in {out}; written: {out / 'confidence.json'}, {plot}")
    return 0


# ------------------------------------------------------------------------------- compare


def _leads(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected days like 1,3,5,7, got {text!r}") from None


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+",
                        help="run directories or experiment folders (cycler cases)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where compare.json/.png go (default: the first folder)")
    parser.add_argument("--leads", type=_leads, default=DEFAULT_LEAD_DAYS,
                        help="lead days of the table (default 1,3,5,7)")
    parser.add_argument("--steady-from", type=float, default=None, metavar="DAYS",
                        help="spin-up excluded from the steady part (default: the "
                             "experiment's cases.steady_from_days, else 2)")
    parser.add_argument("--json", action="store_true",
                        help="print the comparison with intervals as one JSON object")


def compare(args: argparse.Namespace) -> int:
    """``cycler compare DIR...``: RMSE by lead per mode (``compare.json``, ``.png``) and,
    over the cases, means with 95 % intervals and paired differences
    (``confidence.json``)."""
    out = args.out or args.run_dirs[0]
    _, cases, steady = load_cases(args.run_dirs)
    steady_days = args.steady_from if args.steady_from is not None else (
        steady if steady is not None else 2.0)
    confidence = compare_cases(cases, 24.0 * steady_days)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "confidence.json", json.dumps(confidence, indent=1) + "\n")
    if args.json:
        print(json.dumps(confidence))
        return 0
    written = [out / "confidence.json"]
    if all((d / "metrics.jsonl").is_file() for d in args.run_dirs):
        table = compare_runs(list(args.run_dirs), out, args.leads)
        written += [out / "compare.json", out / "compare.png"]
        if confidence["n_cases"] == 1:
            print(format_table(table))
    if confidence["n_cases"] > 1:
        written.append(plot_confidence(confidence, out / "confidence.png"))
        print(format_confidence(confidence, args.leads))
    print("written: " + ", ".join(map(str, written)))
    return 0


# ---------------------------------------------------------------------------------- tune


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment file with cases.tuning")
    parser.add_argument("--param", action="append", required=True, metavar="KEY=V1,V2,...",
                        help="a tuned key and its values (repeatable: a grid), e.g. "
                             "--param enkf.inflation=1.0,1.1,1.2 --param enkf.radius_km=1000,2000")
    parser.add_argument("--mode", required=True, help="the mode tuned (only it runs)")
    parser.add_argument("--variable", default="all",
                        help="the steady RMSE minimised: a variable, or 'all' (the mean of "
                             "the variables' RMSE in climate standard deviations; default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="tuning folder (default outputs/<name>-tune-<mode>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value (repeatable)")
    parser.add_argument("--scheduler", default=None, help="a running dask scheduler")
    parser.add_argument("--threads", type=threads_arg, default=None, help="torch threads per case")


def tune(args: argparse.Namespace) -> int:
    """``cycler tune EXPERIMENT --param K=V1,V2 ... --mode M``: the grid on the tuning
    cases; the best values in ``tuned.json`` (read by ``cases.tuned``)."""
    params: dict[str, list[object]] = {}
    for text in args.param:
        key, values = parse_assignment(text)
        params[key] = [parse_value(v) for v in values.split(",") if v.strip()]
        if not params[key]:
            raise ValueError(f"--param {text!r}: no values")
    overrides = parse_overrides(args.overrides)
    name = load_experiment(args.config, overrides).base.name
    out = args.out or Path("outputs") / f"{name}-tune-{args.mode}"
    record = run_tuning(args.config, params, mode=args.mode, variable=args.variable, out=out,
                        overrides=overrides, scheduler=args.scheduler, threads=args.threads)
    print(f"{'point':<40} steady RMSE ({args.variable})")
    for s in record["grid"]:
        print(f"{point_label(s['values']):<40} {s['score']:.4g}")
    print(f"best: {point_label(record['values'])}; written: {out / 'tuned.json'} "
          f"(read it with --set cases.tuned={out / 'tuned.json'})")
    return 0


# ----------------------------------------------------------------------------- calibrate


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment file with cases.tuning")
    parser.add_argument("--iterations", type=int, default=3,
                        help="run -> fit iterations at most (3)")
    parser.add_argument("--tol", type=float, default=0.05,
                        help="stop when the fit differs from the model the runs used by less "
                             "than this (relative; 0.05)")
    parser.add_argument("--relaxation", type=float, default=0.5,
                        help="step toward each new fit after the first (0.5; 1: undamped)")
    parser.add_argument("--form", choices=FORMS, default="extended",
                        help="extended: fit the extended likelihood's (alpha, beta) "
                             "(default); direct: the forecast as an observation of the state "
                             "with the error variance its innovations show (alpha = 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="calibration folder (default outputs/<name>-calibrate)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value (repeatable)")
    parser.add_argument("--scheduler", default=None, help="a running dask scheduler")
    parser.add_argument("--threads", type=threads_arg, default=None, help="torch threads per case")


def calibrate(args: argparse.Namespace) -> int:
    """``cycler calibrate EXPERIMENT``: the forecast term's (alpha, beta) per mode and
    variable, fitted from the tuning cases' innovations and iterated; ``fitted.json`` is
    read by ``--set analysis.forecast.error_model=fitted:PATH``."""
    from diffda.cycler.cycling.calibrate import calibrate as run_calibration

    overrides = parse_overrides(args.overrides)
    name = load_experiment(args.config, overrides).base.name
    out = args.out or Path("outputs") / f"{name}-calibrate"
    record = run_calibration(args.config, out, iterations=args.iterations, tol=args.tol,
                             relaxation=args.relaxation, form=args.form,
                             overrides=overrides,
                             scheduler=args.scheduler, threads=args.threads)
    for h in record["history"]:
        print(f"iteration {h['iteration']} ({h['error_model']}): fit - model used, largest "
              f"relative difference {h['largest_relative_change']:.3g}")
        for mode, table in h["parameters"].items():
            for v, leads in table.items():
                pairs = ", ".join(f"{k} h: ({a:.3f}, {b:.3g})" if k != "0" else
                                  f"({a:.3f}, {b:.3g})" for k, (a, b) in list(leads.items())[:3])
                more = " ..." if len(leads) > 3 else ""
                km = h.get("correlation_km", {}).get(mode, {}).get(v)
                length = "" if km is None else f"; correlation length {km:.0f} km"
                print(f"  {mode:<14} {v:<7} alpha, beta = {pairs}{more}{length}")
    print(f"written: {out / 'fitted.json'} (read it with --set "
          f"analysis.forecast.error_model=fitted:{out / 'fitted.json'})")
    return 0
