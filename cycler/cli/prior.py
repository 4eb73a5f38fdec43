"""Command line of the diffusion prior: ``cycler train prior`` and ``cycler evaluate prior``.

- ``cycler train prior CONFIG.toml [--out DIR] [--resume]``: train the EDM prior on the
  nature run at full resolution (config :class:`PriorTrainConfig`, e.g.
  ``runs/prior.toml``; default ``DIR``: ``outputs/<config name>``). Writes
  ``DIR/checkpoint.pt`` (resume state: network, EMA, optimiser, scheduler, step),
  ``DIR/loss.jsonl``, ``DIR/config.json`` and, when a run ends, ``DIR/prior.safetensors`` +
  ``DIR/prior.json`` (the EMA network; the card says how many steps it had). Stops after
  ``train.max_minutes`` and continues with ``--resume`` with the numbers of an
  uninterrupted run. Runs unchanged on a GPU (``device = "auto"``) and under
  ``torchrun --nproc_per_node=N`` (via :mod:`diffda.emulators.training`).
- ``cycler evaluate prior WEIGHTS --data PATH [--years Y ...] [--members N] [--json]
  [--plots DIR]``: unconditional samples against held-out states: per-variable mean and
  std by latitude, zonal power spectra, the tracer's negative fraction; plots.

The science is in :mod:`diffda.emulators.prior.training`,
:mod:`diffda.emulators.prior.evaluation` and :mod:`diffda.cycler.analysis.sampler` (the
sampler of the evaluation, :data:`EVALUATION_SAMPLER`); this module wires them up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from diffda.core.weights import update_card
from diffda.cycler.analysis.sampler import SamplerConfig, sample_posterior
from diffda.cycler.cli.common import print_record
from diffda.cycler.cli.train_options import add_train_arguments as add_train_arguments_of
from diffda.cycler.cli.train_options import train_from_arguments
from diffda.cycler.metrics import zonal_power_spectrum
from diffda.emulators.prior.evaluation import card_fields, evaluate_prior
from diffda.emulators.prior.model import DiffusionPrior
from diffda.emulators.prior.training import PriorTrainConfig, train_prior
from torch import Tensor

# ------------------------------------------------------------------------------- train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments_of(parser, "runs/prior.toml",
                           "output folder (default outputs/<config name>)")


def train(args: argparse.Namespace) -> int:
    """``cycler train prior CONFIG.toml [--out DIR] [--resume] [--threads N] ...``."""
    is_main, out, summary = train_from_arguments(args, PriorTrainConfig, train_prior, "prior")
    if is_main:
        print(json.dumps(summary))
        state = "final" if summary["finished"] else f"partial, step {summary['step']}"
        print(f"weights ({state}): {out / 'prior.safetensors'} (+ prior.json)")
        if not summary["finished"]:
            print(f"continue with: cycler train prior {args.config} --out {out} --resume")
    return 0


# ---------------------------------------------------------------------------- evaluate


#: The sampler of the prior's evaluation (unconditional samples): the configuration its
#: card's scores were measured with (18 steps, S_churn = 2), kept apart from the analysis
#: default of :class:`SamplerConfig`.
EVALUATION_SAMPLER = SamplerConfig(num_steps=18, s_churn=2.0)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, help="prior .safetensors (with its .json card)")
    parser.add_argument("--data", required=True, help="canonical dataset (zarr or netCDF)")
    parser.add_argument("--years", type=int, nargs="+", default=None,
                        help="held-out years (default: the card's valid_years)")
    parser.add_argument("--members", type=int, default=64, help="number of samples")
    parser.add_argument("--steps", type=int, default=EVALUATION_SAMPLER.num_steps,
                        help="sampler steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--plots", type=Path, default=None, help="folder for figures")
    parser.add_argument("--update-card", action="store_true",
                        help="write the scores into the weights' card")



def evaluate(args: argparse.Namespace) -> int:
    """``cycler evaluate prior WEIGHTS --data PATH [--json] [--plots DIR]``."""
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(EVALUATION_SAMPLER, num_steps=args.steps)

    def sample(prior: DiffusionPrior, generators: list[torch.Generator]) -> Tensor:
        return sample_posterior(prior, generators, prior.state_shape, [], config)

    result = evaluate_prior(args.weights, args.data, years=args.years, members=args.members,
                            seed=args.seed, sample=sample, spectrum=zonal_power_spectrum,
                            sampler_steps=args.steps, plots=args.plots,
                            progress=not args.json)
    if args.update_card:
        update_card(args.weights, **card_fields(result))
    print_record(result, args.json, _print_scores)
    return 0


def _print_scores(result: dict[str, Any]) -> None:
    for name, s in result["variables"].items():
        print(f"{name:>8}: mean-by-lat err {s['mean_by_lat_error']:.3f} "
              f"(max {s['mean_by_lat_error_max']:.3f}), std-by-lat err "
              f"{s['std_by_lat_error']:.3f} (max {s['std_by_lat_error_max']:.3f}), "
              f"spectrum ratio {s['spectrum_ratio_min']:.2f}..{s['spectrum_ratio_max']:.2f}, "
              f"negative fraction {s['negative_fraction_samples']:.4f} "
              f"(truth {s['negative_fraction_truth']:.4f}); accepted: "
              f"{result['acceptance'][name]}")
