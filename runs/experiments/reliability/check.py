"""Reliability checks of issue 22 on the tiny world of tests/test_driver.py (a minute or two).

    OMP_NUM_THREADS=1 python runs/experiments/reliability/check.py [--work DIR] [--seed 0]

Every case runs the real command line in a subprocess (``python -m diffda.cycler.cli.main``)
and is killed with SIGKILL where a kill is the case. Printed: a markdown table of case,
message (the last line of stderr, work folder shown as ``$W``), exit code and the check
that must hold; the script exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-m", "diffda.cycler.cli.main"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MODES = ("precomputed", "enkf", "free")
ROWS: list[tuple[str, str, str, str, bool]] = []


def tiny_world(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("driver_helpers",
                                                  ROOT / "tests" / "test_driver.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers.tiny_world(folder, modes=MODES)


def cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def last_line(text: str, work: Path) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    line = line.replace(str(work), "$W")
    return line if len(line) <= 170 else line[:167] + "..."


def row(case: str, proc: subprocess.CompletedProcess | None, work: Path, check: str,
        ok: bool, message: str | None = None) -> None:
    msg = message if message is not None else last_line(proc.stderr, work) if proc else ""
    code = str(proc.returncode) if proc is not None else "-"
    ROWS.append((case, msg, code, check, ok))
    print(f"[{'ok' if ok else 'FAIL'}] {case}: exit {code}: {msg}", flush=True)


def same_run(a: Path, b: Path) -> bool:
    if (a / "metrics.jsonl").read_bytes() != (b / "metrics.jsonl").read_bytes():
        return False
    import numpy as np
    import xarray as xr

    for mode in MODES:
        with xr.open_dataset(a / "analyses" / f"{mode}.nc") as x, \
                xr.open_dataset(b / "analyses" / f"{mode}.nc") as y:
            if any(not np.array_equal(x[v].values, y[v].values) for v in x.data_vars):
                return False
    return True


def n_checkpoints(run_dir: Path) -> int:
    return len(list((run_dir / "checkpoints").glob("*/cycle_*.pt")))


def kills(world: Path, work: Path, ref: Path, seconds: float, rng: random.Random) -> None:
    """SIGKILL a run at 5 random times, then resume (or rerun, if killed before it started)."""
    for i in range(5):
        run_dir = work / f"kill{i}"
        at = rng.uniform(0.3, 1.0) * seconds
        proc = subprocess.Popen([*CLI, "run", str(world), "--out", str(run_dir), "--no-plots"],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(at)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = n_checkpoints(run_dir)
        started = (run_dir / "config.json").is_file()
        again = cli("resume", run_dir, "--no-plots") if started else \
            cli("run", world, "--out", run_dir, "--no-plots")
        how = "resume" if started else "run again (killed before the world was loaded)"
        row(f"SIGKILL at {at:.1f} s ({done} checkpoints), then {how}", again, work,
            "exit 0, metrics and analyses identical to an uninterrupted run",
            again.returncode == 0 and same_run(ref, run_dir),
            message=last_line(again.stderr, work) or "(no message)")


def kill_during_write(world: Path, work: Path, ref: Path) -> None:
    """SIGKILL inside the second enkf checkpoint's write (half a file under the temporary
    name), then resume."""
    run_dir = work / "torn"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from diffda.cycler.cycling import checkpoint
        real = checkpoint._dump
        def torn(obj, path):
            if "cycle_0002" in path.name and "/enkf/" in str(path):
                Path(path).write_bytes(b"PK\\x03\\x04 half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
            real(obj, path)
        checkpoint._dump = torn
        from diffda.cycler.cli.main import main
        sys.exit(main(["run", {str(world)!r}, "--out", {str(run_dir)!r}, "--no-plots"]))
    """)
    killed = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                            text=True, timeout=300)
    stray = sorted(p.name for p in (run_dir / "checkpoints" / "enkf").glob("*.tmp"))
    final = (run_dir / "checkpoints" / "enkf" / "cycle_0002.pt").exists()
    again = cli("resume", run_dir, "--no-plots")
    left = list(run_dir.rglob("*.tmp"))
    row(f"SIGKILL during a checkpoint write (exit {killed.returncode}; left {stray}), "
        "then resume", again, work,
        "no torn final file; resume exit 0, identical; temporary removed",
        not final and stray != [] and again.returncode == 0 and same_run(ref, run_dir)
        and not left, message=last_line(again.stderr, work) or "(no message)")


