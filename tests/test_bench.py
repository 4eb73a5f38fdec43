"""``cycler bench run``: the network clock counts what the sampler and the emulator do (the
denoiser evaluations per analysis of Heun's method, the emulator's steps), the shares add
up, the JSON has the documented keys, and a used directory is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffda.core.profiling import clock, measuring


def _tiny(folder: Path, modes: tuple[str, ...]) -> Path:
    spec = importlib.util.spec_from_file_location(
        "driver_helpers", Path(__file__).with_name("test_driver.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers.tiny_world(folder, modes=modes)


def test_clock_is_off_outside_measuring():
    with clock.section("denoiser"):
        pass
    assert "denoiser" not in clock.calls
    with measuring() as c:
        with c.section("denoiser"):
            pass
    assert c.calls == {"denoiser": 1} and not clock.enabled


def test_bench_run_counts_network_calls_per_mode(tmp_path, capsys):
    from diffda.cycler.cli.main import main as cli_main
    from diffda.cycler.cycling.bench import bench_run
    from diffda.cycler.cycling.config import load_run_config

    torch.set_num_threads(1)
    path = _tiny(tmp_path / "world", ("climatological", "reinitialized", "enkf"))
    cfg = load_run_config(path)
    result = bench_run(cfg, tmp_path / "bench")
    cycles = result["cycles"]
    assert cycles == {"climatological": 2, "reinitialized": 2, "enkf": 2}
    # Heun with 6 steps: 2 * 6 - 1 = 11 network calls per analysis (members batched); the
    # climatological mode's two independent cycles share one batch: 11 calls for both
    assert result["nfe_per_mode"] == {"climatological": 11, "reinitialized": 22, "enkf": 0}
    assert result["nfe"] == 33
    assert result["emulator_steps"] > 0 and result["network_seconds"]["denoiser_vjp"] > 0
    assert 0.0 < result["share_outside_network"] < 1.0
    assert result["seconds_total"] >= result["seconds_setup"] + sum(
        result["seconds_per_mode"].values()) - 1e-6
    assert set(result["final_rmse"]["enkf"]) == {"height", "u", "v", "tracer"}
    with pytest.raises(FileExistsError, match="fresh directory"):
        bench_run(cfg, tmp_path / "bench")
    # the command line, --json: one object with the documented keys
    assert cli_main(["bench", "run", str(path), "--set",
                     'analysis.modes=["climatological"]', "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"seconds_total", "seconds_per_mode", "nfe", "share_outside_network"} <= set(out)
    assert out["nfe"] == 11
