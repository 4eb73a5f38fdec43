"""The Python API: an experiment from a TOML config, run or resumed, and its results as
xarray objects (:class:`Experiment`, :class:`Result`).

Everything here calls the functions the ``cycler`` command calls
(:func:`~diffda.cycler.cycling.config.load_run_config`,
:func:`~diffda.cycler.cycling.driver.run_experiment`,
:func:`~diffda.cycler.cycling.driver.resume_experiment`); the results are read back from
the run directory, so a :class:`Result` of a finished run opened later (``Result(path)``)
is the same as the one :meth:`Experiment.run` returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from diffda.cycler.cycling.compare import DEFAULT_LEAD_DAYS, lead_table
from diffda.cycler.cycling.config import RunConfig, load_run_config, read_resolved
from diffda.cycler.cycling.outputs import read_metrics

#: The scores of ``metrics.jsonl`` that :meth:`Result.metrics` carries as variables.
_SCORES = ("rmse", "spread", "crps", "rmse_station", "rmse_nonstation")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A cycling experiment: a validated run config (:class:`~diffda.cycler.cycling.config.
    RunConfig`)."""

    config: RunConfig

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None
                  ) -> Experiment:
        """Read a run config (e.g. ``runs/sevenday.toml``); ``overrides`` maps dotted keys
        to values, as ``cycler run --set KEY=VALUE`` (``{"data.days": 1, "members": 4}``).
        Errors name the file, the key and the value."""
        return cls(load_run_config(path, dict(overrides or {})))

    def run(self, out: str | Path | None = None, *, progress: bool = True,
            plots: bool = False, resume: bool = False) -> Result:
        """Run every mode into ``out`` (default ``outputs/<name>``) and return the
        :class:`Result`. ``resume``: continue a run directory started before."""
        from diffda.cycler.cycling.driver import run_experiment

        out = Path(out) if out is not None else Path("outputs") / self.config.name
        cfg = dataclasses.replace(self.config, runtime=dataclasses.replace(
            self.config.runtime, progress=progress))
        run_experiment(cfg, out, resume=resume, plots=plots)
        return Result(out)

    @staticmethod
    def resume(path: str | Path, *, plots: bool = False) -> Result:
        """Continue the run in ``path`` from its last complete cycles (its recorded config
        and runtime settings), as ``cycler resume``."""
        from diffda.cycler.cycling.driver import resume_experiment

        resume_experiment(path, plots=plots)
        return Result(Path(path))


@dataclasses.dataclass(frozen=True)
class Result:
    """The outputs of a run directory, as xarray objects."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.json)")

    @property
    def config(self) -> RunConfig:
        """The run's resolved config."""
        return read_resolved(self.path / "config.json")

    @property
    def modes(self) -> list[str]:
        """The modes with analyses in this run, in config order."""
        have = {p.stem for p in (self.path / "analyses").glob("*.nc")}
        return [m for m in self.config.analysis.modes if m in have]

    def analyses(self, mode: str) -> xr.Dataset:
        """The analyses of ``mode`` (CF netCDF: ensemble mean and std per variable, members
        if the run kept them; ``time`` as cftime, ``lat``/``lon`` in degrees), loaded."""
        path = self.path / "analyses" / f"{mode}.nc"
        if not path.is_file():
            raise KeyError(f"{self.path}: no analyses of mode {mode!r} (it has "
                           f"{self.modes})")
        return _open(path)

    def truth(self) -> xr.Dataset:
        """The truth at the analysis times (CF netCDF), loaded."""
        return _open(self.path / "truth.nc")

    def records(self) -> list[dict[str, Any]]:
        """The raw records of ``metrics.jsonl`` (one per mode and cycle)."""
        return read_metrics(self.path)

    def metrics(self) -> xr.Dataset:
        """The scores of ``metrics.jsonl`` as a Dataset with dims ``(mode, cycle,
        variable)``: data variables ``rmse``, ``spread``, ``crps``, ``rmse_station``,
        ``rmse_nonstation`` (NaN where a mode has no value), coordinates ``time`` and
        ``lead_hours`` per cycle. The same numbers as the file."""
        records = self.records()
        modes = list(dict.fromkeys(r["mode"] for r in records))
        cycles = sorted({int(r["cycle"]) for r in records})
        variables = list(self.config.stations.observed)
        present = [v for v in variables if any(v in r for r in records)]
        data = {s: np.full((len(modes), len(cycles), len(present)), np.nan) for s in _SCORES}
        times: dict[int, str] = {}
        leads: dict[int, float] = {}
        for r in records:
            i, j = modes.index(r["mode"]), cycles.index(int(r["cycle"]))
            times[int(r["cycle"])] = r["time"]
            leads[int(r["cycle"])] = float(r["lead_hours"])
            for k, v in enumerate(present):
                for s in _SCORES:
                    if v in r and s in r[v]:
                        data[s][i, j, k] = r[v][s]
        dims = ("mode", "cycle", "variable")
        ds = xr.Dataset({s: (dims, a) for s, a in data.items()},
                        coords={"mode": modes, "cycle": cycles, "variable": present,
                                "time": ("cycle", [times[c] for c in cycles]),
                                "lead_hours": ("cycle", [leads[c] for c in cycles])})
        ds.attrs["source"] = str(self.path / "metrics.jsonl")
        return ds

    def metrics_frame(self) -> Any:
        """:meth:`metrics` as a tidy ``pandas.DataFrame`` (one row per mode, cycle and
        variable)."""
        return self.metrics().to_dataframe().reset_index()

    def compare(self, lead_days: Sequence[float] = DEFAULT_LEAD_DAYS) -> dict[str, Any]:
        """RMSE of the ensemble mean at ``lead_days`` per mode and variable (the table of
        ``cycler compare RUN``): ``{"lead_days": [...], "rows": [...]}``."""
        return lead_table({self.path.name: self.records()}, lead_days)


def _open(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True)) as ds:
        return ds.load()
