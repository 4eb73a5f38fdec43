"""Model weights for users: ``NAME.safetensors`` (tensors only, no code) and the card
``NAME.json`` (variables, grid, normalisation, command, data, scores, parameter count, and
``sha256``: the SHA-256 of the ``.safetensors`` bytes).

:func:`export_weights` writes both atomically; :func:`load_weights` reads them back and
refuses, with a :class:`WeightsError` naming the file, anything that is not such a weights
file, and weights whose bytes differ from the ``sha256`` of their card (a damaged or
replaced file); :func:`update_card` merges fields into a card. A card without ``sha256``
(written before it was recorded) loads with a :class:`UnverifiedWeightsWarning`: the file
cannot be checked, and :func:`record_sha256` adds it.

:func:`load_plain_torch_file` reads a torch file (checkpoint) holding only tensors and
plain containers, and refuses anything else with our own message (never torch's advice to
load unsafely).
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffda.core.io import atomic_write_bytes, atomic_write_text, file_sha256
from torch import Tensor

WEIGHTS_FORMAT = "diffda-weights-v1"


class WeightsError(ValueError):
    """A file given as weights (or a checkpoint) is not one; the message names the file."""


class UnverifiedWeightsWarning(UserWarning):
    """Weights whose card records no ``sha256``: loaded, but not checked."""


def _card_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def export_weights(
    path: str | Path, state_dict: Mapping[str, Tensor], card: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``path`` (``.safetensors``: tensors only, no code) and its card ``path.json``.

    The card is a JSON object describing the weights (variables, grid, normalisation,
    training command and data, scores, ...); ``format`` is added here, and
    ``n_parameters`` (the number of stored tensor elements, complex ones counted once)
    unless the card gives it, and ``sha256`` of the written file. Both files are written
    atomically (weights first: a card never names bytes that are not on disk).
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
    atomic_write_bytes(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta),
                       sync_folder=True)
    full_card["sha256"] = file_sha256(path)
    card_path = atomic_write_text(_card_path(path), json.dumps(full_card, indent=2) + "\n",
                                  sync_folder=True)
    return path, card_path


def load_weights(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read weights written by :func:`export_weights`: ``(state_dict, card)``.

    Refuses with :class:`WeightsError` (naming the file) anything else: a file that is not
    safetensors (a pickle, a checkpoint, a netCDF file, text), a safetensors file without
    the diffda format tag, weights whose JSON card is missing or not a diffda card, and
    weights whose SHA-256 differs from the card's ``sha256`` (the message gives both).
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
    check_sha256(path, card)
    return tensors, card


def check_sha256(path: str | Path, card: Mapping[str, Any]) -> None:
    """Refuse (:class:`WeightsError`) weights ``path`` whose bytes do not hash to the card's
    ``sha256``; warn (:class:`UnverifiedWeightsWarning`) if the card has none."""
    path = Path(path)
    want = card.get("sha256")
    if want is None:
        warnings.warn(
            f"{path}: its card records no sha256, so the file cannot be checked for damage; "
            f"add it with diffda.core.weights.record_sha256({str(path)!r}) if the file is "
            "known to be good", UnverifiedWeightsWarning, stacklevel=3)
        return
    got = file_sha256(path)
    if got != want:
        raise WeightsError(
            f"{path}: damaged or replaced weights: sha256 {got}, its card "
            f"{_card_path(path).name} records {want}; restore the file (or retrain)")


def record_sha256(path: str | Path) -> dict[str, Any]:
    """Write the SHA-256 of weights ``path`` into its card (cards written before it was
    recorded); returns the card."""
    return update_card(path, sha256=file_sha256(path))


class NotPlainTorchFile(WeightsError):
    """A file :func:`load_plain_torch_file` refused; ``reason`` says why (no path)."""

    def __init__(self, path: Path, what: str, reason: str) -> None:
        super().__init__(f"{path}: not a diffda {what}: {reason}")
        self.path, self.reason = path, reason


def load_plain_torch_file(path: str | Path, what: str,
                          map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: a file of tensors and plain containers.

    Anything else is refused with :class:`NotPlainTorchFile` (a :class:`WeightsError`) that
    names the file and says it is not a diffda ``what`` (e.g. ``"checkpoint"``): a file
    holding pickled objects of other classes (torch's message, which suggests unsafe
    loading, is not passed on), or a file torch cannot read at all.
    """
    from safetensors import SafetensorError  # torch.load hands .safetensors files to it

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise NotPlainTorchFile(
            path, what, "it holds Python objects other than tensors and plain containers, or "
            "is not a torch file at all; such a file is never loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError,
            AttributeError, SafetensorError) as err:
        detail = "" if "weights_only" in str(err) else f": {type(err).__name__}: {err}"
        raise NotPlainTorchFile(path, what, f"torch cannot read it{detail}") from None


def update_card(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the JSON card of weights ``path`` (atomically); returns it."""
    card_path = _card_path(Path(path))
    card = json.loads(card_path.read_text())
    card.update(fields)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n", sync_folder=True)
    return card
