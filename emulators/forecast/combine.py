"""An emulator whose tendency is the mean of several independently trained networks.

Each trained SFNO has errors of its own beyond those the data impose: the same recipe with
another seed forecasts as well but falls into different free-run regime episodes (README,
"The emulator"). Averaging the 6-hour tendencies of networks trained with different seeds
(the "deep ensemble" of Lakshminarayanan et al. 2017, here used as one deterministic
model) cancels part of those idiosyncratic errors, at the cost of one network evaluation
per member and step:

    z(t + dt) = z(t) + s * (1/N) sum_n SFNO_n([z(t), f(t), static]).

The networks must share their shape, variables, grid, forcing and normalisation (the same
config trained on the same years: the normalisation is fitted on the data, not by the
training seed). Additions fitted to a trained emulator (noise modes, tendency correction,
budget law) belong to one network's errors and are not carried over: fit them again on the
combination (``cycler train emulator-noise``, ``emulator-budget``, ``emulator-adjust``).

``cycler train emulator-combine W1 W2 [W3 ...] --out OUT.safetensors``
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffda.core.weights import update_card
from diffda.emulators.forecast.fitting import FITTED_SECTIONS, base_record
from diffda.emulators.forecast.model import SFNOEmulator
from diffda.emulators.forecast.sfno import SFNOEnsemble

NORMALISATION = ("state_mean", "state_std", "tendency_std", "log_offset", "forcing_mean",
                 "forcing_std", "static")
"""Buffers that must agree between the combined emulators."""


def combine_emulators(emulators: Sequence[SFNOEmulator],
                      names: Sequence[str] | None = None) -> SFNOEmulator:
    """One emulator whose network is the :class:`~diffda.emulators.forecast.sfno.SFNOEnsemble` of
    the networks of ``emulators`` (each a single network), with the first's normalisation
    and forcing, and no fitted additions. ``names`` (e.g. their files) label errors."""
    if len(emulators) < 2:
        raise ValueError(f"combine needs at least two emulators, got {len(emulators)}")
    names = list(names) if names is not None else [f"emulator {i}" for i in range(len(emulators))]
    first = emulators[0]
    for name, emu in zip(names, emulators, strict=True):
        if isinstance(emu.net, SFNOEnsemble):
            raise ValueError(f"{name}: already a combination of {len(emu.net.members)} "
                             "networks; combine the single networks")
        if emu.net.config != first.net.config:
            raise ValueError(f"{name}: network {emu.net.config} differs from {names[0]}'s "
                             f"{first.net.config}")
        for key, want in (("variables", first.variables), ("grid", first.grid),
                          ("dt_hours", first.dt_hours), ("forcing_name", first.forcing_name)):
            if getattr(emu, key) != want:
                raise ValueError(f"{name}: {key} {getattr(emu, key)!r} differs from "
                                 f"{names[0]}'s {want!r}")
        for key in NORMALISATION:
            a, b = getattr(emu, key), getattr(first, key)
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
                raise ValueError(f"{name}: normalisation buffer {key} differs from "
                                 f"{names[0]}'s (trained on other data?)")
    net = SFNOEnsemble([emu.net for emu in emulators])
    return SFNOEmulator(
        net, variables=first.variables, grid=first.grid, state_mean=first.state_mean,
        state_std=first.state_std, tendency_std=first.tendency_std,
        log_offset=first.log_offset, forcing_mean=first.forcing_mean,
        forcing_std=first.forcing_std, static=first.static, forcing=first.forcing,
        forcing_name=first.forcing_name, dt_hours=first.dt_hours,
    ).eval()


def combine_weights(weights: Sequence[Path], out: Path, command: str) -> SFNOEmulator:
    """:func:`combine_emulators` of the emulators at ``weights``, written to ``out`` with the
    first card's record (less the fitted additions, :data:`FITTED_SECTIONS`) and a
    ``combination`` section: each member's file, seed and training record, the additions
    dropped and the ``command`` line. Refuses an ``out`` that would overwrite one of them."""
    if any(out.resolve() == Path(w).resolve() for w in weights):
        raise ValueError(f"--out {out} would overwrite one of the weights it combines")
    emulators = [SFNOEmulator.from_weights(w) for w in weights]
    combined = combine_emulators(emulators, [str(w) for w in weights])
    cards = [json.loads(Path(w).with_suffix(".json").read_text()) for w in weights]
    dropped = {str(w): [k for k in FITTED_SECTIONS if k in c]
               for w, c in zip(weights, cards, strict=True)}
    combined.export(out, **base_record(cards[0], combined, drop=FITTED_SECTIONS))
    update_card(out, combination={
        "members": [{"weights": str(w), "seed": c.get("training", {}).get("seed"),
                     "training": c.get("training")} for w, c in zip(weights, cards,
                                                                    strict=True)],
        "rule": "mean of the members' normalised tendencies",
        "fitted_additions_dropped": {w: d for w, d in dropped.items() if d},
        "command": command,
    })
    return combined
