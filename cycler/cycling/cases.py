"""Experiments as sets of cases: the same cycling run from several start times.

A comparison of prior types is only as good as its sample (DESIGN.md, "Experiments are
sets of cases"). An experiment file is a run config (``runs/sevenday.toml``'s tables, or
``base = "sevenday.toml"`` and only the tables that change) plus a ``[cases]`` table: the
start times of the verification cases (a list, or a rule ``start``, ``every_days``,
``count``), optionally disjoint tuning cases, and the lead from which the cycling counts
as spun up (``steady_from_days``). Each case is an independent run in ``OUT/<case>/``
(a normal run directory, resumable on its own), so the cases run one after the other, in
parallel worker processes of one machine, or on a dask cluster (``scheduler``) with no
code change. A case that fails is retried (``retries``) and, if it fails again, reported
by name with its error; the experiment then stops with an error instead of comparing
fewer cases.

Layout of ``OUT``: ``experiment.json`` (the base config's hash, the cases and which set
was run), one run directory per case (``case_<start>``), and what
:mod:`.confidence` writes (``compare.json``, ``compare.png``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cftime
from diffda.core.config import ConfigError, deep_merge, from_mapping, read_toml, require, set_dotted
from diffda.core.io import atomic_write_text
from diffda.core.runtime import resolve_threads
from diffda.core.times import iso, parse_time
from diffda.cycler.cycling.config import (
    RunConfig,
    config_hash,
    config_to_mapping,
    run_config_from_mapping,
)
from diffda.cycler.cycling.driver import run_experiment
from diffda.cycler.cycling.outputs import read_metrics
from diffda.cycler.cycling.sweep import dask_client, in_task
from diffda.cycler.cycling.tuning import (
    FORMAT,
    apply_tuned,
    grid,
    identity,
    identity_hash,
    point_label,
    read_tuned,
)

EXPERIMENT_FILE = "experiment.json"


@dataclass(frozen=True, kw_only=True)
class CasesConfig:
    """The ``[cases]`` table of an experiment file.

    ``starts``: the verification cases' start times ``t_0`` (``YYYY-MM-DDTHH:MM``); or the
    rule ``start`` + ``every_days`` x ``count``. ``tuning``: start times of the tuning
    cases (for ``cycler sweep``), disjoint in time from the verification cases.
    ``steady_from_days``: leads up to this are spin-up; the steady part is the rest.
    ``tuned``: a tuning file (``cycler tune``) whose values the runs use; refused if it was
    tuned for another configuration (:func:`diffda.cycler.cycling.tuning.read_tuned`).
    ``workers``: cases in parallel worker processes on this machine (1: in this process,
    one after the other); ``retries``: how often a failed case is tried again.
    """

    starts: tuple[str, ...] = ()
    start: str = ""
    every_days: float = 0.0
    count: int = 0
    tuning: tuple[str, ...] = ()
    steady_from_days: float = 2.0
    tuned: str = ""
    workers: int = 1
    retries: int = 1

    def __post_init__(self) -> None:
        rule = bool(self.start) or self.count > 0 or self.every_days > 0
        require(not (rule and self.starts), "cases.starts", list(self.starts),
                "give either a list of starts or the rule start/every_days/count, not both")
        if rule:
            require(bool(self.start), "cases.start", self.start, "the rule needs a start")
            require(self.count >= 1, "cases.count", self.count, "must be >= 1")
            require(self.every_days > 0 or self.count == 1, "cases.every_days",
                    self.every_days, "must be positive")
        require(self.steady_from_days >= 0, "cases.steady_from_days", self.steady_from_days,
                "must be >= 0")
        require(self.workers >= 1, "cases.workers", self.workers, "must be >= 1")
        require(self.retries >= 0, "cases.retries", self.retries, "must be >= 0")

    def start_times(self, calendar: str) -> list[cftime.datetime]:
        """The verification cases' ``t_0``, in order."""
        if self.starts:
            return [parse_time(s, calendar, key="cases.starts") for s in self.starts]
        if not self.start:
            return []
        t0 = parse_time(self.start, calendar, key="cases.start")
        step = datetime.timedelta(days=self.every_days)
        return [t0 + k * step for k in range(self.count)]

    def tuning_times(self, calendar: str) -> list[cftime.datetime]:
        return [parse_time(s, calendar, key="cases.tuning") for s in self.tuning]


