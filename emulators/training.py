"""Generic training utilities shared by the forecast emulator and the diffusion prior.

What lives here, and nothing model-specific:

- :func:`select_device`: ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"``.
- :func:`init_distributed` / :class:`DistContext`: ``torch.distributed`` from the environment
  variables that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``); backend ``gloo`` on the CPU, ``nccl`` on GPUs; a plain
  single process when ``WORLD_SIZE`` is unset. :func:`wrap_ddp` wraps a model in DDP only
  when there are several processes, so the same command runs everywhere.
- Resume state: :func:`save_checkpoint` / :func:`load_checkpoint` (model, optimizer,
  scheduler, step, named ``torch.Generator`` states, a JSON-able ``extra`` dict), written
  atomically (temporary file, then ``os.replace``) and read back with
  ``torch.load(weights_only=True)``: a checkpoint can never execute code.
- Weights for users are written and read by :mod:`diffda.core.weights` (``export_weights``,
  ``load_weights``: tensors in safetensors plus a JSON card, no pickled code).
- :func:`train_loop`: a seeded, resumable loop ``for step in range(start, steps)`` over a
  batch source, with a tqdm bar showing the loss on rank 0, periodic checkpoints and a
  ``loss.jsonl`` log; :func:`run_training` runs it for a config with a ``[train]`` table
  in one output folder (``config.json``, ``checkpoint.pt``, ``loss.jsonl``) and returns
  the run's summary; :func:`adamw_cosine` is the optimiser both models use.
- :class:`TrainDataConfig`: the ``[data]`` table both models share (which nature-run
  stores and years, which variables, which grid).

Exact resume: the loop asks the batch source for the batches *from a given step on*
(``batches(start_step)``); a source whose batch at step ``s`` depends only on
``(seed, s, rank)`` (e.g. :func:`step_seeded_batches`) gives after a resume exactly the
numbers of an uninterrupted run. Any other ``torch.Generator`` the loss uses (noise levels of
a diffusion loss, say) is passed in ``generators`` and its state is checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from diffda.core.config import require, to_mapping
from diffda.core.io import atomic_write_bytes, atomic_write_text
from diffda.core.rng import torch_generator
from diffda.core.weights import WeightsError, load_plain_torch_file
from diffda.emulators.forecast.data import VARIABLES
from torch import Tensor, nn
from tqdm.auto import tqdm

Batch = TypeVar("Batch")

CHECKPOINT_FORMAT = "diffda-checkpoint-v1"


# ----------------------------------------------------------------------------- devices


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device to train on.

    ``"auto"``: ``cuda:<local_rank>`` when a GPU is visible, else ``cpu``. ``"cuda"`` without
    an index also picks ``cuda:<local_rank>`` (one GPU per torchrun process). An explicit
    ``"cuda:1"`` or ``"cpu"`` is taken as given; asking for CUDA without a GPU is an error.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
        if name == "cuda":
            name = f"cuda:{local_rank % torch.cuda.device_count()}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str | None = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``); with
    ``WORLD_SIZE`` unset or 1 this is a single process and nothing is initialised. The
    backend defaults to ``nccl`` on CUDA devices and ``gloo`` on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (a no-op for a single process)."""
    if ctx.distributed:
        dist.barrier()


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(model)`` when several processes train, else ``model``."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(value: Tensor, ctx: DistContext) -> Tensor:
    """Mean of a tensor over ranks (the tensor itself for a single process)."""
    if not ctx.distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)


