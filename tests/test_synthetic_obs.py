"""Synthetic station observations from a tiny canonical truth: times, noise, files, CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import cftime
import numpy as np
import pytest
import torch
import xarray as xr
from diffda.core.grid import Grid
from diffda.cycler.cli.main import main as cycler_main
from diffda.observations.igra import read_igra
from diffda.observations.operators import PointOperator, smooth_sphere_fields
from diffda.observations.soundings import soundings_to_dataset, write_igra_directory
from diffda.observations.stations import StationNetwork, global_land, network_from_dataset
from diffda.observations.synthetic import (
    point_observations_at,
    read_observations,
    synthetic_station_observations,
    truth_at_stations,
    write_observations,
)

GRID = Grid(8, 16)
VARS = ("height", "u", "v", "tracer")


def tiny_truth(n_times: int = 12) -> xr.Dataset:
    """Canonical truth: (time, lat, lon), noleap cftime every 6 h from 00 UTC."""
    la, lo = np.meshgrid(GRID.lat, GRID.lon, indexing="ij")
    f = smooth_sphere_fields(la, lo)
    times = [cftime.DatetimeNoLeap(2001, 2, 27) + timedelta(hours=6 * k) for k in range(n_times)]
    amp = 1.0 + 0.1 * np.arange(n_times)[:, None, None]
    data = {
        "height": 5500.0 + 80.0 * amp * f["s"],
        "u": 10.0 * amp * f["u"],
        "v": 10.0 * amp * f["v"],
        "tracer": 1e-3 * np.exp(0.3 * amp * f["s"]),
    }
    ds = xr.Dataset(
        {k: (("time", "lat", "lon"), v) for k, v in data.items()},
        coords={"time": times, "lat": GRID.lat, "lon": GRID.lon},
    )
    ds["land_sea_mask"] = (("lat", "lon"), global_land(la, lo).astype(float))
    return ds


NET = StationNetwork.from_arrays(["ZZXUA000001", "ZZXUA000002", "ZZXUA000003"],
                                 [45.0, -10.0, 80.0], [10.0, 300.0, 100.0])


def test_times_values_and_noise() -> None:
    truth = tiny_truth()
    assert truth["tracer"].min() > 0
    err = {"height": 10.0, "u": 1.5, "v": 1.5, "tracer": 1e-4}
    obs = synthetic_station_observations(truth, NET, seed=7, error_std=err, progress=False)
    assert obs.sizes == {"time": 6, "station": 3}  # 12 six-hourly times -> 00 and 12 UTC
    assert all(t.hour in (0, 12) for t in obs["time"].values)
    assert obs["u"].attrs["observation_error_std"] == 1.5
    assert list(obs["station_id"].values) == NET.ids
    idx = np.array([i for i, t in enumerate(truth["time"].values) if t.hour in (0, 12)])
    clean = truth_at_stations(truth, NET, VARS, idx, progress=False)
    for k, v in enumerate(VARS):
        z = (obs[v].values - clean[..., k]) / err[v]
        assert 0 < np.abs(z).max() < 5.0
    # Pool standardised noise over all variables: mean ~ 0, std ~ 1 (72 draws).
    z = np.stack([(obs[v].values - clean[..., k]) / err[v] for k, v in enumerate(VARS)])
    assert abs(z.mean()) < 0.4 and 0.7 < z.std() < 1.3
    # Noise-free values are the point operator applied to the truth.
    op = PointOperator.from_network(NET, GRID, VARS)
    x0 = torch.as_tensor(np.stack([truth[v].values[0] for v in VARS])[None])
    np.testing.assert_allclose(clean[0].reshape(-1), op(x0)[0].numpy())


def test_seeded_and_independent_of_the_time_range() -> None:
    truth = tiny_truth()
    a = synthetic_station_observations(truth, NET, seed=1, progress=False)
    b = synthetic_station_observations(truth, NET, seed=1, progress=False)
    c = synthetic_station_observations(truth, NET, seed=2, progress=False)
    part = synthetic_station_observations(truth.isel(time=slice(4, None)), NET, seed=1,
                                          error_std={v: a[v].attrs["observation_error_std"]
                                                     for v in VARS}, progress=False)
    np.testing.assert_array_equal(a["height"].values, b["height"].values)
    assert not np.array_equal(a["height"].values, c["height"].values)
    np.testing.assert_array_equal(part["u"].values, a["u"].values[2:])
    # Default error std: 0.1 x std of the station values.
    assert a["u"].attrs["observation_error_std"] > 0


def test_bad_truth_is_rejected_with_names() -> None:
    truth = tiny_truth()
    with pytest.raises(KeyError, match="humidity"):
        synthetic_station_observations(truth, NET, seed=0, variables=("humidity",),
                                       progress=False)
    bad = truth.copy(deep=True)
    bad["v"][3, 2, 2] = np.nan  # 18 UTC: not an observation time, never read
    synthetic_station_observations(bad, NET, seed=0, progress=False)
    bad["v"][2, 2, 2] = np.nan  # 12 UTC
    with pytest.raises(ValueError, match="truth variable 'v' has non-finite values at time"):
        synthetic_station_observations(bad, NET, seed=0, progress=False)
    with pytest.raises(ValueError, match="not observed"):
        synthetic_station_observations(truth, NET, seed=0, variables=("u",),
                                       error_std={"v": 1.0}, progress=False)
    with pytest.raises(ValueError, match="no times at hours"):
        synthetic_station_observations(truth, NET, seed=0, hours=(3,), progress=False)
    flipped = truth.isel(lat=slice(None, None, -1))
    with pytest.raises(ValueError, match="not the WeatherBench cell-centre grid"):
        synthetic_station_observations(flipped, NET, seed=0, progress=False)


def test_netcdf_and_igra_round_trips(tmp_path: Path) -> None:
    truth = tiny_truth()
    obs = synthetic_station_observations(truth, NET, seed=3, progress=False)
    path = write_observations(obs, tmp_path / "obs.nc")
    back = read_observations(path)
    assert back["time"].values[0].calendar == "noleap"
    assert list(back["time"].values) == list(obs["time"].values)
    for v in VARS:
        np.testing.assert_array_equal(back[v].values, obs[v].values)
        assert back[v].attrs["units"] == obs[v].attrs["units"]
    assert back.attrs["featureType"] == "timeSeries" and back.attrs["seed"] == 3
    assert network_from_dataset(back).ids == NET.ids
    # IGRA v2 files written from the synthetic observations read back through the same
    # reader and real-data mapping, within the file format's quantisation.
    paths, n_bad = write_igra_directory(obs, tmp_path / "igra")
    assert n_bad == 0 and len(paths) == 3
    soundings = [s for p in paths for s in read_igra(p).soundings]
    assert all(s.complete for s in soundings)
    again, skipped = soundings_to_dataset(soundings, calendar="noleap")
    assert skipped == []
    assert list(again["time"].values) == list(obs["time"].values)
    assert again["station_id"].values.tolist() == NET.ids
    np.testing.assert_allclose(again["height"].values, obs["height"].values, atol=0.5)
    speed = np.hypot(obs["u"].values, obs["v"].values)
    tol_wind = 0.05 + speed * np.deg2rad(0.5) + 1e-9
    assert np.all(np.abs(again["u"].values - obs["u"].values) <= tol_wind)
    assert np.all(np.abs(again["v"].values - obs["v"].values) <= tol_wind)
    np.testing.assert_allclose(again["tracer"].values, obs["tracer"].values, rtol=0.02)


def test_point_observations_at_drops_missing_values() -> None:
    truth = tiny_truth()
    obs = synthetic_station_observations(truth, NET, seed=3, progress=False)
    obs["u"][1, 2] = np.nan
    t = obs["time"].values[1]
    op, y, err = point_observations_at(obs, t, GRID, VARS)
    assert op.n_obs == len(y) == len(err) == 3 * 4 - 1
    assert "ZZXUA000003:u" not in op.labels and "ZZXUA000003:v" in op.labels
    assert np.isfinite(y).all() and np.all(err > 0)
    with pytest.raises(KeyError, match="no observations at"):
        point_observations_at(obs, cftime.DatetimeNoLeap(1999, 1, 1), GRID, VARS)


def test_cli_make_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_truth().to_netcdf(tmp_path / "truth.nc")
    rc = cycler_main(["obs", "make", "--truth", str(tmp_path / "truth.nc"),
                      "--out", str(tmp_path / "obs.nc"), "--n-stations", "5", "--seed", "1",
                      "--error-std", "height=12,u=2", "--igra-dir", str(tmp_path / "igra"),
                      "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    assert cycler_main(["obs", "inspect", str(tmp_path / "obs.nc"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_stations"] == 5 and d["n_times"] == 6
    assert d["variables"]["height"]["observation_error_std"] == 12.0
    files = sorted((tmp_path / "igra").glob("*-data.txt"))
    assert len(files) == 5
    assert cycler_main(["obs", "inspect", str(files[0]), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_soundings"] == 6 and s["skipped"] == []
    assert all(x["levels_read"] == 1 for x in s["soundings"])
    assert cycler_main(["obs", "make", "--truth", str(tmp_path / "none.nc"),
                        "--out", str(tmp_path / "x.nc")]) == 2
    assert "none.nc does not exist" in capsys.readouterr().err


def test_station_term_from_an_observation_file() -> None:
    from diffda.observations.likelihood import ErrorModel, station_term
    from diffda.observations.station_arrays import station_observations

    truth = tiny_truth()
    err = {"height": 10.0, "u": 1.5, "v": 1.5, "tracer": 1e-4}
    obs = synthetic_station_observations(truth, NET, seed=3, error_std=err, progress=False)
    mean, std = [5500.0, 0.0, 0.0, 1e-3], [80.0, 10.0, 10.0, 5e-4]
    t = obs["time"].values[2]
    (stations,) = station_observations(obs, [t], VARS)
    term = station_term(stations, GRID, VARS, mean, std, ErrorModel(sigma_y=1.0, gamma=0.2),
                        weight=0.5)
    assert term.y.numel() == 12 and term.weight == 0.5 and term.gamma == 0.2
    np.testing.assert_allclose(term.sigma_y.numpy()[:4], [(10 / 80) ** 2, 0.0225, 0.0225, 0.04])
    # The normalised truth scores a log-likelihood close to -n_obs / 2 (chi-square mean).
    k = list(truth["time"].values).index(t)
    x = np.stack([(truth[v].values[k] - m) / s for v, m, s in zip(VARS, mean, std, strict=True)])
    ll = term.log_likelihood(torch.as_tensor(x[None]), 0.0)
    assert -3 * 12 < float(ll[0]) < 0.0


def test_cli_make_on_the_real_igra_network(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    igra_list = Path(__file__).parents[2] / "shared/data/igra2/igra2-station-list.txt"
    tiny_truth(4).to_netcdf(tmp_path / "truth.nc")
    args = ["obs", "make", "--truth", str(tmp_path / "truth.nc"), "--out",
            str(tmp_path / "obs.nc"), "--network", str(igra_list), "--active-years",
            "2025:2026", "--variables", "height,u", "--no-progress"]
    assert cycler_main(args) == 0
    out = capsys.readouterr().out
    obs = read_observations(tmp_path / "obs.nc")
    assert f"{obs.sizes['station']} stations" in out and obs.sizes["station"] > 100
    assert set(obs.data_vars) == {"height", "u"} and obs.sizes["time"] == 2
    assert cycler_main([*args[:-1], "--error-std", "height"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
    assert cycler_main([*args[:-1], "--active-years", "2026:2020"]) == 2
    assert "first year after last year" in capsys.readouterr().err
