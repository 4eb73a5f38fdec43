"""Data layer: real ERA5/ERA-Interim files, regridding, round trips, climatology, batches."""

from __future__ import annotations

from pathlib import Path

import cftime
import dask.array
import numpy as np
import pytest
import torch
import xarray as xr
from diffda.core.grid import Grid, lat_weighted_mean
from diffda.emulators import batches, dataio, reanalysis, regrid
from scipy.interpolate import RegularGridInterpolator

ERA5 = Path(__file__).parents[2] / "shared/data/era5"
ERAINT = ERA5 / "eraint_uvz.nc"
T2M = ERA5 / "2m_temperature_1980_5.625deg.nc"
CONSTANTS = ERA5 / "constants_5.625deg.nc"


def _raw(path: Path, var: str) -> xr.DataArray:
    return xr.open_dataset(path)[var]


def test_eraint_descending_lat_and_signed_lon_to_canonical():
    ds = dataio.to_canonical(xr.open_dataset(ERAINT), str(ERAINT))
    lat, lon = ds["lat"].values, ds["lon"].values
    assert np.all(np.diff(lat) > 0) and np.all(np.diff(lon) > 0)
    assert lon.min() >= 0.0 and lon.max() < 360.0
    raw = _raw(ERAINT, "u")
    # the value at (lat -45, lon -90 = 270) is the same point after reordering
    a = raw.sel(month=7, level=500, latitude=-45.0, longitude=-90.0).item()
    b = ds["u"].sel(month=7, level=500, lat=-45.0, lon=270.0).item()
    assert a == b


def test_eraint_level_names_units_and_bilinear_regridding():
    g = Grid(32, 64)
    ds = reanalysis.open_reanalysis(ERAINT, {"height": "z500", "u": "u@850",
                                         "v": "v_component_of_wind@200"}, g)
    assert isinstance(ds["height"].data, dask.array.Array)  # lazy
    assert ds["height"].attrs["units"] == "m"
    h = ds["height"].values
    assert 4600 < h.min() and h.max() < 6000  # 500 hPa geopotential height in m
    # compare with an independent bilinear interpolation of the raw file
    raw = dataio.to_canonical(xr.open_dataset(ERAINT), "raw")
    z = raw["z"].sel(level=500, month=1).values / reanalysis.GRAVITY
    lon = np.concatenate([raw["lon"].values, [360.0]])
    zz = np.concatenate([z, z[:, :1]], axis=1)
    interp = RegularGridInterpolator((raw["lat"].values, lon), zz)
    pts = np.stack(np.meshgrid(g.lat, g.lon, indexing="ij"), -1).reshape(-1, 2)
    ref = interp(pts).reshape(32, 64)
    np.testing.assert_allclose(ds["height"].sel(month=1).values, ref, rtol=1e-12)
    same = reanalysis.open_reanalysis(ERAINT, {"height": "geopotential@500"}, g)
    np.testing.assert_array_equal(same["height"].values, h)


def test_weatherbench_t2m_needs_units_and_regrids_conservatively_like_coarsen():
    with pytest.raises(ValueError, match="no units"):
        reanalysis.open_reanalysis(T2M, {"t2m": "2m_temperature"})
    ds = reanalysis.open_reanalysis(T2M, {"t2m": "t2m"}, units={"t2m": "K"})
    raw = _raw(T2M, "t2m").values
    np.testing.assert_array_equal(ds["t2m"].values, raw)  # already canonical
    same = regrid.regrid(ds, Grid(32, 64), "bilinear")
    np.testing.assert_allclose(same["t2m"].values, raw, rtol=1e-12)
    cons = regrid.regrid(ds, Grid(16, 32), "conservative")
    # 32x64 -> 16x32 cells: latitude pairs nest (area weights); a coarse cell centred at
    # lon 11.25 j covers the fine cell at 11.25 j and halves of its two neighbours
    w = Grid(32, 64).area_weights()
    lat2 = (raw * w[:, None]).reshape(-1, 16, 2, 64).sum(2) / w.reshape(16, 2).sum(1)[:, None]
    ref = 0.5 * lat2[..., ::2] + 0.25 * (lat2[..., 1::2] + np.roll(lat2, 1, -1)[..., ::2])
    np.testing.assert_allclose(cons["t2m"].values, ref, rtol=1e-10)
    assert cons["t2m"].dims == ("time", "lat", "lon")
    # conservative: the area-weighted global mean is kept
    np.testing.assert_allclose(
        lat_weighted_mean(torch.from_numpy(cons["t2m"].values)).numpy(),
        lat_weighted_mean(torch.from_numpy(raw)).numpy(), rtol=1e-12)


def test_constants_and_errors_on_real_files():
    ds = reanalysis.open_reanalysis(CONSTANTS, {"orography": "orography",
                                            "land_sea_mask": "lsm"})
    assert 0.2 < float(ds["land_sea_mask"].mean()) < 0.5
    assert ds["orography"].attrs["units"] == "m"
    with pytest.raises(KeyError, match="'z700'"):
        reanalysis.open_reanalysis(ERAINT, {"height": "z700"})
    with pytest.raises(KeyError, match="humidity"):
        reanalysis.open_reanalysis(ERAINT, {"tracer": "specific_humidity@500"})
    with pytest.raises(ValueError, match="repeat the same times"):
        reanalysis.open_reanalysis(sorted(ERA5.glob("2m_temperature_*.nc")), {"t2m": "t2m"},
                               units={"t2m": "K"})
    with pytest.raises(ValueError, match="unknown regridding"):
        regrid.regrid(ds, Grid(8, 16), "cubic")


