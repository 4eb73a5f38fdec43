"""Command line of the diffusion prior: ``cycler train prior`` and ``cycler evaluate prior``.

- ``cycler train prior CONFIG.toml [--out DIR] [--resume]``: train the EDM prior on the
  nature run at full resolution (config :class:`PriorTrainConfig`, default
  ``runs/prior.toml``). Writes ``DIR/checkpoint.pt`` (resume state: network, EMA,
  optimiser, scheduler, step), ``DIR/loss.jsonl``, ``DIR/config.json`` and, when a run
  ends, ``DIR/prior.safetensors`` + ``DIR/prior.json`` (the EMA network; the card says how
  many steps it had). Stops after ``train.max_minutes`` and continues with ``--resume``
  with the numbers of an uninterrupted run. Runs unchanged on a GPU (``device = "auto"``)
  and under ``torchrun --nproc_per_node=N`` (via :mod:`diffda.emulators.training`).
- ``cycler evaluate prior WEIGHTS --data PATH [--years Y ...] [--members N] [--json]
  [--plots DIR]``: unconditional samples against held-out states: per-variable mean and
  std by latitude, zonal power spectra, the tracer's negative fraction; plots.

The science is in :mod:`diffda.emulators.prior.edm`, :mod:`diffda.emulators.prior.model` and
:mod:`diffda.cycler.analysis.sampler`; this module wires them up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from diffda.core.config import load_config, parse_overrides, require, to_mapping
from diffda.core.grid import Grid
from diffda.core.io import atomic_write_text
from diffda.core.rng import member_generators, torch_generator
from diffda.core.weights import update_card
from diffda.cycler.analysis.sampler import SamplerConfig, sample_posterior
from diffda.cycler.metrics import zonal_power_spectrum
from diffda.emulators.dataio import Climatology, StateBatches, open_datasets
from diffda.emulators.forecast.model import VARIABLES, CoarseStates, load_coarse_states
from diffda.emulators.prior.edm import EDMTrainer
from diffda.emulators.prior.model import DiffusionPrior, build_prior, negative_fraction
from diffda.emulators.prior.unet import UNetConfig
from diffda.emulators.training import (
    DistContext,
    add_run_arguments,
    cleanup_distributed,
    cosine_warmup_lambda,
    count_parameters,
    init_distributed,
    override_train,
    train_loop,
    wrap_ddp,
)
from torch import Tensor
from tqdm.auto import tqdm

# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True, kw_only=True)
class PriorDataConfig:
    """Which states train the prior, on which grid (the store's own grid by default)."""

    path: str | tuple[str, ...] = "runs/data/nature.zarr"  # or several stores (a continuation)
    train_years: tuple[int, ...] = (2000, 2001)  # nature run: from 2000-01-01
    valid_years: tuple[int, ...] = (2002,)
    variables: tuple[str, ...] = VARIABLES
    nlat: int = 32
    nlon: int = 64
    # Load the training years into memory first (4 years at 32x64 are ~190 MB; random
    # batches from memory are faster than dask reads, NOTES.md); false streams from the store.
    in_memory: bool = True

    def __post_init__(self) -> None:
        require(len(self.variables) > 0, "data.variables", self.variables, "must not be empty")
        require(self.nlat >= 2 and self.nlon >= 2, "data.nlat", (self.nlat, self.nlon),
                "grid must be at least 2x2")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EDMTrainConfig:
    """EDM parameters (Karras et al. 2022; paper Sec. 3.4) and the weight average."""

    p_mean: float = -0.5
    p_std: float = 1.5
    sigma_data: float = 1.0
    ema_halflife_steps: float = 500.0
    ema_warmup_ratio: float = 0.05

    def __post_init__(self) -> None:
        require(self.p_std > 0, "edm.p_std", self.p_std, "must be positive")
        require(self.sigma_data > 0, "edm.sigma_data", self.sigma_data, "must be positive")
        require(self.ema_halflife_steps > 0, "edm.ema_halflife_steps", self.ema_halflife_steps,
                "must be positive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PriorOptimConfig:
    """AdamW with linear warm-up and cosine decay; batch size per process. ``init_from``:
    start the network (and its EMA) from these prior weights (continued training or
    fine-tuning) instead of a random initialisation; the U-Net, variables, grid and
    normalisation must match the config and data."""

    steps: int = 2500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_floor: float = 0.05
    grad_clip: float | None = 1.0
    init_from: str | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None
    device: str = "auto"
    threads: int = 1

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "checkpoint_every", "log_every", "threads"):
            require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "must be >= 1")
        require(self.lr > 0, "train.lr", self.lr, "must be positive")
        require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PriorTrainConfig:
    """``runs/prior.toml``: ``seed`` and the tables ``[data]``, ``[model]`` (a
    :class:`~diffda.emulators.prior.unet.UNetConfig`; ``channels`` follows ``data.variables``),
    ``[edm]``, ``[train]``."""

    seed: int = 0
    data: PriorDataConfig = dataclasses.field(default_factory=PriorDataConfig)
    model: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    edm: EDMTrainConfig = dataclasses.field(default_factory=EDMTrainConfig)
    train: PriorOptimConfig = dataclasses.field(default_factory=PriorOptimConfig)


