"""Parameter sweeps: one cycling run per value of a config key, run as independent dask
tasks (a LocalCluster of processes, or a running scheduler), resumed where started, then a
table of RMSE by lead per value with the best value per lead."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffda.core.io import atomic_write_text
from diffda.cycler.cycling.compare import best_by_lead, lead_table
from diffda.cycler.cycling.config import RunConfig, load_run_config
from diffda.cycler.cycling.plots import plot_compare


def sweep_configs(base: Path, key: str, values: list[Any], modes: list[str] | None,
                  threads: int) -> list[tuple[str, RunConfig]]:
    """One config per value: ``(label, config)``, labelled ``<last key part>=<value>``."""
    short = key.rsplit(".", 1)[-1]
    out = []
    for value in values:
        label = f"{short}={value}"
        over: dict[str, Any] = {key: value, "runtime.threads": threads,
                                "runtime.workers": 1, "runtime.progress": False}
        if modes:
            over["analysis.modes"] = modes
        cfg = load_run_config(base, over)
        out.append((label, dataclasses.replace(cfg, name=f"{cfg.name}-{label}")))
    return out


@contextlib.contextmanager
def in_task() -> Iterator[None]:
    """Run a whole job inside one dask task: the lazy (dask-backed) arrays its data files
    open are computed in this thread, not submitted back to the cluster. Without it a
    task that reads its data waits for a worker thread that its own task occupies: the
    workers deadlock (seen: two cases stalled for good with one thread per worker)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def _run_one(cfg: RunConfig, run_dir: str) -> list[dict[str, Any]]:
    """One sweep member (runs in a dask worker): the run, resumed if it was started."""
    from diffda.cycler.cycling.driver import run_experiment

    with in_task():
        summary = run_experiment(cfg, run_dir, resume=True, plots=False)
    return [r for m in cfg.analysis.modes for r in summary.records[m]]


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A dask ``Client``: of the running scheduler at ``scheduler``, or of a LocalCluster
    of ``workers`` single-threaded processes (closed on exit).

    The local workers start without dask's default ``MALLOC_TRIM_THRESHOLD_=65536``: with it
    glibc hands every freed buffer back to the kernel and maps it again at the next
    allocation, and the networks' large temporaries made the cases spend as much CPU time in
    the kernel as in the computation (``time``: user 31 min, sys 30 min for 8 cases; a
    single-process run: sys 7 % of user). Workers started elsewhere for ``--scheduler`` should
    be started the same way (``distributed.nanny.pre-spawn-environ``)."""
    import dask
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
    client = Client(cluster if cluster is not None else scheduler)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_sweep(configs: list[tuple[str, RunConfig]], out: Path, scheduler: str | None,
              workers: int) -> dict[str, list[dict[str, Any]]]:
    """Run the configs as independent dask tasks; returns ``{label: records}``."""
    out.mkdir(parents=True, exist_ok=True)
    with dask_client(scheduler, workers) as client:
        futures = {label: client.submit(_run_one, cfg, str(out / label), pure=False)
                   for label, cfg in configs}
        return {label: f.result() for label, f in futures.items()}


def sweep(configs: list[tuple[str, RunConfig]], key: str, out: Path, scheduler: str | None,
          workers: int) -> dict[str, Any]:
    """Run a sweep (:func:`run_sweep`) and write ``sweep.json`` (the lead table with the
    best value per lead) and ``sweep.png`` in ``out``; returns the table."""
    results = run_sweep(configs, out, scheduler, workers)
    table = lead_table(results)
    table["param"] = key
    table["best"] = best_by_lead(table)
    atomic_write_text(out / "sweep.json", json.dumps(table, indent=2) + "\n")
    plot_compare(results, out / "sweep.png")
    return table
