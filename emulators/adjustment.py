"""A climate adjustment of the emulator: a zonal-mean tendency correction fitted on
free runs of the training years (the "flux adjustment" of coupled climate models).

A free-running emulator drifts to a climate of its own. The stochastic emulator without it
(:mod:`diffda.emulators.stochastic`) keeps too much mass poleward of 60 degrees and
50-60 m too little in the tropics; the tracer, whose saturation value grows as
``exp(h / 400 m)`` in the nature run, follows that height bias (10-13 % low in the
tropics). Those errors are small per step and persistent, so a constant correction of
the step removes most of them:

    z_{n+1} = F(z_n, f_n) + c + noise,     c: (var, lat), normalised units per step,

a zonally uniform, time-independent tendency added at every step (deterministic and
stochastic). ``c`` is fitted by a damped fixed-point iteration on the training years
only (the held-out years stay unseen):

    c_{k+1} = c_k - b_k / tau,

where ``b_k`` is the bias of the zonal-time mean (normalised units) of one-year free runs
with ``c_k`` against the data of the same years, averaged over the years and ``members``
runs from each year's first state (member 0 unperturbed, the others perturbed by 1 % of
the normalised std), and ``tau`` (steps) is the relaxation time of the iteration: a
correction ``c`` held for ``tau`` steps moves the state by ``c tau``; too short a ``tau``
overshoots. With ``tau = 80`` (20 days), three iterations bring the training-year height
biases to 35-40 % of their size, and the tracer's to 20-35 % (README numbers).

``cycler train emulator-adjust WEIGHTS --data PATH --out OUT.safetensors`` writes the
emulator with ``c`` (network and noise unchanged) and records the iteration in its card.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from diffda.cycler.config import require
from diffda.emulators.emulator import (
    CoarseStates,
    SFNOEmulator,
    climate_errors,
    yearly_free_runs,
)
from diffda.emulators.emulator_cli import add_fit_arguments, export_fitted, load_for_fit
from torch import Tensor
from tqdm.auto import tqdm


@torch.no_grad()
def free_run_bias(
    emulator: SFNOEmulator, data: CoarseStates, members: int = 4, seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, dict[int, dict[str, dict[str, float]]]]:
    """The emulator's climate bias on the years of ``data``: ``(var, lat)``, the zonal-time
    mean of normalised free runs minus that of the data, averaged over the years (each run
    from its year's first state to its last, ``members`` runs pooled), and each year's
    :func:`~diffda.emulators.emulator.climate_errors` of the pooled runs.

    Draws: member perturbations from ``torch_generator(seed, "adjust-members", year)``,
    a stochastic emulator's noise from ``torch_generator(seed, "adjust-noise", year)``
    (the same at every call, so successive iterations differ only by the correction).
    """
    runs = yearly_free_runs(emulator, data, members, seed=seed,
                            names=("adjust-members", "adjust-noise"), progress=progress)
    bias = torch.zeros(len(emulator.variables), emulator.grid.nlat, dtype=torch.float64)
    errors = {}
    for y, run, truth in runs:
        pooled = run.transpose(0, 1).reshape(-1, *run.shape[2:])
        bias += (emulator.normalise(pooled).double().mean((0, 3))
                 - emulator.normalise(truth).double().mean((0, 3))) / len(runs)
        errors[y] = climate_errors(pooled, truth, emulator.grid, emulator.variables)
    return bias.float(), errors


def fit_tendency_correction(
    emulator: SFNOEmulator, data: CoarseStates, iterations: int = 4, tau: float = 80.0,
    members: int = 8, variables: Sequence[str] | None = None, seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """The correction ``c`` ``(var, lat)`` of the module docstring after ``iterations``
    updates, starting from the emulator's own (zero if it has none), and a summary with
    each iteration's training-year climate errors (before its update). ``variables``: the
    variables corrected (default all; the others keep a zero row). The emulator is left
    with the fitted correction."""
    require(iterations >= 1, "iterations", iterations, "must be >= 1")
    require(tau > 0, "tau", tau, "must be > 0 (steps)")
    names = list(emulator.variables)
    chosen = names if variables is None else list(variables)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"variables {unknown} are not the emulator's {names}")
    mask = torch.tensor([float(v in chosen) for v in names])[:, None]
    c = emulator.tendency_correction
    c = torch.zeros(len(names), emulator.grid.nlat) if c is None else c.detach().cpu().clone()
    history = []
    for k in tqdm(range(iterations), desc="adjustment", disable=not progress):
        emulator.set_tendency_correction(c)
        bias, errors = free_run_bias(emulator, data, members, seed)
        history.append({"iteration": k, "max_abs_correction": float(c.abs().max()),
                        "max_abs_bias": float(bias.abs().max()),
                        "climate_errors": {str(y): e for y, e in errors.items()}})
        c = c - mask * bias / tau
    emulator.set_tendency_correction(c)
    info = {
        "iterations": iterations, "tau_steps": tau, "members": members,
        "variables": chosen, "seed": seed,
        "max_abs_correction": {v: float(c[i].abs().max()) for i, v in enumerate(names)},
        "history": history,
        "units": "normalised (the emulator's state_mean / state_std) per step",
    }
    return c, info


# ----------------------------------------------------------------------------- CLI


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_fit_arguments(parser, "emulator .safetensors (e.g. stochastic)",
                      "years of the free runs",
                      "output .safetensors (the emulator with its correction)")
    parser.add_argument("--iterations", type=int, default=4, help="fixed-point updates")
    parser.add_argument("--tau", type=float, default=80.0,
                        help="relaxation time of the iteration, in steps")
    parser.add_argument("--members", type=int, default=8, help="free runs per year")
    parser.add_argument("--variables", nargs="+", default=None,
                        help="variables corrected (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def train(args: argparse.Namespace) -> int:
    """``cycler train emulator-adjust WEIGHTS --data PATH --out OUT.safetensors``."""
    emulator, card, years, data = load_for_fit(args)
    _, info = fit_tendency_correction(emulator, data, args.iterations, args.tau, args.members,
                                      args.variables, args.seed, progress=not args.no_progress)
    export_fitted(emulator, card, args, years, "adjustment", info)
    last = info["history"][-1]["climate_errors"]
    print(f"tendency correction after {args.iterations} iterations (tau {args.tau:g} steps, "
          f"{args.members} runs per year, years {list(years)}); max |c| "
          + ", ".join(f"{v} {x:.4f}" for v, x in info["max_abs_correction"].items())
          + "; training-year mean errors before the last update: "
          + "; ".join(f"{y}: " + ", ".join(f"{v} {e[v]['mean_error']:.3f}" for v in e)
                      for y, e in last.items())
          + f"; written: {args.out}")
    return 0