@dataclass(frozen=True)
class Experiment:
    """A base run config and its cases."""

    base: RunConfig
    cases: CasesConfig

    def case_configs(self, which: str = "verification") -> list[tuple[str, RunConfig]]:
        """``(label, config)`` of every case of ``which`` (``verification`` or ``tuning``):
        the base config with ``data.start`` at the case's ``t_0``."""
        require(which in ("verification", "tuning"), "--cases", which,
                "expected 'verification' or 'tuning'")
        cal = self.base.data.calendar
        times = self.cases.start_times(cal) if which == "verification" else \
            self.cases.tuning_times(cal)
        if not times:
            raise ConfigError(f"the experiment has no {which} cases: give cases.starts (or "
                              "cases.start, every_days, count)"
                              + (" and cases.tuning" if which == "tuning" else ""))
        out = []
        for t in times:
            label = case_label(t)
            data = dataclasses.replace(self.base.data, start=iso(t)[:16])
            out.append((label, dataclasses.replace(self.base, name=f"{self.base.name}-{label}",
                                                   data=data)))
        return out


def case_label(t0: cftime.datetime) -> str:
    """``case_YYYY-MM-DDTHH``: the name of a case's run directory."""
    return f"case_{t0.year:04d}-{t0.month:02d}-{t0.day:02d}T{t0.hour:02d}"


