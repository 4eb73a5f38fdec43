"""``cycler bench analysis [--json]``: the speed of one analysis (Algorithm 1) on this
machine (:mod:`diffda.cycler.analysis.bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffda.cycler.analysis.bench import bench_analysis, bench_term, default_prior
from diffda.cycler.analysis.sampler import SamplerConfig
from diffda.emulators.prior.model import DEFAULT_WEIGHTS
from diffda.observations.likelihood import DEFAULT_ERROR_MODELS


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, default=SamplerConfig().num_steps)
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"prior weights (default {DEFAULT_WEIGHTS} if present)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two threads "
                             "ran 7x slower, 411 s against 61 s per analysis)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings of the unit cost before and after (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def bench(args: argparse.Namespace) -> int:
    """``cycler bench analysis [--json]``."""
    if args.members < 1 or args.steps < 1:
        raise ValueError(f"--members and --steps must be >= 1, got {args.members}, {args.steps}")
    torch.set_num_threads(args.threads)
    prior, what = default_prior(args.weights)
    err = DEFAULT_ERROR_MODELS["low_resolution"]
    result = bench_analysis(prior, prior.state_shape, [bench_term(prior)],
                            args.members, SamplerConfig(num_steps=args.steps), args.repeats)
    result.update({
        "grid": str(prior.grid), "variables": list(prior.variables), "prior": what,
        "n_parameters": sum(p.numel() for p in prior.net.parameters()),
        "threads": args.threads,
        "likelihood": f"low-resolution 8x16, Sigma_y = {err.sigma_y:g}, Gamma = {err.gamma:g}",
    })
    if args.json:
        print(json.dumps(result))
    else:
        print(f"analysis of {result['members']} members at {result['grid']} "
              f"({result['prior']}, {result['n_parameters']} parameters, "
              f"{args.threads} threads): {result['seconds_per_analysis']:.2f} s "
              f"({result['seconds_per_member']:.3f} s per member), NFE {result['nfe']}, "
              f"denoiser forward+VJP {result['seconds_per_denoiser_vjp']:.3f} s, "
              f"overhead ratio {result['overhead_ratio']:.2f}")
    return 0
