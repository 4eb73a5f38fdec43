"""``runtime.threads = "auto"``: the free cores shared among the processes about to start,
never fewer than one; a run records the number it resolved to; bad values are refused
naming the key."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from diffda.core.config import ConfigError
from diffda.core.runtime import auto_threads, free_cores, resolve_threads, threads_arg, usable_cpus


@pytest.mark.parametrize("free, processes, expected", [
    (2.0, 1, 2), (1.6, 1, 2), (1.2, 1, 1), (0.1, 1, 1), (2.0, 2, 1), (8.0, 2, 4), (7.0, 2, 3),
])
def test_auto_threads_shares_the_free_cores(free, processes, expected):
    assert auto_threads(processes, free=free) == expected


def test_free_cores_is_a_share_of_the_usable_cpus():
    free = free_cores(window_s=0.05)
    assert 0.0 <= free <= len(usable_cpus()) + 1e-9
    assert len(usable_cpus()) <= (os.cpu_count() or 1)


def test_resolve_and_parse_threads():
    assert resolve_threads(3) == 3
    assert 1 <= resolve_threads("auto") <= len(usable_cpus())
    for bad in (0, -1, "many", True):
        with pytest.raises(ValueError, match="expected a whole number"):
            resolve_threads(bad)
    assert threads_arg("auto") == "auto" and threads_arg("2") == 2
    with pytest.raises(argparse.ArgumentTypeError, match="'0'"):
        threads_arg("0")


def test_config_accepts_auto_and_a_run_records_the_number(tmp_path):
    from diffda.cycler.cycling.config import load_run_config, read_resolved
    from diffda.cycler.cycling.driver import run_experiment

    spec = importlib.util.spec_from_file_location(
        "driver_helpers", Path(__file__).with_name("test_driver.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    path = helpers.tiny_world(tmp_path / "world", modes=("free",))
    with pytest.raises(ConfigError, match="runtime.threads = 'many'"):
        load_run_config(path, {"runtime.threads": "many"})
    with pytest.raises(ConfigError, match="runtime.threads = 0"):
        load_run_config(path, {"runtime.threads": 0})
    cfg = load_run_config(path, {"runtime.threads": "auto"})
    assert cfg.runtime.threads == "auto"
    threads = torch.get_num_threads()
    try:
        run_experiment(cfg, tmp_path / "run", plots=False)
    finally:
        torch.set_num_threads(threads)
    recorded = read_resolved(tmp_path / "run" / "config.json").runtime.threads
    assert isinstance(recorded, int) and 1 <= recorded <= len(usable_cpus())
