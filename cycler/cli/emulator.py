"""Command line of the forecast emulator: ``cycler train|evaluate|bench emulator``.

- ``cycler train emulator CONFIG.toml [--out DIR] [--resume]``: train an SFNO emulator on
  the coarsened nature run (config: :class:`EmulatorTrainConfig`, default
  ``runs/emulator.toml``); writes ``DIR/checkpoint.pt`` (resume state), ``DIR/loss.jsonl``,
  ``DIR/config.json`` and, at the end, ``DIR/emulator.safetensors`` + ``DIR/emulator.json``.
  Runs unchanged on a GPU (``device = "auto"``) and under ``torchrun --nproc_per_node=N``.
- ``cycler evaluate emulator WEIGHTS --data PATH [--years Y ...] [--json] [--plots DIR]``:
  RMSE by lead time next to persistence, a free run's climatology against the data's, the
  acceptance checks; ``--update-card`` writes the scores into the weights' card.
- ``cycler bench emulator [--json]``: emulator steps per second for a 16-member batch.

The science is in :mod:`diffda.emulators.forecast.model`; this module only wires it up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffda.core.config import load_config, parse_overrides, require, to_mapping
from diffda.core.grid import Grid
from diffda.core.io import atomic_write_bytes, atomic_write_text
from diffda.core.rng import numpy_generator, torch_generator
from diffda.core.weights import update_card
from diffda.emulators.forecast.model import (
    DEFAULT_WEIGHTS,
    FORCINGS,
    VARIABLES,
    CoarseStates,
    SFNOEmulator,
    as_forcing_tensor,
    bootstrap_climate_errors,
    build_emulator,
    climate_errors,
    climatology_by_latitude,
    efolding_days,
    forecast_scores,
    load_coarse_states,
    rollout_loss,
    training_windows,
    twin_divergence,
    yearly_free_runs,
)
from diffda.emulators.training import (
    DistContext,
    add_run_arguments,
    cleanup_distributed,
    cosine_warmup_lambda,
    count_parameters,
    init_distributed,
    override_train,
    train_loop,
    unwrap,
    wrap_ddp,
)

# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which data trains the emulator, on which grid, with which forcing."""

    path: str | tuple[str, ...] = "runs/data/nature.zarr"  # or several stores (a continuation)
    train_years: tuple[int, ...] = (2000, 2001)  # nature run: 2000-01-01 on
    valid_years: tuple[int, ...] = (2002,)
    variables: tuple[str, ...] = VARIABLES
    nlat: int = 16
    nlon: int = 32
    dt_hours: float = 6.0
    forcing: str = "nature"

    def __post_init__(self) -> None:
        require(self.forcing in FORCINGS, "data.forcing", self.forcing,
                f"expected one of {sorted(FORCINGS)}")
        require(len(self.variables) > 0, "data.variables", self.variables, "must not be empty")
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


# ------------------------------------------------------------------------------- train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config, e.g. runs/emulator.toml")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt if it exists")
    add_run_arguments(parser)


