"""``cycler linear steady|figures`` and ``cycler bench linear``."""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffda.cycler.config import json_safe
from diffda.cycler.linear import LinearSetup, run_steady


def _observed(text: str) -> tuple[int, ...] | None:
    """``all``, a comma list ``0,3,5`` or a slice ``start:stop[:step]``."""
    if text == "all":
        return None
    try:
        if ":" in text:
            return tuple(range(*[int(p) for p in text.split(":")]))
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--observed {text!r}: expected 'all', a list like 0,3,5 or a slice like 0:40:2"
        ) from None


def _add_setup_arguments(p: argparse.ArgumentParser) -> None:
    d = LinearSetup()
    p.add_argument("--dt", type=float, default=d.dt, help="model time step (0 < dt < 1)")
    p.add_argument("--obs-every", type=int, default=d.obs_every,
                   help="model steps between observations (K)")
    p.add_argument("--obs-var", type=float, default=d.obs_var, help="observation error variance r")
    p.add_argument("--n", type=int, default=d.n, help="number of state components")
    p.add_argument("--observed", type=_observed, default=None,
                   help="observed components: all (default), 0,3,5 or 0:40:2")
    p.add_argument("--cycles", type=int, default=d.cycles)
    p.add_argument("--spinup", type=int, default=d.spinup, help="cycles left out of averages")
    p.add_argument("--members", type=int, default=d.members, help="ensemble size (EnKF, diffusion)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sde-steps", type=int, default=d.sde_steps,
                   help="Euler-Maruyama steps of the reverse SDE")
    p.add_argument("--t-max", type=float, default=d.t_max, help="start time of the reverse SDE")
    p.add_argument("--sampler", choices=("composed", "em"), default=d.sampler,
                   help="'em' steps the EM chain; 'composed' draws its output law at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads")


def _setup(args: argparse.Namespace) -> LinearSetup:
    torch.set_num_threads(args.threads)
    return LinearSetup(
        dt=args.dt, obs_every=args.obs_every, obs_var=args.obs_var, n=args.n,
        observed=args.observed, cycles=args.cycles, spinup=args.spinup, members=args.members,
        seed=args.seed, sde_steps=args.sde_steps, t_max=args.t_max, sampler=args.sampler,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    steady = sub.add_parser("steady", help="steady-state comparison of the three posteriors")
    _add_setup_arguments(steady)
    steady.add_argument("--json", action="store_true", help="print one JSON object")
    figures = sub.add_parser("figures", help="the paper's Figs. 1 and 2, with their numbers")
    _add_setup_arguments(figures)
    figures.add_argument("--out", required=True, help="output directory")


def _print_table(res: dict) -> None:
    print(f"climatological prior variance c = {res['clim_prior_var']:.5f}")
    print(f"{'posterior':<16}{'exact var':>10}{'Kalman MSE':>12}{'diff. MSE':>11}"
          f"{'diff. var':>11}{'EnKF MSE':>10}{'EnKF var':>10}")
    for name in ("climatological", "cycling", "extended"):
        def g(key: str) -> str:
            return f"{res[key]:.4f}" if key in res else "-"
        print(f"{name:<16}{g(name + '_var'):>10}{g(name + '_kalman_mse'):>12}"
              f"{g(name + '_diffusion_mse'):>11}{g(name + '_diffusion_var'):>11}"
              f"{g(name + '_enkf_mse'):>10}{g(name + '_enkf_var'):>10}")
    print(f"extended (alpha, beta): fixed point ({res['alpha']:.4f}, {res['beta']:.4f}); "
          f"re-estimated by simulation ({res['alpha_reestimated']:.4f}, "
          f"{res['beta_reestimated']:.4f}); paper's recipe ({res['alpha_paper']:.4f}, "
          f"{res['beta_paper']:.4f}) after {res['paper_iterations']} iteration(s): assumed "
          f"variance {res['extended_paper_var']:.4f}, "
          f"true MSE {res['extended_paper_mse_exact']:.4f}")


def run(args: argparse.Namespace) -> int:
    setup = _setup(args)
    if args.action == "steady":
        res = run_steady(setup)
        if args.json:
            print(json.dumps(json_safe(res), allow_nan=False))
        else:
            _print_table(res)
        return 0
    from diffda.cycler.linear_figures import make_figures

    make_figures(args.out, setup)
    print(f"wrote figures and their numbers to {args.out}/")
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    _add_setup_arguments(parser)
    parser.add_argument("--json", action="store_true")


def bench(args: argparse.Namespace) -> int:
    """Time the ``steady`` run (defaults as ``cycler linear steady``), per part."""
    setup = _setup(args)
    tic = time.perf_counter()
    res = run_steady(setup)
    total = time.perf_counter() - tic
    out = {"seconds_total": total, "seconds": res["seconds"], "cycles": setup.cycles,
           "members": setup.members, "n": setup.n, "sampler": setup.sampler,
           "sde_steps": setup.sde_steps, "threads": args.threads}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"cycler linear steady: {total:.1f} s in all "
              f"({setup.cycles} cycles, {setup.members} members, n={setup.n}, "
              f"sampler={setup.sampler}, {setup.sde_steps} SDE steps)")
        for k, v in res["seconds"].items():
            print(f"  {k:<26}{v:8.2f} s")
    return 0
