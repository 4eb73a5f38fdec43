"""What an observation file holds, as a JSON-able record (``cycler obs inspect``).

Three kinds of file, told apart by their first bytes (:func:`file_kind`): an IGRA v2
sounding file (:mod:`diffda.observations.igra`), an IGRA v2 station list
(:mod:`diffda.observations.stations`) and a station-observation netCDF file
(:mod:`diffda.observations.synthetic`). :func:`describe` reads one and lists what it holds
and every line that was skipped, with the reason; ``n_problems`` counts the lines it could
not read (not the stations it filtered out: mobile, inactive).

Anything else is refused with a :class:`NotAnObservationFile` (a ``ValueError``) naming
the file: binary data, a netCDF file without a ``station`` dimension (a gridded dataset),
an unreadable netCDF/HDF5 file, and text in which no line is an IGRA record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from diffda.observations.igra import read_igra
from diffda.observations.stations import read_station_list
from diffda.observations.synthetic import read_observations

WHAT_IS_READ = ("an IGRA v2 file (soundings, derived or station list) nor a "
                "station-observation netCDF file")
#: Bytes that do not occur in a text file (controls other than tab, newline, CR, FF).
_CONTROL = bytes(set(range(32)) - {9, 10, 12, 13}) + b"\x7f"


class NotAnObservationFile(ValueError):
    """A file ``cycler obs inspect`` does not read; the message names it and says why."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: not {WHAT_IS_READ}: {why}")


def file_kind(path: Path) -> str:
    """``"netcdf"``, ``"soundings"`` (IGRA v2 data) or ``"station-list"`` (IGRA v2 list).

    Raises :class:`NotAnObservationFile` for binary data that is not netCDF/HDF5."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"CDF") or head.startswith(b"\x89HDF"):
        return "netcdf"
    n_control = sum(head.count(bytes([c])) for c in _CONTROL)
    if b"\x00" in head or n_control > 0.01 * len(head):
        raise NotAnObservationFile(path, f"binary data ({n_control} control bytes in the "
                                         f"first {len(head)})")
    with path.open(encoding="latin-1") as f:
        for line in f:
            if line.strip():
                return "soundings" if line.startswith("#") else "station-list"
    raise ValueError(f"{path} is empty")


def describe(path: Path, active_years: tuple[int, int] | None = None) -> dict[str, Any]:
    """A JSON-able description of an IGRA v2 station list, sounding file or obs netCDF.

    ``active_years``: for a station list, keep the stations active in ``(first, last)``.
    """
    kind = file_kind(path)
    if kind == "soundings":
        return describe_soundings(path)
    if kind == "station-list":
        return describe_station_list(path, active_years)
    return describe_observations(path)


def describe_soundings(path: Path) -> dict[str, Any]:
    """Each sounding of an IGRA v2 file (station, time, position, levels), and the lines
    skipped."""
    f = read_igra(path)
    if not f.soundings:
        first = f.skipped[0].reason if f.skipped else "no header line"
        raise NotAnObservationFile(path, f"no sounding header could be read ({first})")
    return {
        "file": str(path), "kind": "IGRA v2 soundings", "n_soundings": len(f.soundings),
        "soundings": [
            {
                "station": s.header.id,
                "time": f"{s.header.year:04d}-{s.header.month:02d}-{s.header.day:02d}"
                        f"T{s.header.hour:02d}" if s.header.hour != 99 else
                        f"{s.header.year:04d}-{s.header.month:02d}-{s.header.day:02d}T??",
                "lat": s.header.lat, "lon": s.header.lon,
                "levels_read": len(s.levels), "levels_declared": s.header.numlev,
                "line": s.line,
            }
            for s in f.soundings
        ],
        "skipped": [{"line": k.line, "reason": k.reason} for k in f.skipped],
        "n_problems": len(f.skipped),
    }


def describe_station_list(
    path: Path, active_years: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The stations kept from an IGRA v2 station list, and the lines skipped, also counted
    by reason."""
    net, skipped = read_station_list(path, active_years=active_years)
    bad = [k for k in skipped if k.reason.startswith("bad")]
    if bad and len(bad) == len(skipped) and len(net) == 0:
        raise NotAnObservationFile(path, f"none of its {len(bad)} lines is a station record "
                                         f"(line {bad[0].line}: {bad[0].reason})")
    reasons: dict[str, int] = {}
    for k in skipped:
        key = k.reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return {
        "file": str(path), "kind": "IGRA v2 station list",
        "active_years": list(active_years) if active_years else None,
        "n_stations": len(net),
        "stations": [
            {"id": s.id, "lat": s.lat, "lon": s.lon, "name": s.name,
             "years": [s.first_year, s.last_year]}
            for s in net.stations
        ],
        "skipped_by_reason": reasons,
        "skipped": [{"line": k.line, "reason": k.reason} for k in skipped],
        "n_problems": sum(k.reason.startswith(("bad", "duplicate")) for k in skipped),
    }


def describe_observations(path: Path) -> dict[str, Any]:
    """The times, stations and variables (units, error std, missing values) of a
    station-observation netCDF file."""
    try:
        ds = read_observations(path)
    except OSError as err:
        raise NotAnObservationFile(path, f"not a readable netCDF/HDF5 file ({err.strerror or err})"
                                   ) from None
    except ValueError as err:  # xarray could not decode it
        raise NotAnObservationFile(path, f"a netCDF file that cannot be decoded ({err})"
                                   ) from None
    if "station" not in ds.dims:
        raise NotAnObservationFile(path, "a netCDF file without a 'station' dimension (dims "
                                         f"{dict(ds.sizes)}; a gridded dataset?)")
    times = ds["time"].values
    return {
        "file": str(path), "kind": "station observations (netCDF)",
        "n_times": int(ds.sizes.get("time", 0)), "n_stations": int(ds.sizes.get("station", 0)),
        "first_time": str(times[0]) if len(times) else None,
        "last_time": str(times[-1]) if len(times) else None,
        "variables": {
            v: {"units": ds[v].attrs.get("units", ""),
                "observation_error_std": ds[v].attrs.get("observation_error_std"),
                "n_missing": int(np.isnan(ds[v].values).sum())}
            for v in ds.data_vars
        },
    }
