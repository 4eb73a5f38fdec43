"""``cycler linear steady|figures`` and ``cycler bench linear``.

Thin entry points: the test bed is :mod:`diffda.cycler.linear.testbed` (the steady run and
its timing), the figures are :mod:`diffda.cycler.linear.figures`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch
from diffda.core.config import load_config
from diffda.cycler.cli.common import print_record
from diffda.cycler.linear.testbed import LinearSetup, run_steady, time_steady


def _observed(text: str) -> tuple[int, ...] | str:
    """``all``, a comma list ``0,3,5`` or a slice ``start:stop[:step]``."""
    if text == "all":
        return "all"
    try:
        if ":" in text:
            return tuple(range(*[int(p) for p in text.split(":")]))
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--observed {text!r}: expected 'all', a list like 0,3,5 or a slice like 0:40:2"
        ) from None


# CLI option -> LinearSetup field. Options left out keep the config file's (or the
# default) value, so `--config runs/linear.toml --obs-var 4` changes one thing.
_OPTIONS = {
    "dt": (float, "model time step (0 < dt < 1)"),
    "obs_every": (int, "model steps between observations (K)"),
    "obs_var": (float, "observation error variance r"),
    "n": (int, "number of state components"),
    "observed": (_observed, "observed components: all, 0,3,5 or 0:40:2"),
    "cycles": (int, "number of observation cycles"),
    "spinup": (int, "cycles left out of the averages"),
    "members": (int, "ensemble size (EnKF, diffusion)"),
    "seed": (int, "seed of every random stream"),
    "sde_steps": (int, "Euler-Maruyama steps of the reverse SDE"),
    "t_max": (float, "start time T of the reverse SDE"),
    "sampler": (str, "'composed' (draw the EM chain's output law) or 'em' (step the chain)"),
}


def _add_setup_arguments(p: argparse.ArgumentParser) -> None:
    d = LinearSetup()
    p.add_argument("--config", help="TOML file with LinearSetup fields (options override it)")
    for field, (type_, help_) in _OPTIONS.items():
        default = getattr(d, field)
        p.add_argument("--" + field.replace("_", "-"), type=type_, default=None,
                       help=f"{help_} (default: {'all' if default is None else default})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")


def _setup(args: argparse.Namespace) -> LinearSetup:
    torch.set_num_threads(args.threads)
    base = load_config(LinearSetup, args.config) if args.config else LinearSetup()
    changes = {f: getattr(args, f) for f in _OPTIONS if getattr(args, f) is not None}
    if "observed" in changes and changes["observed"] == "all":
        changes["observed"] = None
    return dataclasses.replace(base, **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    steady = sub.add_parser("steady", help="steady-state comparison of the posteriors")
    _add_setup_arguments(steady)
    steady.add_argument("--json", action="store_true", help="print one JSON object")
    figures = sub.add_parser("figures", help="the paper's Figs. 1 and 2, with their numbers")
    _add_setup_arguments(figures)
    figures.add_argument("--out", required=True, help="output directory")


def _print_table(res: dict[str, Any]) -> None:
    print(f"climatological prior variance c = {res['clim_prior_var']:.5f}")
    print(f"{'posterior':<20}{'exact var':>10}{'Kalman MSE':>12}{'diff. MSE':>11}"
          f"{'diff. var':>11}{'EnKF MSE':>10}{'EnKF var':>10}")
    for name in ("climatological", "cycling", "extended", "extended_stochastic"):
        def g(key: str) -> str:
            return f"{res[key]:.4f}" if key in res else "-"
        print(f"{name:<20}{g(name + '_var'):>10}{g(name + '_kalman_mse'):>12}"
              f"{g(name + '_diffusion_mse'):>11}{g(name + '_diffusion_var'):>11}"
              f"{g(name + '_enkf_mse'):>10}{g(name + '_enkf_var'):>10}")
    print(f"extended_stochastic (the paper's forecast, Eq. 73 with its draw): fixed point "
          f"({res['alpha_stochastic']:.4f}, {res['beta_stochastic']:.4f}); paper's recipe "
          f"({res['alpha_paper_stochastic']:.4f}, {res['beta_paper_stochastic']:.4f}); "
          f"estimated from innovations, no truth ({res['alpha_innovations_stochastic']:.4f}, "
          f"{res['beta_innovations_stochastic']:.4f})")
    print(f"extended (alpha, beta): fixed point ({res['alpha']:.4f}, {res['beta']:.4f}); "
          f"re-estimated by simulation ({res['alpha_reestimated']:.4f}, "
          f"{res['beta_reestimated']:.4f}); paper's recipe ({res['alpha_paper']:.4f}, "
          f"{res['beta_paper']:.4f}) after {res['paper_iterations']} iteration(s): assumed "
          f"variance {res['extended_paper_var']:.4f}, "
          f"true MSE {res['extended_paper_mse_exact']:.4f}")


def run(args: argparse.Namespace) -> int:
    setup = _setup(args)
    if args.action == "steady":
        print_record(run_steady(setup), args.json, _print_table, strict=True)
        return 0
    from diffda.cycler.linear.figures import make_figures

    make_figures(args.out, setup)
    print(f"wrote figures and their numbers to {args.out}/")
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    _add_setup_arguments(parser)
    parser.add_argument("--json", action="store_true")


def _print_timings(out: dict[str, Any]) -> None:
    print(f"cycler linear steady: {out['seconds_total']:.1f} s in all "
          f"({out['cycles']} cycles, {out['members']} members, n={out['n']}, "
          f"sampler={out['sampler']}, {out['sde_steps']} SDE steps)")
    for k, v in out["seconds"].items():
        print(f"  {k:<26}{v:8.2f} s")


def bench(args: argparse.Namespace) -> int:
    """Time the ``steady`` run (defaults as ``cycler linear steady``), per part."""
    setup = _setup(args)
    print_record({**time_steady(setup), "threads": args.threads}, args.json, _print_timings)
    return 0