# ------------------------------------------------------------------------ checkpoints


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the resume state atomically: model, optimizer, scheduler, ``step`` (the number
    of optimizer steps done), generator states and ``extra`` (JSON-able: config, history).

    Only tensors and plain containers are stored, so :func:`load_checkpoint` can use
    ``torch.load(weights_only=True)``.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "extra": json.dumps(dict(extra or {})),
    }
    return atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[int, dict[str, Any]]:
    """Restore what :func:`save_checkpoint` wrote, in place; returns ``(step, extra)``.

    Raises :class:`WeightsError` naming ``path`` if the file is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    state = load_plain_torch_file(path, "checkpoint", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a diffda checkpoint (no format {CHECKPOINT_FORMAT!r})")
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise WeightsError(f"{path}: checkpoint has no state for generator {name!r}")
        g.set_state(state["generators"][name])
    return int(state["step"]), json.loads(state["extra"])


# ---------------------------------------------------------------------- batch sources


def step_seeded_batches(
    draw: Callable[[torch.Generator], Batch], seed: int, rank: int = 0, stream: str = "batches"
) -> Callable[[int], Iterator[Batch]]:
    """A resumable batch source: the batch of step ``s`` is ``draw(g)`` with
    ``g = torch_generator(seed, stream, s, rank)``, whatever happened before step ``s``.

    Returns ``batches(start_step) -> iterator`` as :func:`train_loop` expects.
    """

    def batches(start: int) -> Iterator[Batch]:
        step = start
        while True:
            yield draw(torch_generator(seed, stream, step, rank))
            step += 1

    return batches


def cosine_warmup_lambda(total_steps: int, warmup_steps: int = 0, floor: float = 0.0):
    """Learning-rate factor: linear warm-up, then cosine decay to ``floor``; for LambdaLR.

    Returned as a picklable callable object so that nothing but numbers is checkpointed.
    """
    return _CosineWarmup(total_steps, warmup_steps, floor)


@dataclass(frozen=True)
class _CosineWarmup:
    total_steps: int
    warmup_steps: int
    floor: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))


# ------------------------------------------------------------------------------- loop


@dataclass
class LoopResult:
    """What :func:`train_loop` did: the step reached and the rank-mean losses logged."""

    step: int
    losses: list[float]
    seconds: float


def train_loop(
    *, model: nn.Module, optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Batch], Tensor], batches: Callable[[int], Iterable[Batch]],
    steps: int, ctx: DistContext | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint_path: str | Path | None = None, checkpoint_every: int = 500,
    resume: bool = False, generators: Mapping[str, torch.Generator] | None = None,
    extra: Callable[[], Mapping[str, Any]] | None = None, grad_clip: float | None = None,
    log_path: str | Path | None = None, log_every: int = 10, max_seconds: float | None = None,
    stop_at: int | None = None, desc: str = "train", progress: bool = True,
) -> LoopResult:
    """Train ``model`` for ``steps`` optimizer steps in total (counting resumed ones).

    Per step: ``batch = next(it)``, ``loss = loss_fn(model, batch)``, backward, optional
    gradient-norm clipping, ``optimizer.step()``, ``scheduler.step()``. With ``resume`` and an
    existing ``checkpoint_path`` the state is restored first and the batch source restarts at
    the restored step (``batches(step)``). A checkpoint is written (rank 0) every
    ``checkpoint_every`` steps, at the end, and when ``max_seconds`` of wall time are spent
    (then the loop stops early; run again with ``resume`` to continue). ``stop_at``: stop
    (with a checkpoint) after that step, as an interrupted run would. ``log_path`` gets one
    JSON line ``{"step", "loss", "lr", "seconds"}`` every ``log_every`` steps (rank 0).
    """
    ctx = ctx or DistContext()
    checkpoints = _Checkpoints(checkpoint_path, model, optimizer, scheduler, generators, extra,
                               ctx)
    start = checkpoints.restore() if resume else 0
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(
        total=steps, initial=start, desc=desc, disable=not (progress and ctx.is_main),
        dynamic_ncols=True,
    )
    log = open(log_path, "a") if (log_path is not None and ctx.is_main) else None  # noqa: SIM115
    step = start
    try:
        it = iter(batches(start))
        model.train()
        while step < steps:
            loss = _optimizer_step(model, optimizer, scheduler, loss_fn, next(it), grad_clip,
                                   desc, step)
            step += 1
            mean_loss = float(all_reduce_mean(loss.detach(), ctx))
            losses.append(mean_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if log is not None and (step % log_every == 0 or step == steps):
                _log_losses(log, step, losses[-log_every:], optimizer, t0)
            interrupted = (_out_of_time(t0, max_seconds, ctx)
                           or (stop_at is not None and step >= stop_at))
            if step % checkpoint_every == 0 or step == steps or interrupted:
                checkpoints.save(step)
            if interrupted:
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    return LoopResult(step=step, losses=losses, seconds=time.perf_counter() - t0)


@dataclass
class _Checkpoints:
    """The resume state of :func:`train_loop`: where it goes (``path``; none: no
    checkpoints) and what it holds."""

    path: str | Path | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generators: Mapping[str, torch.Generator] | None
    extra: Callable[[], Mapping[str, Any]] | None
    ctx: DistContext

    def restore(self) -> int:
        """The step of the checkpoint at ``path`` after restoring it (0 when there is none)."""
        if self.path is None or not Path(self.path).is_file():
            return 0
        start, _ = load_checkpoint(
            self.path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            generators=self.generators, map_location=self.ctx.device,
        )
        return start

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step`` (rank 0), then wait for all ranks."""
        if self.path is not None and self.ctx.is_main:
            save_checkpoint(
                self.path, model=self.model, optimizer=self.optimizer, step=step,
                scheduler=self.scheduler, generators=self.generators,
                extra=self.extra() if self.extra else None,
            )
        barrier(self.ctx)


