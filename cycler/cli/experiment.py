"""``cycler experiment NAME``: one zero-shot analysis of a held-out truth state, scored.

Usage::

    cycler experiment {sample-lr,sample-igra,sample-igra-lr,ablation}
        --data PATH (--time YYYY-MM-DDTHH [...] | --index I) [--members 16] [--steps 18]
        [--sigma-y V [V ...]] [--gamma V [V ...]] [--weights PATH] [--out DIR]
        [--json] [--seed 0] [--stations FILE] [--n-stations 200] [--observed VARS]
        [--churn S] [--max-guidance-ratio R] [--clip-grad-norm C] [--threads N]
        [--no-plots]

``--sigma-y`` / ``--gamma`` are normalised variances (Eq. 13 with its factor 1/2; the
paper's values are twice these). A plain value applies to every term of the experiment;
``lr=V`` or ``stations=V`` to one kind. For ``ablation`` they are lists of plain values,
paired in order (one value is used with every value of the other); the default is Table 1
of the paper (converted) plus the project default. Writes ``NAME.json``, ``NAME.csv``,
``NAME_ensemble.nc`` and figures into ``--out`` (default ``runs/experiments/NAME``);
``--json`` prints the summary (per variable ``rmse``, ``spread``, ``spread_skill``,
``crps`` and ``rmse_bicubic`` or ``rmse_unconditional``) as one JSON object. Several
``--time`` values run the experiment at each (into ``OUT/<time>``) and pool the scores
over them (:func:`~diffda.cycler.single.experiments.pool_summaries`, ``NAME_pooled.json``): one
time's spread-skill ratio is a noisy estimate.

The science is in :mod:`diffda.cycler.single.experiments`, the figures in
:mod:`diffda.cycler.single.plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch
from diffda.core.grid import Grid
from diffda.cycler.analysis.sampler import SamplerConfig
from diffda.cycler.single.ablation import default_ablation_grid, run_ablation
from diffda.cycler.single.experiments import (
    EXPERIMENTS,
    TERMS_OF,
    ExperimentConfig,
    run_experiment,
)
from diffda.cycler.single.outputs import run_pooled, to_json, write_outputs, write_tables
from diffda.cycler.single.truth import select_index
from diffda.emulators.prior.model import DEFAULT_WEIGHTS, DiffusionPrior
from diffda.observations.likelihood import DEFAULT_ERROR_MODELS, ErrorModel

KIND_KEYS = {"lr": "low_resolution", "low_resolution": "low_resolution",
             "stations": "stations", "igra": "stations"}


def parse_error_values(
    values: list[str] | None, option: str
) -> tuple[list[float], dict[str, float]]:
    """``["0.01", "stations=0.3"]`` -> plain values ``[0.01]`` and ``{"stations": 0.3}``."""
    plain: list[float] = []
    keyed: dict[str, float] = {}
    for item in values or []:
        key, sep, text = item.partition("=")
        if not sep:
            key, text = "", item
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{option}: cannot read {item!r} as a number "
                             "(VALUE, lr=VALUE or stations=VALUE)") from None
        if not value >= 0:
            raise ValueError(f"{option}: {item!r} must be >= 0")
        if not key:
            plain.append(value)
        elif key in KIND_KEYS:
            keyed[KIND_KEYS[key]] = value
        else:
            raise ValueError(f"{option}: unknown term kind {key!r} in {item!r}; "
                             f"use one of {sorted(KIND_KEYS)}")
    return plain, keyed


def ablation_pairs(sigma_y: list[str] | None, gamma: list[str] | None
                   ) -> tuple[tuple[float, float], ...]:
    """The ``(Sigma_y, Gamma)`` pairs of ``ablation`` from the options (see module doc)."""
    s, ks = parse_error_values(sigma_y, "--sigma-y")
    g, kg = parse_error_values(gamma, "--gamma")
    if ks or kg:
        raise ValueError("ablation takes plain --sigma-y/--gamma lists (it has one LR term)")
    if not s and not g:
        return default_ablation_grid()
    lr = DEFAULT_ERROR_MODELS["low_resolution"]
    s = s or [lr.sigma_y]
    g = g or [lr.gamma]
    if len(s) != len(g) and 1 not in (len(s), len(g)):
        raise ValueError(f"--sigma-y has {len(s)} values and --gamma {len(g)}: give the same "
                         "number (pairs) or one of them once")
    n = max(len(s), len(g))
    pairs = tuple(zip(s * n if len(s) == 1 else s, g * n if len(g) == 1 else g, strict=True))
    for sy, ga in pairs:
        ErrorModel(sigma_y=sy, gamma=ga)
        if sy == 0 and ga == 0:
            raise ValueError("Sigma_y = Gamma = 0 is a zero likelihood variance")
    return pairs


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of the command-line options."""
    base = SamplerConfig()
    sampler = SamplerConfig(
        num_steps=args.steps,
        s_churn=base.s_churn if args.churn is None else args.churn,
        max_guidance_ratio=(base.max_guidance_ratio if args.max_guidance_ratio is None
                            else args.max_guidance_ratio or None),
        clip_grad_norm=args.clip_grad_norm,
        guidance_scale=args.guidance_scale,
    )
    observed = (tuple(v.strip() for v in args.observed.split(",") if v.strip())
                if args.observed else None)
    try:
        nlat, nlon = (int(n) for n in args.lr_grid.lower().split("x"))
        lr_grid = Grid(nlat, nlon)
    except ValueError:
        raise ValueError(f"--lr-grid: cannot read {args.lr_grid!r} as NLATxNLON") from None
    config = ExperimentConfig(members=args.members, seed=args.seed, sampler=sampler,
                              lr_grid=lr_grid, n_stations=args.n_stations, observed=observed,
                              lr_noise=args.lr_noise)
    if args.name == "ablation":
        return config
    plain_s, keyed_s = parse_error_values(args.sigma_y, "--sigma-y")
    plain_g, keyed_g = parse_error_values(args.gamma, "--gamma")
    if len(plain_s) > 1 or len(plain_g) > 1:
        raise ValueError(f"{args.name}: give one --sigma-y/--gamma value per term kind "
                         "(lists are for 'ablation')")
    kinds = TERMS_OF[args.name]
    extra = sorted((set(keyed_s) | set(keyed_g)) - set(kinds))
    if extra:
        raise ValueError(f"{args.name} has no {extra} term; its terms are {list(kinds)}")

    def pick(keyed: dict[str, float], plain: list[float], kind: str) -> float | None:
        return keyed.get(kind, plain[0] if plain else None)

    lr = DEFAULT_ERROR_MODELS["low_resolution"]
    lr_s, lr_g = pick(keyed_s, plain_s, "low_resolution"), pick(keyed_g, plain_g, "low_resolution")
    st_s, st_g = pick(keyed_s, plain_s, "stations"), pick(keyed_g, plain_g, "stations")
    return dataclasses.replace(
        config,
        low_resolution=ErrorModel(sigma_y=lr.sigma_y if lr_s is None else lr_s,
                                  gamma=lr.gamma if lr_g is None else lr_g),
        station_sigma_y=st_s,
        station_gamma=DEFAULT_ERROR_MODELS["point"].gamma if st_g is None else st_g,
    )


