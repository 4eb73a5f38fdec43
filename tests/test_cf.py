"""An offline CF check of the netCDF files the project writes (no network, no cfchecker).

A tiny cycling run (two modes, no plots) writes ``truth.nc``, ``observations.nc`` and
``analyses/<mode>.nc``; the data layer's writer writes a canonical dataset. Every file
must carry what the CF conventions require of it and what a reader of the files needs:

- global ``Conventions`` (``CF-1.x``) and a ``history`` of dated lines (time and command);
- no attribute naming an absolute path of this machine;
- coordinates with units: ``degrees_north`` / ``degrees_east`` for latitude / longitude,
  ``<unit> since <date>`` and a known ``calendar`` for time;
- ``standard_name`` values only from the shipped list ``data/cf_standard_names.txt``,
  with its canonical units; a variable without one has a ``long_name``;
- no variable-length string type (which CF rejects: station ids are ``char`` arrays);
- the discrete-sampling-geometry attributes of the station file;
- files readable by others (the umask, not ``0600``).

The observation reader reads the new files and older ones with variable-length ids.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
from diffda.core.grid import Grid
from diffda.core.variables import PROJECT_VOCABULARY, VARIABLE_ATTRS, history_entry
from diffda.cycler.cli.main import main as cli_main
from diffda.emulators.dataio import make_dataset, write_netcdf
from diffda.observations.stations import network_from_dataset
from diffda.observations.synthetic import read_observations

sys.path.insert(0, str(Path(__file__).parent))
from test_driver import tiny_world  # noqa: E402

CALENDARS = {"standard", "gregorian", "proleptic_gregorian", "noleap", "365_day",
             "all_leap", "366_day", "360_day", "julian"}
TIME_UNITS = re.compile(r"^(seconds|minutes|hours|days) since \d{1,4}-\d\d-\d\d")
HISTORY_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S")


def standard_names() -> dict[str, str]:
    """The shipped standard names and their canonical units."""
    path = Path(__file__).parent / "data" / "cf_standard_names.txt"
    rows = [line.split(maxsplit=1) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return {name: units.strip() for name, units in rows}


def _strings(attrs: dict) -> list[str]:
    return [str(x) for x in attrs.values() if isinstance(x, str)]


def cf_problems(path: Path, forbidden: str) -> list[str]:
    """What ``path`` lacks of the checks of this module (empty: it passes)."""
    names = standard_names()
    problems: list[str] = []
    with netCDF4.Dataset(path) as nc:
        glob = {k: nc.getncattr(k) for k in nc.ncattrs()}
        if not str(glob.get("Conventions", "")).startswith("CF-1."):
            problems.append(f"Conventions = {glob.get('Conventions')!r}")
        history = str(glob.get("history", "")).splitlines()
        if not history or not all(HISTORY_LINE.match(line) for line in history):
            problems.append(f"history = {glob.get('history')!r}")
        everything = {"(global)": glob}
        for name, var in nc.variables.items():
            attrs = {k: var.getncattr(k) for k in var.ncattrs()}
            everything[name] = attrs
            if var.dtype is str or isinstance(var.datatype, netCDF4.VLType):
                problems.append(f"{name}: variable-length string type")
            sn = attrs.get("standard_name")
            if sn is not None:
                if sn not in names:
                    problems.append(f"{name}: standard_name {sn!r} not in the shipped list")
                elif names[sn] != "s" and "units" in attrs and attrs["units"] != names[sn]:
                    problems.append(f"{name}: units {attrs['units']!r}, {sn} wants "
                                    f"{names[sn]!r}")
            elif var.dtype != "S1" and "long_name" not in attrs:
                problems.append(f"{name}: neither standard_name nor long_name")
            if "diffda_name" in attrs and attrs["diffda_name"] not in PROJECT_VOCABULARY:
                problems.append(f"{name}: diffda_name {attrs['diffda_name']!r} unknown")
            if var.dtype != "S1" and name not in nc.dimensions and "units" not in attrs \
                    and sn != "realization":
                problems.append(f"{name}: no units")
        for name, want in (("lat", "degrees_north"), ("lon", "degrees_east")):
            if name in nc.variables and nc[name].getncattr("units") != want:
                problems.append(f"{name}: units {nc[name].units!r}")
        if "time" in nc.variables:
            t = nc["time"]
            if not TIME_UNITS.match(getattr(t, "units", "")):
                problems.append(f"time: units {getattr(t, 'units', None)!r}")
            if getattr(t, "calendar", None) not in CALENDARS:
                problems.append(f"time: calendar {getattr(t, 'calendar', None)!r}")
        for where, attrs in everything.items():
            for text in _strings(attrs):
                if forbidden in text or any(os.path.isabs(w) and len(w) > 1 and w[1:2] != " "
                                            for w in text.split()):
                    problems.append(f"{where}: absolute path in {text!r}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o044 != 0o044:
        problems.append(f"mode {oct(mode)}: not readable by others")
    return problems


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_runs_netcdf_files_pass_the_cf_checks(tmp_path, umask_022, monkeypatch):
    config = tiny_world(tmp_path / "world", modes=("climatological", "free"))
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["/some/bin/cycler", "run", str(config), "--out",
                                      str(run_dir), "--no-plots"])
    assert cli_main(sys.argv[1:]) == 0
    files = [run_dir / "truth.nc", run_dir / "observations.nc",
             *sorted((run_dir / "analyses").glob("*.nc"))]
    assert len(files) == 4
    for path in files:
        assert cf_problems(path, str(tmp_path)) == [], path.name
    with xr.open_dataset(run_dir / "observations.nc") as obs:
        assert obs.attrs["featureType"] == "timeSeries"
        assert obs["station_id"].attrs["cf_role"] == "timeseries_id"
        assert "strlen" in netCDF4.Dataset(run_dir / "observations.nc").dimensions
    with xr.open_dataset(run_dir / "truth.nc") as truth:
        # honest names: the one-layer free-surface height is not a geopotential height
        assert "standard_name" not in truth["height"].attrs
        assert truth["height"].attrs["diffda_name"] == "free_surface_height"
        assert truth["u"].attrs["standard_name"] == "eastward_wind"
        assert truth["land_sea_mask"].attrs["standard_name"] == "land_binary_mask"
        assert truth.attrs["source"] == "nature.nc"  # the data path, not where it lies here
        assert truth.attrs["history"].endswith(" cycler run tiny.toml --out run --no-plots")


def test_the_data_layers_writer_passes_the_cf_checks(tmp_path, umask_022):
    grid = Grid(4, 8)
    import cftime

    times = [cftime.DatetimeNoLeap(1, 1, 1, 6 * k) for k in range(2)]
    fields = {v: np.ones((2, 4, 8)) for v in ("height", "u", "v", "tracer")}
    ds = make_dataset(fields, times, grid)
    ds.attrs["source"] = str(tmp_path / "nature.zarr")
    write_netcdf(ds, tmp_path / "canonical.nc")
    assert cf_problems(tmp_path / "canonical.nc", str(tmp_path)) == []


def test_observation_files_old_and_new_read_the_same(tmp_path, umask_022):
    config = tiny_world(tmp_path / "world", modes=("free",))
    assert cli_main(["run", str(config), "--out", str(tmp_path / "run"), "--no-plots"]) == 0
    new = read_observations(tmp_path / "run" / "observations.nc")
    old_path = tmp_path / "old.nc"  # the earlier form: variable-length string ids
    old_form = new.copy()
    old_form["station_id"].encoding = {}  # written as xarray writes str objects: vlen
    old_form.to_netcdf(old_path)
    with netCDF4.Dataset(old_path) as nc:
        assert nc["station_id"].dtype is str
    old = read_observations(old_path)
    assert network_from_dataset(old).ids == network_from_dataset(new).ids
    assert network_from_dataset(new).ids[0].startswith("ZZXUA")
    xr.testing.assert_identical(old[["height", "u"]], new[["height", "u"]])
    # a reader that leaves the characters undecoded gets bytes: still the same ids
    raw = xr.open_dataset(tmp_path / "run" / "observations.nc", decode_cf=False)
    chars = raw["station_id"].values
    as_bytes = xr.Dataset(coords={"station_id": ("station", [b"".join(row) for row in chars]),
                                  "lat": ("station", raw["lat"].values),
                                  "lon": ("station", raw["lon"].values)})
    assert network_from_dataset(as_bytes).ids == network_from_dataset(new).ids


def test_history_names_the_command_without_local_paths():
    line = history_entry(["/usr/local/bin/cycler", "run", "/elsewhere/x.toml",
                          "--out=/elsewhere/run", "--set", "members=4"])
    assert HISTORY_LINE.match(line)
    assert line.endswith(" cycler run x.toml --out=run --set members=4")
    assert "standard_name" not in VARIABLE_ATTRS["tracer"]  # a humidity-like tracer