# ------------------------------------------------------------------------------- train


def load_states(path: str | Path | xr.Dataset, grid: Grid, variables: tuple[str, ...],
                years: tuple[int, ...], progress: bool = False) -> CoarseStates:
    """Read the states of ``years`` on ``grid`` into memory, physical units (area-weighted
    coarsening if the store is finer; identity at the store's grid). For evaluation."""
    return load_coarse_states(path, grid, variables, years, progress=progress)


def year_indices(ds: xr.Dataset, years: tuple[int, ...], name: str) -> np.ndarray:
    """Time indices of ``years`` in ``ds`` (they need not be contiguous: the prior's
    samples are single states)."""
    keep = np.flatnonzero(np.isin(ds["time"].dt.year.values, np.asarray(years)))
    if keep.size == 0:
        have = sorted(set(ds["time"].dt.year.values.tolist()))
        raise ValueError(f"{name}: no times in years {list(years)}; years present: {have}")
    return keep


def step_batches(
    source: StateBatches, seed: int, rank: int
) -> Callable[[int], Iterator[tuple[Tensor, torch.Generator]]]:
    """A resumable batch source for :func:`~diffda.emulators.training.train_loop` on a
    :class:`~diffda.emulators.dataio.StateBatches`: step ``s`` is batch ``s % n`` of epoch
    ``s // n`` (``n`` batches per epoch; the epoch's seeded shard), read lazily from the
    store, with the generator of the loss's noise ``(seed, "prior-noise", s, rank)``."""
    n = len(source)
    if n < 1:
        raise ValueError(f"fewer training times than one batch of {source.batch_size}")

    def batches(start: int) -> Iterator[tuple[Tensor, torch.Generator]]:
        step, epoch, order = start, -1, np.empty(0, dtype=np.int64)
        while True:
            if step // n != epoch:
                epoch = step // n
                order = source.shard(epoch)
            b = step % n
            x = source.read(order[b * source.batch_size:(b + 1) * source.batch_size]).state
            yield x[:, 0], torch_generator(seed, "prior-noise", step, rank)
            step += 1

    return batches