EPILOG = """\
experiments:
  sample-lr       super-resolution from the 8x16 field; baseline: bicubic on the sphere
  sample-igra     station profiles only; baseline: unconditional prior samples
  sample-igra-lr  stations and the 8x16 field (Eq. 14); baseline: unconditional samples
  ablation        the (Sigma_y, Gamma) grid of the paper's Table 1 on sample-lr

Sigma_y and Gamma are normalised variances for Eq. 13 *with* its factor 1/2 (the
paper's values are twice these). Defaults: lr 0.01 / 0.01; stations: each observation's
own error variance and Gamma 0.3.

examples:
  cycler experiment sample-lr --data outputs/data/nature.zarr --time 2002-06-01T00
  cycler experiment sample-igra-lr --data outputs/data/nature.zarr --index -1 \\
      --sigma-y lr=0.01 stations=0.005 --gamma lr=0.01 stations=0.3 --json
  cycler experiment ablation --data outputs/data/nature.zarr --time 2002-06-01T00 \\
      --sigma-y 0.05 0.01 --gamma 0.0025 0.01
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("name", choices=EXPERIMENTS, help="which experiment")
    parser.add_argument("--data", type=Path, required=True,
                        help="truth dataset, canonical zarr or netCDF (e.g. "
                             "outputs/data/nature.zarr; use a held-out year)")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--time", nargs="+",
                      help="valid time(s) of the truth state, YYYY-MM-DDTHH[:MM]; with several "
                           "times each is analysed into OUT/<time> and the scores are also "
                           "pooled over them (NAME_pooled.json)")
    when.add_argument("--index", type=int, help="time index in --data (negative from the end)")
    parser.add_argument("--members", type=int, default=16, help="ensemble size")
    parser.add_argument("--steps", type=int, default=SamplerConfig().num_steps,
                        help="sampler steps N (network evaluations 2N - 1)")
    parser.add_argument("--sigma-y", nargs="+", default=None, metavar="V",
                        help="Sigma_y: VALUE, lr=VALUE, stations=VALUE (ablation: a list)")
    parser.add_argument("--gamma", nargs="+", default=None, metavar="V",
                        help="Gamma: VALUE, lr=VALUE, stations=VALUE (ablation: a list)")
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"prior weights (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/experiments/NAME)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stations", type=Path, default=None,
                        help="station observation file (cycler obs make); default: synthetic "
                             "observations of the truth at the default network")
    parser.add_argument("--n-stations", type=int, default=ExperimentConfig().n_stations,
                        help="size of the default network")
    parser.add_argument("--observed", default=None,
                        help="comma-separated observed variables (default: all)")
    parser.add_argument("--lr-grid", default="8x16", help="low-resolution grid NLATxNLON")
    parser.add_argument("--lr-noise", action="store_true",
                        help="low-resolution observations with noise of the likelihood's own "
                             "Sigma_y (default: noise-free, as in the paper); for checking "
                             "the spread against the error with a correct likelihood")
    parser.add_argument("--churn", type=float, default=None,
                        help=f"S_churn (default {SamplerConfig().s_churn:g})")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="lambda_g")
    parser.add_argument("--max-guidance-ratio", type=float, default=None,
                        help="cap on |guidance| / |prior drift| per member (default "
                             f"{SamplerConfig().max_guidance_ratio}; 0: no cap)")
    parser.add_argument("--clip-grad-norm", type=float, default=None,
                        help="cap on the L2 norm of the likelihood score per member")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads")
    parser.add_argument("--no-plots", action="store_true", help="tables only")


def load_prior(weights: Path | None) -> DiffusionPrior:
    path = weights or DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"prior weights {path} not found: train them (cycler train prior) or pass --weights"
        )
    return DiffusionPrior.load(path)


def run(args: argparse.Namespace) -> int:
    """``cycler experiment NAME ...``."""
    from diffda.emulators.dataio import open_dataset

    if args.members < 1 or args.steps < 1:
        raise ValueError(f"--members and --steps must be >= 1, got {args.members}, {args.steps}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    config = experiment_config(args)
    pairs = ablation_pairs(args.sigma_y, args.gamma) if args.name == "ablation" else ()
    prior = load_prior(args.weights)
    source = str(args.data)
    ds = open_dataset(args.data)
    times = args.time if args.time is not None else [None]
    if len(times) > 1:
        if args.name == "ablation":
            raise ValueError("ablation takes one --time (run it once per time)")
        if args.stations is not None:
            raise ValueError("--stations holds one time's observations: give one --time with it")
        out = args.out or Path("outputs") / "experiments" / args.name
        pooled, path = run_pooled(
            args.name, prior, ds, times, config, source, out, plots=not args.no_plots,
            progress=not args.json, extra={"data": source, "seed": args.seed,
                                           "weights": str(args.weights or DEFAULT_WEIGHTS)})
        print_pooled(args.name, pooled, path, args.json)
        return 0
    index = select_index(ds, times[0], args.index, source)
    summary, files = _one_time(args, prior, ds, index, config, source, pairs)
    valid = prior.card.get("data", {}).get("valid_years")
    year = ds["time"].values[index].year
    summary.update({"data": source, "weights": str(args.weights or DEFAULT_WEIGHTS),
                    "held_out": (year in valid) if valid else None,
                    "seed": args.seed, "files": [str(f) for f in files]})
    if args.json:
        print(to_json(summary, indent=None))
        return 0
    if valid and year not in valid:
        print(f"warning: year {year} is not among the prior's held-out years {valid}")
    print_summary(summary)
    return 0


def _one_time(args: argparse.Namespace, prior: DiffusionPrior, ds: Any, index: int,
              config: ExperimentConfig, source: str, pairs: Any
              ) -> tuple[dict[str, Any], list[Path]]:
    """The experiment (or the ablation) at one time, written to its folder."""
    from diffda.cycler.single.plots import plot_ablation

    stations = None
    if args.stations is not None:
        from diffda.observations.synthetic import read_observations

        if "stations" not in TERMS_OF[args.name]:
            raise ValueError(f"--stations: {args.name} assimilates no stations")
        stations = read_observations(args.stations)
    out = args.out or Path("outputs") / "experiments" / args.name
    progress = not args.json
    files: list[Path]
    summary: dict[str, Any]
    if args.name == "ablation":
        result_a = run_ablation(prior, ds, index, pairs, config, source, progress)
        files = write_tables(result_a, out)
        if not args.no_plots:
            files.append(plot_ablation(result_a, out / "ablation.png"))
        summary = result_a.summary()
    else:
        result = run_experiment(args.name, prior, ds, index, config, stations, source, progress)
        files = write_outputs(result, out, plots=not args.no_plots)
        summary = result.summary()
    return summary, files


def print_summary(summary: dict[str, Any]) -> None:
    """A short human-readable table."""
    if summary["experiment"] == "ablation":
        names = summary["variables"]
        print(f"ablation at {summary['time']} ({summary['members']} members); "
              "RMSE / RMSE bicubic per variable:")
        print(f"{'Sigma_y':>9} {'Gamma':>9} " + " ".join(f"{v:>8}" for v in names))
        for r in summary["rows"]:
            vals = (" ".join(f"{r[v]['rmse_ratio_bicubic']:8.3f}" for v in names)
                    if not r["diverged"] else "diverged")
            print(f"{r['sigma_y']:9.3g} {r['gamma']:9.3g} {vals}")
        return
    base = summary["baseline"]
    print(f"{summary['experiment']} at {summary['time']}: {summary['members']} members, "
          f"{summary['seconds_per_analysis']:.1f} s per analysis (NFE {summary['nfe']}), "
          f"max guidance/prior ratio {summary['guidance_ratio_max']:.2f}")
    extra = [k for k in ("rmse_unresolved", "rmse_lr_misfit", "sigma_y_lr", "rmse_station",
                         "rmse_nonstation", "rmse_at_stations", "rmse_at_stations_unconditional")
             if any(k in s for s in summary["scores"].values())]
    print(f"{'variable':>8} {'rmse':>10} {'rmse_' + base:>18} {'spread':>10} "
          f"{'spread/skill':>12} {'crps':>10}" + "".join(f" {k:>{max(10, len(k))}}"
                                                         for k in extra))
    nan = float("nan")
    for v, s in summary["scores"].items():
        print(f"{v:>8} {s['rmse']:10.4g} {s.get('rmse_' + base, nan):18.4g} "
              f"{s['spread']:10.4g} {_num(s['spread_skill']):12.3f} {s['crps']:10.4g}"
              + "".join(f" {_num(s.get(k)):{max(10, len(k))}.4g}" for k in extra))
    print("files: " + ", ".join(summary["files"]))


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def print_pooled(name: str, pooled: dict[str, Any], path: Path, as_json: bool) -> None:
    """The pooled scores of several times: one JSON line, or a short table."""
    if as_json:
        print(to_json({k: v for k, v in pooled.items() if k != "by_time"}, indent=None))
        return
    base = pooled["baseline"]
    print(f"{name} pooled over {len(pooled['pooled_over'])} times ({pooled['members']} members, "
          f"NFE {pooled['nfe']}, {pooled['seconds_per_analysis']:.1f} s per analysis):")
    print(f"{'variable':>8} {'rmse':>10} {'rmse_' + base:>18} {'ratio':>7} {'spread/skill':>12}"
          "  per time")
    for v, r in pooled["scores"].items():
        ref = r.get(f"rmse_{base}")
        print(f"{v:>8} {r['rmse']:10.4g} {ref if ref is not None else float('nan'):18.4g} "
              f"{r.get(f'rmse_ratio_{base}', float('nan')):7.3f} {r['spread_skill']:12.2f}  "
              + " ".join(f"{x:.2f}" for x in r["spread_skill_by_time"]))
    print(f"written: {path}")