def rollout_at(cfg: OptimConfig, step: int) -> int:
    """Rollout length of the loss at optimizer step ``step``."""
    return cfg.rollout if step >= cfg.rollout_from else 1


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
    dc, tc = cfg.data, cfg.train
    grid = Grid(dc.nlat, dc.nlon)
    if data is None:
        path = dc.path if isinstance(dc.path, str) else list(dc.path)
        data = load_coarse_states(path, grid, dc.variables, dc.train_years,
                                  progress=ctx.is_main and progress)
    if forcing_fn is None:
        forcing_fn = FORCINGS[dc.forcing]()
    forcing = (as_forcing_tensor(forcing_fn(data.times, grid), len(data.times))
               if forcing_fn is not None else None)
    emulator = build_emulator(
        data, forcing_fn, dc.forcing, dataclasses.asdict(cfg.model), dc.dt_hours,
        generator=torch_generator(cfg.seed, "emulator-init"), forcing=forcing,
    )
    if tc.init_from is not None:
        init_from_weights(emulator, tc.init_from)
    emulator = emulator.to(ctx.device)
    max_rollout = max(1, tc.rollout)
    windows = training_windows(emulator, data, forcing, max_rollout)
    windows.z, windows.f = windows.z.to(ctx.device), windows.f.to(ctx.device)
    model = wrap_ddp(emulator, ctx)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_warmup_lambda(tc.steps, tc.warmup_steps, tc.lr_floor)
    )
    area_w = torch.as_tensor(grid.area_weights(), dtype=torch.float32, device=ctx.device)
    tend = emulator.tendency_std

    def batches(start: int):
        step = start
        while True:
            g = torch_generator(cfg.seed, "emulator-batches", step, ctx.rank)
            z, f = windows.draw(g, tc.batch_size)
            r = rollout_at(tc, step)
            z = z[:, : r + 1]
            if tc.input_noise > 0:
                z = z.clone()
                z[:, 0] += tc.input_noise * torch.randn(z[:, 0].shape, generator=g).to(z)
            yield z, f[:, :r]
            step += 1

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return rollout_loss(m, batch, area_w, tend)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(to_mapping(cfg), indent=2) + "\n")
    result = train_loop(
        model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
        batches=batches, steps=tc.steps, ctx=ctx, checkpoint_path=out / "checkpoint.pt",
        checkpoint_every=tc.checkpoint_every, resume=resume, grad_clip=tc.grad_clip,
        log_path=out / "loss.jsonl", log_every=tc.log_every,
        max_seconds=tc.max_minutes * 60 if tc.max_minutes is not None else None,
        desc="train emulator", progress=progress, stop_at=stop_at,
        extra=lambda: {"config": to_mapping(cfg)},
    )
    summary = {
        "step": result.step, "steps": tc.steps, "finished": result.step >= tc.steps,
        "seconds_this_run": round(result.seconds, 1),
        "final_loss": float(np.mean(result.losses[-50:])) if result.losses else None,
        "n_parameters": count_parameters(model), "world_size": ctx.world_size,
        "device": str(ctx.device),
    }
    bare = unwrap(model)
    if ctx.is_main:  # also when stopped early: the card's training.finished says which
        bare.export(
            out / "emulator.safetensors",
            command=command,
            data={"path": dc.path, "train_years": list(dc.train_years),
                  "valid_years": list(dc.valid_years), "n_times": len(data.times),
                  "coarsening": "diffda.core.grid.coarsen_to (area-weighted)"},
            training={**to_mapping(tc), **summary, "seed": cfg.seed},
        )
    return bare, summary


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


def train(args: argparse.Namespace) -> int:
    """``cycler train emulator CONFIG.toml [--out DIR] [--resume] [--threads N] ...``."""
    cfg = override_train(
        load_config(EmulatorTrainConfig, args.config, parse_overrides(args.overrides)), args)
    out = args.out or Path("runs") / Path(args.config).stem
    torch.set_num_threads(cfg.train.threads)
    ctx = init_distributed(cfg.train.device)
    try:
        _, summary = train_emulator(
            cfg, out, resume=args.resume, ctx=ctx,
            command="cycler train emulator " + " ".join(shlex.quote(a) for a in sys.argv[3:]),
        )
    finally:
        cleanup_distributed()
    if ctx.is_main:
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


