"""Per-cycle checkpoints of a cycling run: written atomically, verified when read.

One file per (mode, cycle), ``RUN_DIR/checkpoints/<mode>/cycle_<k:04d>.pt``, holding only
tensors and plain containers (read back with ``torch.load(weights_only=True)``, no pickled
code):

- ``tensors``: ``analysis`` (member, var, lat, lon; physical units, scoring grid), and where
  the mode has them ``native`` (the state carried to the next cycle, e.g. the EnKF ensemble
  on the emulator grid), ``forecast`` (the forecast used as an observation), ``obs_*`` (the
  station observations used: values, lat, lon, variable index), ``generator_states`` (the
  initial states of the cycle's member generators, ``(member, state_bytes)`` uint8);
- ``meta``: JSON text with the format tag, mode, cycle, valid time, the config hash, the
  SHA-256 of the model weights and the cycle's metrics record;
- ``checksum``: SHA-256 over the tensors' bytes and the meta text.

A file is written to a temporary name, flushed to disk and renamed (``os.replace``, then the
folder is flushed), so a run killed during a write leaves the previous checkpoints intact and
at most a stray ``.tmp`` file, which :func:`complete_cycles` ignores and a resume deletes.
:func:`load_cycle` refuses, with a :class:`CheckpointError` that names the file and what
differs, a file that does not load (or holds pickled objects other than tensors and plain
containers), fails its checksum, or was written by another config or other model weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffda.core.io import atomic_write_bytes
from diffda.core.weights import NotPlainTorchFile, load_plain_torch_file
from torch import Tensor

FORMAT = "diffda-cycle-checkpoint-v1"
_NAME = re.compile(r"^cycle_(\d{4})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is corrupt, incomplete, or belongs to another config or other weights."""


@dataclass(frozen=True)
class CycleCheckpoint:
    """What one cycle left behind (see the module docstring)."""

    mode: str
    cycle: int
    time: str
    tensors: dict[str, Tensor]
    record: dict[str, Any]
    config_hash: str
    weights: dict[str, str]


def _checksum(tensors: Mapping[str, Tensor], meta: str) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cycle_path(run_dir: Path, mode: str, cycle: int) -> Path:
    return Path(run_dir) / "checkpoints" / mode / f"cycle_{cycle:04d}.pt"


def _dump(obj: dict[str, Any], path: Path) -> None:
    """Serialise ``obj`` to ``path`` (a module-level seam, so tests can inject failures)."""
    torch.save(obj, path)


def save_cycle(run_dir: Path, ckpt: CycleCheckpoint) -> Path:
    """Write ``ckpt`` atomically to :func:`cycle_path`; returns the path."""
    meta = json.dumps({
        "format": FORMAT, "mode": ckpt.mode, "cycle": ckpt.cycle, "time": ckpt.time,
        "config_hash": ckpt.config_hash, "weights": ckpt.weights, "record": ckpt.record,
    }, allow_nan=True)  # insertion order kept: the record reads back in its own order
    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt.tensors.items()}
    obj = {"format": FORMAT, "meta": meta, "tensors": tensors,
           "checksum": _checksum(tensors, meta)}
    path = cycle_path(run_dir, ckpt.mode, ckpt.cycle)
    return atomic_write_bytes(path, lambda tmp: _dump(obj, tmp), sync_folder=True)


def load_cycle(path: Path, config_hash: str, weights: Mapping[str, str]) -> CycleCheckpoint:
    """Read and verify one checkpoint against this run's config hash and weights hashes."""
    path = Path(path)
    try:
        obj = load_plain_torch_file(path, "cycle checkpoint")
    except NotPlainTorchFile as err:
        raise CheckpointError(
            f"{path}: corrupt checkpoint, cannot be read: not a diffda cycle checkpoint "
            f"({err.reason}); delete it (and later cycles) to recompute from the previous cycle"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cycle checkpoint (no format {FORMAT!r})")
    try:
        meta_text, tensors, checksum = obj["meta"], obj["tensors"], obj["checksum"]
        meta = json.loads(meta_text)
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt checkpoint ({err})") from None
    if _checksum(tensors, meta_text) != checksum:
        raise CheckpointError(f"{path}: corrupt checkpoint: checksum mismatch (the file was "
                              "altered after it was written)")
    if meta["config_hash"] != config_hash:
        raise CheckpointError(
            f"{path}: written by another config (hash {meta['config_hash'][:12]}..., this run "
            f"{config_hash[:12]}...); resume with the run's own config.json or start a new run"
        )
    for name, digest in weights.items():
        theirs = meta["weights"].get(name)
        if theirs != digest:
            raise CheckpointError(
                f"{path}: written with other {name} weights (sha256 "
                f"{str(theirs)[:12]}..., now {digest[:12]}...); the model files changed since "
                "the run started"
            )
    return CycleCheckpoint(
        mode=meta["mode"], cycle=int(meta["cycle"]), time=meta["time"], tensors=tensors,
        record=meta["record"], config_hash=meta["config_hash"], weights=meta["weights"],
    )


def complete_cycles(run_dir: Path, mode: str) -> list[int]:
    """The cycle numbers ``1..k`` of consecutive checkpoint files of ``mode`` (stray
    temporary files are ignored). Raises :class:`CheckpointError` if a cycle is missing
    before a later one (a hole means the directory was tampered with)."""
    folder = Path(run_dir) / "checkpoints" / mode
    if not folder.is_dir():
        return []
    found = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    expected = list(range(1, len(found) + 1))
    if found != expected:
        missing = sorted(set(range(1, max(found) + 1)) - set(found))
        raise CheckpointError(f"{folder}: cycles {missing} are missing before cycle "
                              f"{max(found)}; refusing to resume across a gap")
    return found
