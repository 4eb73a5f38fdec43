"""IGRA v2 sounding files: the records, the reader and the writer.

Format (``igra2-data-format.txt``, IGRA v2.0-2.2): each sounding is one header line
(``#``, station id, date, hour, release time, number of levels, sources, latitude and
longitude in 1e-4 degrees) followed by that many fixed-column level lines. Integer codes
``-9999`` (missing) and ``-8888`` (removed by quality assurance) are kept verbatim in
:class:`Levels` so that a file round-trips byte for byte; :meth:`Levels.value` gives the
physical value with NaN for both. A file may end in a header with no level lines (the
real ``USM00070026-data.siphon.txt`` does): such a sounding is kept with the levels that
were read and reported in :attr:`IgraFile.skipped`, like every line that did not parse.

The map from soundings to model variables (and back, for synthetic files) is in
:mod:`diffda.observations.soundings`; the unit conversions it uses in
:mod:`diffda.observations.meteo`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cftime
import numpy as np
from diffda.observations.stations import Skipped, atomic_write_text

MISSING = -9999
#: Sounding-data headers have 71 columns; derived-parameter (-drvd) headers about 160.
DERIVED_HEADER_MIN = 100
REMOVED = -8888

#: Header columns, 1-based inclusive (``igra2-data-format.txt``, "Header Record Format").
HEADER_COLUMNS: dict[str, tuple[int, int]] = {
    "id": (2, 12), "year": (14, 17), "month": (19, 20), "day": (22, 23), "hour": (25, 26),
    "reltime": (28, 31), "numlev": (33, 36), "p_src": (38, 45), "np_src": (47, 54),
    "lat": (56, 62), "lon": (64, 71),
}
#: Level columns, 1-based inclusive ("Data Record Format").
LEVEL_COLUMNS: dict[str, tuple[int, int]] = {
    "lvltyp1": (1, 1), "lvltyp2": (2, 2), "etime": (4, 8), "press": (10, 15),
    "pflag": (16, 16), "gph": (17, 21), "zflag": (22, 22), "temp": (23, 27),
    "tflag": (28, 28), "rh": (29, 33), "dpdp": (35, 39), "wdir": (41, 45), "wspd": (47, 51),
}
INT_FIELDS = ("etime", "press", "gph", "temp", "rh", "dpdp", "wdir", "wspd")
FLAG_FIELDS = ("pflag", "zflag", "tflag")
#: Physical scale of each integer field: Pa, m, tenths of degC, tenths of %, deg, 0.1 m/s.
SCALE = {"etime": 1.0, "press": 1.0, "gph": 1.0, "temp": 0.1, "rh": 0.1, "dpdp": 0.1,
         "wdir": 1.0, "wspd": 0.1}
UNITS = {"etime": "MMMSS", "press": "Pa", "gph": "m", "temp": "degC", "rh": "%",
         "dpdp": "degC", "wdir": "degree", "wspd": "m s-1"}
STANDARD_LEVELS_HPA = (1000, 925, 850, 700, 500, 400, 300, 250, 200, 150, 100, 70, 50,
                       30, 20, 10, 7, 5, 3, 2, 1)


@dataclass(frozen=True)
class SoundingHeader:
    """One header record. ``lat``/``lon`` in degrees (``lon`` in -180..180 as in IGRA)."""

    id: str
    year: int
    month: int
    day: int
    hour: int
    reltime: int
    numlev: int
    p_src: str
    np_src: str
    lat: float
    lon: float

    def time(self, calendar: str = "standard") -> cftime.datetime | None:
        """Nominal time of the sounding, ``None`` when the hour is missing (99)."""
        if self.hour == 99:
            return None
        return cftime.datetime(self.year, self.month, self.day, self.hour, calendar=calendar)


@dataclass(eq=False)
class Levels:
    """The level records of one sounding, column by column, ``(n_levels,)`` each.

    Integer fields hold the raw file codes (including ``-9999`` and ``-8888``); flags are
    one-character strings (``" "``, ``"A"``, ``"B"``).
    """

    lvltyp1: np.ndarray
    lvltyp2: np.ndarray
    etime: np.ndarray
    press: np.ndarray
    pflag: np.ndarray
    gph: np.ndarray
    zflag: np.ndarray
    temp: np.ndarray
    tflag: np.ndarray
    rh: np.ndarray
    dpdp: np.ndarray
    wdir: np.ndarray
    wspd: np.ndarray

    def __len__(self) -> int:
        return int(self.press.shape[0])

    def value(self, name: str) -> np.ndarray:
        """Physical values of integer field ``name`` (units in :data:`UNITS`), NaN where
        missing (-9999) or removed by QC (-8888)."""
        if name not in SCALE:
            raise KeyError(f"unknown IGRA level field {name!r}; known: {sorted(SCALE)}")
        raw = getattr(self, name)
        out = raw.astype(float) * SCALE[name]
        out[(raw == MISSING) | (raw == REMOVED)] = np.nan
        return out

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, int | str]]) -> Levels:
        cols: dict[str, np.ndarray] = {}
        for name in LEVEL_COLUMNS:
            values = [r[name] for r in rows]
            cols[name] = (
                np.array(values, dtype="<U1") if name in FLAG_FIELDS
                else np.array(values, dtype=np.int64)
            )
        return cls(**cols)

    @classmethod
    def empty(cls) -> Levels:
        return cls.from_rows([])


@dataclass(eq=False)
class Sounding:
    """A header and its levels. ``line`` is the header's line number in the file (1-based)."""

    header: SoundingHeader
    levels: Levels
    line: int = 0

    @property
    def complete(self) -> bool:
        return len(self.levels) == self.header.numlev