def evaluate_emulator(
    emulator: SFNOEmulator, data: CoarseStates, lead_days: float = 10.0, n_starts: int = 64,
    free_run_days: float = 365.0, progress: bool = False,
    reference: dict[int, CoarseStates] | None = None, free_run_members: int = 1,
    seed: int = 0, free_run_noise: bool = True,
) -> dict[str, Any]:
    """Scores of ``emulator`` on held-out ``data`` (physical units): RMSE by lead and
    variable next to persistence, the 1-day skill, and a free run's climate errors against
    the data over the same period (see :func:`~diffda.emulators.forecast.model.climate_errors`).

    ``reference``: other years of the nature run (e.g. the training years), whose climate
    errors against the same held-out period are the metric's floor: two years of the truth
    itself differ by that much (``free_run.nature_interannual``).

    Free runs (:func:`~diffda.emulators.forecast.model.yearly_free_runs`): ``free_run_days``
    from the first state of each held-out year, and from ``free_run_members - 1`` copies
    perturbed by 0.01 x the normalised std (white noise from
    ``torch_generator(seed, "free-run", year)``). One year of a chaotic run is one
    realisation of its climate; the climate errors are those of all members and years
    pooled against the data of all held-out years (``free_run.climate``); each member's own
    (its years pooled, ``climate_by_member``), each year's (``climate_by_year``) and each
    single run's (``climate_by_run``, by year) are listed: their scatter is the realisation
    noise of a one-year score, and a run in a regime of its own stands out.

    A :attr:`~SFNOEmulator.stochastic` emulator makes its free runs with noise (one
    generator ``torch_generator(seed, "free-run-noise", year)`` for a year's batch) unless
    ``free_run_noise`` is false; its forecasts and twin runs are always deterministic."""
    steps_per_day = round(24 / emulator.dt_hours)
    n_leads = max(1, round(lead_days * steps_per_day))
    sc = forecast_scores(emulator, data, n_leads, n_starts=n_starts, progress=progress)
    v = list(data.variables)
    day = int(np.argmin(np.abs(sc["lead_hours"] - 24.0)))
    reduction = {x: float(1 - sc["rmse"][day, i] / sc["rmse_persistence"][day, i])
                 for i, x in enumerate(v)}
    # sigma_t: area-weighted RMS of the temporal std at each point = the RMSE of forecasting
    # the period's mean field ("climatology"); two independent states differ by sqrt(2) sigma_t
    std = _temporal_std(data)
    out: dict[str, Any] = {
        "lead_hours": sc["lead_hours"].tolist(),
        "rmse": {x: sc["rmse"][:, i].tolist() for i, x in enumerate(v)},
        "rmse_persistence": {x: sc["rmse_persistence"][:, i].tolist() for i, x in enumerate(v)},
        "rmse_climatology": {x: float(std[i]) for i, x in enumerate(v)},
        "rmse_saturation": {x: float(np.sqrt(2) * std[i]) for i, x in enumerate(v)},
        "n_starts": int(sc["n_starts"]),
        "rmse_reduction_vs_persistence_24h": reduction,
        "rmse_reduction_vs_climatology_24h": {
            x: float(1 - sc["rmse"][day, i] / std[i]) for i, x in enumerate(v)},
    }
    twin = twin_divergence(emulator, data, n_leads, n_starts=min(n_starts, 16))
    out["emulator_twin"] = {
        "perturbation": "0.01 x normalised std, white noise",
        "rmse": {x: twin["rmse"][:, i].tolist() for i, x in enumerate(v)},
        "efolding_days": {x: efolding_days(twin["lead_hours"], twin["rmse"][:, i],
                                           saturation=out["rmse_saturation"][x])
                          for i, x in enumerate(v)},
    }
    out["forecast_efolding_days"] = {
        x: efolding_days(sc["lead_hours"], sc["rmse"][:, i], saturation=out["rmse_saturation"][x])
        for i, x in enumerate(v)
    }
    n_free = round(free_run_days * steps_per_day)
    if n_free > 0:
        # runs of n_free steps from each held-out year's first state, all checked for
        # finiteness; the climate of the members and years pooled is compared with the data
        # over the times they share (a run may outlast its year)
        require(free_run_members >= 1, "free_run_members", free_run_members, "must be >= 1")
        runs = yearly_free_runs(emulator, data, free_run_members, n_free, seed=seed,
                                noise=free_run_noise, progress=progress)
        noisy = free_run_noise and emulator.stochastic
        compared = [(r[:len(t)], t) for _, r, t in runs]
        # each year's members pooled, (member x time, var, lat, lon), then all years
        by_year = [r.transpose(0, 1).reshape(-1, *r.shape[2:]) for r, _ in compared]
        pooled = torch.cat(by_year)
        truth = torch.cat([t for _, t in compared])
        n_cmp = len(truth)
        # reference years long enough to cover one compared year, cut to it
        n_year = len(compared[0][1])
        others = {str(y): r.states[1:n_year + 1] for y, r in (reference or {}).items()
                  if len(r.states) > n_year}
        out["free_run"] = {
            "days": n_free / steps_per_day,
            "members": free_run_members,
            "years": [y for y, _, _ in runs],
            "stochastic": noisy,
            "finite": all(bool(torch.isfinite(r).all()) for _, r, _ in runs),
            "climate_compared_days": n_cmp / steps_per_day,
            "climate": climate_errors(pooled, truth, data.grid, v),
        }
        if free_run_members > 1:
            interval = bootstrap_climate_errors(
                [r for r, _ in compared], truth, data.grid, v,
                generator=numpy_generator(seed, "climate-bootstrap"))
            out["free_run"]["climate_interval"] = {
                "level": 0.9, "resamples": 500,
                "note": "the runs' members resampled within each year; the truth's own "
                        "sampling noise is not included", **interval}
        if len(runs) > 1:
            out["free_run"]["climate_by_year"] = {
                str(y): climate_errors(x, t, data.grid, v)
                for (y, _, t), x in zip(runs, by_year, strict=True)}
        if free_run_members > 1:
            # each one-year run on its own: where a run fell into a regime of its own
            out["free_run"]["climate_by_run"] = {
                str(y): [climate_errors(r[:, m], t, data.grid, v)
                         for m in range(free_run_members)]
                for (y, _, _), (r, t) in zip(runs, compared, strict=True)}
            out["free_run"]["climate_by_member"] = [
                climate_errors(torch.cat([r[:, m] for r, _ in compared]), truth, data.grid, v)
                for m in range(free_run_members)]
        if others:
            out["free_run"]["nature_interannual"] = {
                y: climate_errors(x, truth, data.grid, v) for y, x in others.items()}
        out["free_run"]["climatology_by_latitude"] = _climatology_by_latitude(
            {"emulator": pooled, "truth": truth, **others}, v)
    out["acceptance"] = acceptance(out)
    return out


