"""Station networks: the real IGRA v2 station list, and a seeded default network on land.

A :class:`StationNetwork` is an ordered, duplicate-free set of fixed stations with their
coordinates (latitude in degrees north, longitude in degrees east folded to ``[0, 360)``,
the system's convention). Two sources:

- :func:`read_station_list` reads the real IGRA v2 station list (fixed columns, see
  ``igra2-list-format.txt``): mobile stations (ships, ``LATITUDE = -98.8888``) are skipped,
  stations can be filtered by their years of record, and every line not kept is returned
  as a :class:`Skipped` record with its line number and reason (never silently dropped).
- :func:`default_network` draws ``n`` stations on the world's land with an IGRA-like
  latitude density (:func:`igra_like_density`: dense in the northern mid-latitudes, sparse
  in the tropics and the south, none over the ocean), from a generator derived with
  :func:`diffda.core.rng.numpy_generator`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from diffda.core.rng import numpy_generator
from diffda.core.variables import CONVENTIONS
from diffda.core.variables import VARIABLE_ATTRS as CANONICAL_ATTRS

#: Columns (1-based, inclusive, as in ``igra2-list-format.txt``) of the station list.
LIST_COLUMNS: dict[str, tuple[int, int]] = {
    "id": (1, 11),
    "lat": (13, 20),
    "lon": (22, 30),
    "elevation": (32, 37),
    "state": (39, 40),
    "name": (42, 71),
    "first_year": (73, 76),
    "last_year": (78, 81),
    "n_obs": (83, 88),
}
MOBILE_LAT = -98.8888
MOBILE_LON = -998.8888
MISSING_ELEVATION = -999.9


@dataclass(frozen=True)
class Skipped:
    """A line (or item) that was not used, with where it came from and why."""

    source: str
    line: int
    reason: str
    text: str = ""

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class Station:
    """One fixed station. ``lon`` is in ``[0, 360)``; ``elevation`` in m (NaN if missing)."""

    id: str
    lat: float
    lon: float
    elevation: float = math.nan
    name: str = ""
    first_year: int = 0
    last_year: int = 0
    n_obs: int = 0

    def __post_init__(self) -> None:
        check_coordinates(np.array([self.lat]), np.array([self.lon]), what=f"station {self.id}")
        object.__setattr__(self, "lon", float(self.lon) % 360.0)


def check_coordinates(lat: np.ndarray, lon: np.ndarray, what: str = "station") -> None:
    """Raise ``ValueError`` naming the first bad entry unless ``-90 <= lat <= 90`` and
    ``lon`` is finite (any longitude is accepted and folded to ``[0, 360)`` by callers)."""
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    if lat.shape != lon.shape:
        raise ValueError(f"{what}: lat shape {lat.shape} differs from lon shape {lon.shape}")
    bad = ~np.isfinite(lat) | ~np.isfinite(lon) | (np.abs(lat) > 90.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what}: coordinate {i} is outside the globe or not finite "
            f"(lat={float(lat.flat[i])}, lon={float(lon.flat[i])}; "
            "need -90 <= lat <= 90, finite lon)"
        )


@dataclass(frozen=True)
class StationNetwork:
    """An ordered set of stations with unique ids. Arrays are ``(n_station,)``."""

    stations: tuple[Station, ...]

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, s in enumerate(self.stations):
            if s.id in seen:
                raise ValueError(
                    f"duplicate station id {s.id!r} at positions {seen[s.id]} and {i}"
                )
            seen[s.id] = i

    def __len__(self) -> int:
        return len(self.stations)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.stations]

    @property
    def lat(self) -> np.ndarray:
        return np.array([s.lat for s in self.stations], dtype=float)

    @property
    def lon(self) -> np.ndarray:
        return np.array([s.lon for s in self.stations], dtype=float)

    def index(self, station_id: str) -> int:
        for i, s in enumerate(self.stations):
            if s.id == station_id:
                return i
        raise KeyError(f"station {station_id!r} is not in the network ({len(self)} stations)")

    @classmethod
    def from_arrays(
        cls, ids: Sequence[str], lat: Sequence[float], lon: Sequence[float]
    ) -> StationNetwork:
        """Build from parallel sequences; raises on bad coordinates or duplicate ids."""
        if not (len(ids) == len(lat) == len(lon)):
            raise ValueError(
                f"ids, lat, lon have different lengths: {len(ids)}, {len(lat)}, {len(lon)}"
            )
        check_coordinates(np.asarray(lat, float), np.asarray(lon, float))
        return cls(tuple(
            Station(str(i), float(a), float(o)) for i, a, o in zip(ids, lat, lon, strict=True)
        ))


def _field(line: str, name: str) -> str:
    a, b = LIST_COLUMNS[name]
    return line[a - 1 : b]


def parse_station_line(line: str) -> Station | None:
    """Parse one station-list line; ``None`` for a mobile station; ``ValueError`` if bad."""
    if len(line.rstrip("\n")) < LIST_COLUMNS["last_year"][1]:
        raise ValueError(f"line too short ({len(line.rstrip())} characters, need at least 81)")
    sid = _field(line, "id").strip()
    if len(sid) != 11 or " " in sid:
        raise ValueError(f"station id {sid!r} is not an 11-character IGRA id")
    try:
        lat = float(_field(line, "lat"))
        lon = float(_field(line, "lon"))
        elev = float(_field(line, "elevation"))
        first, last = int(_field(line, "first_year")), int(_field(line, "last_year"))
        nobs_text = _field(line, "n_obs").strip()
        nobs = int(nobs_text) if nobs_text else 0
    except ValueError as err:
        raise ValueError(f"unreadable number in fixed columns: {err}") from None
    if lat == MOBILE_LAT or lon == MOBILE_LON:
        return None
    if not (-90.0 <= lat <= 90.0) or not (-180.0 <= lon <= 360.0):
        raise ValueError(f"coordinates outside the globe: lat={lat}, lon={lon}")
    return Station(
        id=sid,
        lat=lat,
        lon=lon,
        elevation=math.nan if elev == MISSING_ELEVATION else elev,
        name=_field(line, "name").strip(),
        first_year=first,
        last_year=last,
        n_obs=nobs,
    )


def read_station_list(
    path: str | os.PathLike[str],
    active_years: tuple[int, int] | None = None,
    min_obs: int = 0,
) -> tuple[StationNetwork, list[Skipped]]:
    """Read an IGRA v2 station list into a network, and report what was skipped.

    ``active_years = (y0, y1)`` keeps stations whose record ``[FSTYEAR, LSTYEAR]`` overlaps
    ``[y0, y1]``. Skipped (with reason): mobile stations, stations outside ``active_years`` or
    with fewer than ``min_obs`` soundings, lines that do not parse, and repeated ids (the
    first occurrence is kept). Raises ``FileNotFoundError`` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IGRA station list {path} does not exist")
    stations: list[Station] = []
    skipped: list[Skipped] = []
    seen: dict[str, int] = {}
    src = str(path)
    with path.open(encoding="latin-1") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.rstrip("\n")
            if not text.strip():
                continue
            try:
                st = parse_station_line(text)
            except ValueError as err:
                skipped.append(Skipped(src, lineno, f"bad line: {err}", text))
                continue
            if st is None:
                skipped.append(Skipped(src, lineno, "mobile station", text))
                continue
            if active_years is not None and (
                st.last_year < active_years[0] or st.first_year > active_years[1]
            ):
                skipped.append(
                    Skipped(
                        src, lineno,
                        f"inactive: record {st.first_year}-{st.last_year} outside "
                        f"{active_years[0]}-{active_years[1]}",
                        text,
                    )
                )
                continue
            if st.n_obs < min_obs:
                skipped.append(Skipped(src, lineno, f"only {st.n_obs} soundings", text))
                continue
            if st.id in seen:
                reason = f"duplicate id {st.id} (first on line {seen[st.id]})"
                skipped.append(Skipped(src, lineno, reason, text))
                continue
            seen[st.id] = lineno
            stations.append(st)
    return StationNetwork(tuple(stations)), skipped


