"""The cycle driver: a cycling experiment over a schedule of 00/12 UTC analysis times.

One cycle of ``cadence_hours`` (DESIGN.md, "Data flow of one cycle")::

    analysis (t_{k-1}) --coarsen--> emulator grid --emulator, cadence/dt steps--> forecast (t_k)
    observations at t_k: stations (points) + the forecast on the emulator grid (Eq. 14)
    --> Algorithm 1 (prior denoiser + sum_j lambda_j grad log p(y_j | x)) --> analysis (t_k)

The world is read once (:mod:`.world`); each mode is one class behind the
:class:`~.modes.CyclingMode` seam (:mod:`.modes`), called cycle by cycle with the typed
:class:`~.modes.CycleState` the previous cycle left. The posterior sampler works in the
prior's normalised space; truth, observations, analyses and scores are in physical units.

Outputs (``RUN_DIR``): ``config.json`` (resolved, with its hash), ``checkpoints/<mode>/
cycle_<k>.pt`` (atomic, verified on resume, :mod:`.checkpoint`), ``metrics.jsonl``,
``analyses/<mode>.nc`` (CF netCDF, ensemble mean and std, members optional),
``truth.nc``, ``observations.nc``, ``timings.json`` (:mod:`.outputs`) and plots
(:mod:`.plots`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffda.core.times import iso
from diffda.cycler.cycling.checkpoint import (
    CycleCheckpoint,
    complete_cycles,
    cycle_path,
    load_cycle,
    save_cycle,
)
from diffda.cycler.cycling.config import SAMPLER_MODES, RunConfig, config_hash, write_resolved
from diffda.cycler.cycling.modes import MODES, CycleState
from diffda.cycler.cycling.outputs import (
    analyses_dataset,
    truth_dataset,
    update_timings,
    write_metrics,
    write_netcdf,
)
from diffda.cycler.cycling.world import World, load_world
from diffda.cycler.metrics import ensemble_scores
from diffda.observations.synthetic import write_observations
from torch import Tensor
from tqdm.auto import tqdm


class InjectedFailure(RuntimeError):
    """Raised by the driver on request (``fail_after``), to test kill-and-resume."""


@dataclass
class RunSummary:
    run_dir: Path
    records: dict[str, list[dict[str, Any]]]
    seconds: dict[str, list[float]]


def run_mode(world: World, mode: str, run_dir: Path, records: dict[str, list[dict[str, Any]]],
             *, on_checkpoint: Callable[[str, int], None] | None = None,
             progress: bool = False, write_jsonl: bool = True) -> tuple[Tensor, list[float]]:
    """Run (or continue) one mode; returns its analyses ``(N, member, var, lat, lon)`` and
    the seconds of the cycles computed now. ``records[mode]`` is filled cycle by cycle and
    ``metrics.jsonl`` rewritten after each (unless ``write_jsonl`` is false: a worker
    process running one mode of several leaves the file to its parent)."""
    cfg = world.config
    done = complete_cycles(run_dir, mode)
    analyses: list[Tensor] = []
    records[mode] = []
    state: CycleState | None = None
    for k in done:
        ck = load_cycle(cycle_path(run_dir, mode, k), world.config_hash, world.weights)
        if ck.mode != mode or ck.cycle != k or ck.time != iso(world.times[k]):
            raise ValueError(f"{cycle_path(run_dir, mode, k)}: holds {ck.mode} cycle {ck.cycle} "
                             f"at {ck.time}, expected {mode} cycle {k} at {iso(world.times[k])}")
        records[mode].append(ck.record)
        analyses.append(ck.tensors["analysis"])
        state = CycleState.from_tensors(ck.tensors)
    seconds: list[float] = []
    bar = tqdm(range(len(done) + 1, world.n_cycles + 1), desc=f"{mode:>14}", disable=not progress,
               initial=len(done), total=world.n_cycles)
    for k in bar:
        tic = time.perf_counter()
        result = MODES[mode].cycle(world, k, state)
        analysis = result.analysis.float()
        record = {
            "mode": mode, "cycle": k, "time": iso(world.times[k]),
            "lead_hours": k * cfg.data.cadence_hours, "members": int(analysis.shape[0]),
            **ensemble_scores(analysis, world.truth[k], world.variables, world.station_mask),
        }
        if result.info:
            record["method"] = result.info
        tensors = result.checkpoint_tensors()
        save_cycle(run_dir, CycleCheckpoint(
            mode=mode, cycle=k, time=iso(world.times[k]), tensors=tensors, record=record,
            config_hash=world.config_hash, weights=world.weights,
        ))
        records[mode].append(record)
        analyses.append(analysis)
        state = CycleState(analysis=analysis, native=result.native)
        if write_jsonl:
            write_metrics(run_dir, records, cfg.analysis.modes)
        seconds.append(time.perf_counter() - tic)
        bar.set_postfix(rmse_height=f"{record[world.variables[0]]['rmse']:.3g}")
        if on_checkpoint is not None:
            on_checkpoint(mode, k)
    return torch.stack(analyses), seconds


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    """Create ``run_dir`` with the resolved config; refuse to overwrite another run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    if path.is_file():
        theirs = json.loads(path.read_text()).get("config_hash")
        if theirs != config_hash(cfg):
            raise ValueError(
                f"{run_dir} holds a run of another config (hash {str(theirs)[:12]}..., this "
                f"{config_hash(cfg)[:12]}...): choose another --out or delete it")
        if not resume and any((run_dir / "checkpoints").glob("*/cycle_*.pt")):
            raise ValueError(f"{run_dir} already holds checkpoints of this run: use "
                             f"'cycler resume {run_dir}' (or another --out)")
    write_resolved(cfg, path)