def _read_with_bases(path: Path) -> dict[str, Any]:
    """The TOML mapping of ``path`` laid over those of its ``base`` files, followed to the
    first file without one (each relative to the file that names it)."""
    chain = [path.resolve()]
    data = read_toml(path)
    while (base_file := data.pop("base", None)) is not None:
        nxt = (chain[-1].parent / str(base_file)).resolve()
        if nxt in chain:
            raise ConfigError(f"{path}: its base files name each other in a loop: "
                              + " -> ".join(p.name for p in [*chain, nxt]))
        chain.append(nxt)
        data = deep_merge(read_toml(nxt), data)
    return data


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read an experiment file: a run config plus a ``[cases]`` table. ``base = "FILE"``
    (relative to the experiment file) names a run config, or another experiment, whose tables
    the experiment's own are laid over (followed through their own ``base``), so an
    experiment states only what it changes. ``overrides`` maps dotted
    keys to values (``cases.workers``, ``analysis.lambda``, ...)."""
    path = Path(path)
    data = _read_with_bases(path)
    cases_table = data.pop("cases", {})
    if not isinstance(cases_table, dict):
        raise ConfigError(f"{path}: cases must be a table")
    run_over = {k: v for k, v in (overrides or {}).items() if not k.startswith("cases.")}
    for key, value in (overrides or {}).items():
        if key.startswith("cases."):
            cases_table = set_dotted(cases_table, key.removeprefix("cases."), value)
    data = deep_merge(config_to_mapping(RunConfig()), data)
    for key, value in run_over.items():
        data = set_dotted(data, key, value)
    try:
        base = run_config_from_mapping(data)
        cases = from_mapping(CasesConfig, cases_table, prefix="cases")
        if cases.tuned:  # the tuned values, then the explicit overrides again on top
            data = apply_tuned(data, read_tuned(cases.tuned, base))
            for key, value in run_over.items():
                data = set_dotted(data, key, value)
            base = run_config_from_mapping(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return Experiment(base, cases)


# ------------------------------------------------------------------------------ checks


def check_cases(experiment: Experiment, which: str, data_times: Sequence[cftime.datetime],
                source: str) -> None:
    """Refuse, naming the case, a case whose window is not in the data, and cases whose
    windows overlap (verification cases among themselves and with the tuning cases: they
    must be independent samples)."""
    have = set(data_times)
    span = f"{iso(data_times[0])} .. {iso(data_times[-1])}" if data_times else "no times"
    windows = {}
    for w in ("verification", "tuning"):
        if w == "tuning" and not experiment.cases.tuning:
            continue
        for label, cfg in experiment.case_configs(w):
            times = cfg.data.schedule()
            if w == which:
                missing = [t for t in times if t not in have]
                if missing:
                    raise ConfigError(
                        f"{which} case {label}: its window {iso(times[0])} .. {iso(times[-1])} "
                        f"is not in {source} (first missing time {iso(missing[0])}); the data "
                        f"cover {span}")
            windows[(w, label)] = (times[0], times[-1])
    items = sorted(windows.items(), key=lambda kv: kv[1][0])
    for (a, (a0, a1)), (b, (b0, _)) in zip(items, items[1:], strict=False):
        if b0 <= a1:
            raise ConfigError(f"cases overlap: {a[0]} case {a[1]} ({iso(a0)} .. {iso(a1)}) and "
                              f"{b[0]} case {b[1]} (from {iso(b0)}); cases must be disjoint "
                              "in time to be independent samples")


def _experiment_record(experiment: Experiment, which: str, labels: list[str]) -> dict[str, Any]:
    return {"base_config_hash": config_hash(experiment.base), "which": which,
            "cases": labels, "steady_from_days": experiment.cases.steady_from_days,
            "cadence_hours": experiment.base.data.cadence_hours,
            "base_config": config_to_mapping(experiment.base),
            "cases_config": dataclasses.asdict(experiment.cases)}


def prepare_experiment_dir(experiment: Experiment, which: str, out: Path,
                           labels: list[str]) -> None:
    """Create ``out`` with ``experiment.json``; refuse a folder of another experiment."""
    out.mkdir(parents=True, exist_ok=True)
    record = _experiment_record(experiment, which, labels)
    path = out / EXPERIMENT_FILE
    if path.is_file():
        theirs = json.loads(path.read_text())
        if (theirs.get("base_config_hash"), theirs.get("which"), theirs.get("cases")) != (
                record["base_config_hash"], which, labels):
            raise ConfigError(f"{out} holds another experiment (other config, cases or case "
                              "set): choose another --out or delete it")
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ running


class CasesFailed(RuntimeError):
    """Some cases failed after their retries; the message names each with its error."""


def _run_case(cfg: RunConfig, run_dir: str) -> str:
    """One case (in this process or a worker): the run, resumed where it stopped."""
    with in_task():
        run_experiment(cfg, run_dir, resume=True, plots=False)
    return run_dir


def run_cases(
    experiment: Experiment, out: str | Path, *, which: str = "verification",
    scheduler: str | None = None, threads: int | None = None,
) -> list[Path]:
    """Run (or continue) every case of ``which`` into ``out/<case>/``; returns the case
    directories. ``scheduler``: the address of a running dask scheduler; else
    ``cases.workers`` local processes (1: in this process). ``threads``: torch threads per
    case (default: the config's ``runtime.threads``; ``"auto"``: the cores free now shared
    among the local workers, or on a cluster resolved by each case where it runs)."""
    from diffda.emulators.forecast.data import open_nature

    out = Path(out)
    configs = experiment.case_configs(which)
    ds = open_nature(experiment.base.data.path)
    check_cases(experiment, which, list(ds["time"].values), experiment.base.data.path)
    labels = [label for label, _ in configs]
    prepare_experiment_dir(experiment, which, out, labels)
    rt = experiment.base.runtime
    threads = threads or rt.threads
    if threads == "auto" and scheduler is None:  # the free cores, shared among the workers
        threads = resolve_threads("auto", experiment.cases.workers)
    runtime = dataclasses.replace(rt, threads=threads,
                                  progress=rt.progress and experiment.cases.workers == 1
                                  and scheduler is None)
    configs = [(label, dataclasses.replace(cfg, runtime=runtime)) for label, cfg in configs]
    if scheduler is None and experiment.cases.workers == 1:
        failures = _run_serially(configs, out, experiment.cases.retries)
    else:
        failures = _run_on_dask(configs, out, scheduler, experiment.cases.workers,
                                experiment.cases.retries)
    if failures:
        lines = "\n".join(f"  {label}: {err}" for label, err in failures.items())
        raise CasesFailed(f"{len(failures)} of {len(configs)} cases failed (after "
                          f"{experiment.cases.retries} retries; run again to resume):\n{lines}")
    return [out / label for label in labels]


def _run_serially(configs: list[tuple[str, RunConfig]], out: Path, retries: int
                  ) -> dict[str, str]:
    failures: dict[str, str] = {}
    for label, cfg in configs:
        for attempt in range(retries + 1):
            try:
                _run_case(cfg, str(out / label))
                break
            except (ConfigError, KeyError, FileNotFoundError) as err:  # not worth a retry
                failures[label] = f"{type(err).__name__}: {err}"
                break
            except Exception as err:  # noqa: BLE001 - reported by name below, never dropped
                if attempt == retries:
                    failures[label] = f"{type(err).__name__}: {err}"
    return failures


def _run_on_dask(configs: list[tuple[str, RunConfig]], out: Path, scheduler: str | None,
                 workers: int, retries: int) -> dict[str, str]:
    from dask.distributed import as_completed

    failures: dict[str, str] = {}
    with dask_client(scheduler, workers) as client:
        futures = {client.submit(_run_case, cfg, str(out / label), pure=False,
                                 retries=retries, key=f"{label}-{out.name}"): label
                   for label, cfg in configs}
        for future in as_completed(futures):
            if future.status == "error":
                err = future.exception()
                failures[futures[future]] = f"{type(err).__name__}: {err}"
    return failures


def case_dirs(out: str | Path) -> list[Path]:
    """The case directories of an experiment folder, in the order of ``experiment.json``
    (or ``[out]`` itself when it is a single run directory)."""
    out = Path(out)
    record = out / EXPERIMENT_FILE
    if record.is_file():
        return [out / label for label in json.loads(record.read_text())["cases"]]
    if (out / "metrics.jsonl").is_file():
        return [out]
    raise FileNotFoundError(f"{out}: neither an experiment folder ({EXPERIMENT_FILE}) nor a "
                            "run directory (metrics.jsonl)")


# ------------------------------------------------------------------------------- tuning


def tune(
    path: str | Path, params: Mapping[str, Sequence[Any]], *, mode: str, variable: str,
    out: str | Path, overrides: Mapping[str, Any] | None = None, scheduler: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the grid on the tuning cases of the experiment file ``path`` into
    ``out/<point>/``; write and return ``out/tuned.json`` (see the module docstring)."""
    from diffda.cycler.cycling.confidence import compare_cases

    out = Path(out)
    base_over = {**dict(overrides or {}), "analysis.modes": [mode]}
    reference = load_experiment(path, base_over)
    if not reference.cases.tuning:
        raise ConfigError(f"{path}: no tuning cases (cases.tuning)")
    scores: list[dict[str, Any]] = []
    for point in grid(params):
        experiment = load_experiment(path, {**base_over, **point})
        folder = out / point_label(point)
        run_cases(experiment, folder, which="tuning", scheduler=scheduler, threads=threads)
        _, cases, _ = load_cases([folder])
        table = compare_cases(cases, 24.0 * experiment.cases.steady_from_days)
        scores.append({"values": point, "steady_rmse": {
            v: s["steady_rmse"] for v, s in table["modes"][mode].items()}})
    std = _climate_std(reference.base)
    for s in scores:
        r = s["steady_rmse"]
        s["score"] = (sum(r[v] / std[v] for v in r) / len(r) if variable == "all"
                      else r[variable])
    best = min(scores, key=lambda s: s["score"])
    ident = identity(reference.base, list(params))
    record = {"format": FORMAT, "mode": mode, "variable": variable,
              "values": best["values"], "score": best["score"], "grid": scores,
              "tuning_cases": list(reference.cases.tuning),
              "identity": ident, "identity_hash": identity_hash(ident)}
    atomic_write_text(out / "tuned.json", json.dumps(record, indent=1) + "\n")
    return record


