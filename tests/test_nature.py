"""The nature run: canonical output, exact forcing, resume = uninterrupted, diagnostics."""

from __future__ import annotations

import math

import cftime
import numpy as np
import pytest
import torch
from diffda.core.grid import Grid
from diffda.emulators import dataio
from diffda.emulators.nature.diagnostics import error_growth, yearly_steadiness
from diffda.emulators.nature.fields import FORCING_VARIABLES, forcing_fields, static_fields
from diffda.emulators.nature.run import OUTPUT_GRID, STATE_VARIABLES, NatureConfig, run_nature
from diffda.emulators.nature.shallow_water import ShallowWaterConfig

TINY = NatureConfig(days=1.0, spinup_days=0.5, chunk_days=0.5,
                    model=ShallowWaterConfig(nlat=16, nlon=32, dt_seconds=1800.0))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nature") / "n.zarr"
    run_nature(TINY, out, progress=False)
    return out


def test_output_is_canonical_with_exact_forcing_and_climatology(tiny_run):
    ds = dataio.open_dataset(tiny_run)
    assert set(STATE_VARIABLES + FORCING_VARIABLES) <= set(ds.data_vars)
    assert ds.sizes == {"time": 4, "lat": 32, "lon": 64}
    np.testing.assert_allclose(ds["lat"].values, OUTPUT_GRID.lat)
    np.testing.assert_allclose(ds["lon"].values, OUTPUT_GRID.lon)
    t = ds["time"].values
    assert isinstance(t[0], cftime.DatetimeNoLeap)
    assert [(x - t[0]).total_seconds() / 3600 for x in t] == [0, 6, 12, 18]
    for v in (*STATE_VARIABLES, "orography", "land_sea_mask"):
        assert "units" in ds[v].attrs and "long_name" in ds[v].attrs
    assert ds["u"].attrs["standard_name"] == "eastward_wind"
    # forcing reproduced exactly from the pure function at the stored times and grid
    f = forcing_fields(list(t), OUTPUT_GRID)
    np.testing.assert_array_equal(f[:, 0].numpy(), ds["height_eq"].values)
    st = static_fields(OUTPUT_GRID)
    np.testing.assert_array_equal(st[0].numpy(), ds["orography"].values)
    np.testing.assert_array_equal(st[1].numpy(), ds["land_sea_mask"].values)
    # stored climatology = computed climatology
    clim = dataio.Climatology.from_dataset(ds, STATE_VARIABLES)
    again = dataio.climatology(ds, STATE_VARIABLES)
    for v in STATE_VARIABLES:
        assert clim.mean[v] == pytest.approx(again.mean[v], rel=1e-9)
        assert clim.std[v] == pytest.approx(again.std[v], rel=1e-9)
    assert float(ds["tracer"].min()) >= 0.0
    assert np.isfinite(ds["height"].values).all()
    # the forcing depends on the time of day (the "sun")
    assert np.abs(ds["height_eq"].values[2] - ds["height_eq"].values[0]).max() > 10.0


def test_forcing_on_another_grid_is_the_same_function():
    times = [cftime.DatetimeNoLeap(2001, 6, 21, 12)]
    g = Grid(8, 16)
    f = forcing_fields(times, g)
    assert f.shape == (1, len(FORCING_VARIABLES), 8, 16)
    assert f.dtype == torch.float32
    # summer in the north: the northern front is weaker than the southern one
    zonal = f[0, 0].mean(-1)
    assert (zonal[-1] - zonal[4]) > (zonal[0] - zonal[3])


def test_resume_after_a_kill_gives_the_same_dataset(tmp_path, tiny_run):
    out = tmp_path / "r.nc"

    class Killed(Exception):
        pass

    def kill(n_done, n_total):
        if n_done < n_total:
            raise Killed

    with pytest.raises(Killed):
        run_nature(TINY, out, progress=False, callback=kill)
    assert not out.exists()
    assert out.with_name("r.nc.checkpoint.safetensors").exists()
    run_nature(TINY, out, progress=False)  # resumes
    assert not out.with_name("r.nc.partial.zarr").exists()
    a = dataio.open_dataset(out).load()
    b = dataio.open_dataset(tiny_run).load()
    for v in (*STATE_VARIABLES, *FORCING_VARIABLES):
        np.testing.assert_array_equal(a[v].values, b[v].values)


def test_continuation_from_a_finished_run_is_the_longer_run(tmp_path, tiny_run):
    from dataclasses import replace

    from diffda.cycler.cli.main import main

    first = tmp_path / "first.zarr"
    run_nature(replace(TINY, days=0.5), first, progress=False)
    rest = tmp_path / "rest.zarr"
    assert main(["nature", "--days", "0.5", "--continue-from", str(first), "--out", str(rest),
                 "--chunk-days", "0.25", "--no-progress"]) == 0
    a = dataio.open_dataset(rest).load()
    b = dataio.open_dataset(tiny_run).load().isel(time=slice(2, None))
    np.testing.assert_array_equal(a["time"].values, b["time"].values)
    for v in (*STATE_VARIABLES, *FORCING_VARIABLES):
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-6, atol=1e-9)
    # a run without a final state cannot be continued
    assert main(["nature", "--days", "0.5", "--continue-from", str(tmp_path / "none.zarr"),
                 "--out", str(tmp_path / "x.zarr"), "--no-progress"]) == 2


def test_refuses_to_overwrite_and_bad_suffix(tmp_path, tiny_run):
    with pytest.raises(FileExistsError):
        run_nature(TINY, tiny_run, progress=False)
    with pytest.raises(ValueError, match=".zarr or .nc"):
        run_nature(TINY, tmp_path / "x.h5", progress=False)