def _optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: Callable[[nn.Module, Batch], Tensor], batch: Batch, grad_clip: float | None,
    desc: str, step: int,
) -> Tensor:
    """Optimizer step ``step + 1`` of :func:`train_loop` on ``batch``; returns its loss. A
    loss that is not finite raises ``FloatingPointError`` before any update."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}")
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss


def _log_losses(log: TextIO, step: int, window: list[float], optimizer: torch.optim.Optimizer,
                t0: float) -> None:
    """One line of ``loss.jsonl``: the mean loss of ``window`` (the steps since the last line)."""
    log.write(json.dumps({
        "step": step, "loss": sum(window) / len(window),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - t0, 2),
    }) + "\n")
    log.flush()


def _out_of_time(t0: float, max_seconds: float | None, ctx: DistContext) -> bool:
    """Whether the wall-time budget is spent, on any rank (then all ranks stop together)."""
    out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
    if ctx.distributed and max_seconds is not None:
        flag = torch.tensor(float(out_of_time), device=ctx.device)
        out_of_time = bool(all_reduce_mean(flag, ctx) > 0)
    return out_of_time


# ------------------------------------------------------------------- a model's training run


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainDataConfig:
    """The ``[data]`` table of a training config: which nature-run states train a model
    (``path``: a store, or several, e.g. a run and its continuation; the calendar years),
    which variables, on which grid."""

    path: str | tuple[str, ...] = "outputs/data/nature.zarr"  # or several stores (a continuation)
    train_years: tuple[int, ...] = (2000, 2001)  # nature run: from 2000-01-01
    valid_years: tuple[int, ...] = (2002,)
    variables: tuple[str, ...] = VARIABLES
    nlat: int = 16
    nlon: int = 32

    def __post_init__(self) -> None:
        require(len(self.variables) > 0, "data.variables", self.variables, "must not be empty")


def adamw_cosine(
    params: Iterable[nn.Parameter], tc: Any, post_step: Callable[[], None] | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (``tc.lr``, ``tc.weight_decay``) with a linear warm-up then cosine decay
    (:func:`cosine_warmup_lambda` of ``tc.steps``, ``tc.warmup_steps``, ``tc.lr_floor``);
    ``post_step`` runs after every optimizer step (an EMA update, say)."""
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if post_step is not None:
        optimizer.register_step_post_hook(lambda *_: post_step())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_warmup_lambda(tc.steps, tc.warmup_steps, tc.lr_floor)
    )
    return optimizer, scheduler


def run_training(
    cfg: Any, out: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: Callable[[nn.Module, Batch], Tensor], batches: Callable[[int], Iterable[Batch]],
    ctx: DistContext, resume: bool, desc: str, progress: bool, stop_at: int | None,
    counted: nn.Module,
) -> dict[str, Any]:
    """:func:`train_loop` as ``cfg.train`` says (steps, checkpoints, clipping, log, time
    budget) with its files in ``out``: ``config.json`` (``cfg``, written first),
    ``checkpoint.pt`` (resume state, with ``cfg``) and ``loss.jsonl`` (rank 0). Returns the
    run's summary: step reached, whether finished, seconds, final loss (mean of the last 50
    steps), the number of parameters of ``counted``, world size and device."""
    tc = cfg.train
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(to_mapping(cfg), indent=2) + "\n")
    result = train_loop(
        model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
        batches=batches, steps=tc.steps, ctx=ctx, checkpoint_path=out / "checkpoint.pt",
        checkpoint_every=tc.checkpoint_every, resume=resume, grad_clip=tc.grad_clip,
        log_path=out / "loss.jsonl", log_every=tc.log_every,
        max_seconds=tc.max_minutes * 60 if tc.max_minutes is not None else None,
        desc=desc, progress=progress, stop_at=stop_at,
        extra=lambda: {"config": to_mapping(cfg)},
    )
    return {
        "step": result.step, "steps": tc.steps, "finished": result.step >= tc.steps,
        "seconds_this_run": round(result.seconds, 1),
        "final_loss": float(np.mean(result.losses[-50:])) if result.losses else None,
        "n_parameters": count_parameters(counted), "world_size": ctx.world_size,
        "device": str(ctx.device),
    }
