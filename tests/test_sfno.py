"""The SFNO network and the emulator built on it (emulators/sfno.py, emulators/emulator.py)."""

from __future__ import annotations

import math

import cftime
import numpy as np
import pytest
import torch
import xarray as xr
from diffda.core.grid import Grid
from diffda.core.protocols import Emulator
from diffda.core.rng import torch_generator
from diffda.emulators.forecast.climate import climate_errors
from diffda.emulators.forecast.data import load_coarse_states, window_starts
from diffda.emulators.forecast.model import SFNOEmulator, build_emulator
from diffda.emulators.forecast.sfno import (
    SFNO,
    CellCentreInverseRealSHT,
    CellCentreRealSHT,
    SFNOConfig,
    cell_centre_colatitudes,
    fejer1_weights,
)


def wave_dataset(n_times: int = 40, nlat: int = 32, nlon: int = 64, start_year: int = 1,
                 step_hours: int = 6) -> xr.Dataset:
    """A tiny canonical dataset: smooth waves travelling eastward, 6-hourly, noleap."""
    lat = -90 + (np.arange(nlat) + 0.5) * 180 / nlat
    lon = np.arange(nlon) * 360 / nlon
    times = [cftime.DatetimeNoLeap(start_year, 1, 1) + k * np.timedelta64(step_hours, "h")
             .astype("timedelta64[s]").item() for k in range(n_times)]
    t = np.arange(n_times)[:, None, None] * step_hours / 24.0  # days
    la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    phase = 2 * lo - 2 * np.pi * t / 5.0  # wavenumber 2, period 5 days
    coslat = np.cos(la)
    height = 5500 + 400 * np.sin(la) ** 2 + 60 * coslat**2 * np.cos(phase)
    u = 10 * coslat + 5 * coslat * np.sin(phase)
    v = 5 * coslat * np.cos(phase + 0.3)
    # positive, and smooth on the sphere also in log space (it is log-transformed)
    tracer = 4e-3 * (0.2 + coslat**2) * (1.2 + 0.8 * coslat * np.sin(phase - lo))
    land = ((np.sin(3 * np.deg2rad(lon))[None, :] + np.cos(np.deg2rad(lat))[:, None]) > 0.9)
    oro = 1500.0 * land * np.cos(np.deg2rad(lat))[:, None]
    dims = ("time", "lat", "lon")
    ds = xr.Dataset(
        {
            "height": (dims, height.astype("f4"), {"units": "m"}),
            "u": (dims, u.astype("f4"), {"units": "m s-1"}),
            "v": (dims, v.astype("f4"), {"units": "m s-1"}),
            "tracer": (dims, np.broadcast_to(tracer, height.shape).astype("f4"),
                       {"units": "kg kg-1"}),
            "orography": (("lat", "lon"), oro.astype("f4"), {"units": "m"}),
            "land_sea_mask": (("lat", "lon"), land.astype("f4"), {"units": "1"}),
        },
        coords={"time": times, "lat": lat, "lon": lon},
    )
    return ds


def day_forcing(times, grid: Grid) -> torch.Tensor:
    """A 'sun' travelling westward once a day: (time, 1, lat, lon)."""
    hours = np.array([t.hour + 24 * (t.dayofyr - 1) for t in times], dtype=float)
    lon = np.deg2rad(grid.lon)[None, None, :]
    lat = np.deg2rad(grid.lat)[None, :, None]
    f = np.cos(lat) * np.cos(lon + 2 * np.pi * hours[:, None, None] / 24)
    return torch.as_tensor(f, dtype=torch.float32)[:, None]


# ----------------------------------------------------------------------------- SHT


def test_fejer_weights_integrate_polynomials_exactly():
    n = 16
    x = np.cos(cell_centre_colatitudes(n).numpy())
    w = fejer1_weights(n).numpy()
    for deg in range(n):
        exact = (1 - (-1) ** (deg + 1)) / (deg + 1)
        assert abs(np.sum(w * x**deg) - exact) < 1e-13