def train_prior(
    cfg: PriorTrainConfig,
    out: Path,
    *,
    resume: bool = False,
    data: xr.Dataset | None = None,
    climatology: Climatology | None = None,
    ctx: DistContext | None = None,
    command: str = "",
    progress: bool = True,
    stop_at: int | None = None,
) -> tuple[DiffusionPrior, dict[str, Any]]:
    """Train the prior as ``cfg`` says; files go to ``out`` (rank 0).

    States come from the store (``cfg.data.path``, or the opened dataset ``data``) through
    :class:`~diffda.emulators.dataio.StateBatches` (the training years loaded into memory
    first when ``data.in_memory``, else streamed lazily), normalised with ``climatology``
    (default: the store's own, :meth:`Climatology.from_dataset`, so that the prior and the
    observation terms share one normalisation). The batch of step ``s`` (states and the
    loss's noise) depends only on ``(seed, s, rank)``, so a resumed run gives the numbers of
    an uninterrupted one (``stop_at``: stop after that step as an interrupted run would).
    Returns the EMA prior (ready to sample) and a summary.
    """
    ctx = ctx or DistContext()
    dc, tc, ec = cfg.data, cfg.train, cfg.edm
    name = str(dc.path) if data is None else "dataset"
    ds = open_datasets(dc.path) if data is None else data
    if (ds.sizes["lat"], ds.sizes["lon"]) != (dc.nlat, dc.nlon):
        raise ValueError(f"{name}: grid {ds.sizes['lat']}x{ds.sizes['lon']} differs from the "
                         f"config's data.nlat x data.nlon = {dc.nlat}x{dc.nlon}")
    grid = Grid(dc.nlat, dc.nlon)
    clim = climatology or Climatology.from_dataset(ds, list(dc.variables))
    ds = ds[list(dc.variables)].isel(time=year_indices(ds, dc.train_years, name))
    n_times = ds.sizes["time"]
    if dc.in_memory:
        ds = ds.load()
    time_range = (0, n_times)
    source = StateBatches(ds, dc.variables, clim, batch_size=tc.batch_size, seed=cfg.seed,
                          rank=ctx.rank, world_size=ctx.world_size, time_range=time_range)
    mean = torch.tensor([clim.mean[v] for v in dc.variables])
    std = torch.tensor([clim.std[v] for v in dc.variables])
    prior = build_prior(cfg.model, dc.variables, mean, std, grid, ec.sigma_data,
                        seed_generator=torch_generator(cfg.seed, "prior-init"))
    if tc.init_from is not None:
        init_from_weights(prior, tc.init_from)
    trainer = EDMTrainer(prior.net, ec.p_mean, ec.p_std, ec.ema_halflife_steps,
                         ec.ema_warmup_ratio).to(ctx.device)
    model = wrap_ddp(trainer, ctx)
    optimizer = torch.optim.AdamW(trainer.trainable_parameters(), lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    optimizer.register_step_post_hook(lambda *_: trainer.update_ema())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_warmup_lambda(tc.steps, tc.warmup_steps, tc.lr_floor)
    )

    def loss_fn(m: torch.nn.Module, batch: tuple[Tensor, torch.Generator]) -> Tensor:
        x0, g = batch
        return m(x0.to(ctx.device), g).mean()

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(to_mapping(cfg), indent=2) + "\n")
    result = train_loop(
        model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
        batches=step_batches(source, cfg.seed, ctx.rank),
        steps=tc.steps, ctx=ctx, checkpoint_path=out / "checkpoint.pt",
        checkpoint_every=tc.checkpoint_every, resume=resume, grad_clip=tc.grad_clip,
        log_path=out / "loss.jsonl", log_every=tc.log_every,
        max_seconds=tc.max_minutes * 60 if tc.max_minutes is not None else None,
        desc="train prior", progress=progress, extra=lambda: {"config": to_mapping(cfg)},
        stop_at=stop_at,
    )
    summary = {
        "step": result.step, "steps": tc.steps, "finished": result.step >= tc.steps,
        "seconds_this_run": round(result.seconds, 1),
        "final_loss": float(np.mean(result.losses[-50:])) if result.losses else None,
        "n_parameters": count_parameters(trainer.net), "world_size": ctx.world_size,
        "device": str(ctx.device),
    }
    ema = DiffusionPrior(trainer.ema, dc.variables, mean, std, grid).eval().requires_grad_(False)
    if ctx.is_main:
        ema.export(out / "prior.safetensors", {
            "command": command,
            "data": {"path": dc.path if isinstance(dc.path, str) else list(dc.path),
                     "train_years": list(dc.train_years),
                     "valid_years": list(dc.valid_years),
                     "n_times": n_times,
                     "normalisation": "the store's climatology (dataio.Climatology)"},
            "edm": to_mapping(ec),
            "training": {**to_mapping(tc), **summary, "seed": cfg.seed},
        })
    return ema, summary


