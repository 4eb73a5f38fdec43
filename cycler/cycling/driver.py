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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffda.core.io import remove_stale_temporaries
from diffda.core.lock import LockInfo, check_unlocked, describe_holder, directory_lock
from diffda.core.times import iso
from diffda.cycler.cycling.checkpoint import (
    CycleCheckpoint,
    complete_cycles,
    cycle_path,
    load_cycle,
    save_cycle,
)
from diffda.cycler.cycling.config import (
    SAMPLER_MODES,
    RunConfig,
    config_hash,
    with_resolved_runtime,
    write_resolved,
)
from diffda.cycler.cycling.modes import MODES, CycleState
from diffda.cycler.cycling.outputs import (
    analyses_dataset,
    truth_dataset,
    update_timings,
    write_metrics,
    write_netcdf,
)
from diffda.cycler.cycling.world import World, load_world
from diffda.cycler.metrics import calibration, ensemble_scores
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
        record.update(calibration(analysis, world.truth[k], world.variables, world.station_mask))
        if result.innovations:
            record["innovations"] = result.innovations
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
        v0 = world.variables[0]  # refresh=False: shown with the count when the bar advances
        bar.set_postfix({f"rmse_{v0}": f"{record[v0]['rmse']:.3g} "
                         f"{world.attrs[v0].get('units', '')}".rstrip()}, refresh=False)
        if on_checkpoint is not None:
            on_checkpoint(mode, k)
    return torch.stack(analyses), seconds


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> bool:
    """Check that ``run_dir`` (already created and locked) may take this run; returns whether
    its ``config.json`` is to be written (once the run has really started, i.e. the world
    is loaded: a run that fails before leaves no identity behind).

    Refused: a run directory of another config that holds checkpoints (one without any
    complete cycle is replaced: nothing is lost), and, unless ``resume``, one of this config
    with checkpoints. A resume keeps the recorded ``config.json`` (its runtime settings
    included); a new run writes its own.
    """
    path = run_dir / "config.json"
    has_cycles = any((run_dir / "checkpoints").glob("*/cycle_*.pt"))
    if not path.is_file():
        return True
    try:
        theirs = json.loads(path.read_text()).get("config_hash")
    except (json.JSONDecodeError, AttributeError):
        theirs = None
    if theirs != config_hash(cfg):
        if has_cycles:
            raise ValueError(
                f"{run_dir} holds a run of another config (hash {str(theirs)[:12]}..., this "
                f"{config_hash(cfg)[:12]}...): choose another --out or delete it")
        return True  # no complete cycle: a failed start of another config is replaced
    if not resume and has_cycles:
        raise ValueError(f"{run_dir} already holds checkpoints of this run: use "
                         f"'cycler resume {run_dir}' (or another --out)")
    return not resume


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory path that names a file (``--out`` pointing at a file)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: is a file, not a run directory; choose another --out")


def _remove_stale_temporaries(run_dir: Path, lock: LockInfo) -> None:
    """Delete the temporaries of writes killed before this process took the lock."""
    removed = remove_stale_temporaries(run_dir, older_than=lock.started)
    if removed:
        print(f"{run_dir}: removed {len(removed)} temporary file(s) left by an interrupted "
              "write", file=sys.stderr)


def run_experiment(
    cfg: RunConfig, run_dir: str | Path, *, resume: bool = False,
    on_checkpoint: Callable[[str, int], None] | None = None, plots: bool | None = None,
) -> RunSummary:
    """Run every mode of ``cfg`` into ``run_dir`` (continuing from checkpoints if
    ``resume``), then write the analyses, truth, timings and plots.

    The run holds an exclusive lock on ``run_dir`` throughout (:func:`~diffda.core.lock.
    directory_lock`): a second run or resume of the same directory stops at once with
    :class:`~diffda.core.lock.LockHeld` naming the holder; temporaries of writes killed
    earlier are removed first."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    with directory_lock(run_dir) as lock:
        if lock.taken_over:
            print(f"{run_dir}: took over the lock of {describe_holder(lock.taken_over)}, "
                  "which is no longer running", file=sys.stderr)
        _remove_stale_temporaries(run_dir, lock)
        return _run_locked(cfg, run_dir, resume=resume, on_checkpoint=on_checkpoint,
                           plots=plots)


def _run_locked(cfg: RunConfig, run_dir: Path, *, resume: bool,
                on_checkpoint: Callable[[str, int], None] | None, plots: bool | None
                ) -> RunSummary:
    """:func:`run_experiment` once the run directory is locked."""
    cfg = with_resolved_runtime(cfg)  # "auto": the cores free now, the device, recorded
    write_config = prepare_run_dir(cfg, run_dir, resume)
    progress = cfg.runtime.progress
    world = load_world(cfg, progress=progress)
    if write_config:
        write_resolved(cfg, run_dir / "config.json")
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
    """Continue the run in ``run_dir`` from its resolved config (its recorded runtime
    settings included) and checkpoints."""
    from diffda.cycler.cycling.config import read_resolved

    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    check_unlocked(run_dir)  # "in use by ..." rather than "no config.json" while it starts
    cfg = read_resolved(run_dir / "config.json")
    return run_experiment(cfg, run_dir, resume=True, **kwargs)