def test_cell_centre_sht_round_trip_float64():
    nlat, nlon = 16, 32
    sht = CellCentreRealSHT(nlat, nlon, dtype=torch.float64)
    isht = CellCentreInverseRealSHT(nlat, nlon, dtype=torch.float64)
    assert sht.lmax == sht.mmax == 8
    g = torch.Generator().manual_seed(0)
    c = torch.tril(torch.randn(3, 8, 8, dtype=torch.complex128, generator=g))  # m <= l
    c[..., 0] = c[..., 0].real.to(torch.complex128)  # m = 0 coefficients are real
    assert torch.allclose(sht(isht(c)), c, atol=1e-12)


def test_cell_centre_sht_node_order_is_latitude_ascending():
    # sin(lat) = cos(colatitude) = sqrt(4 pi / 3) Y_1^0: a positive coefficient only if the
    # transform places the first row in the south, as the project's grids do.
    grid = Grid(16, 32)
    f = torch.sin(torch.deg2rad(torch.as_tensor(grid.lat)))[:, None].expand(16, 32).double()
    c = CellCentreRealSHT(16, 32, dtype=torch.float64)(f)
    assert abs(c[1, 0].real - math.sqrt(4 * math.pi / 3)) < 1e-12
    assert c.abs().sum() - c[1, 0].abs() < 1e-12


# --------------------------------------------------------------------------- network


def test_sfno_shapes_and_seeded_determinism():
    cfg = SFNOConfig(in_channels=7, out_channels=3, nlat=8, nlon=16, width=8, depth=2)
    a = SFNO(cfg, generator=torch_generator(1, "init"))
    b = SFNO(cfg, generator=torch_generator(1, "init"))
    c = SFNO(cfg, generator=torch_generator(2, "init"))
    x = torch.randn(5, 7, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a.decoder.fc2.weight.normal_(generator=torch.Generator().manual_seed(3))
        b.decoder.fc2.weight.copy_(a.decoder.fc2.weight)
        c.decoder.fc2.weight.copy_(a.decoder.fc2.weight)
    ya = a(x)
    assert ya.shape == (5, 3, 8, 16)
    assert torch.equal(ya, b(x))
    assert not torch.allclose(ya, c(x))


def test_untrained_emulator_is_persistence_and_rotation_equivariant_core():
    # The last layer starts at zero: an untrained residual emulator returns its input.
    cfg = SFNOConfig(in_channels=4, out_channels=4, nlat=8, nlon=16, width=8, depth=1)
    net = SFNO(cfg, generator=torch_generator(0, "init"))
    x = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(net(x), torch.zeros_like(x))
    # With pointwise layers and isotropic spectral kernels, the network commutes with
    # rotations about the polar axis by a whole grid column.
    with torch.no_grad():
        net.decoder.fc2.weight.normal_(generator=torch.Generator().manual_seed(1))
    assert torch.allclose(net(torch.roll(x, 3, -1)), torch.roll(net(x), 3, -1), atol=1e-5)


# -------------------------------------------------------------------------- emulator


@pytest.fixture(scope="module")
def tiny_data():
    return load_coarse_states(wave_dataset(), Grid(16, 32))


def _tiny_emulator(data, seed: int = 0) -> SFNOEmulator:
    return build_emulator(data, day_forcing, "test", {"width": 8, "depth": 1}, 6.0,
                          generator=torch_generator(seed, "init"))


def test_load_coarse_states_uses_area_weighted_coarsening(tiny_data):
    ds = wave_dataset()
    full = torch.as_tensor(ds["height"].values, dtype=torch.float64)
    w_full = torch.as_tensor(Grid(32, 64).area_weights())[:, None]
    w_coarse = torch.as_tensor(Grid(16, 32).area_weights())[:, None]
    coarse = tiny_data.states[:, 0].double()
    assert tiny_data.states.shape == (40, 4, 16, 32)
    # global area-weighted means are conserved by coarsen_to
    assert torch.allclose((full * w_full).mean((1, 2)), (coarse * w_coarse).mean((1, 2)),
                          rtol=1e-6)
    sub = load_coarse_states(wave_dataset(start_year=3), Grid(16, 32), years=[3])
    assert len(sub.times) == 40 and sub.times[0].year == 3
    with pytest.raises(ValueError, match="years present"):
        load_coarse_states(wave_dataset(), Grid(16, 32), years=[7])


def test_window_starts_never_cross_gaps(tiny_data):
    times = tiny_data.times[:10] + tiny_data.times[12:20]
    starts = window_starts(times, 6.0, 2)
    assert list(starts) == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15]