@dataclass
class IgraFile:
    """The soundings of one file and every line or sounding that was not fully used."""

    path: str
    soundings: list[Sounding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _cut(line: str, cols: tuple[int, int]) -> str:
    return line[cols[0] - 1 : cols[1]]


def _int(text: str, name: str) -> int:
    text = text.strip()
    if not text:
        raise ValueError(f"field {name} is blank")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"field {name} = {text!r} is not an integer") from None


def parse_header(line: str) -> SoundingHeader:
    """Parse a header line (``ValueError`` naming the field if it does not parse)."""
    if not line.startswith("#") or len(line.rstrip()) < HEADER_COLUMNS["lon"][1]:
        raise ValueError(f"not an IGRA v2 header ({len(line.rstrip())} characters, need 71)")
    c = {k: _cut(line, v) for k, v in HEADER_COLUMNS.items()}
    h = SoundingHeader(
        id=c["id"].strip(),
        year=_int(c["year"], "YEAR"), month=_int(c["month"], "MONTH"),
        day=_int(c["day"], "DAY"), hour=_int(c["hour"], "HOUR"),
        reltime=_int(c["reltime"], "RELTIME"), numlev=_int(c["numlev"], "NUMLEV"),
        p_src=c["p_src"].strip(), np_src=c["np_src"].strip(),
        lat=_int(c["lat"], "LAT") / 1e4, lon=_int(c["lon"], "LON") / 1e4,
    )
    if not (1 <= h.month <= 12 and 1 <= h.day <= 31 and (0 <= h.hour <= 23 or h.hour == 99)):
        raise ValueError(f"bad date {h.year}-{h.month:02d}-{h.day:02d} hour {h.hour}")
    if abs(h.lat) > 90.0 or abs(h.lon) > 180.0:
        raise ValueError(f"LAT = {h.lat} / LON = {h.lon} outside the globe")
    if h.numlev < 0:
        raise ValueError(f"NUMLEV = {h.numlev} is negative")
    return h


def parse_level(line: str) -> dict[str, int | str]:
    """Parse a level line into raw codes (``ValueError`` naming the field if bad)."""
    if len(line.rstrip()) < LEVEL_COLUMNS["wspd"][1] - 4:
        raise ValueError(f"level line too short ({len(line.rstrip())} characters, need 51)")
    line = line.ljust(52)
    row: dict[str, int | str] = {}
    for name, cols in LEVEL_COLUMNS.items():
        text = _cut(line, cols)
        if name in FLAG_FIELDS:
            if text not in (" ", "A", "B"):
                raise ValueError(f"flag {name.upper()} = {text!r} is not blank, A or B")
            row[name] = text
        else:
            row[name] = _int(text, name.upper())
    if row["lvltyp1"] not in (1, 2, 3) or row["lvltyp2"] not in (0, 1, 2):
        raise ValueError(f"level type {row['lvltyp1']}{row['lvltyp2']} is not valid")
    return row


