"""Random generators derived from (seed, stream, cycle, member).

No library code touches the global random state. Every draw takes a generator made here,
so a member's numbers do not change when the ensemble size, the batch layout or the order
of calls changes. The derivation uses numpy's ``SeedSequence`` (a hash designed for this),
keyed by a stream name so that, e.g., observation noise and sampler noise never share
numbers.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _stream_key(stream: str) -> int:
    return zlib.crc32(stream.encode())


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit integer seed for ``(seed, stream, *keys)``; keys are e.g. (cycle, member)."""
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError(f"seed and keys must be non-negative, got seed={seed}, keys={keys}")
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(_stream_key(stream), *keys))
    lo, hi = ss.generate_state(2, dtype=np.uint32)
    return int((int(hi) << 32 | int(lo)) & (2**63 - 1))


def torch_generator(
    seed: int, stream: str, *keys: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``(seed, stream, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, stream, *keys))
    return g


def numpy_generator(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """A ``numpy.random.Generator`` seeded from ``(seed, stream, *keys)``."""
    return np.random.default_rng(derive_seed(seed, stream, *keys))


def member_generators(
    seed: int, stream: str, cycle: int, n_members: int, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per member for one cycle: ``[(seed, stream, cycle, m) for m]``."""
    return [torch_generator(seed, stream, cycle, m, device=device) for m in range(n_members)]


def randn_members(
    generators: list[torch.Generator],
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``(len(generators), *shape)`` standard normals, row ``m`` from ``generators[m]``."""
    return torch.stack(
        [torch.randn(shape, generator=g, dtype=dtype, device=device) for g in generators]
    )
