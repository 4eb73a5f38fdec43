"""Training of the forecast emulator: its config, batches, loss and the training run.

- Configs (``runs/emulator.toml``): :class:`EmulatorTrainConfig` with the tables
  :class:`DataConfig`, :class:`ModelConfig`, :class:`OptimConfig`.
- :class:`TrainingWindows` / :func:`training_windows`: normalised states and forcing with
  the starts of windows of consecutive steps; :func:`rollout_loss`: the area-weighted MSE
  of a normalised rollout in units of the tendency std.
- :func:`train_emulator`: the resumable training run (files in one folder), on the generic
  loop of :mod:`diffda.emulators.training`; :func:`init_from_weights` starts it from
  trained weights (fine-tuning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffda.core.config import require, to_mapping
from diffda.core.grid import Grid
from diffda.core.rng import torch_generator
from diffda.emulators.forecast.data import CoarseStates, load_coarse_states, window_starts
from diffda.emulators.forecast.forcing import FORCINGS, ForcingFn, as_forcing_tensor
from diffda.emulators.forecast.model import SFNOEmulator, build_emulator
from diffda.emulators.training import (
    DistContext,
    TrainDataConfig,
    adamw_cosine,
    run_training,
    unwrap,
    wrap_ddp,
)
from torch import Tensor, nn

# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(TrainDataConfig):
    """Which data trains the emulator, on which grid, with which forcing."""

    dt_hours: float = 6.0
    forcing: str = "nature"

    def __post_init__(self) -> None:
        require(self.forcing in FORCINGS, "data.forcing", self.forcing,
                f"expected one of {sorted(FORCINGS)}")
        super().__post_init__()
        require(self.dt_hours > 0, "data.dt_hours", self.dt_hours, "must be positive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Size of the SFNO (see :class:`diffda.emulators.forecast.sfno.SFNOConfig`)."""

    width: int = 48
    depth: int = 4
    mlp_ratio: float = 2.0
    lmax: int | None = None
    operator: str = "diagonal"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """The optimisation: AdamW, linear warm-up then cosine decay, optional rollout loss
    (``rollout`` steps per sample from step ``rollout_from`` on, 1 before), optional
    Gaussian noise of std ``input_noise`` (normalised units) on the initial state of each
    sample (targets stay clean: the network learns to pull perturbed states back, which
    keeps long free runs on the attractor). ``init_from``: start from these emulator
    weights (fine-tuning, e.g. a long-rollout phase after a one-step training) instead of a
    random initialisation; network size, variables and grid must match the config."""

    steps: int = 4000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_floor: float = 0.02
    grad_clip: float | None = 1.0
    rollout: int = 1
    rollout_from: int = 0
    input_noise: float = 0.0
    init_from: str | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    max_minutes: float | None = None
    device: str = "auto"
    threads: int = 1

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "rollout", "checkpoint_every", "log_every", "threads"):
            require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "must be >= 1")
        require(self.lr > 0, "train.lr", self.lr, "must be positive")
        require(0 <= self.rollout_from, "train.rollout_from", self.rollout_from, "must be >= 0")
        require(self.input_noise >= 0, "train.input_noise", self.input_noise, "must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmulatorTrainConfig:
    """``runs/emulator.toml``: ``seed`` and the tables ``[data]``, ``[model]``, ``[train]``."""

    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: OptimConfig = dataclasses.field(default_factory=OptimConfig)


# ---------------------------------------------------------------------- batches and loss


def rollout_at(cfg: OptimConfig, step: int) -> int:
    """Rollout length of the loss at optimizer step ``step``."""
    return cfg.rollout if step >= cfg.rollout_from else 1


@dataclasses.dataclass
class TrainingWindows:
    """Normalised training tensors and the valid window starts, for batch drawing.

    ``z``: ``(time, var, lat, lon)`` normalised states; ``f``: ``(time, n_forcing, lat,
    lon)`` normalised forcing; ``starts``: indices whose ``rollout + 1`` states are
    consecutive.
    """

    z: Tensor
    f: Tensor
    starts: np.ndarray
    rollout: int

    def draw(self, generator: torch.Generator, batch_size: int) -> tuple[Tensor, Tensor]:
        """A batch ``(z (B, R + 1, var, lat, lon), f (B, R, n_forcing, lat, lon))``."""
        pick = torch.randint(len(self.starts), (batch_size,), generator=generator)
        idx = torch.as_tensor(self.starts)[pick][:, None] + torch.arange(self.rollout + 1)
        return self.z[idx], self.f[idx[:, :-1]]


def training_windows(
    emulator: SFNOEmulator, data: CoarseStates, forcing: Tensor | None, rollout: int
) -> TrainingWindows:
    """Normalise ``data`` (and its physical ``forcing``) with ``emulator``'s statistics."""
    with torch.no_grad():
        z = emulator.normalise(data.states)
        if forcing is not None and forcing.shape[1]:
            f_mean, f_std = emulator.forcing_mean, emulator.forcing_std
            f = (forcing - f_mean[:, None, None]) / f_std[:, None, None]
        else:
            f = torch.zeros(len(data.times), 0, data.grid.nlat, data.grid.nlon)
    starts = window_starts(data.times, emulator.dt_hours, rollout)
    if len(starts) == 0:
        raise ValueError(f"no {rollout + 1} consecutive {emulator.dt_hours} h states in the data")
    return TrainingWindows(z=z, f=f, starts=starts, rollout=rollout)


def rollout_loss(model: nn.Module, batch: tuple[Tensor, Tensor], area_w: Tensor,
                 tendency_std: Tensor) -> Tensor:
    """Area-weighted MSE of a normalised rollout, in units of the tendency std, averaged over
    the ``R`` steps, variables and points: ``mean_k,v,i w_i ((z^_k - z_k) / s_v)^2``.

    ``batch = (z (B, R+1, V, H, W), f (B, R, F, H, W))``; ``area_w``: ``(H,)`` mean 1.
    """
    z, f = batch
    pred = model(z[:, 0], f)
    err = (pred - z[:, 1:]) / tendency_std[:, None, None]
    return (err**2 * area_w[:, None]).mean()



def window_batches(windows: TrainingWindows, tc: OptimConfig, seed: int, rank: int
                   ) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """A resumable batch source for :func:`~diffda.emulators.training.train_loop`: the batch
    of step ``s`` (windows, its rollout length :func:`rollout_at`, the input noise) is drawn
    from ``torch_generator(seed, "emulator-batches", s, rank)`` alone."""

    def batches(start: int) -> Iterator[tuple[Tensor, Tensor]]:
        step = start
        while True:
            g = torch_generator(seed, "emulator-batches", step, rank)
            z, f = windows.draw(g, tc.batch_size)
            r = rollout_at(tc, step)
            z = z[:, : r + 1]
            if tc.input_noise > 0:
                z = z.clone()
                z[:, 0] += tc.input_noise * torch.randn(z[:, 0].shape, generator=g).to(z)
            yield z, f[:, :r]
            step += 1

    return batches


# ------------------------------------------------------------------------------- train


def train_emulator(
    cfg: EmulatorTrainConfig,
    out: Path,
    *,
    resume: bool = False,
    data: CoarseStates | None = None,
    forcing_fn: Any = None,
    ctx: DistContext | None = None,
    command: str = "",
    progress: bool = True,
    stop_at: int | None = None,
) -> tuple[SFNOEmulator, dict[str, Any]]:
    """Train an emulator as ``cfg`` says; files go to ``out`` (rank 0).

    ``data`` / ``forcing_fn``: the training states and forcing function, when not read from
    ``cfg.data.path`` / looked up by ``cfg.data.forcing`` (tests pass them in). The weights
    of the last step reached are exported at the end, also after a stop on the time budget
    (the card's ``training.finished`` and ``training.step`` say how far). Returns the
    (bare) emulator and a summary. ``stop_at``: stop after that step as if interrupted
    (for tests of resumption). Exactly resumable: the batch of step ``s`` depends only on
    ``(seed, s, rank)``.
    """
    ctx = ctx or DistContext()
    tc = cfg.train
    data, forcing_fn, forcing = _training_data(cfg, data, forcing_fn, ctx.is_main and progress)
    emulator = build_emulator(
        data, forcing_fn, cfg.data.forcing, dataclasses.asdict(cfg.model), cfg.data.dt_hours,
        generator=torch_generator(cfg.seed, "emulator-init"), forcing=forcing,
    )
    if tc.init_from is not None:
        init_from_weights(emulator, tc.init_from)
    emulator = emulator.to(ctx.device)
    windows = training_windows(emulator, data, forcing, max(1, tc.rollout))
    windows.z, windows.f = windows.z.to(ctx.device), windows.f.to(ctx.device)
    model = wrap_ddp(emulator, ctx)
    optimizer, scheduler = adamw_cosine(model.parameters(), tc)
    grid = Grid(cfg.data.nlat, cfg.data.nlon)
    area_w = torch.as_tensor(grid.area_weights(), dtype=torch.float32, device=ctx.device)
    tend = emulator.tendency_std

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return rollout_loss(m, batch, area_w, tend)

    summary = run_training(
        cfg, out, model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
        batches=window_batches(windows, tc, cfg.seed, ctx.rank), ctx=ctx, resume=resume,
        desc="train emulator", progress=progress, stop_at=stop_at, counted=model,
    )
    bare = unwrap(model)
    if ctx.is_main:  # also when stopped early: the card's training.finished says which
        bare.export(
            out / "emulator.safetensors",
            command=command,
            data={"path": cfg.data.path, "train_years": list(cfg.data.train_years),
                  "valid_years": list(cfg.data.valid_years), "n_times": len(data.times),
                  "coarsening": "diffda.core.grid.coarsen_to (area-weighted)"},
            training={**to_mapping(tc), **summary, "seed": cfg.seed},
        )
    return bare, summary


def _training_data(cfg: EmulatorTrainConfig, data: CoarseStates | None,
                   forcing_fn: ForcingFn | None, progress: bool
                   ) -> tuple[CoarseStates, ForcingFn | None, Tensor | None]:
    """The training states (read from ``cfg.data.path`` unless given), the forcing function
    (looked up by ``cfg.data.forcing`` unless given) and the physical forcing at the
    states' times (``None`` without forcing)."""
    dc = cfg.data
    grid = Grid(dc.nlat, dc.nlon)
    if data is None:
        path = dc.path if isinstance(dc.path, str) else list(dc.path)
        data = load_coarse_states(path, grid, dc.variables, dc.train_years, progress=progress)
    if forcing_fn is None:
        forcing_fn = FORCINGS[dc.forcing]()
    forcing = (as_forcing_tensor(forcing_fn(data.times, grid), len(data.times))
               if forcing_fn is not None else None)
    return data, forcing_fn, forcing


def init_from_weights(emulator: SFNOEmulator, path: str | Path) -> None:
    """Copy the weights (network and normalisation) of the emulator at ``path`` into
    ``emulator``, after checking that both have the same network, variables and grid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: {path}: no such weights file")
    src = SFNOEmulator.from_weights(path, forcing=emulator.forcing)
    have = (dataclasses.asdict(src.net.config), src.variables, src.grid)
    want = (dataclasses.asdict(emulator.net.config), emulator.variables, emulator.grid)
    if have != want:
        raise ValueError(f"train.init_from: {path} holds network/variables/grid {have}; the "
                         f"config builds {want}")
    emulator.load_state_dict(src.state_dict())