def _climatology_by_latitude(runs: dict[str, torch.Tensor], variables: list[str]
                             ) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{run: {variable: {"mean": [...], "std": [...]}}}`` by latitude (physical units)."""
    out = {}
    for name, x in runs.items():
        m, s = climatology_by_latitude(x)
        out[name] = {v: {"mean": m[i].tolist(), "std": s[i].tolist()}
                     for i, v in enumerate(variables)}
    return out


def _temporal_std(data: CoarseStates) -> np.ndarray:
    """``(var,)``: sqrt of the area-weighted mean over points of the temporal variance."""
    w = torch.as_tensor(data.grid.area_weights(), dtype=torch.float64)[:, None]
    x = data.states.double()
    var = x.var(0, unbiased=False)  # (var, lat, lon)
    return ((var * w).mean((-2, -1)) / w.mean()).sqrt().numpy()


def acceptance(scores: dict[str, Any]) -> dict[str, Any]:
    """The issue's acceptance checks, each with its measured value."""
    checks: dict[str, Any] = {}
    red = scores["rmse_reduction_vs_persistence_24h"]
    for v in ("height", "u", "v"):
        if v in red:
            checks[f"rmse_24h_{v}_30pct_below_persistence"] = red[v] >= 0.30
    if "free_run" in scores:
        fr = scores["free_run"]
        checks["free_run_finite"] = fr["finite"]
        checks["free_run_climate_within_10pct"] = all(
            c["mean_error"] < 0.1 and c["std_error"] < 0.1 for c in fr["climate"].values()
        )
    lead = np.asarray(scores["lead_hours"])
    growth = {}
    for v, r in scores["rmse"].items():
        r = np.asarray(r)
        growth[v] = bool(np.all(np.diff(r[: max(2, np.searchsorted(lead, 72.0))]) > 0))
    checks["rmse_grows_over_first_3_days"] = all(growth.values())
    checks["all"] = all(bool(x) for x in checks.values())
    return checks


