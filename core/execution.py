"""Where and how the networks run: ``runtime.device``, ``runtime.precision``, and the
members split over the cores of a CPU.

:class:`Execution` is what the hot paths (the posterior sampler, the emulator) receive:

- ``device``: ``"auto"`` (the first CUDA device where there is one, else the CPU), ``"cpu"``,
  ``"cuda"`` or ``"cuda:N"``; asking for CUDA where there is none fails at once with what
  torch reports (:func:`resolve_device`).
- ``precision``: the dtype the denoiser runs in, through ``torch.autocast`` (the sampler's
  state, the likelihood terms and the random draws stay float32/float64). ``"auto"`` is
  bfloat16 where the hardware computes it natively (CPUs with AVX512-BF16 or AMX; CUDA
  devices that support it), else float32 (:func:`resolve_precision`). Measured on the
  2-core AMX machine: a 16-member denoiser evaluation with its vector-Jacobian product
  0.24 s in float32, 0.15 s in bfloat16; the denoised state differs by 0.005 normalised
  units (RMS), the skill within the sampling noise (docs/results.md, "Speed").
- ``member_threads``: on a CPU, the members of one network call are cut into this many
  chunks evaluated at once in as many threads, one torch thread each. A 2-core CPU runs the
  U-Net's small convolutions better as two single-threaded half batches than as one batch
  on two threads (0.13 s against 0.15 s above); the members are independent in the
  network, so the result is the same as the single call.

Random draws are not part of this: every member draws from its own CPU generator
(:func:`diffda.core.rng.member_generators`), so the noise is the same numbers on every
device and precision; what differs between devices is the arithmetic (the order of sums,
the kernels), i.e. the last bits of each network evaluation, which a sampler amplifies into
different members of the same posterior: the same law, not the same bits.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

AUTO = "auto"
DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}

T = TypeVar("T")
U = TypeVar("U")


def check_device_spec(spec: str) -> str:
    """``spec`` if it is one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``; else a ValueError."""
    if not isinstance(spec, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise ValueError(f"runtime.device = {spec!r}: expected {DEVICE_CHOICES}")
    return spec


def resolve_device(spec: str) -> torch.device:
    """The device of ``runtime.device``; CUDA asked for where torch has none is an error
    that says so (and what to ask for instead)."""
    check_device_spec(spec)
    if spec == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = (f"this torch {torch.__version__} is built for CUDA {built} but finds no CUDA "
               "device" if built else f"this torch {torch.__version__} is built without CUDA")
        raise RuntimeError(f"runtime.device = {spec!r}: {why}; use 'cpu' or 'auto'")
    device = torch.device(spec)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise RuntimeError(f"runtime.device = {spec!r}: this machine has {count} CUDA "
                           f"device(s), cuda:0 to cuda:{count - 1}")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), from
    ``/proc/cpuinfo``; False where it cannot tell."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """The networks' dtype for ``runtime.precision``: ``"float32"``, ``"bfloat16"``, or
    ``"auto"`` (bfloat16 where ``device`` computes it natively, else float32)."""
    if spec == AUTO:
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    if spec not in PRECISIONS:
        raise ValueError(f"runtime.precision = {spec!r}: expected 'auto', "
                         f"{', '.join(map(repr, PRECISIONS))}")
    return PRECISIONS[spec]


def precision_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (as a config records it)."""
    return {v: k for k, v in PRECISIONS.items()}[dtype]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="diffda-members")
        return _POOLS[n]


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class Execution:
    """Device, network precision and CPU member threads of a run (module docstring)."""

    device: torch.device = torch.device("cpu")
    precision: torch.dtype = torch.float32
    member_threads: int = 1

    @property
    def max_batch(self) -> int:
        """Members worth one network call: on a CPU 64 in bfloat16 and 32 in float32 (per
        member, the default U-Net's evaluation with its vector-Jacobian product on two
        cores cost 0.79x / 0.94x of a 16-member call at 64 / 32 members in bfloat16, and
        0.94x / 1.06x at 32 / 64 in float32), 256 on a GPU."""
        if self.device.type != "cpu":
            return 256
        return 64 if self.precision == torch.bfloat16 else 32

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS.values():
            raise ValueError(f"precision {self.precision}: expected one of "
                             f"{list(PRECISIONS)}")
        if self.member_threads < 1:
            raise ValueError(f"member_threads = {self.member_threads}: must be >= 1")

    @classmethod
    def resolve(cls, device: str = AUTO, precision: str = AUTO, threads: int = 1
                ) -> Execution:
        """From the config's strings; ``threads`` cores become member threads on a CPU."""
        dev = resolve_device(device)
        return cls(dev, resolve_precision(precision, dev),
                   member_threads=threads if dev.type == "cpu" else 1)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The network's precision (a no-op for float32)."""
        if self.precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def map_members(self, fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> list[T]:
        """``fn`` on the members of ``x`` (dim 0) cut into ``member_threads`` chunks at most,
        the chunks at once (:meth:`each`); one call where there is one thread."""
        n = x.shape[0]
        k = min(self.member_threads, n)
        bounds = [round(i * n / k) for i in range(k + 1)]
        return self.each(fn, [x[bounds[i]:bounds[i + 1]] for i in range(k)])

    def each(self, fn: Callable[[U], T], items: Sequence[U]) -> list[T]:
        """``[fn(item) for item in items]``, the items at once in as many threads with one
        torch thread each where there are more than one, each under this precision's
        autocast and the caller's grad mode (both are thread-local: set in each thread)."""
        grad = torch.is_grad_enabled()

        def call(item: U) -> T:
            if torch.get_num_threads() != 1 and len(items) > 1:
                torch.set_num_threads(1)
            with torch.set_grad_enabled(grad), self.autocast():
                return fn(item)

        if len(items) <= 1:
            return [call(item) for item in items]
        with _torch_threads(1):
            futures = [_pool(len(items)).submit(call, item) for item in items]
            return [f.result() for f in futures]


#: What the hot paths use where no run chose: the CPU, float32, one call.
SERIAL = Execution()
