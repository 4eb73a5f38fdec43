"""Model weights for users: ``NAME.safetensors`` (tensors only, no code) and the card
``NAME.json`` (variables, grid, normalisation, command, data, scores, parameter count).

:func:`export_weights` writes both atomically; :func:`load_weights` reads them back and
refuses, with a :class:`WeightsError` naming the file, anything that is not such a weights
file; :func:`update_card` merges fields into a card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffda.core.io import atomic_write_bytes, atomic_write_text
from torch import Tensor

WEIGHTS_FORMAT = "diffda-weights-v1"



class WeightsError(ValueError):
    """A file given as weights (or a checkpoint) is not one; the message names the file."""


def _card_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def export_weights(
    path: str | Path, state_dict: Mapping[str, Tensor], card: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``path`` (``.safetensors``: tensors only, no code) and its card ``path.json``.

    The card is a JSON object describing the weights (variables, grid, normalisation,
    training command and data, scores, ...); ``format`` is added here, and
    ``n_parameters`` (the number of stored tensor elements, complex ones counted once)
    unless the card gives it. Both files are written atomically.
    Returns ``(weights_path, card_path)``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: weights are written as .safetensors")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    n_stored = sum(v.numel() for v in tensors.values() if v.is_floating_point() or v.is_complex())
    full_card = {
        "format": WEIGHTS_FORMAT,
        "n_parameters": int(n_stored),  # all stored numbers unless the card says otherwise
        **dict(card),
    }
    meta = {"format": WEIGHTS_FORMAT}
    atomic_write_bytes(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    card_path = atomic_write_text(_card_path(path), json.dumps(full_card, indent=2) + "\n")
    return path, card_path


def load_weights(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read weights written by :func:`export_weights`: ``(state_dict, card)``.

    Refuses with :class:`WeightsError` (naming the file) anything else: a file that is not
    safetensors (a pickle, a checkpoint, a netCDF file, text), a safetensors file without
    the diffda format tag, or weights whose JSON card is missing or not a diffda card.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - any failure means "not a weights file"
        raise WeightsError(
            f"{path}: not a safetensors weights file ({type(err).__name__}: {err}); "
            "weights are written by 'cycler train' (NAME.safetensors + NAME.json)"
        ) from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path}: safetensors file without the {WEIGHTS_FORMAT!r} tag")
    card_path = _card_path(path)
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: its card {card_path} is missing") from None
    except json.JSONDecodeError as err:
        raise WeightsError(f"{card_path}: card is not valid JSON ({err})") from None
    if not isinstance(card, dict) or card.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{card_path}: not a diffda weights card")
    return tensors, card


def update_card(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the JSON card of weights ``path`` (atomically); returns it."""
    card_path = _card_path(Path(path))
    card = json.loads(card_path.read_text())
    card.update(fields)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    return card
