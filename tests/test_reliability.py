"""Nothing lost, nothing confusing (issue 22, "Failures to fix"): a run directory is locked
for one process; weights are checked against their card's sha256; bad inputs end in one
line and exit 2; ``obs inspect`` refuses what is not an observation file; a failed start
does not block its retry; a resume keeps the recorded settings; writes are atomic and
durable; a pickled checkpoint is refused without advice to load it unsafely.

Runs use the tiny world of ``tests/test_driver.py`` with the cheap ``free`` mode.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffda.core import lock as lock_module
from diffda.core.io import atomic_write_bytes, file_sha256
from diffda.core.lock import LockHeld, directory_lock
from diffda.core.weights import (
    UnverifiedWeightsWarning,
    WeightsError,
    export_weights,
    load_weights,
)
from diffda.cycler.cli.main import main as cli_main
from diffda.cycler.cycling.checkpoint import CheckpointError, cycle_path, load_cycle
from diffda.cycler.cycling.config import load_run_config
from diffda.cycler.cycling.driver import run_experiment

_spec = importlib.util.spec_from_file_location(
    "driver_helpers", Path(__file__).with_name("test_driver.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # the tiny world of tests/test_driver.py

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The tiny world's config (``free`` mode only: no sampler, a second per run)."""
    return helpers.tiny_world(tmp_path_factory.mktemp("reliability") / "world",
                              modes=("free",))


@pytest.fixture(autouse=True)
def _one_thread():
    """A resume with --threads changes torch's global thread count: put it back."""
    yield
    torch.set_num_threads(1)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


# ------------------------------------------------------------------------- 1. run lock


def test_a_second_run_or_resume_on_a_locked_run_directory_stops_at_once(world, tmp_path,
                                                                         capsys):
    run_dir = tmp_path / "run"
    with directory_lock(run_dir) as held:  # another process's run, as far as flock knows
        record = json.loads(held.path.read_text())
        tic = time.perf_counter()
        assert cli_main(["run", str(world), "--out", str(run_dir), "--no-plots"]) == 2
        assert time.perf_counter() - tic < 5  # at once: the world is not even loaded
        line = _error_line(capsys)
        assert f"process {os.getpid()} on host {socket.gethostname()}" in line
        assert f"since {record['started']}" in line and str(run_dir) in line
        assert not (run_dir / "config.json").exists()
        # a resume while the run starts (no config.json yet) names the holder too
        assert cli_main(["resume", str(run_dir), "--no-plots"]) == 2
        assert f"process {os.getpid()} on host" in _error_line(capsys)
    # the holder finished: the run proceeds; a resume is refused while another holds it
    assert cli_main(["run", str(world), "--out", str(run_dir), "--no-plots"]) == 0
    capsys.readouterr()
    with directory_lock(run_dir):
        assert cli_main(["resume", str(run_dir), "--no-plots"]) == 2
        assert "is in use by process" in _error_line(capsys)
    assert (run_dir / ".lock").read_text() == ""  # released: no holder named


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "earlier"}
    (folder / ".lock").write_text(json.dumps(dead))
    with directory_lock(folder) as held:
        assert held.taken_over == dead
        assert json.loads(held.path.read_text())["pid"] == os.getpid()


def test_without_flock_the_record_decides(tmp_path, monkeypatch):
    """On a filesystem that refuses flock: a live holder on this host or any holder on
    another host keeps the lock; a dead one on this host is taken over."""
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for record, refused in (({"pid": live.pid, "host": host}, True),
                                ({"pid": 1, "host": "elsewhere"}, True),
                                ({"pid": _dead_pid(), "host": host}, False)):
            folder = tmp_path / f"case{record['pid']}"
            folder.mkdir()
            (folder / ".lock").write_text(json.dumps({**record, "started": "t0"}))
            if refused:
                with pytest.raises(LockHeld, match=f"process {record['pid']} on host "
                                                   f"{record['host']} since t0"), \
                        directory_lock(folder):
                    pass
            else:
                with directory_lock(folder) as held:
                    assert held.taken_over["pid"] == record["pid"]
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------- 2. weights checked


def _tiny_weights(folder: Path, **card) -> Path:
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(64, 8, generator=g), "b": torch.zeros(8)}
    path, _ = export_weights(folder / "tiny.safetensors", state, {"kind": "test", **card})
    return path