def run_experiment(
    cfg: RunConfig, run_dir: str | Path, *, resume: bool = False,
    on_checkpoint: Callable[[str, int], None] | None = None, plots: bool | None = None,
) -> RunSummary:
    """Run every mode of ``cfg`` into ``run_dir`` (continuing from checkpoints if
    ``resume``), then write the analyses, truth, timings and plots."""
    run_dir = Path(run_dir)
    prepare_run_dir(cfg, run_dir, resume)
    progress = cfg.runtime.progress
    world = load_world(cfg, progress=progress)
    write_observations(world.observation_file, run_dir / "observations.nc")
    write_netcdf(truth_dataset(world), run_dir / "truth.nc")
    records: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, list[float]] = {}

    def finish(mode: str, analyses: Tensor, secs: list[float]) -> None:
        seconds[mode] = secs
        if secs:
            update_timings(run_dir, mode, secs, cfg)
        ds = analyses_dataset(world, mode, analyses, cfg.output.members)
        write_netcdf(ds, run_dir / "analyses" / f"{mode}.nc")

    if cfg.runtime.workers > 1 and len(cfg.analysis.modes) > 1:
        for mode, (recs, analyses, secs) in _run_modes_in_processes(cfg, run_dir).items():
            records[mode] = recs
            finish(mode, analyses, secs)
    else:
        for mode in cfg.analysis.modes:
            analyses, secs = run_mode(world, mode, run_dir, records,
                                      on_checkpoint=on_checkpoint, progress=progress)
            finish(mode, analyses, secs)
    write_metrics(run_dir, records, cfg.analysis.modes)
    if cfg.output.plots if plots is None else plots:
        from diffda.cycler.cycling.plots import plot_run

        plot_run(run_dir)
    return RunSummary(run_dir=run_dir, records=records, seconds=seconds)


def _mode_worker(cfg: RunConfig, run_dir: str, mode: str
                 ) -> tuple[list[dict[str, Any]], Tensor, list[float]]:
    """One mode in a worker process (:func:`_run_modes_in_processes`)."""
    world = load_world(cfg)
    records: dict[str, list[dict[str, Any]]] = {}
    analyses, secs = run_mode(world, mode, Path(run_dir), records, write_jsonl=False)
    return records[mode], analyses, secs


def _run_modes_in_processes(cfg: RunConfig, run_dir: Path
                            ) -> dict[str, tuple[list[dict[str, Any]], Tensor, list[float]]]:
    """Run the modes in ``cfg.runtime.workers`` processes (``spawn``), each with
    ``cfg.runtime.threads`` torch threads; the costly sampler modes are submitted first.
    Modes never share state, so the results equal a serial run's (same thread count)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    order = sorted(cfg.analysis.modes, key=lambda m: m not in SAMPLER_MODES)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.runtime.workers, mp_context=ctx) as pool:
        futures = {m: pool.submit(_mode_worker, cfg, str(run_dir), m) for m in order}
        done = {}
        for m in tqdm(order, desc="modes", disable=not cfg.runtime.progress):
            done[m] = futures[m].result()
    return done


def resume_experiment(run_dir: str | Path, **kwargs: Any) -> RunSummary:
    """Continue the run in ``run_dir`` from its resolved config and checkpoints."""
    from diffda.cycler.cycling.config import read_resolved

    run_dir = Path(run_dir)
    cfg = read_resolved(run_dir / "config.json")
    return run_experiment(cfg, run_dir, resume=True, **kwargs)