def test_error_growth_skips_the_initial_decay():
    days = np.arange(1, 121) * 0.25
    grow = 1e-3 * np.exp((days - 2.0) / 1.5)
    err = np.minimum(np.where(days < 2.0, 1e-3 * np.exp(-(days - 2.0)), grow), 1.0)
    efold, _, _ = error_growth(days, err)
    assert efold == pytest.approx(1.5, rel=1e-6)


def test_error_growth_recovers_efolding_and_saturation():
    days = np.arange(1, 121) * 0.25
    tau, e0 = 2.0, 1e-3
    err = np.minimum(e0 * np.exp(days / tau), 1.0)
    efold, sat_day, sat = error_growth(days, err)
    assert efold == pytest.approx(tau, rel=1e-6)
    assert sat == pytest.approx(1.0)
    assert sat_day == pytest.approx(days[np.nonzero(err >= 0.8)[0][0]])
    assert abs(sat_day - tau * math.log(0.8 / e0)) <= 0.25


def test_yearly_steadiness_relative_deviations():
    per_year = 365 * 4
    times = [cftime.DatetimeNoLeap(2000, 1, 1) + i * (cftime.DatetimeNoLeap(2000, 1, 1, 6)
                                                      - cftime.DatetimeNoLeap(2000, 1, 1))
             for i in range(3 * per_year)]
    g = Grid(4, 8)
    amp = np.repeat([1.0, 1.0, 2.0], per_year)[:, None, None]
    u = amp * np.ones((len(times), 4, 8))
    data = {"u": u, "v": np.zeros_like(u), "height": u * np.linspace(-1, 1, 8)}
    st = yearly_steadiness(dataio.make_dataset(data, times, g), g)
    assert st["years"] == 3
    ke = [0.5, 0.5, 2.0]
    assert st["kinetic_energy"] == pytest.approx(ke)
    assert st["kinetic_energy_rel_dev"][2] == pytest.approx((2.0 - 0.5) / 0.5)
    assert st["kinetic_energy_rel_dev"][0] == pytest.approx(abs(0.5 - 1.25) / 1.25)


def test_output_map_centres_cells_on_the_labelled_longitudes():
    from diffda.emulators.nature.forcing import ForcingConfig
    from diffda.emulators.nature.run import OutputMap
    from diffda.emulators.nature.shallow_water import ShallowWaterModel

    flat = ShallowWaterConfig(nlat=16, nlon=32, forcing=ForcingConfig(orography_height=0.0))
    model = ShallowWaterModel(flat, dtype=torch.float64)
    lat = torch.deg2rad(model.lat_deg)[:, None]
    lon = torch.deg2rad(model.lon_deg)[None]
    # height anomaly cos(lat) cos(lon): its cell means peak at lon 0 and are even about it
    phi = 9.8 * (6000.0 + 100.0 * torch.cos(lat) * torch.cos(lon) - model.orography)
    grid = torch.stack([phi, torch.zeros_like(phi), torch.zeros_like(phi),
                        torch.zeros_like(phi)])[None]
    out = OutputMap(model)(model.to_spec(grid) * model.tril)[0, 0].double()
    anom = out - out.mean(-1, keepdim=True)
    row = anom[16]
    assert int(row.argmax()) == 0
    torch.testing.assert_close(row[1:32], row.flip(0)[:31], rtol=0, atol=2e-3)


def test_cli_tiny_run_with_json(tmp_path):
    import json

    from diffda.cycler.cli.main import main

    out = tmp_path / "c.zarr"
    js = tmp_path / "s.json"
    rc = main(["nature", "--days", "0.5", "--spinup-days", "0.25", "--out", str(out),
               "--model-grid", "16x32", "--dt", "1800", "--twin-days", "1", "--json", str(js),
               "--no-progress"])
    assert rc == 0 and out.exists()
    summary = json.loads(js.read_text())
    assert summary["times"] == 2
    assert summary["twin"]["members"] == 3
    assert main(["nature", "--days", "1", "--out", str(tmp_path / "x.zarr"),
                 "--model-grid", "16by32"]) == 2


def test_subset_keeps_the_window_background_statics_and_climatology(tmp_path, tiny_run):
    from diffda.cycler.cli.main import main

    out = tmp_path / "w.nc"
    # tiny run: 2000-01-01T00 .. 2000-01-01T18, 6-hourly
    assert main(["subset", str(tiny_run), "--start", "2000-01-01T06:00", "--days", "0.25",
                 "--background", "2", "--out", str(out)]) == 0
    full, sub = dataio.open_dataset(tiny_run), dataio.open_dataset(out)
    hours = [t.hour for t in sub["time"].values]
    assert hours == [0, 6, 12, 18]  # window 06, 12 and the two other times as background
    np.testing.assert_array_equal(sub["height"].values, full["height"].values)
    np.testing.assert_array_equal(sub["orography"].values, full["orography"].values)
    assert (dataio.Climatology.from_dataset(sub, ["height"]).std
            == dataio.Climatology.from_dataset(full, ["height"]).std)
    # the windows of several cases, analysis times only (12-hourly)
    cases = tmp_path / "cases.nc"
    assert main(["subset", str(tiny_run), "--start", "2000-01-01T00:00", "2000-01-01T12:00",
                 "--days", "0.25", "--every-hours", "12", "--background", "0",
                 "--out", str(cases)]) == 0
    assert [t.hour for t in dataio.open_dataset(cases)["time"].values] == [0, 12]
    assert main(["subset", str(tiny_run), "--start", "2000-01-01T06:00", "--days", "5",
                 "--out", str(tmp_path / "x.nc")]) == 2  # beyond the last time
    assert not (tmp_path / "x.nc").exists()
