"""Kill-and-resume: a run stopped after any cycle, or during a checkpoint write, and resumed
gives the same metrics and analyses as one that never stopped; corrupt or mismatched
checkpoints are refused with a clear message."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from diffda.core.rng import torch_generator
from diffda.cycler.cycling import checkpoint
from diffda.cycler.cycling.checkpoint import CheckpointError, cycle_path, load_cycle
from diffda.cycler.cycling.config import config_hash, load_run_config
from diffda.cycler.cycling.driver import InjectedFailure, resume_experiment, run_experiment
from diffda.emulators.forecast.data import load_coarse_states
from diffda.emulators.forecast.model import build_emulator

_spec = importlib.util.spec_from_file_location(
    "driver_helpers", Path(__file__).with_name("test_driver.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # the tiny world of tests/test_driver.py

MODES = ("reinitialized", "enkf", "unconditional")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny world and an uninterrupted run of it."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("resume")
    cfg = load_run_config(helpers.tiny_world(folder / "world", modes=MODES))
    run_experiment(cfg, folder / "full", plots=False)
    return cfg, folder


def _same_outputs(a: Path, b: Path) -> None:
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    for mode in MODES:
        with xr.open_dataset(a / "analyses" / f"{mode}.nc") as x, \
                xr.open_dataset(b / "analyses" / f"{mode}.nc") as y:
            for v in x.data_vars:
                np.testing.assert_array_equal(x[v].values, y[v].values)


def _fail_after(mode: str, cycle: int):
    def hook(m: str, k: int) -> None:
        if (m, k) == (mode, cycle):
            raise InjectedFailure(f"killed after {m} cycle {k}")
    return hook


def test_killed_after_a_cycle_then_resumed_equals_uninterrupted(reference, tmp_path):
    # killed in the middle of the second mode: the first is complete, the second half done
    cfg, folder = reference
    mode, cycle = "enkf", 1
    run_dir = tmp_path / "run"
    with pytest.raises(InjectedFailure):
        run_experiment(cfg, run_dir, on_checkpoint=_fail_after(mode, cycle), plots=False)
    assert cycle_path(run_dir, mode, cycle).is_file()
    assert not cycle_path(run_dir, mode, cycle + 1).exists()
    # 'run' again into the same directory is refused: it must be resumed
    with pytest.raises(ValueError, match="cycler resume"):
        run_experiment(cfg, run_dir, plots=False)
    resume_experiment(run_dir, plots=False)
    _same_outputs(folder / "full", run_dir)


def test_killed_during_a_checkpoint_write(reference, tmp_path, monkeypatch):
    cfg, folder = reference
    run_dir = tmp_path / "run"
    real_dump = checkpoint._dump

    def torn_write(obj, path):
        if "cycle_0002" in path.name and "/enkf/" in str(path):
            path.write_bytes(b"PK\x03\x04 half a checkpoint")
            raise InjectedFailure("killed while writing")
        real_dump(obj, path)

    monkeypatch.setattr(checkpoint, "_dump", torn_write)
    with pytest.raises(InjectedFailure):
        run_experiment(cfg, run_dir, plots=False)
    monkeypatch.setattr(checkpoint, "_dump", real_dump)
    assert not cycle_path(run_dir, "enkf", 2).exists()  # never a torn final file
    # a hard kill (SIGKILL) would leave the temporary file: it is ignored
    stray = cycle_path(run_dir, "enkf", 2).with_name(".cycle_0002.pt.abc123.tmp")
    stray.write_bytes(b"torn")
    resume_experiment(run_dir, plots=False)
    _same_outputs(folder / "full", run_dir)


def test_corrupt_checkpoint_is_refused(reference, tmp_path):
    cfg, folder = reference
    run_dir = tmp_path / "run"
    shutil.copytree(folder / "full", run_dir)
    path = cycle_path(run_dir, "enkf", 1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"enkf/cycle_0001\.pt: corrupt checkpoint"):
        resume_experiment(run_dir, plots=False)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt checkpoint, cannot be read"):
        resume_experiment(run_dir, plots=False)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"cycles \[1\] are missing before cycle 2"):
        resume_experiment(run_dir, plots=False)


def test_mismatched_config_or_weights_are_refused(reference, tmp_path):
    cfg, folder = reference
    run_dir = tmp_path / "run"
    shutil.copytree(folder / "full", run_dir)
    other = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, lambda_=2.0))
    with pytest.raises(ValueError, match="another config"):
        run_experiment(other, run_dir, resume=True, plots=False)
    weights = {"emulator": "0" * 64, "prior": "1" * 64}
    with pytest.raises(CheckpointError, match="written by another config"):
        load_cycle(cycle_path(run_dir, "enkf", 1), config_hash(other), weights)
    # other emulator weights under the same file name
    world = tmp_path / "world"
    shutil.copytree(folder / "world", world)
    moved = dataclasses.replace(cfg, models=dataclasses.replace(
        cfg.models, emulator=str(world / "emulator.safetensors"),
        prior=str(world / "prior.safetensors")))
    run_dir2 = tmp_path / "run2"
    with pytest.raises(InjectedFailure):
        run_experiment(moved, run_dir2, on_checkpoint=_fail_after("reinitialized", 1),
                       plots=False)
    ds = helpers.tiny_dataset()
    emulator = build_emulator(load_coarse_states(ds, helpers.COARSE), None, "none",
                              {"width": 8, "depth": 1}, 6.0,
                              generator=torch_generator(99, "another-emulator"))
    emulator.export(world / "emulator.safetensors")
    with pytest.raises(CheckpointError, match="written with other emulator weights"):
        resume_experiment(run_dir2, plots=False)
