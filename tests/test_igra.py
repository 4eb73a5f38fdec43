"""IGRA v2 sounding files: the real file, round trips, bad lines, the real-data mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffda.observations.igra import (
    MISSING,
    REMOVED,
    Levels,
    Sounding,
    SoundingHeader,
    format_soundings,
    read_igra,
    write_igra,
)
from diffda.observations.meteo import (
    dewpoint_from_specific_humidity,
    saturation_vapour_pressure,
    specific_humidity,
    wind_components,
    wind_direction_speed,
)
from diffda.observations.soundings import model_values, soundings_to_dataset

IGRA = Path(__file__).parents[2] / "shared/data/igra2"
DATA = IGRA / "USM00070026-data.siphon.txt"


def _reference_levels(path: Path) -> list[tuple[int, int]]:
    """(declared, present) level counts per header, by counting lines."""
    out: list[list[int]] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            out.append([int(line[32:36]), 0])
        elif line.strip():
            out[-1][1] += 1
    return [(a, b) for a, b in out]


def test_real_file_soundings_and_levels() -> None:
    f = read_igra(DATA)
    ref = _reference_levels(DATA)
    assert len(f.soundings) == len(ref) == 3
    assert [(s.header.numlev, len(s.levels)) for s in f.soundings] == ref
    assert [s.complete for s in f.soundings] == [True, True, False]
    # The file ends in a header without levels: reported, with the counts.
    assert len(f.skipped) == 1 and "declares 147 levels, 0 read" in f.skipped[0].reason
    h = f.soundings[1].header
    assert (h.id, h.year, h.month, h.day) == ("USM00070026", 2010, 6, 1)
    assert (h.hour, h.reltime) == (12, 1100)
    assert (h.lat, h.lon) == (71.2889, -156.7833)
    assert h.time().hour == 12


def test_real_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    f = read_igra(DATA)
    assert format_soundings(f.soundings) == DATA.read_text()
    write_igra(f.soundings, tmp_path / "copy.txt")
    g = read_igra(tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_text() == DATA.read_text()
    for a, b in zip(f.soundings, g.soundings, strict=True):
        assert a.header == b.header
        for name in ("press", "gph", "temp", "rh", "dpdp", "wdir", "wspd", "pflag"):
            np.testing.assert_array_equal(getattr(a.levels, name), getattr(b.levels, name))


def test_missing_and_removed_values_are_nan() -> None:
    lv = read_igra(DATA).soundings[0].levels
    raw = lv.wdir
    assert (raw == MISSING).any()
    val = lv.value("wdir")
    np.testing.assert_array_equal(np.isnan(val), raw == MISSING)
    lv.temp[3] = REMOVED
    assert np.isnan(lv.value("temp")[3])
    assert lv.value("press")[0] == 100980.0 and lv.value("temp")[1] == pytest.approx(-0.7)
    with pytest.raises(KeyError, match="unknown IGRA level field 'pressure'"):
        lv.value("pressure")


def test_bad_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    lines = DATA.read_text().splitlines()[:5]
    lines[0] = lines[0][:33] + "  4" + lines[0][36:]  # NUMLEV 4
    lines[2] = lines[2][:9] + "  x980" + lines[2][15:]  # bad PRESS
    lines[3] = lines[3][:15] + "Z" + lines[3][16:]  # bad flag
    orphan = "10    12 100000    90B   -7B  936     9 -9999 -9999 "
    bad_header = "#USM00070026 2010 13 01 00 2303    1 ncdc6301 ncdc6301  712889 -1567833"
    p = tmp_path / "bad.txt"
    p.write_text("\n".join([orphan, *lines, bad_header, orphan]) + "\n")
    f = read_igra(p)
    reasons = {s.line: s.reason for s in f.skipped}
    assert "without a valid header" in reasons[1]
    assert "PRESS = 'x980'" in reasons[4]
    assert "flag PFLAG = 'Z'" in reasons[5]
    assert "declares 4 levels, 2 read" in reasons[2]
    assert "bad date 2010-13-01" in reasons[7]
    assert "without a valid header" in reasons[8]
    assert len(f.soundings) == 1 and len(f.soundings[0].levels) == 2
    with pytest.raises(ValueError, match="derived-parameter"):
        read_igra(IGRA / "USM00070026-drvd.siphon.txt")
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        read_igra(tmp_path / "nothing.txt")


def test_writer_rejects_values_that_do_not_fit(tmp_path: Path) -> None:
    h = SoundingHeader(id="ZZXUA000001", year=2001, month=1, day=1, hour=0, reltime=9999,
                       numlev=1, p_src="x", np_src="", lat=10.0, lon=20.0)
    row = {"lvltyp1": 1, "lvltyp2": 0, "etime": MISSING, "press": 50000, "pflag": " ",
           "gph": 123456, "zflag": " ", "temp": 0, "tflag": " ", "rh": MISSING, "dpdp": 5,
           "wdir": 0, "wspd": 0}
    with pytest.raises(ValueError, match="GPH = 123456"):
        write_igra([Sounding(h, Levels.from_rows([row]))], tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()


def test_wind_and_humidity_conversions() -> None:
    u, v = wind_components(np.array([270.0, 0.0, 90.0]), np.array([10.0, 5.0, 2.0]))
    np.testing.assert_allclose(u, [10.0, 0.0, -2.0], atol=1e-12)  # from the west: eastward
    np.testing.assert_allclose(v, [0.0, -5.0, 0.0], atol=1e-12)  # from the north: southward
    rng = np.random.default_rng(0)
    uu, vv = rng.normal(size=50), rng.normal(size=50)
    d, s = wind_direction_speed(uu, vv)
    u2, v2 = wind_components(d, s)
    np.testing.assert_allclose(u2, uu, atol=1e-12)
    np.testing.assert_allclose(v2, vv, atol=1e-12)
    assert saturation_vapour_pressure(0.0) == pytest.approx(6.112)
    td = np.array([-40.0, -20.0, 0.0, 15.0])
    q = specific_humidity(500.0, td)
    np.testing.assert_allclose(dewpoint_from_specific_humidity(500.0, q), td, atol=1e-10)
    # q = eps e / (p - 0.378 e) at e = 6.112 hPa, p = 1000 hPa
    assert specific_humidity(1000.0, 0.0) == pytest.approx(0.622 * 6.112 / (1000 - 0.378 * 6.112))


def test_real_sounding_to_model_variables() -> None:
    f = read_igra(DATA)
    line = next(x for x in DATA.read_text().splitlines() if x.startswith("10") and "50000" in x)
    gph, temp, dpd = int(line[16:21]), int(line[22:27]) / 10, int(line[34:39]) / 10
    wdir, wspd = int(line[40:45]), int(line[46:51]) / 10
    vals = model_values(f.soundings[0], 500)
    assert vals["height"] == gph
    u, v = wind_components(wdir, wspd)
    assert vals["u"] == pytest.approx(float(u)) and vals["v"] == pytest.approx(float(v))
    assert vals["tracer"] == pytest.approx(float(specific_humidity(500.0, temp - dpd)))
    assert all(np.isnan(x) for x in model_values(f.soundings[2], 500).values())
    assert all(np.isnan(x) for x in model_values(f.soundings[0], 123).values())
    ds, skipped = soundings_to_dataset(f.soundings)
    assert ds.sizes == {"time": 3, "station": 1} and skipped == []
    assert ds["height"].values[0, 0] == gph and np.isnan(ds["height"].values[2, 0])
    assert ds["lon"].values[0] == pytest.approx(360 - 156.7833)
    assert ds["height"].attrs["units"] == "m" and ds.attrs["featureType"] == "timeSeries"
    ds12, skipped12 = soundings_to_dataset(f.soundings, hours=(12,))
    assert ds12.sizes["time"] == 1 and len(skipped12) == 2 and "hour not in" in skipped12[0].reason


def test_level_per_variable_and_unknown_variable() -> None:
    s = read_igra(DATA).soundings[0]
    mixed = model_values(s, {"height": 500, "tracer": 850})
    line = next(x for x in DATA.read_text().splitlines() if x.startswith("10") and "85000" in x)
    temp, dpd = int(line[22:27]) / 10, int(line[34:39]) / 10
    assert mixed["tracer"] == pytest.approx(float(specific_humidity(850.0, temp - dpd)))
    assert mixed["height"] == model_values(s, 500)["height"] and np.isnan(mixed["u"])
    with pytest.raises(ValueError, match=r"unknown model variable\(s\) \['temperature'\]"):
        model_values(s, {"temperature": 850})


def test_moving_station_and_missing_hour_are_reported() -> None:
    f = read_igra(DATA)
    moved = Sounding(
        SoundingHeader(**{**f.soundings[1].header.__dict__, "lat": 60.0}), f.soundings[1].levels,
        line=160,
    )
    no_hour = Sounding(SoundingHeader(**{**f.soundings[0].header.__dict__, "hour": 99}),
                       f.soundings[0].levels, line=1)
    ds, skipped = soundings_to_dataset([f.soundings[0], moved, no_hour])
    assert ds.sizes["time"] == 1
    reasons = sorted(s.reason for s in skipped)
    assert "hour missing" in reasons[1] and "station moved" in reasons[0]
