"""The Python API (``from diffda import Experiment``): the README's example on the tiny
world, CF analyses, metrics equal to ``metrics.jsonl``, resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cftime
import numpy as np
import pytest
import torch
from diffda import Experiment, Result
from diffda.cycler.cycling.driver import InjectedFailure, run_experiment

_spec = importlib.util.spec_from_file_location(
    "driver_helpers", Path(__file__).with_name("test_driver.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

MODES = ("climatological", "enkf", "free")


def test_readme_example_on_the_tiny_world(tmp_path):
    torch.set_num_threads(1)
    config = helpers.tiny_world(tmp_path / "world", modes=MODES)
    # the README's example, with the tiny world's config
    exp = Experiment.from_toml(config, overrides={"data.days": 1, "members": 3})
    result = exp.run(out=tmp_path / "run", progress=False)
    ds = result.analyses("climatological")
    assert set(ds.dims) >= {"time", "lat", "lon"}
    assert isinstance(ds["time"].values[0], cftime.datetime)
    assert ds["lat"].attrs["units"] == "degrees_north"
    assert ds["lon"].attrs["units"] == "degrees_east"
    assert ds["height"].attrs["units"] == "m" and "height_std" in ds  # mean and spread
    metrics = result.metrics()
    assert list(metrics["mode"].values) == list(MODES)
    assert metrics.sizes == {"mode": 3, "cycle": 2, "variable": 4}
    for r in result.records():  # the same numbers as metrics.jsonl
        for v in ("height", "u", "v", "tracer"):
            got = float(metrics["rmse"].sel(mode=r["mode"], cycle=r["cycle"], variable=v))
            assert got == r[v]["rmse"]
    frame = result.metrics_frame()
    assert len(frame) == 3 * 2 * 4 and {"mode", "cycle", "variable", "rmse"} <= set(frame)
    table = result.compare(lead_days=(0.5, 1))
    assert table["lead_days"] == [0.5, 1] and len(table["rows"]) == 3 * 4
    with pytest.raises(KeyError, match="no analyses of mode 'precomputed'"):
        result.analyses("precomputed")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Result(tmp_path / "world")


def test_resume_from_python(tmp_path):
    torch.set_num_threads(1)
    config = helpers.tiny_world(tmp_path / "world", modes=("enkf",))
    exp = Experiment.from_toml(config)
    full = exp.run(out=tmp_path / "full", progress=False)

    def kill(mode: str, k: int) -> None:
        if k == 1:
            raise InjectedFailure("killed")

    with pytest.raises(InjectedFailure):
        run_experiment(exp.config, tmp_path / "run", on_checkpoint=kill, plots=False)
    resumed = Experiment.resume(tmp_path / "run")
    np.testing.assert_array_equal(resumed.metrics()["rmse"].values, full.metrics()["rmse"].values)
