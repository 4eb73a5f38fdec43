"""Command line of the additions fitted to trained emulator weights:
``cycler train emulator-noise|emulator-budget|emulator-combine|emulator-adjust``.

- ``cycler train emulator-noise WEIGHTS --data PATH --out OUT.safetensors``: noise modes
  from the one-step residuals (:mod:`diffda.emulators.forecast.stochastic`).
- ``cycler train emulator-budget WEIGHTS --data PATH --variables height --out OUT``: a
  global-mean budget law (:mod:`diffda.emulators.forecast.budget`).
- ``cycler train emulator-combine W1 W2 [W3 ...] --out OUT.safetensors``: one emulator
  whose tendency is the mean of several networks (:mod:`diffda.emulators.forecast.combine`).
- ``cycler train emulator-adjust WEIGHTS --data PATH --out OUT.safetensors``: a zonal-mean
  tendency correction fitted on free runs (:mod:`diffda.emulators.forecast.adjustment`).

Each writes a copy of the weights with its addition and a record in the card
(:mod:`diffda.emulators.forecast.fitting`); this module only wires them up.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from diffda.emulators.forecast.adjustment import fit_tendency_correction
from diffda.emulators.forecast.budget import fit_global_budget
from diffda.emulators.forecast.combine import combine_weights
from diffda.emulators.forecast.data import CoarseStates
from diffda.emulators.forecast.fitting import export_fitted, load_for_fit
from diffda.emulators.forecast.model import SFNOEmulator
from diffda.emulators.forecast.stochastic import fit_residual_noise, latitude_bounds

# ------------------------------------------------------------------------------ shared


FIT_HELP: dict[str, tuple[str, str, str]] = {
    "noise": ("deterministic emulator .safetensors", "years to fit the residuals on",
              "output .safetensors (the emulator with its noise modes)"),
    "budget": ("emulator .safetensors (e.g. stochastic)", "years to fit the budget on",
               "output .safetensors (the emulator with its budget law)"),
    "adjust": ("emulator .safetensors (e.g. stochastic)", "years of the free runs",
               "output .safetensors (the emulator with its correction)"),
}
"""Help texts of the weights, ``--years`` and ``--out`` of each fitting command."""


def add_fit_arguments(parser: argparse.ArgumentParser, weights: str, years: str,
                      out: str) -> None:
    """The arguments every command of :func:`load_for_fit` takes (with their help texts)."""
    parser.add_argument("weights", type=Path, help=weights)
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="canonical nature-run dataset(s), e.g. a run and its continuation")
    parser.add_argument("--years", type=int, nargs="+", default=None,
                        help=f"{years} (default: the card's train_years)")
    parser.add_argument("--out", type=Path, required=True, help=out)
    parser.add_argument("--threads", type=int, default=1)


def _load(args: argparse.Namespace) -> tuple[SFNOEmulator, dict[str, Any], list[int],
                                             CoarseStates]:
    """:func:`~diffda.emulators.forecast.fitting.load_for_fit` of the command's arguments,
    with its thread count."""
    torch.set_num_threads(args.threads)
    return load_for_fit(args.weights, args.data, args.years, args.out)


def _command() -> str:
    """This command line, as the card records it."""
    return "cycler " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _export(emulator: SFNOEmulator, card: dict[str, Any], args: argparse.Namespace,
            years: list[int], section: str, info: dict[str, Any]) -> None:
    export_fitted(emulator, card, out=args.out, weights=args.weights, data=args.data,
                  years=years, section=section, info=info, command=_command())


# ------------------------------------------------------------------------------- noise


def add_noise_arguments(parser: argparse.ArgumentParser) -> None:
    add_fit_arguments(parser, *FIT_HELP["noise"])
    parser.add_argument("--modes", type=int, default=256, help="number of EOFs kept")
    parser.add_argument("--polar-rows", type=int, default=2,
                        help="latitude rows at each pole where the noise is zero")
    parser.add_argument("--scale", nargs="+", default=[], metavar="VAR=FACTOR",
                        help="multiply a variable's noise by FACTOR (e.g. tracer=0.8)")
    parser.add_argument("--bounds-margin", type=float, default=0.1,
                        help="stochastic steps clamp each variable to its training range by "
                             "latitude, widened by this fraction of it on each side")


def parse_scale(items: list[str]) -> dict[str, float]:
    """``["tracer=0.8", ...]`` -> ``{"tracer": 0.8, ...}`` (``--scale``)."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--scale {item!r}: expected VAR=FACTOR, e.g. tracer=0.8") from None
    return out