def _save_figure(fig: Any, path: Path, title: str = "") -> Path:
    """Title, tight layout, then an atomic PNG write of ``fig`` to ``path``; closes it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def plot_rmse(scores: dict[str, Any], path: Path, title: str = "") -> Path:
    """RMSE by lead time, one panel per variable: emulator, persistence, saturation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores["rmse"])
    lead = np.asarray(scores["lead_hours"]) / 24
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, v in zip(axes[0], names, strict=True):
        ax.plot(lead, scores["rmse"][v], label="SFNO emulator", color="C0")
        ax.plot(lead, scores["rmse_persistence"][v], label="persistence", color="C1", ls="--")
        if "emulator_twin" in scores:
            ax.plot(lead, scores["emulator_twin"]["rmse"][v], color="C2", lw=1, ls="-.",
                    label="emulator twin (1% perturbation)")
        ax.axhline(scores["rmse_climatology"][v], color="C3", lw=0.8, ls="--",
                   label=r"climatology ($\sigma_t$)")
        ax.axhline(scores["rmse_saturation"][v], color="0.5", lw=0.8, ls=":",
                   label=r"$\sqrt{2}\,\sigma$ (saturation)")
        ax.set_title(v)
        ax.set_xlabel("lead time (days)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("area-weighted RMSE (physical units)")
    axes[0][0].legend(fontsize=7)
    return _save_figure(fig, path, title)


def plot_free_run_climate(scores: dict[str, Any], lats: np.ndarray, path: Path,
                          title: str = "") -> Path:
    """Zonal-time mean and std by latitude of the free run, the held-out truth and the
    reference years of the nature run (the spread among those is the interannual floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clim = scores["free_run"]["climatology_by_latitude"]
    names = list(clim["truth"])
    fig, axes = plt.subplots(2, len(names), figsize=(3.4 * len(names), 5.6), squeeze=False)
    for j, v in enumerate(names):
        for i, stat in enumerate(("mean", "std")):
            ax = axes[i][j]
            for run, c in clim.items():
                style = ({"color": "k", "lw": 2.0, "label": "truth (held out)"} if run == "truth"
                         else {"color": "C3", "lw": 1.6, "label": "emulator free run"}
                         if run == "emulator" else
                         {"color": "0.6", "lw": 1.0, "ls": "--", "label": f"nature {run}"})
                ax.plot(lats, c[v][stat], **style)
            ax.set_title(f"{v}: {stat}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 1:
                ax.set_xlabel("latitude")
    axes[0][0].legend(fontsize=7)
    return _save_figure(fig, path, title)


def evaluate(args: argparse.Namespace) -> int:
    """``cycler evaluate emulator WEIGHTS --data PATH [--years ...] [--json] [--plots DIR]``."""
    torch.set_num_threads(args.threads)
    emulator = SFNOEmulator.from_weights(args.weights)
    card = json.loads(Path(args.weights).with_suffix(".json").read_text())
    years = args.years or card.get("data", {}).get("valid_years")
    data = load_coarse_states(args.data, emulator.grid, emulator.variables, years,
                              progress=not args.json)
    ref_years = (args.reference_years if args.reference_years is not None
                 else card.get("data", {}).get("train_years", []))
    reference = {y: load_coarse_states(args.data, emulator.grid, emulator.variables, [y])
                 for y in ref_years if y not in (years or [])}
    t0 = time.perf_counter()
    scores = evaluate_emulator(emulator, data, args.lead_days, args.n_starts,
                               args.free_run_days, progress=not args.json,
                               reference=reference, free_run_members=args.free_run_members,
                               seed=args.seed, free_run_noise=not args.no_noise)
    scores["data"] = {"path": [str(d) for d in args.data],
                      "years": list(years) if years else None}
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    if args.plots is not None:
        p = plot_rmse(scores, Path(args.plots) / "emulator_rmse_by_lead.png",
                      title=f"{args.weights.name} on "
                            f"{', '.join(d.name for d in args.data)}, years {years}")
        scores["plot"] = str(p)
        if "free_run" in scores:
            q = plot_free_run_climate(
                scores, emulator.grid.lat, Path(args.plots) / "emulator_free_run_climate.png",
                title=f"{args.weights.name}: {scores['free_run']['members']} x "
                      f"{scores['free_run']['days']:.0f}-day free runs from each of "
                      f"{scores['free_run']['years']} vs the nature run, by latitude")
            scores["plot_climate"] = str(q)
    if args.update_card:
        update_card(args.weights, scores=scores)
    if args.json:
        print(json.dumps(scores))
    else:
        _print_summary(scores)
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


def bench_emulator(emulator: SFNOEmulator, members: int = 16, steps: int = 40) -> dict[str, Any]:
    """Time ``emulator.step`` (physical units in and out, forcing included) on a batch of
    ``members`` states; returns steps per second and ms per step."""
    import cftime

    g = torch_generator(0, "bench")
    shape = (members, len(emulator.variables), emulator.grid.nlat, emulator.grid.nlon)
    x = emulator.denormalise(torch.randn(shape, generator=g) * 0.5)
    t = cftime.DatetimeNoLeap(1, 1, 1)
    dt = _hours(emulator.dt_hours)
    x = emulator.step(x, t)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        t = t + dt
        x = emulator.step(x, t)
    sec = time.perf_counter() - t0
    return {"steps_per_second": steps / sec, "ms_per_step": 1e3 * sec / steps,
            "members": members, "steps": steps, "threads": torch.get_num_threads(),
            "n_parameters": count_parameters(emulator.net),
            "grid": str(emulator.grid), "finite": bool(torch.isfinite(x).all())}


def _hours(h: float):
    import datetime

    return datetime.timedelta(hours=h)


def _untrained_default() -> SFNOEmulator:
    """A default-size emulator with unit normalisation and no forcing (for timing only)."""
    from diffda.emulators.forecast.sfno import SFNO, SFNOConfig

    grid, n_var, n_static = Grid(16, 32), len(VARIABLES), 4
    cfg = SFNOConfig(in_channels=n_var + 1 + n_static, out_channels=n_var,
                     **dataclasses.asdict(ModelConfig()))
    ones, zeros = torch.ones(n_var), torch.zeros(n_var)
    return SFNOEmulator(
        SFNO(cfg, generator=torch_generator(0, "emulator-init")), variables=VARIABLES,
        grid=grid, state_mean=zeros, state_std=ones, tendency_std=ones * 0.1,
        log_offset=zeros, forcing_mean=torch.zeros(1), forcing_std=torch.ones(1),
        static=torch.zeros(n_static, grid.nlat, grid.nlon),
        forcing=lambda times, g: torch.zeros(len(times), 1, g.nlat, g.nlon),
    ).eval()


def bench(args: argparse.Namespace) -> int:
    """``cycler bench emulator [--json]``."""
    torch.set_num_threads(args.threads)
    path = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)
    emulator = SFNOEmulator.from_weights(path) if path is not None else _untrained_default()
    res = bench_emulator(emulator, args.members, args.steps)
    res["weights"] = str(path) if path is not None else "untrained default-size model"
    if args.json:
        print(json.dumps(res))
    else:
        print(f"emulator {res['grid']}, {res['n_parameters']} parameters, {res['members']} "
              f"members, {res['threads']} thread(s): {res['steps_per_second']:.2f} steps/s "
              f"({res['ms_per_step']:.1f} ms/step) [{res['weights']}]")
    return 0


# ------------------------------------------------- additions fitted to trained weights


def add_fit_arguments(parser: argparse.ArgumentParser, weights: str, years: str,
                      out: str) -> None:
    """The arguments every command of :func:`load_for_fit` takes (with their help texts)."""
    parser.add_argument("weights", type=Path, help=weights)
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="canonical nature-run dataset(s), e.g. a run and its continuation")
    parser.add_argument("--years", type=int, nargs="+", default=None,
                        help=f"{years} (default: the card's train_years)")
    parser.add_argument("--out", type=Path, required=True, help=out)
    parser.add_argument("--threads", type=int, default=1)


def load_for_fit(args: argparse.Namespace) -> tuple[SFNOEmulator, dict[str, Any], list[int],
                                                     CoarseStates]:
    """The emulator at ``args.weights``, its card, the years to fit on (``args.years`` or the
    card's ``train_years``) and their data, for a command that fits an addition to trained
    weights and writes a copy to ``args.out`` (``cycler train emulator-noise`` and
    ``emulator-adjust``). Refuses an ``--out`` that would overwrite the weights."""
    if args.out.resolve() == Path(args.weights).resolve():
        raise ValueError(f"--out {args.out} would overwrite the weights it starts from")
    torch.set_num_threads(args.threads)
    emulator = SFNOEmulator.from_weights(args.weights)
    card = json.loads(Path(args.weights).with_suffix(".json").read_text())
    years = args.years or card.get("data", {}).get("train_years")
    if not years:
        raise ValueError(f"{args.weights}: the card names no train_years; pass --years")
    data = load_coarse_states(args.data, emulator.grid, emulator.variables, years)
    return emulator, card, list(years), data


FITTED_SECTIONS = ("stochastic", "adjustment", "global_budget")
"""Card sections of the additions fitted to trained weights (:func:`export_fitted`)."""


def base_record(card: dict[str, Any], emulator: SFNOEmulator,
                drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of a weights ``card`` that a derived file carries over: everything but the
    model description (:meth:`SFNOEmulator.card`), the format, the scores (of the base
    model) and the sections in ``drop``."""
    skip = {*emulator.card(), "format", "scores", *drop}
    return {k: v for k, v in card.items() if k not in skip}


def export_fitted(emulator: SFNOEmulator, card: dict[str, Any], args: argparse.Namespace,
                  years: list[int], section: str, info: dict[str, Any]) -> None:
    """Write the emulator with its fitted addition to ``args.out``: the base card's training
    record is kept, its scores (of the base model) dropped, and ``info`` recorded under
    ``section`` with the data, the base weights and the command line. A fit that continues
    an earlier one of the same section (e.g. more adjustment iterations from an adjusted
    file) keeps the earlier record under ``previous``, so the card holds the whole chain."""
    emulator.export(args.out, **base_record(card, emulator))
    earlier = {"previous": card[section]} if section in card else {}
    update_card(args.out, **{section: {
        **info, "fitted_on": {"path": [str(d) for d in args.data], "years": years},
        "base_weights": str(args.weights),
        "command": "cycler " + " ".join(shlex.quote(a) for a in sys.argv[1:]), **earlier}})