def test_bad_files_and_units_give_clear_errors(tmp_path):
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a netcdf file")
    with pytest.raises(ValueError, match="junk.nc"):
        dataio.open_dataset(junk)
    with pytest.raises(FileNotFoundError):
        dataio.open_dataset(tmp_path / "missing.zarr")
    bad = xr.Dataset({"z": (("lat", "lon"), np.ones((3, 4)), {"units": "furlongs"})},
                     coords={"lat": [-10.0, 0.0, 10.0], "lon": [0.0, 90.0, 180.0, 270.0]})
    bad.to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(ValueError, match="furlongs"):
        reanalysis.open_reanalysis(tmp_path / "bad.nc", {"height": "z"})
    nolat = xr.Dataset({"z": (("a", "b"), np.ones((3, 4)))})
    nolat.to_netcdf(tmp_path / "nolat.nc")
    with pytest.raises(ValueError, match="latitude"):
        dataio.open_dataset(tmp_path / "nolat.nc")


def _store(tmp_path: Path, n: int = 40) -> tuple[Path, xr.Dataset]:
    g = Grid(4, 8)
    t0 = cftime.DatetimeNoLeap(2000, 1, 1)
    times = [t0 + (cftime.DatetimeNoLeap(2000, 1, 1, 6) - t0) * i for i in range(n)]
    rng = np.random.default_rng(0)
    data = {"height": 5000 + 100 * rng.standard_normal((n, 4, 8)).astype(np.float32),
            "u": 10 * rng.standard_normal((n, 4, 8)).astype(np.float32)}
    ds = dataio.make_dataset(data, times, g)
    path = tmp_path / "s.zarr"
    dataio.write_zarr(ds.chunk({"time": 8}), path)
    return path, ds


def test_round_trips_zarr_and_netcdf(tmp_path):
    path, ds = _store(tmp_path)
    back = dataio.open_dataset(path)
    assert isinstance(back["u"].data, dask.array.Array)
    xr.testing.assert_identical(back.load().drop_attrs(), ds.drop_attrs())
    assert back["time"].values[0].calendar == "noleap"
    nc = tmp_path / "s.nc"
    dataio.write_netcdf(ds, nc)
    back = dataio.open_dataset(nc).load()
    np.testing.assert_array_equal(back["height"].values, ds["height"].values)
    assert list(back["time"].values) == list(ds["time"].values)
    assert back["u"].attrs["units"] == "m s-1"


def test_climatology_matches_numpy_and_round_trips(tmp_path):
    path, ds = _store(tmp_path)
    clim = dataio.climatology(dataio.open_dataset(path), ["height", "u"])
    w = Grid(4, 8).area_weights()[None, :, None] * np.ones((40, 4, 8))
    x = ds["u"].values.astype(np.float64)
    m = (x * w).sum() / w.sum()
    assert clim.mean["u"] == pytest.approx(m, rel=1e-10)
    assert clim.std["u"] == pytest.approx(np.sqrt((((x - m) ** 2) * w).sum() / w.sum()), rel=1e-10)
    clim.save(tmp_path / "c.json")
    again = dataio.Climatology.load(tmp_path / "c.json")
    assert again == clim
    t = torch.randn(2, 3, 2, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(clim.denormalise(clim.normalise(t, ["height", "u"], 2),
                                                ["height", "u"], 2), t)
    z = clim.normalise(t, ["height", "u"], 2)
    assert float(z[:, :, 0].mean()) == pytest.approx((0 - clim.mean["height"]) / clim.std["height"],
                                                     abs=0.1)


def test_state_batches_seeded_sharded_lazy(tmp_path):
    path, ds = _store(tmp_path)
    clim = dataio.climatology(ds, ["height", "u"])
    kw = dict(batch_size=4, window=3, seed=7)
    a = list(batches.StateBatches(path, ["height", "u"], clim, **kw))
    b = list(batches.StateBatches(path, ["height", "u"], clim, **kw))
    assert len(a) == (40 - 3 + 1) // 4
    assert a[0].state.shape == (4, 3, 2, 4, 8)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.state, y.state)
    # contents: normalised windows of consecutive times
    s0 = int(a[0].index[0])
    ref = (ds["u"].values[s0:s0 + 3] - clim.mean["u"]) / clim.std["u"]
    np.testing.assert_allclose(a[0].state[0, :, 1].numpy(), ref, rtol=1e-5, atol=1e-5)
    assert [(t - a[0].times[0][0]).total_seconds() for t in a[0].times[0]] == [0, 21600, 43200]
    # shards are disjoint and cover the same epoch's permutation
    r0 = batches.StateBatches(path, ["height", "u"], clim, rank=0, world_size=2, **kw)
    r1 = batches.StateBatches(path, ["height", "u"], clim, rank=1, world_size=2, **kw)
    s0, s1 = set(r0.shard(0)), set(r1.shard(0))
    assert not s0 & s1 and len(s0) == len(s1) == 19
    assert set(r0.shard(0)) != set(r0.shard(1)) or list(r0.shard(0)) != list(r0.shard(1))
    # the store stays lazy
    assert isinstance(r0.ds["u"].data, dask.array.Array)
    with pytest.raises(KeyError, match="tracer"):
        batches.StateBatches(path, ["tracer"], clim, batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        batches.StateBatches(path, ["u"], clim, batch_size=1, rank=2, world_size=2)