def noise(args: argparse.Namespace) -> int:
    """``cycler train emulator-noise WEIGHTS --data PATH --out OUT.safetensors``."""
    emulator, card, years, data = _load(args)
    modes, info = fit_residual_noise(emulator, data, args.modes, args.polar_rows,
                                     parse_scale(args.scale))
    emulator.set_noise(modes, latitude_bounds(emulator, data, args.bounds_margin))
    info["bounds_margin"] = args.bounds_margin
    _export(emulator, card, args, years, "stochastic", info)
    print(f"{info['n_modes']} noise modes ({info['variance_fraction']:.1%} of the residual "
          f"variance; {info['polar_rows_zeroed']} polar rows zeroed) from "
          f"{info['n_residuals']} residuals of years {list(years)}; residual RMS "
          + ", ".join(f"{v} {x:.3f}" for v, x in info["residual_rms"].items())
          + f" (normalised); written: {args.out}")
    return 0


# ------------------------------------------------------------------------------ budget


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    add_fit_arguments(parser, *FIT_HELP["budget"])
    parser.add_argument("--variables", nargs="+", default=["height"],
                        help="variables whose global mean is constrained (default: height)")


def budget(args: argparse.Namespace) -> int:
    """``cycler train emulator-budget WEIGHTS --data PATH --out OUT.safetensors``."""
    emulator, card, years, data = _load(args)
    coef, mask, info = fit_global_budget(emulator, data, args.variables)
    emulator.set_global_budget(coef, mask)
    _export(emulator, card, args, years, "global_budget", info)
    for v in args.variables:
        d = info[v]
        tau = d["relaxation_days"]
        print(f"{v}: global-mean budget from {info['n_pairs']} steps of years {list(years)}: "
              f"law residual {d['residual_rms']:.4g} (R^2 {d['r2']:.4f}) against a 6-h change "
              f"of {d['change_rms']:.4g} RMS; the network's own error {d['network_error_rms']:.4g}"
              f" RMS, {d['network_error_mean']:+.4g} mean (physical units); relaxation time "
              + (f"{tau:.1f} days" if tau is not None else "none (a >= 0)"))
    print(f"written: {args.out}")
    return 0


# ----------------------------------------------------------------------------- combine


def add_combine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, nargs="+",
                        help="two or more emulator .safetensors (single trained networks)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output .safetensors (the combined emulator and its card)")


def combine(args: argparse.Namespace) -> int:
    """``cycler train emulator-combine W1 W2 [...] --out OUT.safetensors``."""
    combined = combine_weights(args.weights, args.out, _command())
    n_par = sum(p.numel() for p in combined.net.parameters())
    print(f"combined {len(args.weights)} networks ({n_par} parameters in all); "
          f"written: {args.out}")
    return 0


# ------------------------------------------------------------------------------ adjust


def add_adjust_arguments(parser: argparse.ArgumentParser) -> None:
    add_fit_arguments(parser, *FIT_HELP["adjust"])
    parser.add_argument("--iterations", type=int, default=4, help="fixed-point updates")
    parser.add_argument("--tau", type=float, default=80.0,
                        help="relaxation time of the iteration, in steps")
    parser.add_argument("--members", type=int, default=8, help="free runs per year")
    parser.add_argument("--variables", nargs="+", default=None,
                        help="variables corrected (default: all)")
    parser.add_argument("--noise-variables", nargs="+", default=(),
                        help="variables whose noise amplitude by latitude is fitted too "
                             "(e.g. tracer; default: none)")
    parser.add_argument("--noise-gain", type=float, default=1.0,
                        help="gain of the noise-amplitude update (1)")
    parser.add_argument("--bias-statistic", choices=("mean", "median"), default="mean",
                        help="of the runs' zonal-time means: the mean, or the median (robust "
                             "to a run in a regime of its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def adjust(args: argparse.Namespace) -> int:
    """``cycler train emulator-adjust WEIGHTS --data PATH --out OUT.safetensors``."""
    emulator, card, years, data = _load(args)
    _, info = fit_tendency_correction(emulator, data, args.iterations, args.tau, args.members,
                                      args.variables, args.seed, progress=not args.no_progress,
                                      noise_variables=args.noise_variables,
                                      noise_gain=args.noise_gain,
                                      statistic=args.bias_statistic)
    _export(emulator, card, args, years, "adjustment", info)
    last = info["history"][-1]["climate_errors"]
    print(f"tendency correction after {args.iterations} iterations (tau {args.tau:g} steps, "
          f"{args.members} runs per year, years {list(years)}); max |c| "
          + ", ".join(f"{v} {x:.4f}" for v, x in info["max_abs_correction"].items())
          + "; training-year mean errors before the last update: "
          + "; ".join(f"{y}: " + ", ".join(f"{v} {e[v]['mean_error']:.3f}" for v in e)
                      for y, e in last.items())
          + f"; written: {args.out}")
    return 0
