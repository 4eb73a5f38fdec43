"""The streaming training-data loader: seeded random batches of normalised windows.

:class:`StateBatches` reads ``(batch, window, var, lat, lon)`` windows from a canonical
store without loading it whole, sharded by ``(rank, world_size)``, normalised with a
:class:`~diffda.emulators.dataio.Climatology`; each batch is a :class:`Batch`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cftime
import numpy as np
import torch
import xarray as xr
from diffda.core.rng import numpy_generator
from diffda.emulators.dataio import Climatology, open_dataset
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """``state``: ``(batch, window, var, lat, lon)`` normalised float32; ``times``: per
    sample, the ``window`` cftime times; ``index``: the first time index of each sample."""

    state: Tensor
    times: list[list[cftime.datetime]]
    index: np.ndarray


class StateBatches:
    """Seeded random batches of normalised windows from a (large) canonical store.

    ``source``: a path or an opened dataset (lazy, dask). Samples are windows of ``window``
    consecutive times starting at indices ``start .. stop - window`` (``time_range`` selects
    a part, e.g. the training years). Each epoch draws a permutation of the start indices
    from ``numpy_generator(seed, "batches", epoch)``, keeps every ``world_size``-th from
    ``rank`` (disjoint shards), and yields ``len(self)`` batches; only the times a batch needs
    are read (one dask computation per batch), never the whole store.
    """

    def __init__(self, source: str | os.PathLike | xr.Dataset, variables: Sequence[str],
                 climatology: Climatology, *, batch_size: int, window: int = 1, seed: int = 0,
                 rank: int = 0, world_size: int = 1, time_range: tuple[int, int] | None = None,
                 drop_last: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size = {world_size})")
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size = {batch_size} and window = {window} must be >= 1")
        self.ds = open_dataset(source) if not isinstance(source, xr.Dataset) else source
        missing = [v for v in variables if v not in self.ds]
        if missing:
            raise KeyError(f"variables {missing} not in the store (has "
                           f"{sorted(map(str, self.ds.data_vars))})")
        self.variables = list(variables)
        self.climatology = climatology
        self.batch_size, self.window, self.seed = batch_size, window, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        start, stop = time_range or (0, self.ds.sizes["time"])
        if stop - start < window:
            raise ValueError(f"time range {start}..{stop} is shorter than the window {window}")
        self.starts = np.arange(start, stop - window + 1)
        self.epoch = 0

    def shard(self, epoch: int) -> np.ndarray:
        """Start indices of this rank for ``epoch`` (a seeded permutation, then strided)."""
        perm = numpy_generator(self.seed, "batches", epoch).permutation(self.starts)
        n = len(perm) // self.world_size * self.world_size  # equal shards
        return perm[:n][self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.starts) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def read(self, starts: np.ndarray) -> Batch:
        """The batch of windows starting at ``starts`` (one lazy read of the needed times)."""
        idx = (np.asarray(starts)[:, None] + np.arange(self.window)[None]).ravel()
        uniq, inv = np.unique(idx, return_inverse=True)
        sub = self.ds[self.variables].isel(time=uniq).compute()
        arr = np.stack([sub[v].values for v in self.variables], 1)  # (u, var, lat, lon)
        x = torch.from_numpy(arr[inv].astype(np.float32))
        x = x.reshape(len(starts), self.window, *x.shape[1:])
        x = self.climatology.normalise(x, self.variables, dim=2)
        tv = sub["time"].values
        times = [list(tv[inv.reshape(len(starts), self.window)[b]]) for b in range(len(starts))]
        return Batch(x, times, np.asarray(starts))

    def __iter__(self) -> Iterator[Batch]:
        order = self.shard(self.epoch)
        self.epoch += 1
        for b in range(len(self)):
            sel = order[b * self.batch_size:(b + 1) * self.batch_size]
            if len(sel) == 0:
                break
            yield self.read(sel)