def waiting(args: list[str], ready: Path) -> subprocess.Popen:
    """A command line started now (imports done) that runs ``args`` once ``ready`` exists,
    and prints how long its own command took."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from diffda.cycler.cli.main import main
        ready = Path({str(ready)!r})
        for _ in range(3000):
            if ready.exists():
                break
            time.sleep(0.02)
        tic = time.perf_counter()
        rc = main({[str(a) for a in args]!r})
        print(f"took {{time.perf_counter() - tic:.2f}} s")
        sys.exit(rc)
    """)
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def concurrent(world: Path, work: Path) -> None:
    """A second run and a resume of a directory that a run is computing (started once the
    first has written its config.json, i.e. loaded its world)."""
    run_dir = work / "busy"
    ready = run_dir / "config.json"
    second = waiting(["run", world, "--out", run_dir, "--no-plots"], ready)
    resume = waiting(["resume", run_dir, "--no-plots"], ready)
    first = subprocess.Popen([*CLI, "run", str(world), "--out", str(run_dir), "--no-plots"],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    for name, proc in (("second 'cycler run' into the same --out", second),
                       ("'cycler resume' of the directory", resume)):
        out, err = proc.communicate(timeout=300)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        row(f"{name} while a run computes it ({out.strip()})", result, work,
            "exit 2 at once, names pid, host, start",
            proc.returncode == 2 and "is in use by process" in err and " since " in err)
    first.wait(timeout=300)
    row("the first run, after both were refused", None, work, "exit 0",
        first.returncode == 0 and n_checkpoints(run_dir) == 6,
        message=f"finished, {n_checkpoints(run_dir)} checkpoints")
    ROWS[-1] = (*ROWS[-1][:2], str(first.returncode), *ROWS[-1][3:])
    stale = work / "stale"
    shutil.copytree(run_dir, stale)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (stale / ".lock").write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename,
                                             "started": "2000-01-01T00:00:00Z"}))
    again = cli("resume", stale, "--no-plots")
    took_over = "took over the lock" in again.stderr
    row("resume with a stale lock of a dead process", again, work,
        "exit 0, says it took the lock over", again.returncode == 0 and took_over,
        message=next((last_line(ln, work) for ln in again.stderr.splitlines()
                      if "took over" in ln), last_line(again.stderr, work)))


def damaged_weights(world: Path, work: Path) -> None:
    folder = work / "damaged"
    shutil.copytree(world.parent, folder)
    prior = folder / "prior.safetensors"
    raw = bytearray(prior.read_bytes())
    raw[-5] ^= 0x10  # one bit of the tensor data
    prior.write_bytes(bytes(raw))
    config = folder / "tiny.toml"
    config.write_text(world.read_text().replace(str(world.parent), str(folder)))
    proc = cli("run", config, "--out", work / "run-damaged", "--no-plots")
    row("one bit flipped in the prior's tensor data, fresh run", proc, work,
        "exit 2, names the file and both sha256",
        proc.returncode == 2 and "prior.safetensors" in proc.stderr
        and proc.stderr.count("sha256") >= 1)
    shipped = ROOT / "emulators" / "weights" / "prior.safetensors"
    copy = work / "shipped" / "prior.safetensors"
    copy.parent.mkdir()
    shutil.copy(shipped, copy)
    shutil.copy(shipped.with_suffix(".json"), copy.with_suffix(".json"))
    raw = bytearray(copy.read_bytes())
    raw[-1] ^= 0x01
    copy.write_bytes(bytes(raw))
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from diffda.emulators.prior.model import "
         "DiffusionPrior; DiffusionPrior.load(sys.argv[1])", str(copy)],
        env=ENV, capture_output=True, text=True)
    row("one bit flipped in a copy of the shipped prior, loaded", probe, work,
        "WeightsError naming the file and both sha256",
        probe.returncode != 0 and "WeightsError" in probe.stderr
        and "damaged or replaced" in probe.stderr)


