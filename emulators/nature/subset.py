"""A small truth file cut from a large nature-run dataset (``cycler subset``).

:func:`truth_window` keeps the window ``start .. start + days`` at every stored time, plus
``background`` states spread evenly over the rest of the window's calendar year (the
EnKF's initial anomalies are drawn from times outside the window), with statics and the
climatology attributes; :func:`write_window` writes it as a compressed netCDF. This is how
the repository's embedded 7-day world (``emulators/data/``) is made.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import xarray as xr
from diffda.core.times import parse_time
from diffda.emulators import dataio


def truth_window(data: Path, start: str, days: float, background: int
                 ) -> tuple[xr.Dataset, int, int]:
    """The window of ``days`` from ``start`` (``YYYY-MM-DDTHH:MM``, a stored time) of the
    dataset ``data`` and ``background`` states of the same year outside it, in memory,
    with a title, source and history; and the numbers of window and background times."""
    ds = dataio.open_dataset(data)
    times = ds["time"].values
    first = parse_time(start, times[0].calendar, key="--start")
    end = first + timedelta(days=days)
    window = [i for i, t in enumerate(times) if first <= t <= end]
    if not window or times[window[0]] != first:
        raise ValueError(f"{data}: no stored time at --start {start} "
                         f"(it has {times[0]} .. {times[-1]})")
    if times[window[-1]] < end:
        raise ValueError(f"{data}: the window {first} + {days:g} days ends after the "
                         f"last stored time {times[-1]}")
    in_window = set(window)
    rest = [i for i, t in enumerate(times) if t.year == first.year and i not in in_window]
    if len(rest) < background:
        raise ValueError(f"{data}: only {len(rest)} times outside the window in "
                         f"{first.year}, --background {background} asked")
    pick = [rest[int(j)] for j in np.linspace(0, len(rest) - 1, background).round()]
    sub = ds.isel(time=sorted(in_window | set(pick))).load()
    sub.attrs.update({
        "title": f"truth window {first.isoformat()} + {days:g} d with {background} "
                 f"background states",
        "source": str(data),
        "history": f"cycler subset {data} --start {start} --days {days:g} "
                   f"--background {background}",
    })
    return sub, len(window), len(pick)


def write_window(sub: xr.Dataset, out: Path) -> None:
    """Write ``sub`` to the netCDF file ``out`` (zlib level 5), through a temporary file."""
    enc = {v: {"zlib": True, "complevel": 5} for v in sub.data_vars}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    sub.to_netcdf(tmp, engine="netcdf4", encoding=enc)
    os.replace(tmp, out)
