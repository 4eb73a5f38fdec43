"""The ``cycler`` command line: a static registry of thin commands.

Every command is a pair of functions in one module of :mod:`diffda.cycler.cli`:
``add_arguments(parser)`` declares the options and ``run(args) -> int`` parses nothing
more, calls one library function and prints. :data:`COMMANDS` names them directly (no
module paths in strings), so a reader and static tools can follow each command to its code;
:data:`GROUPS` holds the two-word commands (``cycler bench linear``, ``cycler train prior``,
``cycler evaluate emulator``). The CLI imports the library; nothing imports the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from diffda.core.lock import LockHeld
from diffda.cycler.cli import (
    analysis,
    cases,
    emulator,
    emulator_fit,
    experiment,
    linear,
    nature,
    obs,
    prior,
    run,
)


@dataclass(frozen=True)
class Command:
    """One command: its one-line help, its options and what it does."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "run": Command("run a cycling experiment from a TOML config",
                   run.add_run_arguments, run.run),
    "resume": Command("resume a run from its last complete cycle",
                      run.add_resume_arguments, run.resume),
    "cases": Command("an experiment of several cases (start times), resumable, in parallel",
                     cases.add_arguments, cases.run),
    "compare": Command("compare modes of runs or experiments: RMSE by lead, 95 % intervals",
                       cases.add_compare_arguments, cases.compare),
    "tune": Command("tune parameters (a grid) on an experiment's tuning cases",
                    cases.add_tune_arguments, cases.tune),
    "calibrate": Command("fit the forecast term's error model from the tuning cases' "
                         "innovations, iterated", cases.add_calibrate_arguments,
                         cases.calibrate),
    "sweep": Command("parallel runs over parameter values (dask)",
                     run.add_sweep_arguments, run.sweep),
    "experiment": Command("single-analysis experiments (sample-lr, sample-igra, ...)",
                          experiment.add_arguments, experiment.run),
    "linear": Command("the linear-Gaussian test bed (Kalman, EnKF, diffusion)",
                      linear.add_arguments, linear.run),
    "nature": Command("run the shallow-water nature run ('reanalysis')",
                      nature.add_arguments, nature.run),
    "subset": Command("cut a small truth window (+ background states) from a dataset",
                      nature.add_subset_arguments, nature.subset),
    "obs": Command("inspect and make observations (IGRA v2, synthetic)",
                   obs.add_arguments, obs.run),
}

GROUPS: dict[str, tuple[str, dict[str, Command]]] = {
    "bench": ("benchmarks: speed of the pieces on this machine", {
        "linear": Command("the linear test bed's steady run, per part",
                          linear.add_bench_arguments, linear.bench),
        "nature": Command("the shallow-water model's time step",
                          nature.add_bench_arguments, nature.bench),
        "operators": Command("the observation operators",
                             obs.add_bench_arguments, obs.bench),
        "emulator": Command("the emulator's forecast step",
                            emulator.add_bench_arguments, emulator.bench),
        "analysis": Command("one analysis (Algorithm 1) against its network cost",
                            analysis.add_bench_arguments, analysis.bench),
        "run": Command("a whole cycling experiment: seconds per mode and cycle, NFE, the "
                       "share outside the networks", run.add_bench_arguments, run.bench),
    }),
    "train": ("train a model from a TOML config (resumable)", {
        "emulator": Command("the SFNO emulator", emulator.add_train_arguments, emulator.train),
        "emulator-noise": Command("the emulator's stochastic term (noise modes)",
                                  emulator_fit.add_noise_arguments, emulator_fit.noise),
        "emulator-budget": Command("the emulator's global-mean budget correction",
                                   emulator_fit.add_budget_arguments, emulator_fit.budget),
        "emulator-combine": Command("combine emulator networks into one ensemble file",
                                    emulator_fit.add_combine_arguments, emulator_fit.combine),
        "emulator-adjust": Command("the emulator's climate adjustment",
                                   emulator_fit.add_adjust_arguments, emulator_fit.adjust),
        "prior": Command("the EDM diffusion prior", prior.add_train_arguments, prior.train),
    }),
    "evaluate": ("evaluate a trained model on held-out data", {
        "emulator": Command("the emulator: skill by lead, free-run climate",
                            emulator.add_evaluate_arguments, emulator.evaluate),
        "prior": Command("the prior: climate, spectra, super-resolution",
                         prior.add_evaluate_arguments, prior.evaluate),
    }),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += [f"  {name:<10} {help_} ({', '.join(targets)})"
              for name, (help_, targets) in GROUPS.items()]
    return argparse.ArgumentParser(
        prog="cycler",
        description="Cycling data assimilation with diffusion posterior sampling.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'cycler COMMAND --help' for options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _run(command: Command, prog: str, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=command.help)
    command.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(command.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, LockHeld) as err:
        # User errors (bad arguments, bad files, a busy run directory) end with a message,
        # not a traceback.
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:
        # A file the user named is of the wrong kind or cannot be used: the error names it.
        # Other OSErrors (no file named) are not the user's and keep their traceback.
        if err.filename is None:
            raise
        print(f"{prog}: error: {_describe_os_error(err)}", file=sys.stderr)
        return 2


#: What an OSError about a named file means to the person who named it.
_OS_ERRORS: dict[type[OSError], str] = {
    IsADirectoryError: "is a directory, expected a file",
    NotADirectoryError: "is not a directory (it, or a folder above it, is a file)",
    FileExistsError: "already exists",
    PermissionError: "permission denied",
}


def _describe_os_error(err: OSError) -> str:
    """``PATH: what is wrong`` for an OSError that names a file (the first one for a rename
    or link)."""
    what = next((text for kind, text in _OS_ERRORS.items() if isinstance(err, kind)),
                err.strerror or type(err).__name__)
    if isinstance(err, FileExistsError) and os.path.isfile(err.filename):
        what = "already exists and is a file, not a directory"
    if isinstance(err.errno, int) and err.errno < 0:  # the netCDF library's own codes
        what = f"not a readable netCDF/HDF5 file ({err.strerror})"
    return _one_line(f"{err.filename}: {what}")


def _one_line(text: str) -> str:
    """An error message on one line (nested messages may carry newlines)."""
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv else None
    if name in COMMANDS:
        return _run(COMMANDS[name], f"cycler {name}", argv[1:])
    if name in GROUPS:
        help_, targets = GROUPS[name]
        target = argv[1] if len(argv) > 1 else None
        if target not in targets:
            parser = argparse.ArgumentParser(prog=f"cycler {name}", description=help_)
            parser.add_argument("target", choices=sorted(targets))
            parser.parse_args(argv[1:2])
            return 2
        return _run(targets[target], f"cycler {name} {target}", argv[2:])
    parser = _top_parser()
    parser.add_argument("command", choices=sorted([*COMMANDS, *GROUPS]))
    parser.parse_args(argv[:1])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
