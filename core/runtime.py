"""How many torch threads a process should use: ``runtime.threads = "auto"``.

Two busy processes with two threads each on a 2-core machine slow each other 5-10x (a
16-member diffusion cycle took 96 s instead of 11 s). ``"auto"`` asks the machine how many
of the cores this process may use are free *now*: it samples the kernel's per-CPU busy time
(``/proc/stat``) over a short window and counts the idle share of the CPUs in this process's
affinity set, then divides them among the processes about to start. Where ``/proc/stat``
is not readable (not Linux) it falls back to the cores minus the one-minute load average.
"""

from __future__ import annotations

import math
import os
import time

AUTO = "auto"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity set)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> tuple[float, float] | None:
    """``(busy, total)`` jiffies summed over ``cpus`` from ``/proc/stat``; None if absent."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if name not in wanted:
            continue
        values = [float(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        total += sum(values)
        busy += sum(values) - idle
    return (busy, total) if total > 0 else None


def free_cores(window_s: float = 0.25) -> float:
    """The number of this process's usable cores that were idle over the last
    ``window_s`` seconds (a float: 1.6 means one and a bit)."""
    cpus = usable_cpus()
    first = _cpu_times(cpus)
    if first is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return float(len(cpus))
        return max(0.0, len(cpus) - load)
    time.sleep(window_s)
    second = _cpu_times(cpus)
    assert second is not None
    d_busy, d_total = second[0] - first[0], second[1] - first[1]
    if d_total <= 0:
        return float(len(cpus))
    return len(cpus) * (1.0 - d_busy / d_total)


def auto_threads(processes: int = 1, free: float | None = None) -> int:
    """Torch threads for each of ``processes`` processes about to start: the free cores
    (rounded to the nearest whole core) shared among them, at least 1."""
    free = free_cores() if free is None else free
    return max(1, math.floor(free + 0.5) // max(processes, 1))


def resolve_threads(threads: int | str, processes: int = 1) -> int:
    """``threads`` as a number: itself, or :func:`auto_threads` for ``"auto"``."""
    if threads == AUTO:
        return auto_threads(processes)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads = {threads!r}: expected a whole number >= 1 or 'auto'")
    return threads


def threads_arg(text: str) -> int | str:
    """An ``argparse`` type for ``--threads``: a whole number >= 1 or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1 or 'auto'")
    return value
