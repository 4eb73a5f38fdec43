"""``cycler bench run``: where the default experiment's time goes.

One fresh run of a config (its setup, then its modes one after the other in this process;
no analysis files, no figures), with :data:`diffda.core.profiling.clock` measuring the
networks: the denoiser's evaluations and vector-Jacobian products and the emulator's steps.
The setup is opening the data, drawing the stations, making the observations and the
emulator's free forecast.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from diffda.core.profiling import measuring
from diffda.cycler.cycling.config import RunConfig, with_resolved_runtime
from diffda.cycler.cycling.driver import run_mode
from diffda.cycler.cycling.world import load_world

NETWORK_SECTIONS = ("denoiser", "denoiser_vjp", "emulator")


def bench_run(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Set up and cycle every mode of ``cfg`` afresh, checkpoints into ``run_dir`` (which
    must not hold a run; no analysis files or figures are written), and return the
    timings: ``seconds_total``, ``seconds_setup``, ``seconds_per_mode``,
    ``seconds_per_cycle`` (per mode), ``nfe`` (denoiser evaluations of all modes; one
    evaluation is one network call on a batch of members: the members of one analysis, or
    of several cycles of a mode whose cycles are independent), ``nfe_per_mode``,
    ``network_seconds`` (per section), ``share_outside_network`` (of the cycling time,
    setup excluded) and the last cycle's ensemble-mean RMSE per mode and variable (the
    skill the time bought)."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints").exists() or (run_dir / "config.json").exists():
        raise FileExistsError(f"{run_dir} holds a run already: a benchmark needs a fresh "
                              "directory (--out)")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = with_resolved_runtime(dataclasses.replace(
        cfg, runtime=dataclasses.replace(cfg.runtime, workers=1, progress=False)))
    records: dict[str, list[dict[str, Any]]] = {}
    per_mode: dict[str, dict[str, Any]] = {}
    with measuring() as clock:
        tic = time.perf_counter()
        world = load_world(cfg)
        setup = time.perf_counter() - tic
        for mode in cfg.analysis.modes:
            before_s, before_n = clock.snapshot()
            t0 = time.perf_counter()
            _, secs = run_mode(world, mode, run_dir, records, write_jsonl=False)
            after_s, after_n = clock.snapshot()
            per_mode[mode] = {
                "seconds": time.perf_counter() - t0, "cycles": len(secs),
                "network": {k: after_s.get(k, 0.0) - before_s.get(k, 0.0)
                            for k in NETWORK_SECTIONS},
                "calls": {k: after_n.get(k, 0) - before_n.get(k, 0) for k in NETWORK_SECTIONS},
            }
        total = time.perf_counter() - tic
    cycling = sum(r["seconds"] for r in per_mode.values())
    network = {k: sum(r["network"][k] for r in per_mode.values()) for k in NETWORK_SECTIONS}
    final = {m: {v: row["rmse"] for v, row in recs[-1].items()
                 if isinstance(row, dict) and "rmse" in row} for m, recs in records.items()}
    return {
        "config": cfg.name, "threads": cfg.runtime.threads, "members": cfg.members,
        "device": cfg.runtime.device, "precision": cfg.runtime.precision,
        "sampler_steps": cfg.analysis.sampler.num_steps,
        "seconds_total": total, "seconds_setup": setup,
        "seconds_per_mode": {m: r["seconds"] for m, r in per_mode.items()},
        "seconds_per_cycle": {m: r["seconds"] / max(r["cycles"], 1)
                              for m, r in per_mode.items()},
        "cycles": {m: r["cycles"] for m, r in per_mode.items()},
        "nfe": sum(r["calls"]["denoiser"] for r in per_mode.values()),
        "nfe_per_mode": {m: r["calls"]["denoiser"] for m, r in per_mode.items()},
        "emulator_steps": sum(r["calls"]["emulator"] for r in per_mode.values()),
        "network_seconds": network,
        "network_seconds_per_mode": {m: sum(r["network"].values())
                                     for m, r in per_mode.items()},
        "share_outside_network": 1.0 - sum(network.values()) / cycling if cycling else 0.0,
        "final_rmse": final,
    }


def format_bench(result: dict[str, Any]) -> str:
    """A text table of :func:`bench_run`'s result."""
    lines = [f"{result['config']}: {result['seconds_total']:.1f} s in total "
             f"({result['seconds_setup']:.1f} s setup), {result['threads']} thread(s), "
             f"{result['members']} members, {result.get('device', 'cpu')} "
             f"{result.get('precision', 'float32')}",
             f"{'mode':<15}{'cycles':>7}{'s/cycle':>9}{'total s':>9}{'NFE':>7}"
             f"{'network s':>11}{'outside':>9}"]
    for m, secs in result["seconds_per_mode"].items():
        net = result["network_seconds_per_mode"][m]
        outside = 1 - net / secs if secs else 0.0
        lines.append(f"{m:<15}{result['cycles'][m]:>7}{result['seconds_per_cycle'][m]:>9.2f}"
                     f"{secs:>9.1f}{result['nfe_per_mode'][m]:>7}{net:>11.1f}"
                     f"{outside:>9.1%}")
    net = result["network_seconds"]
    lines.append(f"network: denoiser {net['denoiser']:.1f} s, its VJPs "
                 f"{net['denoiser_vjp']:.1f} s, emulator {net['emulator']:.1f} s; outside the "
                 f"network: {result['share_outside_network']:.1%} of the cycling time")
    return "\n".join(lines)


def write_bench(result: dict[str, Any], path: str | Path) -> None:
    from diffda.core.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(result, indent=1) + "\n")
