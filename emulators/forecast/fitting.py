"""Additions fitted to trained emulator weights: what such a fit reads and what it writes.

The noise modes (:mod:`~diffda.emulators.forecast.stochastic`), the global-mean budget
(:mod:`~diffda.emulators.forecast.budget`) and the climate adjustment
(:mod:`~diffda.emulators.forecast.adjustment`) start from trained weights and the years of
the nature run they are fitted on (:func:`load_for_fit`), and write a copy of the weights
with the addition and its record in the card (:func:`export_fitted`); a combination of
networks (:mod:`~diffda.emulators.forecast.combine`) drops them (:data:`FITTED_SECTIONS`,
:func:`base_record`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffda.core.weights import update_card
from diffda.emulators.forecast.data import CoarseStates, load_coarse_states
from diffda.emulators.forecast.model import SFNOEmulator

FITTED_SECTIONS = ("stochastic", "adjustment", "global_budget")
"""Card sections of the additions fitted to trained weights (:func:`export_fitted`)."""


def load_for_fit(weights: Path, data: Sequence[Path], years: Sequence[int] | None, out: Path
                 ) -> tuple[SFNOEmulator, dict[str, Any], list[int], CoarseStates]:
    """The emulator at ``weights``, its card, the years to fit on (``years`` or the card's
    ``train_years``) and their data from the stores ``data``, for a fit of an addition to
    trained weights whose copy goes to ``out``. Refuses an ``out`` that would overwrite the
    weights."""
    if out.resolve() == Path(weights).resolve():
        raise ValueError(f"--out {out} would overwrite the weights it starts from")
    emulator = SFNOEmulator.from_weights(weights)
    card = json.loads(Path(weights).with_suffix(".json").read_text())
    years = years or card.get("data", {}).get("train_years")
    if not years:
        raise ValueError(f"{weights}: the card names no train_years; pass --years")
    states = load_coarse_states(data, emulator.grid, emulator.variables, years)
    return emulator, card, list(years), states


def base_record(card: dict[str, Any], emulator: SFNOEmulator,
                drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of a weights ``card`` that a derived file carries over: everything but the
    model description (:meth:`SFNOEmulator.card`), the format, the scores (of the base
    model) and the sections in ``drop``."""
    skip = {*emulator.card(), "format", "scores", *drop}
    return {k: v for k, v in card.items() if k not in skip}


def export_fitted(emulator: SFNOEmulator, card: dict[str, Any], *, out: Path, weights: Path,
                  data: Sequence[Path], years: list[int], section: str, info: dict[str, Any],
                  command: str) -> None:
    """Write the emulator with its fitted addition to ``out``: the base card's training
    record is kept, its scores (of the base model) dropped, and ``info`` recorded under
    ``section`` with the data, the base weights and the ``command`` line. A fit that
    continues an earlier one of the same section (e.g. more adjustment iterations from an
    adjusted file) keeps the earlier record under ``previous``, so the card holds the whole
    chain."""
    emulator.export(out, **base_record(card, emulator))
    earlier = {"previous": card[section]} if section in card else {}
    update_card(out, **{section: {
        **info, "fitted_on": {"path": [str(d) for d in data], "years": years},
        "base_weights": str(weights), "command": command, **earlier}})
