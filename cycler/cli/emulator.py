"""Command line of the forecast emulator: ``cycler train|evaluate|bench emulator``.

- ``cycler train emulator CONFIG.toml [--out DIR] [--resume]``: train an SFNO emulator on
  the coarsened nature run (config: :class:`EmulatorTrainConfig`, e.g.
  ``runs/emulator.toml``; default ``DIR``: ``outputs/<config name>``); writes
  ``DIR/checkpoint.pt`` (resume state), ``DIR/loss.jsonl``, ``DIR/config.json`` and, at the
  end, ``DIR/emulator.safetensors`` + ``DIR/emulator.json``. Runs unchanged on a GPU
  (``device = "auto"``) and under ``torchrun --nproc_per_node=N``.
- ``cycler evaluate emulator WEIGHTS --data PATH [--years Y ...] [--json] [--plots DIR]``:
  RMSE by lead time next to persistence, a free run's climatology against the data's, the
  acceptance checks; ``--update-card`` writes the scores into the weights' card.
- ``cycler bench emulator [--json]``: emulator steps per second for a 16-member batch.

The science is in :mod:`diffda.emulators.forecast` (:mod:`~diffda.emulators.forecast.training`,
:mod:`~diffda.emulators.forecast.evaluation`, :mod:`~diffda.emulators.forecast.bench`); this
module only wires it up. The commands that fit additions to trained weights
(``cycler train emulator-noise|-budget|-combine|-adjust``) are in
:mod:`diffda.cycler.cli.emulator_fit`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from diffda.core.weights import update_card
from diffda.cycler.cli.common import print_record
from diffda.cycler.cli.train_options import add_train_arguments as add_train_arguments_of
from diffda.cycler.cli.train_options import train_from_arguments
from diffda.emulators.forecast.bench import bench_emulator, untrained_default
from diffda.emulators.forecast.evaluation import evaluate_weights
from diffda.emulators.forecast.model import DEFAULT_WEIGHTS, SFNOEmulator
from diffda.emulators.forecast.training import EmulatorTrainConfig, train_emulator

# ------------------------------------------------------------------------------- train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments_of(parser, "runs/emulator.toml",
                           "output directory (default: outputs/<config name>)")


def train(args: argparse.Namespace) -> int:
    """``cycler train emulator CONFIG.toml [--out DIR] [--resume] [--threads N] ...``."""
    is_main, out, summary = train_from_arguments(args, EmulatorTrainConfig, train_emulator,
                                                 "emulator")
    if is_main:
        print(json.dumps(summary))
        print(f"weights: {out / 'emulator.safetensors'} (+ emulator.json)")
        if not summary["finished"]:
            print(f"stopped at step {summary['step']}/{summary['steps']}; continue with: "
                  f"cycler train emulator {args.config} --out {out} --resume")
    return 0


# ---------------------------------------------------------------------------- evaluate


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, help="emulator .safetensors (with its .json card)")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="canonical nature-run dataset(s), e.g. a run and its "
                             "continuation (cycler nature --continue-from)")
    parser.add_argument("--years", type=int, nargs="+", default=None,
                        help="held-out years (default: the card's valid_years)")
    parser.add_argument("--lead-days", type=float, default=10.0)
    parser.add_argument("--n-starts", type=int, default=64)
    parser.add_argument("--free-run-days", type=float, default=365.0)
    parser.add_argument("--free-run-members", type=int, default=1,
                        help="free runs from the first state and N-1 perturbed copies; the "
                             "climate is that of all of them pooled (default 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the perturbations (and of a stochastic emulator's noise)")
    parser.add_argument("--no-noise", action="store_true",
                        help="free runs of a stochastic emulator without its noise")
    parser.add_argument("--reference-years", type=int, nargs="*", default=None,
                        help="years of the data whose climate errors against the held-out "
                             "years are reported as the metric's floor (default: the card's "
                             "train_years)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plots", type=Path, default=None, help="write plots to this directory")
    parser.add_argument("--update-card", action="store_true",
                        help="write the scores into the weights' JSON card")
    parser.add_argument("--threads", type=int, default=1)



def evaluate(args: argparse.Namespace) -> int:
    """``cycler evaluate emulator WEIGHTS --data PATH [--years ...] [--json] [--plots DIR]``."""
    torch.set_num_threads(args.threads)
    scores = evaluate_weights(
        args.weights, args.data, years=args.years, reference_years=args.reference_years,
        lead_days=args.lead_days, n_starts=args.n_starts, free_run_days=args.free_run_days,
        free_run_members=args.free_run_members, seed=args.seed,
        free_run_noise=not args.no_noise, plots=args.plots, progress=not args.json,
    )
    if args.update_card:
        update_card(args.weights, scores=scores)
    print_record(scores, args.json, _print_summary)
    return 0


def _print_summary(scores: dict[str, Any]) -> None:
    lead = scores["lead_hours"]
    show = [h for h in (6, 24, 72, 120, 240) if h in lead]
    print(f"RMSE by lead ({scores['n_starts']} starts): emulator / persistence")
    for v in scores["rmse"]:
        cells = [f"{h:>4.0f}h {scores['rmse'][v][lead.index(h)]:.4g}/"
                 f"{scores['rmse_persistence'][v][lead.index(h)]:.4g}" for h in show]
        print(f"  {v:<7} " + "  ".join(cells))
    print("24 h RMSE reduction vs persistence:",
          {k: round(x, 3) for k, x in scores["rmse_reduction_vs_persistence_24h"].items()})
    print("24 h RMSE reduction vs climatology:",
          {k: round(x, 3) for k, x in scores["rmse_reduction_vs_climatology_24h"].items()})
    if "emulator_twin" in scores:
        print("e-folding days: forecast error", {k: round(x, 2) for k, x in
              scores["forecast_efolding_days"].items()}, "emulator twin",
              {k: round(x, 2) for k, x in scores["emulator_twin"]["efolding_days"].items()})
    if "free_run" in scores:
        fr = scores["free_run"]
        kind = "stochastic" if fr.get("stochastic") else "deterministic"
        print(f"free runs of {fr['days']:.0f} days from each of years {fr.get('years')}, "
              f"{fr.get('members', 1)} {kind} member(s), finite: {fr['finite']}; climate "
              f"compared over {fr['climate_compared_days']:.0f} days (years pooled)")
        for y, e in fr.get("climate_by_year", {}).items():
            print(f"  year {y}: " + ", ".join(
                f"{v} {x['mean_error']:.3f} / {x['std_error']:.3f}" for v, x in e.items()))
        floor = fr.get("nature_interannual", {})
        for v, c in fr["climate"].items():
            ref = "  ".join(f"nature {y}: {e[v]['mean_error']:.3f} / {e[v]['std_error']:.3f}"
                            for y, e in floor.items())
            spread = ""
            if "climate_by_member" in fr:
                me = [m[v]["mean_error"] for m in fr["climate_by_member"]]
                se = [m[v]["std_error"] for m in fr["climate_by_member"]]
                spread = (f" (members {min(me):.3f}-{max(me):.3f} / "
                          f"{min(se):.3f}-{max(se):.3f})")
            glob = (f" [prior's measure {c['mean_error_global']:.3f}]"
                    if "mean_error_global" in c else "")
            print(f"  {v:<7} mean error {c['mean_error']:.3f}{glob}  std error "
                  f"{c['std_error']:.3f}" + spread + (f"   ({ref})" if ref else ""))
    print("acceptance:", scores["acceptance"])
    for key in ("plot", "plot_climate"):
        if key in scores:
            print("plot:", scores[key])


# ------------------------------------------------------------------------------- bench


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"weights to time (default: {DEFAULT_WEIGHTS.name} if present, "
                             "else a freshly initialised default-size model)")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)


def bench(args: argparse.Namespace) -> int:
    """``cycler bench emulator [--json]``."""
    torch.set_num_threads(args.threads)
    path = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)
    emulator = SFNOEmulator.from_weights(path) if path is not None else untrained_default()
    res = bench_emulator(emulator, args.members, args.steps)
    res["weights"] = str(path) if path is not None else "untrained default-size model"
    print_record(res, args.json, _print_bench)
    return 0


def _print_bench(res: dict[str, Any]) -> None:
    print(f"emulator {res['grid']}, {res['n_parameters']} parameters, {res['members']} "
          f"members, {res['threads']} thread(s): {res['steps_per_second']:.2f} steps/s "
          f"({res['ms_per_step']:.1f} ms/step) [{res['weights']}]")