def test_emulator_protocol_shapes_positivity_and_normalisation(tiny_data):
    emu = _tiny_emulator(tiny_data)
    assert isinstance(emu, Emulator)
    x = tiny_data.states[:3]
    assert torch.allclose(emu.denormalise(emu.normalise(x)), x, rtol=1e-4, atol=1e-9)
    z = emu.normalise(tiny_data.states).double()
    w = torch.as_tensor(Grid(16, 32).area_weights())[:, None]
    mean = (z * w).mean((0, 2, 3))
    std = (((z - mean[:, None, None]) ** 2) * w).mean((0, 2, 3)).sqrt()
    assert torch.allclose(mean, torch.zeros(4, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(std, torch.ones(4, dtype=torch.float64), atol=1e-4)
    with torch.no_grad():
        emu.net.decoder.fc2.weight.normal_(std=3.0, generator=torch.Generator().manual_seed(0))
    y = emu.step(x, tiny_data.times[0])
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y[:, 3] >= 0).all()  # the tracer stays non-negative (log transform)
    assert torch.equal(y, emu.step(x, tiny_data.times[0]))  # deterministic
    assert not torch.equal(y, emu.step(x, tiny_data.times[1]))  # forcing at the step's time
    with pytest.raises(ValueError, match="forced"):
        emu.step(x)
    with pytest.raises(ValueError, match="member, var, lat, lon"):
        emu.step(x[:, :2], tiny_data.times[0])
    traj, times = emu.rollout(x[:1], tiny_data.times[0], 4, every=2)
    assert traj.shape == (2, 1, 4, 16, 32) and times[-1] == tiny_data.times[4]


def test_emulator_weights_round_trip(tiny_data, tmp_path):
    emu = _tiny_emulator(tiny_data)
    with torch.no_grad():
        emu.net.decoder.fc2.weight.normal_(generator=torch.Generator().manual_seed(0))
    emu.export(tmp_path / "e.safetensors", note="test")
    back = SFNOEmulator.from_weights(tmp_path / "e.safetensors", forcing=day_forcing)
    x = tiny_data.states[:2]
    assert torch.equal(back.step(x, tiny_data.times[5]), emu.step(x, tiny_data.times[5]))
    assert back.variables == emu.variables and back.grid == emu.grid


def test_climate_errors_zero_for_identical_runs_and_detect_bias(tiny_data):
    g = Grid(16, 32)
    x = tiny_data.states
    same = climate_errors(x, x, g, tiny_data.variables)
    assert all(c["mean_error"] == 0 and c["std_error"] == 0 for c in same.values())
    biased = x.clone()
    biased[:, 1] += 0.5 * x[:, 1].std()
    err = climate_errors(biased, x, g, tiny_data.variables)
    assert err["u"]["mean_error"] > 0.3 and err["height"]["mean_error"] == 0
    # mean_error_global is the prior evaluation's mean-by-latitude error, to round-off
    from diffda.cycler.metrics import zonal_power_spectrum
    from diffda.emulators.prior.evaluation import compare_climates

    prior_way = compare_climates(biased.double().numpy(), x.double().numpy(), g,
                                 tiny_data.variables, zonal_power_spectrum)
    for v in tiny_data.variables:
        assert err[v]["mean_error_global"] == pytest.approx(
            prior_way[v]["mean_by_lat_error"], rel=1e-6, abs=1e-12)
    assert err["u"]["mean_error_global"] > 0