def _climate_std(cfg: RunConfig) -> dict[str, float]:
    from diffda.emulators.prior.model import DiffusionPrior

    prior = DiffusionPrior.load(cfg.models.prior)
    return {v: float(s) for v, s in zip(prior.variables, prior.std.tolist(), strict=True)}


def load_cases(dirs: Sequence[str | Path]) -> tuple[list[str], list[list[dict[str, Any]]],
                                                  float | None]:
    """The records of the cases of experiment folders or run directories ``dirs``, merged
    by case: ``(case labels, records per case, steady_from_days or None)``. Several folders
    must hold the same cases (e.g. the diffusion modes and a tuned EnKF run on the same
    start times); a mode that appears in two of them is renamed ``<folder>/<mode>``. Single
    run directories count as one case together."""
    per_dir: list[tuple[str, dict[str, list[dict[str, Any]]]]] = []
    steady = None
    for d in map(Path, dirs):
        record = d / EXPERIMENT_FILE
        if record.is_file():
            steady = json.loads(record.read_text()).get("steady_from_days", steady)
            cases = {c.name: read_metrics(c) for c in case_dirs(d)}
        else:
            cases = {"run": read_metrics(d)}
        per_dir.append((d.resolve().name, cases))
    labels = list(per_dir[0][1])
    for name, cases in per_dir[1:]:
        if list(cases) != labels:
            raise ValueError(f"{name} holds other cases ({list(cases)[:3]} ...) than "
                             f"{per_dir[0][0]} ({labels[:3]} ...): paired comparisons need "
                             "the same cases")
    counts: dict[str, int] = {}
    for _, cases in per_dir:
        for m in dict.fromkeys(r["mode"] for r in next(iter(cases.values()))):
            counts[m] = counts.get(m, 0) + 1
    merged = []
    for label in labels:
        records = []
        for name, cases in per_dir:
            for r in cases[label]:
                mode = r["mode"] if counts[r["mode"]] == 1 else f"{name}/{r['mode']}"
                records.append({**r, "mode": mode})
        merged.append(records)
    return labels, merged, steady
