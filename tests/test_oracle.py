"""The oracle row: the nature model as a forecast model of stored states, and the EnKF that
cycles it (``oracle_enkf``) end to end, resumed, and refused where the data do not say
which nature model made them."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from diffda.cycler.cycling.config import load_run_config
from diffda.cycler.cycling.driver import InjectedFailure, resume_experiment, run_experiment
from diffda.cycler.cycling.outputs import read_metrics
from diffda.cycler.cycling.world import load_world
from diffda.emulators import dataio
from diffda.emulators.nature.forecaster import NatureForecaster, model_seconds
from diffda.emulators.nature.run import (
    CONFIG_ATTR,
    STATE_VARIABLES,
    NatureConfig,
    config_from_record,
    config_record_of,
    run_nature,
)
from diffda.emulators.nature.shallow_water import ShallowWaterConfig

_spec = importlib.util.spec_from_file_location(
    "driver_helpers", Path(__file__).with_name("test_driver.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # the tiny world of tests/test_driver.py

TINY = NatureConfig(days=1.0, spinup_days=0.5, chunk_days=0.5,
                    model=ShallowWaterConfig(nlat=16, nlon=32, dt_seconds=1800.0))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nature") / "n.zarr"
    run_nature(TINY, out, progress=False)
    return out


def _states(ds: xr.Dataset) -> torch.Tensor:
    return torch.as_tensor(np.stack([ds[v].values for v in STATE_VARIABLES], 1)).float()


def test_the_nature_model_forecasts_its_own_stored_states(tiny_run):
    ds = dataio.open_dataset(tiny_run)
    config = config_from_record(config_record_of(tiny_run, dict(ds.attrs)))
    assert config == TINY  # read back from the final state kept beside the run
    nature = NatureForecaster(config)
    x, times = _states(ds), ds["time"].values
    spec = nature.encode(x[1:2])
    back = nature.decode(spec)
    forecast = nature.decode(nature.forecast(spec, model_seconds(times[1]), 6.0))
    for i, v in enumerate(STATE_VARIABLES):
        def rms(a):
            return float(a.square().mean().sqrt())
        persistence = rms(x[2, i] - x[1, i])
        # the round trip through the model grid loses little (here the T10 model is coarser
        # than the stored 32x64 grid); a 6-h forecast from the stored truth is far closer to
        # the next stored truth than persistence
        assert rms(back[0, i] - x[1, i]) < 0.2 * float(x[1, i].std()), v
        assert rms(forecast[0, i] - x[2, i]) < 0.3 * persistence, v
    # an increment on the stored grid moves the decoded state by about that increment
    inc = torch.zeros_like(x[1:2])
    inc[:, 0] = 10.0
    moved = nature.decode(nature.add(spec, inc)) - back
    assert abs(float(moved[0, 0].mean()) - 10.0) < 0.5
    with pytest.raises(ValueError, match="member, 4"):
        nature.encode(x[1, :2])


def test_subset_records_the_nature_model(tmp_path, tiny_run):
    from diffda.cycler.cli.main import main

    out = tmp_path / "w.nc"
    assert main(["subset", str(tiny_run), "--start", "2000-01-01T06:00", "--days", "0.25",
                 "--background", "2", "--out", str(out)]) == 0
    with xr.open_dataset(out) as sub:
        assert config_from_record(sub.attrs[CONFIG_ATTR]) == TINY


def _oracle_world(folder: Path, record: str | None) -> Path:
    """The tiny world of test_driver with the oracle, its data marked as made by a tiny
    nature model on the tiny world's 16x32 grid."""
    path = helpers.tiny_world(folder, modes=("enkf", "oracle_enkf"))
    data = folder / "nature.nc"
    ds = xr.load_dataset(data)
    if record is not None:
        ds.attrs[CONFIG_ATTR] = record
    ds.to_netcdf(data)
    return path


def _record() -> str:
    import json

    return json.dumps(dataclasses.asdict(TINY), sort_keys=True)


def test_oracle_enkf_runs_end_to_end_and_resumes(tmp_path):
    torch.set_num_threads(1)
    cfg = load_run_config(_oracle_world(tmp_path / "world", _record()))
    full = tmp_path / "full"
    run_experiment(cfg, full, plots=False)
    records = [r for r in read_metrics(full) if r["mode"] == "oracle_enkf"]
    assert [r["cycle"] for r in records] == [1, 2]
    for r in records:
        assert all(np.isfinite(r[v]["rmse"]) and r[v]["spread"] > 0 for v in STATE_VARIABLES)
        assert r["innovations"]["height"]["omf_var"] > 0
    # killed after its first cycle and resumed: the same numbers
    def kill(mode: str, k: int) -> None:
        if (mode, k) == ("oracle_enkf", 1):
            raise InjectedFailure("killed")
    run_dir = tmp_path / "run"
    with pytest.raises(InjectedFailure):
        run_experiment(cfg, run_dir, on_checkpoint=kill, plots=False)
    resume_experiment(run_dir, plots=False)
    assert (run_dir / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()


def test_oracle_needs_data_from_a_known_nature_model(tmp_path):
    cfg = load_run_config(_oracle_world(tmp_path / "world", None))
    with pytest.raises(ValueError, match="nature_config"):
        load_world(cfg)