def read_igra(path: str | os.PathLike[str]) -> IgraFile:
    """Read an IGRA v2 sounding file; see the module docstring for what is reported."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IGRA sounding file {path} does not exist")
    out = IgraFile(str(path))
    src = str(path)
    header: SoundingHeader | None = None
    header_line = 0
    rows: list[dict[str, int | str]] = []

    def close() -> None:
        if header is None:
            return
        out.soundings.append(Sounding(header, Levels.from_rows(rows), header_line))
        if len(rows) != header.numlev:
            out.skipped.append(Skipped(
                src, header_line,
                f"sounding {header.id} {header.year}-{header.month:02d}-{header.day:02d} "
                f"{header.hour:02d}Z: header declares {header.numlev} levels, "
                f"{len(rows)} read",
            ))

    with path.open(encoding="latin-1") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("#"):
                if len(line.rstrip()) > DERIVED_HEADER_MIN:
                    raise ValueError(
                        f"{path}:{lineno}: a {len(line.rstrip())}-character header: this looks "
                        "like an IGRA v2 derived-parameter file (-drvd), not sounding data"
                    )
                close()
                header, rows = None, []
                try:
                    header, header_line = parse_header(line), lineno
                except ValueError as err:
                    out.skipped.append(Skipped(src, lineno, f"bad header: {err}", line))
                continue
            if header is None:
                out.skipped.append(Skipped(src, lineno, "level line without a valid header", line))
                continue
            if len(rows) >= header.numlev:
                out.skipped.append(Skipped(
                    src, lineno, f"level beyond NUMLEV = {header.numlev} of {header.id}", line
                ))
                continue
            try:
                rows.append(parse_level(line))
            except ValueError as err:
                out.skipped.append(Skipped(src, lineno, f"bad level line: {err}", line))
    close()
    return out


def _fit(value: int, width: int, name: str) -> str:
    text = f"{int(value):{width}d}"
    if len(text) > width:
        raise ValueError(f"{name} = {value} does not fit in {width} columns")
    return text


def format_header(h: SoundingHeader) -> str:
    """The 71-column header line of ``h`` (latitude/longitude written in 1e-4 degrees)."""
    if len(h.id) > 11:
        raise ValueError(f"station id {h.id!r} is longer than 11 characters")
    return (
        f"#{h.id:<11s} {_fit(h.year, 4, 'YEAR')} {h.month:02d} {h.day:02d} {h.hour:02d} "
        f"{h.reltime:04d} {_fit(h.numlev, 4, 'NUMLEV')} {h.p_src:<8.8s} {h.np_src:<8.8s} "
        f"{_fit(round(h.lat * 1e4), 7, 'LAT')} {_fit(round(h.lon * 1e4), 8, 'LON')}"
    )


def format_level(levels: Levels, i: int) -> str:
    """Level ``i`` of ``levels`` as a fixed-column line (52 characters, as in the files)."""
    g = {name: getattr(levels, name)[i] for name in LEVEL_COLUMNS}
    return (
        f"{int(g['lvltyp1']):1d}{int(g['lvltyp2']):1d} {_fit(g['etime'], 5, 'ETIME')} "
        f"{_fit(g['press'], 6, 'PRESS')}{g['pflag']:1s}{_fit(g['gph'], 5, 'GPH')}"
        f"{g['zflag']:1s}{_fit(g['temp'], 5, 'TEMP')}{g['tflag']:1s}{_fit(g['rh'], 5, 'RH')} "
        f"{_fit(g['dpdp'], 5, 'DPDP')} {_fit(g['wdir'], 5, 'WDIR')} {_fit(g['wspd'], 5, 'WSPD')} "
    )


def format_soundings(soundings: Iterable[Sounding]) -> str:
    lines: list[str] = []
    for s in soundings:
        if len(s.levels) > s.header.numlev:
            raise ValueError(
                f"sounding {s.header.id} at line {s.line}: {len(s.levels)} levels but "
                f"NUMLEV = {s.header.numlev}"
            )
        lines.append(format_header(s.header))
        lines.extend(format_level(s.levels, i) for i in range(len(s.levels)))
    return "".join(line + "\n" for line in lines)


def write_igra(soundings: Iterable[Sounding], path: str | os.PathLike[str]) -> None:
    """Write soundings in the IGRA v2 format, atomically. A sounding with fewer levels than
    its header's NUMLEV is written as it is (this reproduces truncated real files)."""
    atomic_write_text(Path(path), format_soundings(soundings))
