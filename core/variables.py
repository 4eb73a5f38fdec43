"""The canonical variables of the system and their CF attributes (units, long names,
standard names), shared by the data layer, the observation files and the outputs; and the
global attributes every netCDF file the project writes carries (``Conventions``,
``history``, paths that do not name this machine).

Standard names are given only where the quantity is the one the CF standard-name table
defines. The default world's ``height`` is the free-surface height of a one-layer
shallow-water model, not a geopotential height on a pressure level, and its ``tracer`` is
a humidity-like mass fraction, not water vapour: no CF name fits either, so they carry a
``long_name``, a ``comment`` and a ``diffda_name`` from :data:`PROJECT_VOCABULARY`.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

#: The CF version the project's netCDF files follow (global ``Conventions``).
CONVENTIONS = "CF-1.8"

#: The project's own names for quantities no CF standard name describes (attribute
#: ``diffda_name``), with their definitions (attribute ``comment``).
PROJECT_VOCABULARY: dict[str, str] = {
    "free_surface_height": "height of the free surface of the one-layer shallow-water model "
                           "above sea level (fluid depth plus orography)",
    "equilibrium_free_surface_height": "free-surface height toward which the shallow-water "
                                       "model's height relaxes (its forcing: season, time of "
                                       "day, land)",
    "humidity_like_tracer": "mass fraction of the shallow-water model's positive tracer, "
                            "advected by the flow with evaporation toward a saturation value "
                            "and rain-out above it (humidity-like, not water vapour)",
}


def _vocabulary(name: str) -> dict[str, str]:
    return {"diffda_name": name, "comment": PROJECT_VOCABULARY[name]}


VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    "height": {"units": "m", "long_name": "free-surface height",
               **_vocabulary("free_surface_height")},
    "u": {"units": "m s-1", "long_name": "eastward wind", "standard_name": "eastward_wind"},
    "v": {"units": "m s-1", "long_name": "northward wind", "standard_name": "northward_wind"},
    "tracer": {"units": "kg kg-1", "long_name": "humidity-like tracer mass fraction",
               **_vocabulary("humidity_like_tracer")},
    "height_eq": {"units": "m", "long_name": "equilibrium free-surface height (forcing)",
                  **_vocabulary("equilibrium_free_surface_height")},
    "orography": {"units": "m", "long_name": "surface height", "standard_name": "surface_altitude"},
    "land_sea_mask": {"units": "1", "long_name": "land-sea mask (1 = land)",
                      "standard_name": "land_binary_mask"},
    "t2m": {"units": "K", "long_name": "2 m temperature", "standard_name": "air_temperature"},
}

#: Attributes that name what a variable is (replaced as a whole by :func:`variable_attrs`).
NAMING_ATTRS = ("standard_name", "long_name", "comment", "diffda_name")


def variable_attrs(name: str, attrs: dict[str, object] | None = None) -> dict[str, object]:
    """The attributes of variable ``name`` for an output file: ``attrs`` (e.g. those of the
    data file) with the naming attributes of :data:`VARIABLE_ATTRS` where it has the
    variable (an older file's ``standard_name`` does not survive), else ``attrs``."""
    out = dict(attrs or {})
    if name in VARIABLE_ATTRS:
        out = {k: x for k, x in out.items() if k not in NAMING_ATTRS}
        canonical = VARIABLE_ATTRS[name]
        out.update({k: x for k, x in canonical.items() if k != "units" or "units" not in out})
    return out


def portable_path(path: str | os.PathLike[str]) -> str:
    """``path`` as it may stand in a file's attributes: relative to the working directory
    when it lies below it, else its file name (no absolute path of this machine)."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    p = Path(text)
    try:
        return p.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return p.name


def _portable_argument(arg: str) -> str:
    key, eq, value = arg.partition("=")
    if eq and key.startswith("-"):
        return f"{key}={_portable_argument(value)}"
    return portable_path(arg) if os.path.isabs(arg) else arg


def history_entry(argv: Sequence[str] | None = None,
                  now: datetime.datetime | None = None) -> str:
    """One line of a CF ``history`` attribute: the UTC time and the command that wrote
    the file (``sys.argv`` by default; the program by its name and absolute paths made
    portable by :func:`portable_path`), e.g. ``2026-12-05T13:01:57Z cycler run
    runs/sevenday.toml``."""
    argv = list(sys.argv if argv is None else argv)
    words = [Path(argv[0]).name if argv else "python",
             *(_portable_argument(a) for a in argv[1:])]
    now = now or datetime.datetime.now(datetime.UTC)
    return f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')} {' '.join(words)}"


def global_attrs(attrs: dict[str, object]) -> dict[str, object]:
    """``attrs`` ready to write: ``Conventions``, a ``history`` line appended to any
    history it has, and a ``source`` that is not an absolute path (:func:`portable_path`)."""
    out = dict(attrs)
    out.setdefault("Conventions", CONVENTIONS)
    previous = str(out.get("history", "")).strip()
    out["history"] = f"{previous}\n{history_entry()}" if previous else history_entry()
    if isinstance(out.get("source"), str) and os.path.isabs(str(out["source"])):
        out["source"] = portable_path(str(out["source"]))
    return out
