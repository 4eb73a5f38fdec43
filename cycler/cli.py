"""The ``cycler`` command line. Thin: each command lives in the module that owns its science.

Two kinds of entries:

- :data:`COMMANDS`: name -> (module, help) or (module, help, function). The module exposes
  ``add_arguments(parser)`` and ``run(args) -> int``, or, where a function name is given
  (several commands in one module), ``add_<function>_arguments(parser)`` and
  ``<function>(args) -> int``.
- :data:`GROUPS`: ``cycler GROUP TARGET ...`` (``bench``, ``train``, ``evaluate``), where
  each target's module exposes ``add_<group>_arguments(parser)`` and ``<group>(args) -> int``.

A module is imported only when its command runs, so ``cycler --help`` is instant and a
broken optional piece cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, ...]] = {
    "linear": (
        "diffda.cycler.linear_cli", "the linear-Gaussian test bed (Kalman, EnKF, diffusion)"
    ),
    "nature": ("diffda.emulators.nature_cli", "run the shallow-water nature run ('reanalysis')"),
    "subset": ("diffda.emulators.nature_cli",
               "cut a small truth window (+ background states) from a dataset", "subset"),
    "obs": ("diffda.observations.cli", "inspect and make observations (IGRA v2, synthetic)"),
    "run": ("diffda.cycler.run_cli", "run a cycling experiment from a TOML config", "run"),
    "resume": ("diffda.cycler.run_cli", "resume a run from its last complete cycle", "resume"),
    "compare": ("diffda.cycler.run_cli", "compare runs: RMSE by lead time per mode", "compare"),
    "sweep": ("diffda.cycler.run_cli", "parallel runs over parameter values (dask)", "sweep"),
    "experiment": (
        "diffda.cycler.experiments_cli", "single-analysis experiments (sample-lr, ...)"
    ),
}

GROUPS: dict[str, tuple[str, dict[str, str]]] = {
    "bench": (
        "benchmarks: speed of the pieces on this machine",
        {
            "linear": "diffda.cycler.linear_cli",
            "nature": "diffda.emulators.nature_cli",
            "operators": "diffda.observations.cli",
            "emulator": "diffda.emulators.emulator_cli",
            "analysis": "diffda.cycler.sampler_cli",
        },
    ),
    "train": (
        "train a model from a TOML config (resumable)",
        {
            "emulator": "diffda.emulators.emulator_cli",
            "emulator-noise": "diffda.emulators.stochastic",
            "emulator-budget": "diffda.emulators.budget",
            "emulator-combine": "diffda.emulators.combine",
            "emulator-adjust": "diffda.emulators.adjustment",
            "prior": "diffda.emulators.prior_cli",
        },
    ),
    "evaluate": (
        "evaluate a trained model on held-out data",
        {
            "emulator": "diffda.emulators.emulator_cli",
            "prior": "diffda.emulators.prior_cli",
        },
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {entry[1]}" for name, entry in COMMANDS.items()]
    lines += [
        f"  {name:<10} {help_} ({', '.join(targets)})" for name, (help_, targets) in GROUPS.items()
    ]
    return argparse.ArgumentParser(
        prog="cycler",
        description="Cycling data assimilation with diffusion posterior sampling.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'cycler COMMAND --help' for options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _run(
    module_name: str, prog: str, description: str, add: str, call: str, rest: list[str]
) -> int:
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    getattr(module, add)(parser)
    args = parser.parse_args(rest)
    try:
        return int(getattr(module, call)(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # User errors (bad arguments, bad files) end with a message, not a traceback.
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv else None
    if name in COMMANDS:
        module_name, help_, *function = COMMANDS[name]
        add, call = (f"add_{function[0]}_arguments", function[0]) if function else (
            "add_arguments", "run")
        return _run(module_name, f"cycler {name}", help_, add, call, argv[1:])
    if name in GROUPS:
        help_, targets = GROUPS[name]
        target = argv[1] if len(argv) > 1 else None
        if target not in targets:
            parser = argparse.ArgumentParser(prog=f"cycler {name}", description=help_)
            parser.add_argument("target", choices=sorted(targets))
            parser.parse_args(argv[1:2])
            return 2
        return _run(
            targets[target], f"cycler {name} {target}", help_,
            f"add_{name}_arguments", name, argv[2:],
        )
    parser = _top_parser()
    parser.add_argument("command", choices=sorted([*COMMANDS, *GROUPS]))
    parser.parse_args(argv[:1])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