def bad_inputs(world: Path, work: Path, ref: Path) -> None:
    a_file = work / "a_file"
    a_file.write_text("x")
    fake_hdf = work / "fake_hdf5.nc"
    fake_hdf.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 64)
    fake_cdf = work / "fake_cdf.nc"
    fake_cdf.write_bytes(b"CDF\x01" + b"\x00garbage" * 64)
    rand = work / "random.bin"
    rand.write_bytes(random.Random(1).randbytes(3000))
    garbage = work / "garbage.txt"
    garbage.write_text("".join(f"{i} lorem ipsum, {i * 7};\n" for i in range(20)))
    good = ("ACM00078861  17.1170  -61.7830   10.0    COOLIDGE FIELD (UA)"
            "            1947 1993  13896")
    one_bad = work / "list-one-bad.txt"
    one_bad.write_text(good + "\n" + good.replace("17.1170", "17.x170") + "\n")

    def with_data(path: Path, name: str) -> Path:
        config = work / name
        config.write_text(world.read_text().replace(str(world.parent / "nature.nc"),
                                                    str(path)))
        return config

    cases = [
        ("a directory as the config", ["run", world.parent, "--out", work / "r1"], 2),
        ("--out is a file", ["run", world, "--out", a_file, "--no-plots"], 2),
        ("--out below a file", ["run", world, "--out", a_file / "run", "--no-plots"], 2),
        ("data: a fake HDF5 header", ["run", with_data(fake_hdf, "hdf.toml"), "--out",
                                      work / "r2", "--no-plots"], 2),
        ("data: a fake netCDF-3 header", ["run", with_data(fake_cdf, "cdf.toml"), "--out",
                                          work / "r3", "--no-plots"], 2),
        ("obs inspect: random binary", ["obs", "inspect", rand], 2),
        ("obs inspect: a gridded netCDF", ["obs", "inspect", world.parent / "nature.nc"], 2),
        ("obs inspect: garbage lines", ["obs", "inspect", garbage], 2),
        ("obs inspect: a fake HDF5 file", ["obs", "inspect", fake_hdf], 2),
        ("obs inspect: station list with one bad line", ["obs", "inspect", one_bad], 1),
        ("  the same with --lenient", ["obs", "inspect", one_bad, "--lenient"], 0),
    ]
    for case, args, want in cases:
        proc = cli(*args)
        one_line = want == 0 or len(proc.stderr.strip().splitlines()) == 1
        row(case, proc, work, f"exit {want}, one line naming the file",
            proc.returncode == want and one_line and "Traceback" not in proc.stderr,
            message=last_line(proc.stderr, work) if want else "(table printed, no error)")
    # a failed start, then the corrected config into the same --out
    retry = work / "retry"
    failed = cli("run", with_data(work / "missing.nc", "typo.toml"), "--out", retry,
                 "--no-plots")
    row("run failing at world load (missing data file)", failed, work,
        "exit 2, no config.json left", failed.returncode == 2
        and not (retry / "config.json").exists())
    fixed = cli("run", world, "--out", retry, "--no-plots")
    row("  then the corrected config into the same --out", fixed, work, "exit 0",
        fixed.returncode == 0, message="(finished)")
    # resume with other threads
    recorded = (retry / "config.json").read_bytes()
    other = cli("resume", retry, "--threads", "2", "--no-plots")
    warning = [ln for ln in other.stderr.splitlines() if "warning" in ln]
    row("resume --threads 2 of a run recorded with 1", other, work,
        "exit 0, one warning, config.json unchanged",
        other.returncode == 0 and len(warning) == 1
        and (retry / "config.json").read_bytes() == recorded,
        message=last_line(warning[0], work) if warning else "(no warning)")
    # a checkpoint holding a pickle of a custom class
    pickled = work / "pickled"
    shutil.copytree(ref, pickled)
    target = pickled / "checkpoints" / "enkf" / "cycle_0001.pt"
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        class Payload:  # any class of the writer's: unpickling it would run its code
            pass
        torch.save({{"format": "diffda-cycle-checkpoint-v1", "obj": Payload()}},
                   {str(target)!r})
        """)], env=ENV, check=True)
    proc = cli("resume", pickled, "--no-plots")
    row("a cycle checkpoint holding a pickled object", proc, work,
        "exit 2, 'not a diffda cycle checkpoint', no 'weights_only'",
        proc.returncode == 2 and "not a diffda cycle checkpoint" in proc.stderr
        and "weights_only" not in proc.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="reliability-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    world = tiny_world(work / "world")
    ref = work / "reference"
    tic = time.perf_counter()
    proc = cli("run", world, "--out", ref, "--no-plots")
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        print(proc.stderr)
        return 1
    print(f"reference run: {seconds:.1f} s ({n_checkpoints(ref)} checkpoints)", flush=True)
    kills(world, work, ref, seconds, rng)
    kill_during_write(world, work, ref)
    concurrent(world, work)
    damaged_weights(world, work)
    bad_inputs(world, work, ref)
    print("\n| case | message (stderr, last line) | exit | must hold | |")
    print("|---|---|---|---|---|")
    for case, msg, code, check, ok in ROWS:
        msg = msg.replace("|", "\\|")
        print(f"| {case} | `{msg}` | {code} | {check} | {'ok' if ok else 'FAIL'} |")
    failed = sum(not r[-1] for r in ROWS)
    print(f"\n{len(ROWS) - failed} of {len(ROWS)} checks hold; work folder {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
