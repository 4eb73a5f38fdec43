"""Training of the diffusion prior: its config, batches and the training run.

- Configs (``runs/prior.toml``): :class:`PriorTrainConfig` with the tables
  :class:`PriorDataConfig`, a :class:`~diffda.emulators.prior.unet.UNetConfig`,
  :class:`EDMTrainConfig` and :class:`PriorOptimConfig`.
- :func:`step_batches`: a resumable batch source over a
  :class:`~diffda.emulators.batches.StateBatches`.
- :func:`train_prior`: the resumable EDM training run (files in one folder), on the generic
  loop of :mod:`diffda.emulators.training`; :func:`init_from_weights` starts it from
  trained weights. It ends with ``prior.safetensors`` + ``prior.json`` (the EMA network).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from diffda.core.config import require, to_mapping
from diffda.core.grid import Grid
from diffda.core.rng import torch_generator
from diffda.emulators.batches import StateBatches
from diffda.emulators.dataio import Climatology, open_datasets, year_indices
from diffda.emulators.prior.edm import EDMTrainer
from diffda.emulators.prior.model import DiffusionPrior, build_prior
from diffda.emulators.prior.unet import UNetConfig
from diffda.emulators.training import (
    DistContext,
    TrainDataConfig,
    adamw_cosine,
    run_training,
    wrap_ddp,
)
from torch import Tensor

# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True, kw_only=True)
class PriorDataConfig(TrainDataConfig):
    """Which states train the prior, on which grid (the store's own grid by default)."""

    nlat: int = 32
    nlon: int = 64
    # Load the training years into memory first (4 years at 32x64 are ~190 MB; random
    # batches from memory are faster than dask reads, NOTES.md); false streams from the store.
    in_memory: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
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



def step_batches(
    source: StateBatches, seed: int, rank: int
) -> Callable[[int], Iterator[tuple[Tensor, torch.Generator]]]:
    """A resumable batch source for :func:`~diffda.emulators.training.train_loop` on a
    :class:`~diffda.emulators.batches.StateBatches`: step ``s`` is batch ``s % n`` of epoch
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




# ------------------------------------------------------------------------------- train


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
    :class:`~diffda.emulators.batches.StateBatches` (the training years loaded into memory
    first when ``data.in_memory``, else streamed lazily), normalised with ``climatology``
    (default: the store's own, :meth:`Climatology.from_dataset`, so that the prior and the
    observation terms share one normalisation). The batch of step ``s`` (states and the
    loss's noise) depends only on ``(seed, s, rank)``, so a resumed run gives the numbers of
    an uninterrupted one (``stop_at``: stop after that step as an interrupted run would).
    Returns the EMA prior (ready to sample) and a summary.
    """
    ctx = ctx or DistContext()
    dc, tc, ec = cfg.data, cfg.train, cfg.edm
    ds, clim = _training_states(dc, data, climatology)
    n_times = ds.sizes["time"]
    source = StateBatches(ds, dc.variables, clim, batch_size=tc.batch_size, seed=cfg.seed,
                          rank=ctx.rank, world_size=ctx.world_size, time_range=(0, n_times))
    mean = torch.tensor([clim.mean[v] for v in dc.variables])
    std = torch.tensor([clim.std[v] for v in dc.variables])
    grid = Grid(dc.nlat, dc.nlon)
    prior = build_prior(cfg.model, dc.variables, mean, std, grid, ec.sigma_data,
                        seed_generator=torch_generator(cfg.seed, "prior-init"))
    if tc.init_from is not None:
        init_from_weights(prior, tc.init_from)
    trainer = EDMTrainer(prior.net, ec.p_mean, ec.p_std, ec.ema_halflife_steps,
                         ec.ema_warmup_ratio).to(ctx.device)
    model = wrap_ddp(trainer, ctx)
    optimizer, scheduler = adamw_cosine(trainer.trainable_parameters(), tc,
                                        post_step=trainer.update_ema)

    def loss_fn(m: torch.nn.Module, batch: tuple[Tensor, torch.Generator]) -> Tensor:
        x0, g = batch
        return m(x0.to(ctx.device), g).mean()

    summary = run_training(
        cfg, out, model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
        batches=step_batches(source, cfg.seed, ctx.rank), ctx=ctx, resume=resume,
        desc="train prior", progress=progress, stop_at=stop_at, counted=trainer.net,
    )
    ema = DiffusionPrior(trainer.ema, dc.variables, mean, std, grid).eval().requires_grad_(False)
    if ctx.is_main:
        ema.export(out / "prior.safetensors", _card(cfg, command, n_times, summary))
    return ema, summary


def _card(cfg: PriorTrainConfig, command: str, n_times: int, summary: dict[str, Any]
          ) -> dict[str, Any]:
    """The training record of the prior's weights card."""
    dc = cfg.data
    return {
        "command": command,
        "data": {"path": dc.path if isinstance(dc.path, str) else list(dc.path),
                 "train_years": list(dc.train_years),
                 "valid_years": list(dc.valid_years),
                 "n_times": n_times,
                 "normalisation": "the store's climatology (dataio.Climatology)"},
        "edm": to_mapping(cfg.edm),
        "training": {**to_mapping(cfg.train), **summary, "seed": cfg.seed},
    }


def _training_states(dc: PriorDataConfig, data: xr.Dataset | None,
                     climatology: Climatology | None) -> tuple[xr.Dataset, Climatology]:
    """The training years of the store ``dc.path`` (or of ``data``), in memory when
    ``dc.in_memory``, and the climatology that normalises them (``climatology``, default
    the store's own, over all its years)."""
    name = str(dc.path) if data is None else "dataset"
    ds = open_datasets(dc.path) if data is None else data
    if (ds.sizes["lat"], ds.sizes["lon"]) != (dc.nlat, dc.nlon):
        raise ValueError(f"{name}: grid {ds.sizes['lat']}x{ds.sizes['lon']} differs from the "
                         f"config's data.nlat x data.nlon = {dc.nlat}x{dc.nlon}")
    clim = climatology or Climatology.from_dataset(ds, list(dc.variables))
    ds = ds[list(dc.variables)].isel(time=year_indices(ds, dc.train_years, name))
    if dc.in_memory:
        ds = ds.load()
    return ds, clim


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