def format_station_line(st: Station) -> str:
    """One station-list line in the IGRA v2 fixed columns (longitude written in -180..180)."""
    lon = st.lon - 360.0 if st.lon > 180.0 else st.lon
    elev = MISSING_ELEVATION if math.isnan(st.elevation) else st.elevation
    if len(st.id) != 11:
        raise ValueError(f"station id {st.id!r} must have 11 characters for the IGRA list")
    return (
        f"{st.id:<11s} {st.lat:8.4f} {lon:9.4f} {elev:6.1f}    {st.name[:30]:<30s} "
        f"{st.first_year:4d} {st.last_year:4d} {st.n_obs:6d}"
    )


def write_station_list(network: StationNetwork, path: str | os.PathLike[str]) -> None:
    """Write ``network`` as an IGRA v2 station list, atomically (temp file + os.replace)."""
    text = "".join(format_station_line(s) + "\n" for s in network.stations)
    atomic_write_text(Path(path), text)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="latin-1") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- default network


def igra_like_density(lat: np.ndarray) -> np.ndarray:
    """Relative station density per unit land area, as a function of latitude (degrees).

    Tuned so that a network drawn on Earth's land reproduces the latitude histogram of the
    IGRA v2 stations active since 2000 (bands -90/-60/-30/-10/10/30/50/70/90: IGRA
    1.3/4.1/9.3/14.4/21.8/30.8/16.9/1.5 %): a Gaussian peak at 38 N (width 13 deg) on a
    plateau of 0.35 north of 30 S, 0.3 in the southern extratropics and 0.04 over
    Antarctica. Values in ``[0, 1]``.
    """
    lat = np.asarray(lat, dtype=float)
    base = np.where(lat > -30.0, 0.35, np.where(lat > -60.0, 0.3, 0.04))
    return np.clip(base + 0.65 * np.exp(-0.5 * ((lat - 38.0) / 13.0) ** 2), 0.0, 1.0)


LandFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def global_land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``True`` where ``(lat, lon)`` is land according to ``global_land_mask`` (1 km data).

    ``lon`` may be in ``[0, 360)``; it is folded to ``[-180, 180)`` for the package.
    """
    from global_land_mask import globe

    lon180 = (np.asarray(lon, dtype=float) + 180.0) % 360.0 - 180.0
    lat = np.clip(np.asarray(lat, dtype=float), -90.0, 90.0)
    return np.asarray(globe.is_land(lat, lon180), dtype=bool)


def grid_land(mask: np.ndarray) -> LandFn:
    """A land test from a model land-sea mask ``(lat, lon)`` (1 = land) on a WeatherBench
    cell-centre grid: a point is land where the cell that contains it is land."""
    mask = np.asarray(mask) > 0.5
    nlat, nlon = mask.shape

    def is_land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        i = np.clip(((np.asarray(lat) + 90.0) * nlat / 180.0).astype(int), 0, nlat - 1)
        j = np.floor((np.asarray(lon) % 360.0) * nlon / 360.0 + 0.5).astype(int) % nlon
        return mask[i, j]

    return is_land


def default_network(
    n: int,
    seed: int = 0,
    is_land: LandFn = global_land,
    density: Callable[[np.ndarray], np.ndarray] = igra_like_density,
    min_separation_km: float = 150.0,
    max_draws: int = 1000,
) -> StationNetwork:
    """Draw ``n`` stations on land with an IGRA-like density, reproducibly from ``seed``.

    Algorithm: rejection sampling. Candidates are uniform on the sphere
    (``sin(lat) ~ U(-1, 1)``, ``lon ~ U(0, 360)``); a candidate is kept with probability
    ``density(lat)`` if ``is_land`` and if it is at least ``min_separation_km`` (great
    circle) from every station kept so far (no two stations in one place). Ids are
    ``ZZXUA`` + 6 digits (IGRA's "specially constructed" network code X). Raises
    ``ValueError`` if ``n`` stations cannot be placed within ``max_draws * n`` candidates.
    """
    if n < 1:
        raise ValueError(f"number of stations must be positive, got {n}")
    rng = numpy_generator(seed, "stations")
    lats: list[float] = []
    lons: list[float] = []
    xyz = np.zeros((0, 3))
    cos_min = math.cos(min_separation_km / 6371.0)
    batch = max(256, 8 * n)
    drawn = 0
    while len(lats) < n:
        if drawn > max_draws * n:
            raise ValueError(
                f"placed only {len(lats)} of {n} stations in {drawn} candidates: lower n "
                f"or min_separation_km ({min_separation_km})"
            )
        lat = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, batch)))
        lon = rng.uniform(0.0, 360.0, batch)
        keep = rng.uniform(0.0, 1.0, batch) < density(lat)
        keep &= is_land(lat, lon)
        drawn += batch
        for a, o in zip(lat[keep], lon[keep], strict=True):
            p = _unit_vector(np.array([a]), np.array([o]))
            if len(xyz) and float((xyz @ p[0]).max()) > cos_min:
                continue
            xyz = np.vstack([xyz, p])
            lats.append(float(a))
            lons.append(float(o))
            if len(lats) == n:
                break
    ids = [f"ZZXUA{i + 1:06d}" for i in range(n)]
    return StationNetwork(
        tuple(
            Station(sid, round(a, 4), round(o, 4), name="synthetic", first_year=0, last_year=0)
            for sid, a, o in zip(ids, lats, lons, strict=True)
        )
    )


def _unit_vector(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``(n, 3)`` Cartesian unit vectors of points in degrees."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def latitude_histogram(lat: Iterable[float], edges: Sequence[float]) -> np.ndarray:
    """Fraction of stations per latitude band ``[edges[k], edges[k+1])``."""
    counts, _ = np.histogram(np.asarray(list(lat), dtype=float), bins=np.asarray(edges))
    return counts / max(1, counts.sum())


# --------------------------------------------------------------------------- CF station data

#: The observed model variables, in the order of the canonical data form.
MODEL_VARIABLES = ("height", "u", "v", "tracer")

#: CF attributes of the observed model variables: those of the canonical data form.
VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    name: CANONICAL_ATTRS[name] for name in MODEL_VARIABLES
}


def station_observations_dataset(
    network: StationNetwork,
    times: Sequence[object],
    values: dict[str, np.ndarray],
    error_std: dict[str, float] | None = None,
) -> xr.Dataset:
    """Station observations as a CF discrete-sampling-geometry ``timeSeries`` Dataset.

    Dims ``(time, station)``; coordinates ``station_id``, ``lat``, ``lon`` (0..360) per
    station; one data variable per entry of ``values`` (arrays ``(time, station)``, NaN =
    not observed), with its observation error standard deviation in ``error_std``
    (attribute ``observation_error_std``) when given.
    """
    n_t, n_s = len(times), len(network)
    data_vars = {}
    for name, arr in values.items():
        arr = np.asarray(arr, dtype=float)
        if arr.shape != (n_t, n_s):
            raise ValueError(f"variable {name!r} has shape {arr.shape}, expected {(n_t, n_s)}")
        attrs = dict(VARIABLE_ATTRS.get(name, {"long_name": name}))
        attrs["coordinates"] = "station_id lat lon"
        if error_std is not None and name in error_std:
            attrs["observation_error_std"] = float(error_std[name])
        data_vars[name] = (("time", "station"), arr, attrs)
    ds = xr.Dataset(
        data_vars,
        coords={
            "time": ("time", list(times), {"standard_name": "time", "axis": "T"}),
            "station_id": ("station", np.array(network.ids, dtype=object),
                           {"cf_role": "timeseries_id", "long_name": "IGRA v2 station id"}),
            "lat": ("station", network.lat, {"units": "degrees_north",
                                            "standard_name": "latitude"}),
            "lon": ("station", network.lon, {"units": "degrees_east",
                                            "standard_name": "longitude"}),
        },
        attrs={"Conventions": CONVENTIONS, "featureType": "timeSeries"},
    )
    for name in values:
        ds[name].encoding["_FillValue"] = np.nan
    return ds


def station_id_text(value: object) -> str:
    """A station id read from a file as ``str``: fixed-width characters come back as
    ``bytes`` when a reader does not decode them (padding dropped)."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8").rstrip("\x00 ")
    return str(value)


def network_from_dataset(ds: xr.Dataset) -> StationNetwork:
    """The station network stored in a station-observation Dataset (ids as variable-length
    strings or fixed-width characters)."""
    for name in ("station_id", "lat", "lon"):
        if name not in ds.variables:
            raise KeyError(f"station dataset has no variable {name!r}")
    return StationNetwork.from_arrays(
        [station_id_text(s) for s in ds["station_id"].values], ds["lat"].values,
        ds["lon"].values
    )
