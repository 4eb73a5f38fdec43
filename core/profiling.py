"""Where a run's time goes: a clock the hot paths report their network calls to.

The sampler reports each denoiser evaluation (``"denoiser"``: one call is one network
evaluation of a batch of members) and each vector-Jacobian product through it
(``"denoiser_vjp"``: the backward pass of the network plus the likelihood's, which is
small), the emulator each step of its network (``"emulator"``). The clock is off unless a
caller measures (``with measuring() as clock``, as ``cycler bench run`` does); off, a
section costs one attribute test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class NetworkClock:
    """Seconds and calls per section name, while ``enabled``."""

    enabled: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tic
            self.calls[name] = self.calls.get(name, 0) + 1

    def snapshot(self) -> tuple[dict[str, float], dict[str, int]]:
        return dict(self.seconds), dict(self.calls)


#: The process's clock.
clock = NetworkClock()


@contextmanager
def measuring() -> Iterator[NetworkClock]:
    """Reset and enable :data:`clock` for the block; disabled again after it."""
    clock.seconds.clear()
    clock.calls.clear()
    clock.enabled = True
    try:
        yield clock
    finally:
        clock.enabled = False