def _flip_last_bit(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # the last byte is tensor data (safetensors: header first)
    path.write_bytes(bytes(raw))


def test_a_one_bit_flip_in_exported_weights_is_refused_naming_file_and_hashes(tmp_path):
    path = _tiny_weights(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(path)
    load_weights(path)  # intact: loads without a warning
    _flip_last_bit(path)
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    msg = str(err.value)
    assert str(path) in msg and card["sha256"] in msg and file_sha256(path) in msg


def test_weights_without_a_recorded_sha256_load_with_a_warning(tmp_path):
    path = _tiny_weights(tmp_path)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    del card["sha256"]
    card_path.write_text(json.dumps(card))
    with pytest.warns(UnverifiedWeightsWarning, match="records no sha256"):
        tensors, _ = load_weights(path)
    assert set(tensors) == {"w", "b"}


@pytest.mark.parametrize("name", ["emulator", "prior"])
def test_the_shipped_weights_are_checked(name, tmp_path):
    shipped = ROOT / "emulators" / "weights" / f"{name}.safetensors"
    card = json.loads(shipped.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(shipped)
    if name == "prior":  # a one-bit flip in a copy of the shipped prior is refused
        copy = tmp_path / shipped.name
        copy.write_bytes(shipped.read_bytes())
        copy.with_suffix(".json").write_text(shipped.with_suffix(".json").read_text())
        _flip_last_bit(copy)
        with pytest.raises(WeightsError, match=card["sha256"]):
            load_weights(copy)


# ---------------------------------------------------------------- 3. one-line errors (2)


def test_bad_paths_end_in_one_line_and_exit_2(world, tmp_path, capsys):
    assert cli_main(["run", str(world.parent), "--out", str(tmp_path / "r")]) == 2
    assert _error_line(capsys) == f"cycler run: error: {world.parent}: is a directory, " \
                                  "expected a file"
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    assert cli_main(["run", str(world), "--out", str(a_file), "--no-plots"]) == 2
    line = _error_line(capsys)
    assert f"{a_file}: is a file, not a run directory" in line
    assert cli_main(["run", str(world), "--out", str(a_file / "run"), "--no-plots"]) == 2
    assert f"{a_file / 'run'}: is not a directory" in _error_line(capsys)
    assert cli_main(["resume", str(a_file)]) == 2
    assert str(a_file) in _error_line(capsys)


@pytest.mark.parametrize("header", [b"\x89HDF\r\n\x1a\n", b"CDF\x01"])
def test_a_fake_netcdf_or_hdf5_file_as_data_ends_in_one_line(world, tmp_path, capsys,
                                                               header):
    fake = tmp_path / "fake.nc"
    fake.write_bytes(header + b"\x00garbage" * 64)
    config = tmp_path / "bad.toml"
    config.write_text(world.read_text().replace(str(world.parent / "nature.nc"), str(fake)))
    assert cli_main(["run", str(config), "--out", str(tmp_path / "r"), "--no-plots"]) == 2
    line = _error_line(capsys)
    assert str(fake) in line and "cannot be read as netCDF" in line
    assert cli_main(["obs", "inspect", str(fake)]) == 2
    line = _error_line(capsys)
    assert str(fake) in line and "not a readable netCDF/HDF5 file" in line


# ------------------------------------------------------------------ 4. obs inspect refuses


STATION_LINE = ("ACM00078861  17.1170  -61.7830   10.0    COOLIDGE FIELD (UA)"
                "            1947 1993  13896")


@pytest.mark.parametrize("kind", ["binary", "gridded", "garbage", "garbage-header"])
def test_obs_inspect_refuses_what_is_not_an_igra_file(world, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.dat"
    if kind == "binary":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "gridded":
        path = world.parent / "nature.nc"
    elif kind == "garbage":
        path.write_text("".join(f"{i} lorem ipsum, {i * 7};\n" for i in range(20)))
    else:
        path.write_text("# not a header\nnor a level line\n")
    assert cli_main(["obs", "inspect", str(path)]) == 2
    line = _error_line(capsys)
    assert f"{path}: not an IGRA v2 file (soundings, derived or station list)" in line


def test_obs_inspect_exits_non_zero_when_lines_were_skipped_unless_lenient(tmp_path,
                                                                            capsys):
    path = tmp_path / "igra2-station-list.txt"
    path.write_text(STATION_LINE + "\n" + STATION_LINE.replace("ACM00078861", "ACM0007886X")
                    .replace("17.1170", "17.x170") + "\n")
    assert cli_main(["obs", "inspect", str(path)]) == 1
    out = capsys.readouterr()
    assert "1 stations kept" in out.out and "1 line(s) could not be read" in out.err
    assert cli_main(["obs", "inspect", str(path), "--lenient"]) == 0
    good = tmp_path / "good.txt"
    good.write_text(STATION_LINE + "\n")
    assert cli_main(["obs", "inspect", str(good)]) == 0


# ------------------------------------------------------- 5. a failed start, then its retry


def test_a_run_failing_at_world_load_does_not_block_the_corrected_retry(world, tmp_path,
                                                                        capsys):
    missing = tmp_path / "missing.nc"
    config = tmp_path / "typo.toml"
    config.write_text(world.read_text().replace(str(world.parent / "nature.nc"),
                                                str(missing)))
    run_dir = tmp_path / "run"
    assert cli_main(["run", str(config), "--out", str(run_dir), "--no-plots"]) == 2
    assert str(missing) in _error_line(capsys)
    assert not (run_dir / "config.json").exists()  # no identity before the run started
    assert cli_main(["run", str(world), "--out", str(run_dir), "--no-plots"]) == 0
    assert (run_dir / "checkpoints" / "free" / "cycle_0002.pt").is_file()


def test_a_directory_without_a_complete_cycle_may_take_another_config(world, tmp_path):
    """A failed start of the earlier code left a config.json: it is replaced, not refused."""
    run_dir = tmp_path / "run"
    cfg = load_run_config(world)
    other = load_run_config(world, {"seed": 11})
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"config_hash": "0" * 64}))
    run_experiment(other, run_dir, plots=False)
    with pytest.raises(ValueError, match="another config"):  # now it has cycles: refused
        run_experiment(cfg, run_dir, plots=False)


# ------------------------------------------------------------- 6. resume with other threads


def test_resume_with_other_threads_warns_once_and_keeps_the_recorded_config(world, tmp_path,
                                                                           capsys):
    run_dir = tmp_path / "run"
    assert cli_main(["run", str(world), "--out", str(run_dir), "--no-plots"]) == 0
    recorded = (run_dir / "config.json").read_bytes()
    capsys.readouterr()
    assert cli_main(["resume", str(run_dir), "--no-plots"]) == 0
    assert "warning" not in capsys.readouterr().err  # the recorded threads: no warning
    assert cli_main(["resume", str(run_dir), "--threads", "2", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --threads 2 differs from the 1 recorded") == 1
    assert (run_dir / "config.json").read_bytes() == recorded


# ------------------------------------------------------------------- 7. atomic and durable


def test_atomic_writes_are_fsynced_file_and_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "x.bin"
    atomic_write_bytes(path, lambda tmp: tmp.write_bytes(b"data"))
    assert len(synced) == 1 and synced[0].endswith(".tmp")  # the file, before its rename
    synced.clear()
    atomic_write_bytes(path, lambda tmp: tmp.write_bytes(b"data"), sync_folder=True)
    assert len(synced) == 2 and synced[1] == str(tmp_path)


def test_a_resume_removes_only_temporaries_older_than_its_lock(world, tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_run_config(world)
    run_experiment(cfg, run_dir, plots=False)
    folder = run_dir / "checkpoints" / "free"
    stale = [folder / ".cycle_0002.pt.abc123.tmp", run_dir / ".metrics.jsonl.x1.tmp"]
    live = folder / ".cycle_0002.pt.live.tmp"  # another writer's, newer than the lock
    for p in (*stale, live):
        p.write_bytes(b"torn")
    hour = time.time() - 3600
    for p in stale:
        os.utime(p, (hour, hour))
    future = time.time() + 3600
    os.utime(live, (future, future))
    run_experiment(cfg, run_dir, resume=True, plots=False)
    assert not any(p.exists() for p in stale) and live.exists()


def test_the_nature_checkpoint_is_one_file(tmp_path):
    from diffda.emulators.nature.run import load_checkpoint, save_checkpoint
    from diffda.emulators.nature.shallow_water import SWState

    g = torch.Generator().manual_seed(0)
    spec = torch.complex(torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3,
                                                                           generator=g))
    state = SWState(spec, 3600.0, [spec * 2, spec * 3])
    path = tmp_path / "r.nc.checkpoint.safetensors"
    path.with_suffix(".json").write_text("{}")  # an earlier form's metadata
    save_checkpoint(path, state, {"n_done": 4}, torch.ones(2, 4, 2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    back, meta, pending = load_checkpoint(path)
    assert meta["n_done"] == 4 and back.seconds == 3600.0 and len(back.history) == 2
    torch.testing.assert_close(back.history[1], spec * 3)
    assert pending.shape == (2, 4, 2, 2)


def test_a_prior_plot_killed_while_written_leaves_no_half_file(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from diffda.emulators.prior import evaluation

    fig = plt.figure()

    def torn_savefig(target, **kwargs):
        Path(target).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(fig, "savefig", torn_savefig)
    path = tmp_path / "prior_zonal_spectra.png"
    with pytest.raises(KeyboardInterrupt):
        evaluation._save(fig, path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 8. pickled checkpoints


class NotATensor:
    """A custom class: pickling it stores a reference to code."""

    def __init__(self) -> None:
        self.value = 3


def test_a_pickled_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    from diffda.emulators.training import load_checkpoint

    path = tmp_path / "cycle_0001.pt"
    torch.save({"format": "diffda-cycle-checkpoint-v1", "obj": NotATensor()}, path)
    with pytest.raises(CheckpointError) as err:
        load_cycle(path, "0" * 64, {})
    assert str(path) in str(err.value) and "not a diffda cycle checkpoint" in str(err.value)
    assert "weights_only" not in str(err.value)
    with pytest.raises(WeightsError) as err:
        load_checkpoint(path, model=torch.nn.Linear(2, 2))
    assert str(path) in str(err.value) and "not a diffda checkpoint" in str(err.value)
    assert "weights_only" not in str(err.value)
    assert cycle_path(tmp_path, "free", 1).name == path.name