def init_from_weights(prior: DiffusionPrior, path: str | Path) -> None:
    """Copy the network of the prior at ``path`` into ``prior`` after checking that the
    U-Net, variables, grid and normalisation agree."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: {path}: no such weights file")
    src = DiffusionPrior.load(path)
    have = (dataclasses.asdict(src.net.backbone.config), src.variables, src.grid)
    want = (dataclasses.asdict(prior.net.backbone.config), prior.variables, prior.grid)
    if have != want:
        raise ValueError(f"train.init_from: {path} holds U-Net/variables/grid {have}; the "
                         f"config builds {want}")
    if not (torch.allclose(src.mean, prior.mean, rtol=1e-4)
            and torch.allclose(src.std, prior.std, rtol=1e-4)):
        raise ValueError(f"train.init_from: {path} was normalised with mean {src.mean.tolist()}"
                         f", std {src.std.tolist()}; the data gives {prior.mean.tolist()}, "
                         f"{prior.std.tolist()}")
    prior.net.load_state_dict(src.net.state_dict())


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config, e.g. runs/prior.toml")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt if it exists")
    add_run_arguments(parser)


def train(args: argparse.Namespace) -> int:
    """``cycler train prior CONFIG.toml [--out DIR] [--resume] [--threads N] ...``."""
    cfg = override_train(
        load_config(PriorTrainConfig, args.config, parse_overrides(args.overrides)), args)
    out = args.out or Path("runs") / Path(args.config).stem
    torch.set_num_threads(cfg.train.threads)
    ctx = init_distributed(cfg.train.device)
    try:
        _, summary = train_prior(
            cfg, out, resume=args.resume, ctx=ctx,
            command="cycler train prior " + " ".join(shlex.quote(a) for a in sys.argv[3:]),
        )
    finally:
        cleanup_distributed()
    if ctx.is_main:
        print(json.dumps(summary))
        state = "final" if summary["finished"] else f"partial, step {summary['step']}"
        print(f"weights ({state}): {out / 'prior.safetensors'} (+ prior.json)")
        if not summary["finished"]:
            print(f"continue with: cycler train prior {args.config} --out {out} --resume")
    return 0


# ---------------------------------------------------------------------------- evaluate


def climate_statistics(states: np.ndarray, grid: Grid) -> dict[str, np.ndarray]:
    """Per-variable statistics of ``(sample, var, lat, lon)`` states: ``mean_by_lat`` and
    ``std_by_lat`` ``(var, lat)`` over samples and longitude, ``spectrum`` ``(var, k)`` of
    anomalies from the zonal-and-sample mean, ``std`` ``(var,)`` (area-weighted, global)."""
    w = grid.area_weights()
    mean_lat = states.mean(axis=(0, 3))
    std_lat = states.std(axis=(0, 3))
    anom = states - mean_lat[None, :, :, None]
    spec = np.stack([zonal_power_spectrum(anom[:, v], w) for v in range(states.shape[1])])
    gmean = (states.mean(axis=(0, 3)) * w).sum(-1) / w.sum()
    gvar = (((states - gmean[None, :, None, None]) ** 2).mean(axis=(0, 3)) * w).sum(-1) / w.sum()
    return {"mean_by_lat": mean_lat, "std_by_lat": std_lat, "spectrum": spec,
            "std": np.sqrt(gvar)}


def compare_climates(
    samples: np.ndarray, truth: np.ndarray, grid: Grid, variables: tuple[str, ...]
) -> dict[str, Any]:
    """Scores of unconditional samples against held-out states, per variable:

    - ``mean_by_lat_error``: area-weighted mean (``_max``: max) over latitude of
      ``|mean_s - mean_t| / std_t(global)``;
    - ``std_by_lat_error``: same of ``|std_s - std_t| / std_t`` (by latitude);
    - ``spectrum_ratio_min/max``: range of sample/truth zonal power for ``k = 1..nlon/2``
      (wavenumbers where the truth has no power are left out: ``None`` in ``_by_k``);
    - ``negative_fraction`` (samples and truth), for positive variables.
    """
    s, t = climate_statistics(samples, grid), climate_statistics(truth, grid)
    w = grid.area_weights() / grid.area_weights().sum()
    out: dict[str, Any] = {}
    for v, name in enumerate(variables):
        mean_err = np.abs(s["mean_by_lat"][v] - t["mean_by_lat"][v]) / t["std"][v]
        std_err = np.abs(s["std_by_lat"][v] - t["std_by_lat"][v]) / t["std_by_lat"][v]
        # wavenumbers where the truth has power (> 1e-10 of its total): a ratio is defined
        tp, sp = t["spectrum"][v, 1:], s["spectrum"][v, 1:]
        has = tp > 1e-10 * t["spectrum"][v].sum()
        ratio = np.where(has, sp / np.where(has, tp, 1.0), np.nan)
        out[name] = {
            "mean_by_lat_error": float((w * mean_err).sum()),
            "mean_by_lat_error_max": float(mean_err.max()),
            "std_by_lat_error": float((w * std_err).sum()),
            "std_by_lat_error_max": float(std_err.max()),
            "spectrum_ratio_min": float(np.nanmin(ratio)) if has.any() else None,
            "spectrum_ratio_max": float(np.nanmax(ratio)) if has.any() else None,
            "spectrum_ratio_by_k": [round(float(r), 4) if h else None
                                    for r, h in zip(ratio, has, strict=True)],
            "global_std_samples": float(s["std"][v]),
            "global_std_truth": float(t["std"][v]),
            "negative_fraction_samples": negative_fraction(samples[:, v]),
            "negative_fraction_truth": negative_fraction(truth[:, v]),
        }
    out["_stats"] = {"samples": s, "truth": t}
    return out


#: Acceptance thresholds of the issue: mean and std by latitude within 10 % (area-weighted
#: over latitude), zonal power within a factor 1.5 at every resolved wavenumber.
ACCEPT_MEAN, ACCEPT_STD, ACCEPT_SPECTRUM = 0.10, 0.10, 1.5


def acceptance(scores: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """Per variable, whether each acceptance criterion holds (see the thresholds above)."""
    out = {}
    for name, s in scores.items():
        if name.startswith("_"):
            continue
        lo, hi = s["spectrum_ratio_min"], s["spectrum_ratio_max"]
        out[name] = {
            "mean_by_lat": s["mean_by_lat_error"] <= ACCEPT_MEAN,
            "std_by_lat": s["std_by_lat_error"] <= ACCEPT_STD,
            "spectrum": lo is not None and 1 / ACCEPT_SPECTRUM <= lo and hi <= ACCEPT_SPECTRUM,
        }
    return out


#: The sampler of the prior's evaluation (unconditional samples): the configuration its
#: card's scores were measured with (18 steps, S_churn = 2), kept apart from the analysis
#: default of :class:`SamplerConfig`.
EVALUATION_SAMPLER = SamplerConfig(num_steps=18, s_churn=2.0)


def sample_unconditional(
    prior: DiffusionPrior, members: int, seed: int, config: SamplerConfig,
    batch: int = 16, progress: bool = True,
) -> Tensor:
    """``(members, var, lat, lon)`` unconditional samples in physical units (Algorithm 1
    without likelihood terms), ``batch`` members at a time; member ``m`` uses generator
    ``(seed, "prior-evaluate", 0, m)``."""
    gens = member_generators(seed, "prior-evaluate", 0, members)
    out = []
    for start in tqdm(range(0, members, batch), desc="sample prior", disable=not progress):
        z = sample_posterior(prior, gens[start:start + batch], prior.state_shape, [], config)
        out.append(prior.denormalise(z))
    return torch.cat(out)


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
    prior = DiffusionPrior.load(args.weights)
    years = tuple(args.years or prior.card.get("data", {}).get("valid_years", ()))
    if not years:
        raise ValueError(f"{args.weights}: the card names no held-out years; pass --years")
    truth = load_states(args.data, prior.grid, prior.variables, years).states.numpy()
    config = dataclasses.replace(EVALUATION_SAMPLER, num_steps=args.steps)
    samples = sample_unconditional(prior, args.members, args.seed, config,
                                   progress=not args.json).numpy()
    scores = compare_climates(samples, truth, prior.grid, prior.variables)
    stats = scores.pop("_stats")
    result = {"weights": str(args.weights), "data": str(args.data), "years": list(years),
              "members": args.members, "n_truth": int(truth.shape[0]),
              "sampler_steps": args.steps, "variables": scores,
              "acceptance": acceptance(scores)}
    if args.plots is not None:
        result["plots"] = [str(p) for p in plot_climates(stats, prior.grid, prior.variables,
                                                         args.plots, samples, truth)]
    if args.update_card:
        update_card(args.weights, scores={k: {kk: vv for kk, vv in v.items()
                                              if kk != "spectrum_ratio_by_k"}
                                          for k, v in scores.items()},
                    acceptance=result["acceptance"],
                    scores_data={"path": str(args.data), "years": list(years),
                                 "members": args.members})
    if args.json:
        print(json.dumps(result))
    else:
        for name, s in scores.items():
            print(f"{name:>8}: mean-by-lat err {s['mean_by_lat_error']:.3f} "
                  f"(max {s['mean_by_lat_error_max']:.3f}), std-by-lat err "
                  f"{s['std_by_lat_error']:.3f} (max {s['std_by_lat_error_max']:.3f}), "
                  f"spectrum ratio {s['spectrum_ratio_min']:.2f}..{s['spectrum_ratio_max']:.2f}, "
                  f"negative fraction {s['negative_fraction_samples']:.4f} "
                  f"(truth {s['negative_fraction_truth']:.4f}); accepted: "
                  f"{result['acceptance'][name]}")
    return 0


def plot_climates(
    stats: dict[str, dict[str, np.ndarray]], grid: Grid, variables: tuple[str, ...],
    folder: Path, samples: np.ndarray, truth: np.ndarray,
) -> list[Path]:
    """Mean and std by latitude, zonal spectra, and maps of samples next to truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    s, t = stats["samples"], stats["truth"]
    nv = len(variables)
    paths = []
    fig, ax = plt.subplots(2, nv, figsize=(3.2 * nv, 5.5), squeeze=False)
    for v, name in enumerate(variables):
        for row, key in enumerate(("mean_by_lat", "std_by_lat")):
            ax[row, v].plot(grid.lat, t[key][v], "k-", label="held-out nature run")
            ax[row, v].plot(grid.lat, s[key][v], "r--", label="prior samples")
            ax[row, v].set_title(f"{name}: {key.replace('_by_lat', '')} by latitude")
            ax[row, v].set_xlabel("latitude (deg)")
    ax[0, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "prior_mean_std_by_lat.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(1, nv, figsize=(3.2 * nv, 3.0), squeeze=False)
    k = np.arange(1, t["spectrum"].shape[1])
    for v, name in enumerate(variables):
        ax[0, v].loglog(k, t["spectrum"][v, 1:], "k-", label="nature run")
        ax[0, v].loglog(k, s["spectrum"][v, 1:], "r--", label="prior")
        ax[0, v].set_title(f"{name}: zonal power")
        ax[0, v].set_xlabel("zonal wavenumber")
    ax[0, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "prior_zonal_spectra.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(nv, 3, figsize=(10, 2.2 * nv), squeeze=False)
    for v, name in enumerate(variables):
        lo, hi = np.percentile(truth[:, v], [1, 99])
        for c, (img, label) in enumerate(((truth[-1, v], "nature run"),
                                          (samples[0, v], "sample 0"),
                                          (samples[1, v], "sample 1"))):
            im = ax[v, c].imshow(img, origin="lower", extent=(0, 360, -90, 90), vmin=lo, vmax=hi,
                                 cmap="viridis", aspect="auto")
            ax[v, c].set_title(f"{name}: {label}", fontsize=8)
        fig.colorbar(im, ax=ax[v].tolist(), shrink=0.8)
    paths.append(folder / "prior_sample_maps.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
