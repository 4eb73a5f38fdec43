"""Soundings as model variables, and model variables as soundings.

Real-data path (:func:`model_values`, :func:`soundings_to_dataset`): the standard pressure
level (default 500 hPa) gives ``height`` (geopotential height, m), ``u`` and ``v`` from
direction and speed (meteorological convention, direction the wind blows *from*), and
``tracer`` = specific humidity from temperature and dewpoint depression (Bolton 1980).
Synthetic path (:func:`dataset_to_soundings`, :func:`write_igra_directory`): station
observations in the canonical form written as IGRA v2 files (:mod:`diffda.observations.igra`)
that the reader reads back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cftime
import numpy as np
import xarray as xr
from diffda.observations.igra import MISSING, Levels, Sounding, SoundingHeader, write_igra
from diffda.observations.meteo import (
    dewpoint_from_specific_humidity,
    specific_humidity,
    wind_components,
    wind_direction_speed,
)
from diffda.observations.stations import (
    MODEL_VARIABLES,
    Skipped,
    StationNetwork,
    station_observations_dataset,
)

#: ICAO/US standard atmosphere temperature (degC) at a few standard levels; used as the
#: temperature carried in synthetic IGRA files (the model has no temperature).
STANDARD_TEMPERATURE_C = {1000: 14.3, 850: 1.5, 700: -4.6, 500: -21.2, 300: -44.5, 250: -52.3}


def model_values(sounding: Sounding, level_hpa: int | Mapping[str, int] = 500) -> dict[str, float]:
    """Model variables from standard pressure levels of one sounding.

    ``level_hpa``: one level for all variables, or a level per variable (e.g.
    ``{"height": 500, "u": 500, "v": 500, "tracer": 850}``). ``height`` = GPH (m);
    ``u``, ``v`` from WDIR/WSPD; ``tracer`` = specific humidity (kg/kg) from TEMP and DPDP.
    NaN where the level or a needed value is missing or removed by QC.
    """
    levels = (dict.fromkeys(MODEL_VARIABLES, level_hpa) if isinstance(level_hpa, int)
              else dict(level_hpa))
    unknown = sorted(set(levels) - set(MODEL_VARIABLES))
    if unknown:
        raise ValueError(f"unknown model variable(s) {unknown}; known: {list(MODEL_VARIABLES)}")
    lv = sounding.levels
    out = dict.fromkeys(MODEL_VARIABLES, math.nan)
    for name, p_hpa in levels.items():
        rows = np.flatnonzero((lv.press == p_hpa * 100) & (lv.lvltyp1 == 1))
        if len(rows) == 0:
            continue
        i = int(rows[0])
        if name == "height":
            out[name] = float(lv.value("gph")[i])
        elif name in ("u", "v"):
            u, v = wind_components(lv.value("wdir")[i], lv.value("wspd")[i])
            out[name] = float(u if name == "u" else v)
        else:
            td = lv.value("temp")[i] - lv.value("dpdp")[i]
            out[name] = float(specific_humidity(p_hpa, td))
    return out


def soundings_to_dataset(
    soundings: Sequence[Sounding],
    level_hpa: int | Mapping[str, int] = 500,
    calendar: str = "standard",
    hours: Sequence[int] | None = (0, 12),
) -> tuple[xr.Dataset, list[Skipped]]:
    """Observations in the canonical station form (dims ``time x station``) from soundings.

    Stations are taken in order of first appearance (id, header latitude/longitude).
    Soundings with a missing hour, an hour not in ``hours`` (``None`` keeps all), a
    second sounding for the same station and time, or a position other than the station's
    first (a mobile station) are reported as skipped. Values missing
    in the files are NaN.
    """
    skipped: list[Skipped] = []
    station_pos: dict[str, tuple[float, float]] = {}
    records: dict[tuple[cftime.datetime, str], dict[str, float]] = {}
    for s in soundings:
        h = s.header
        t = h.time(calendar)
        where = f"sounding {h.id} {h.year}-{h.month:02d}-{h.day:02d} {h.hour:02d}Z"
        if t is None:
            skipped.append(Skipped("soundings", s.line, f"{where}: hour missing"))
            continue
        if hours is not None and h.hour not in hours:
            skipped.append(Skipped("soundings", s.line, f"{where}: hour not in {list(hours)}"))
            continue
        if (t, h.id) in records:
            skipped.append(Skipped("soundings", s.line, f"{where}: second sounding at this time"))
            continue
        first = station_pos.setdefault(h.id, (h.lat, h.lon))
        if abs(first[0] - h.lat) > 1e-3 or abs(first[1] - h.lon) > 1e-3:
            skipped.append(Skipped(
                "soundings", s.line,
                f"{where}: station moved from {first} to {(h.lat, h.lon)} (mobile station)",
            ))
            continue
        records[(t, h.id)] = model_values(s, level_hpa)
    ids = list(station_pos)
    network = StationNetwork.from_arrays(
        ids, [station_pos[i][0] for i in ids], [station_pos[i][1] for i in ids]
    )
    times = sorted({t for t, _ in records})
    values = {v: np.full((len(times), len(ids)), np.nan) for v in MODEL_VARIABLES}
    ti = {t: k for k, t in enumerate(times)}
    si = {sid: k for k, sid in enumerate(ids)}
    for (t, sid), vals in records.items():
        for v in MODEL_VARIABLES:
            values[v][ti[t], si[sid]] = vals[v]
    ds = station_observations_dataset(network, times, values)
    ds.attrs["source"] = "IGRA v2 soundings"
    ds.attrs["pressure_level_hPa"] = (
        level_hpa if isinstance(level_hpa, int) else json.dumps(dict(level_hpa))
    )
    return ds, skipped


def dataset_to_soundings(
    obs: xr.Dataset, level_hpa: int = 500, p_src: str = "diffda"
) -> tuple[dict[str, list[Sounding]], int]:
    """Synthetic observations (canonical station form) as IGRA v2 soundings, per station.

    Each (time, station) becomes one sounding with one standard-level record at
    ``level_hpa``: GPH = ``height`` (m, rounded), WDIR/WSPD from ``u``, ``v`` (1 deg,
    0.1 m/s), and the tracer as dewpoint depression. The model has no temperature, so
    TEMP carries ``max(T_std, T_d)`` with ``T_std`` the standard-atmosphere temperature of
    the level: ``T_d`` is then recovered exactly up to the 0.1 degC rounding (about 1 %
    in ``q``). Returns the soundings by station id and the number of non-positive tracer
    values, which have no dewpoint and are written as missing (-9999).
    """
    if level_hpa not in STANDARD_TEMPERATURE_C:
        raise ValueError(
            f"level {level_hpa} hPa has no standard temperature; use one of "
            f"{sorted(STANDARD_TEMPERATURE_C)}"
        )
    t_std = STANDARD_TEMPERATURE_C[level_hpa]
    ids = [str(s) for s in obs["station_id"].values]
    lats, lons = obs["lat"].values, obs["lon"].values
    times = obs["time"].values
    n_bad_tracer = 0

    def raw(values: np.ndarray, scale: float) -> np.ndarray:
        return np.where(np.isfinite(values), np.round(values / scale), MISSING).astype(np.int64)

    out: dict[str, list[Sounding]] = {}
    for k, sid in enumerate(ids):
        col = {v: obs[v].values[:, k] if v in obs else np.full(len(times), np.nan)
               for v in MODEL_VARIABLES}
        wdir, wspd = wind_direction_speed(col["u"], col["v"])
        wind_ok = np.isfinite(col["u"]) & np.isfinite(col["v"])
        q = col["tracer"]
        q_ok = np.isfinite(q) & (q > 0)
        n_bad_tracer += int((np.isfinite(q) & (q <= 0)).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            td = dewpoint_from_specific_humidity(level_hpa, np.where(q_ok, q, 1e-3))
        temp = np.where(q_ok, np.maximum(t_std, td), t_std)
        temp_raw = np.round(temp / 0.1).astype(np.int64)
        dpd_raw = np.where(q_ok, np.round((temp_raw * 0.1 - td) / 0.1), MISSING).astype(np.int64)
        soundings = []
        lon = float(lons[k]) - 360.0 if float(lons[k]) > 180.0 else float(lons[k])
        for it, t in enumerate(times):
            header = SoundingHeader(
                id=sid, year=t.year, month=t.month, day=t.day, hour=t.hour, reltime=9999,
                numlev=1, p_src=p_src, np_src="", lat=float(lats[k]), lon=lon,
            )
            row = {
                "lvltyp1": 1, "lvltyp2": 0, "etime": MISSING, "press": level_hpa * 100,
                "pflag": " ", "gph": int(raw(col["height"][it : it + 1], 1.0)[0]), "zflag": " ",
                "temp": int(temp_raw[it]), "tflag": " ", "rh": MISSING, "dpdp": int(dpd_raw[it]),
                "wdir": int(np.round(wdir[it]) % 360) if wind_ok[it] else MISSING,
                "wspd": int(np.round(wspd[it] / 0.1)) if wind_ok[it] else MISSING,
            }
            soundings.append(Sounding(header, Levels.from_rows([row])))
        out[sid] = soundings
    return out, n_bad_tracer


def write_igra_directory(
    obs: xr.Dataset, directory: str | os.PathLike[str], level_hpa: int = 500
) -> tuple[list[Path], int]:
    """Write one ``<ID>-data.txt`` IGRA v2 file per station of ``obs`` into ``directory``.
    Returns the paths and the number of tracer values written as missing."""
    directory = Path(directory)
    by_station, n_bad = dataset_to_soundings(obs, level_hpa)
    paths = []
    for sid, soundings in by_station.items():
        p = directory / f"{sid}-data.txt"
        write_igra(soundings, p)
        paths.append(p)
    return paths, n_bad
