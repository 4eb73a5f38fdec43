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
from diffda.emulators.nature import run


def truth_window(data: Path, start: str | list[str], days: float, background: int,
                 every_hours: int | None = None) -> tuple[xr.Dataset, int, int]:
    """The windows of ``days`` from each ``start`` (``YYYY-MM-DDTHH:MM``, a stored time) of
    the dataset ``data`` and ``background`` states of the same years outside them, in
    memory, with a title, source and history; and the numbers of window and background
    times. ``every_hours``: keep only the times on that schedule (e.g. 12: the analysis
    times of a 12-hourly cycling), to keep the file small."""
    starts = [start] if isinstance(start, str) else list(start)
    ds = dataio.open_dataset(data)
    times = ds["time"].values
    in_window: set[int] = set()
    for s in starts:
        in_window |= set(_window(data, times, s, days))
    if every_hours:
        in_window = {i for i in in_window
                     if (times[i].hour % every_hours, times[i].minute) == (0, 0)}
    years = {parse_time(s, times[0].calendar).year for s in starts}
    rest = [i for i, t in enumerate(times) if t.year in years and i not in in_window
            and (not every_hours or (t.hour % every_hours, t.minute) == (0, 0))]
    if len(rest) < background:
        raise ValueError(f"{data}: only {len(rest)} times outside the windows in "
                         f"{sorted(years)}, --background {background} asked")
    pick = [rest[int(j)] for j in np.linspace(0, len(rest) - 1, background).round()]
    sub = ds.isel(time=sorted(in_window | set(pick))).load()
    try:  # the nature model that made the data, for forecasts with it (the oracle EnKF)
        sub.attrs[run.CONFIG_ATTR] = run.config_record_of(data, dict(ds.attrs))
    except ValueError:
        pass  # data not from a nature run of this system (a reanalysis, say)
    sub.attrs.update({
        "title": f"truth windows {', '.join(starts)} + {days:g} d with {background} "
                 f"background states",
        "source": Path(data).name,
        "history": f"cycler subset {Path(data).name} --start {' '.join(starts)} --days {days:g} "
                   f"--background {background}"
                   + (f" --every-hours {every_hours}" if every_hours else ""),
    })
    return sub, len(in_window), len(pick)


def _window(data: Path, times: np.ndarray, start: str, days: float) -> list[int]:
    """Indices of the stored times ``start .. start + days``; errors name the data."""
    first = parse_time(start, times[0].calendar, key="--start")
    end = first + timedelta(days=days)
    window = [i for i, t in enumerate(times) if first <= t <= end]
    if not window or times[window[0]] != first:
        raise ValueError(f"{data}: no stored time at --start {start} "
                         f"(it has {times[0]} .. {times[-1]})")
    if times[window[-1]] < end:
        raise ValueError(f"{data}: the window {first} + {days:g} days ends after the "
                         f"last stored time {times[-1]}")
    return window


def write_window(sub: xr.Dataset, out: Path) -> None:
    """Write ``sub`` to the netCDF file ``out`` (zlib level 5), through a temporary file."""
    enc = {v: {"zlib": True, "complevel": 5} for v in sub.data_vars}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    sub.to_netcdf(tmp, engine="netcdf4", encoding=enc)
    os.replace(tmp, out)
