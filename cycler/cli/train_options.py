"""What ``cycler train emulator`` and ``cycler train prior`` share: options and the run.

:func:`add_train_arguments` declares a config file, the output folder (default
``outputs/<config name>``), ``--resume`` and the options of :func:`add_run_arguments` that
override a config's ``[train]`` table for one run (:func:`override_train` applies them);
:func:`train_from_arguments` loads the config and runs a model's training function,
single-process or under ``torchrun``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffda.core.config import load_config, parse_overrides
from diffda.emulators.training import cleanup_distributed, init_distributed

C = TypeVar("C")  # a config with a ``train`` table


def add_train_arguments(parser: argparse.ArgumentParser, example: str, out_help: str) -> None:
    """The config file (help: ``example``), ``--out`` (help: ``out_help``), ``--resume`` and
    :func:`add_run_arguments`."""
    parser.add_argument("config", type=Path, help=f"TOML config, e.g. {example}")
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt if it exists")
    add_run_arguments(parser)


def train_from_arguments(
    args: argparse.Namespace, config_type: type[C], train: Callable[..., tuple[Any, dict]],
    target: str,
) -> tuple[bool, Path, dict[str, Any]]:
    """Load ``args.config`` as ``config_type`` (with ``--set`` and the run options), then
    ``train(cfg, out, resume=, ctx=, command=)`` with ``out`` = ``--out`` or
    ``outputs/<config name>``, in the process group ``torchrun`` describes (if any).
    Returns whether this is the main process, ``out`` and the run's summary."""
    cfg = override_train(
        load_config(config_type, args.config, parse_overrides(args.overrides)), args)
    out = args.out or Path("outputs") / Path(args.config).stem
    torch.set_num_threads(cfg.train.threads)
    ctx = init_distributed(cfg.train.device)
    try:
        _, summary = train(
            cfg, out, resume=args.resume, ctx=ctx,
            command=f"cycler train {target} " + " ".join(shlex.quote(a) for a in sys.argv[3:]),
        )
    finally:
        cleanup_distributed()
    return ctx.is_main, out, summary


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cycler train emulator|prior`` that override a config's ``[train]``
    table for this run: the wall-time limit, the machine's thread count (neither is part of
    the recipe; threads change the weights only through rounding) and the weights to start
    from (chaining the stages of a recipe in another folder). Applied by
    :func:`override_train`."""
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (with a checkpoint and partial weights) after this much wall "
                             "time; overrides train.max_minutes; continue with --resume")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; overrides train.threads (the machine's "
                             "choice, not the recipe's)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from these weights; overrides train.init_from")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config value (TOML syntax), e.g. --set train.steps=2000 "
                             "--set seed=1; repeatable: a recipe's stages as overrides of one file")


def override_train(cfg: C, args: argparse.Namespace) -> C:
    """``cfg`` with the ``[train]`` fields that :func:`add_run_arguments` set replaced (the
    table's own checks run again, so a bad value names its key)."""
    overrides = {"max_minutes": args.max_minutes, "threads": args.threads,
                 "init_from": None if args.init_from is None else str(args.init_from)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))
