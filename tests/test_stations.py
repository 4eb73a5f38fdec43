"""Station networks: the real IGRA v2 list, skipped-line reporting, the default network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffda.observations.stations import (
    Station,
    StationNetwork,
    default_network,
    global_land,
    grid_land,
    latitude_histogram,
    read_station_list,
    write_station_list,
)

IGRA = Path(__file__).parents[2] / "shared/data/igra2"
LIST = IGRA / "igra2-station-list.txt"
BANDS = [-90, -60, -30, -10, 10, 30, 50, 70, 90]


def _reference_count(first: int, last: int) -> tuple[int, int, int]:
    """Independent count with plain string splits: (kept, mobile, blank-id lines)."""
    kept = mobile = blank = 0
    for line in LIST.read_text(encoding="latin-1").splitlines():
        if not line[:11].strip():
            blank += 1
            continue
        if line[12:20].strip() == "-98.8888":
            mobile += 1
            continue
        f, lst = int(line[72:76]), int(line[77:81])
        kept += int(lst >= first and f <= last)
    return kept, mobile, blank


def test_real_station_list_counts_and_skips() -> None:
    net, skipped = read_station_list(LIST, active_years=(2000, 2026))
    kept, mobile, blank = _reference_count(2000, 2026)
    assert len(net) == kept
    reasons = [s.reason for s in skipped]
    assert sum(r == "mobile station" for r in reasons) == mobile
    assert sum(r.startswith("bad line") for r in reasons) == blank
    assert sum(r.startswith("inactive") for r in reasons) == len(skipped) - mobile - blank
    n_lines = sum(1 for line in LIST.read_text(encoding="latin-1").splitlines() if line.strip())
    assert len(net) + len(skipped) == n_lines  # nothing silently dropped
    assert np.all((net.lon >= 0) & (net.lon < 360)) and np.all(np.abs(net.lat) <= 90)
    i = net.index("USM00070026")
    assert net.lat[i] == pytest.approx(71.2889)
    assert net.lon[i] == pytest.approx(360 - 156.7833)


def test_bad_duplicate_and_out_of_globe_lines_are_reported(tmp_path: Path) -> None:
    lines = LIST.read_text(encoding="latin-1").splitlines()
    good = next(line for line in lines if line.startswith("USM00070026"))
    mobile = next(line for line in lines if "-98.8888" in line)
    bad_lat = good[:12] + " 95.0000" + good[20:]
    bad_num = good[:12] + "  abcdef" + good[20:]
    p = tmp_path / "list.txt"
    p.write_text("\n".join([good, good, mobile, bad_lat, bad_num, "short"]) + "\n")
    net, skipped = read_station_list(p)
    assert net.ids == ["USM00070026"]
    by_line = {s.line: s.reason for s in skipped}
    assert "duplicate id USM00070026" in by_line[2]
    assert by_line[3] == "mobile station"
    assert "lat=95.0" in by_line[4]
    assert "unreadable number" in by_line[5]
    assert "too short" in by_line[6]


def test_network_rejects_duplicates_and_bad_coordinates() -> None:
    with pytest.raises(ValueError, match="duplicate station id 'A'"):
        StationNetwork.from_arrays(["A", "A"], [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="lat=91.0"):
        StationNetwork.from_arrays(["A"], [91.0], [0.0])
    with pytest.raises(ValueError, match="lat=nan"):
        Station("B", float("nan"), 0.0)
    assert Station("C", 10.0, -90.0).lon == 270.0
    with pytest.raises(FileNotFoundError, match="no-such-list"):
        read_station_list("no-such-list.txt")


def test_station_list_round_trip(tmp_path: Path) -> None:
    net, _ = read_station_list(LIST, active_years=(2020, 2026))
    write_station_list(net, tmp_path / "out.txt")
    again, skipped = read_station_list(tmp_path / "out.txt")
    assert skipped == []
    assert again.ids == net.ids
    np.testing.assert_allclose(again.lat, net.lat, atol=1e-4)
    np.testing.assert_allclose(again.lon, net.lon, atol=1e-4)


def test_default_network_is_seeded_on_land_and_igra_like() -> None:
    a = default_network(300, seed=3)
    b = default_network(300, seed=3)
    c = default_network(300, seed=4)
    assert len(a) == 300 and a.ids == b.ids
    np.testing.assert_array_equal(a.lat, b.lat)
    assert not np.array_equal(a.lat, c.lat)
    assert global_land(a.lat, a.lon).all()
    # Minimum separation of 150 km: no two stations in one place.
    la, lo = np.deg2rad(a.lat), np.deg2rad(a.lon)
    xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)
    cosd = xyz @ xyz.T - 2 * np.eye(len(a))
    assert cosd.max() < np.cos(150 / 6371)
    # IGRA-like: compare latitude histograms with the real active network.
    real, _ = read_station_list(LIST, active_years=(2000, 2026))
    h_real = latitude_histogram(real.lat, BANDS)
    h_ours = latitude_histogram(a.lat, BANDS)
    assert 0.5 * np.abs(h_real - h_ours).sum() < 0.12  # total-variation distance
    north_mid = h_ours[5] + h_ours[6]  # 30-70 N
    assert north_mid > 0.4 and north_mid > 3 * (h_ours[0] + h_ours[1])


def test_default_network_on_a_model_land_mask() -> None:
    mask = np.zeros((8, 16))
    mask[5:7, 2:6] = 1.0  # one northern continent
    net = default_network(20, seed=0, is_land=grid_land(mask), min_separation_km=50.0)
    assert grid_land(mask)(net.lat, net.lon).all()
    assert np.all((net.lat >= 22.5) & (net.lat <= 67.5))
    with pytest.raises(ValueError, match="placed only"):
        default_network(50, seed=0, is_land=grid_land(mask), min_separation_km=2000.0,
                        max_draws=20)
    with pytest.raises(ValueError, match="must be positive"):
        default_network(0)
