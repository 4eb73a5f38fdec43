"""The forced shallow-water model: determinism, conservation, positivity, closed forms."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffda.core.grid import Grid
from diffda.emulators.nature.forcing import ForcingConfig, equilibrium_height
from diffda.emulators.nature.landmask import land_fraction, land_sea_mask, smooth_land
from diffda.emulators.nature.shallow_water import (
    ShallowWaterConfig,
    ShallowWaterModel,
    saturation,
    semi_implicit_update,
    synthesize,
    tracer_physics,
)

TINY = ShallowWaterConfig(nlat=16, nlon=32, dt_seconds=1800.0)


def _run(model: ShallowWaterModel, seed: int, steps: int):
    state = model.initial_state(0.0, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for _ in range(steps):
            state = model.step(state)
    return state


def test_deterministic_for_a_seed_and_finite():
    model = ShallowWaterModel(TINY)
    a = _run(model, 0, 48)
    b = _run(model, 0, 48)
    c = _run(model, 1, 48)
    assert torch.equal(a.spec, b.spec)
    assert not torch.equal(a.spec, c.spec)
    fields = model.grid_fields(a.spec)
    assert torch.isfinite(fields).all()
    assert (fields[:, 3] >= 0).all()  # tracer clipped at zero on output
    assert a.seconds == pytest.approx(48 * TINY.dt_seconds)


def test_mass_and_tracer_conserved_without_forcing():
    model = ShallowWaterModel(TINY, dtype=torch.float64, forcing=False)
    state = model.initial_state(0.0, torch.Generator().manual_seed(3), noise_m=50.0)
    # give it a flow: a solid-body-plus-noise vorticity
    state.spec[:, 1, 1, 0] = 1e-5
    state.spec[:, 1, 3, 2] = 3e-6
    m0 = state.spec[:, [0, 3], 0, 0].real.clone()
    with torch.no_grad():
        for _ in range(96):  # 2 days
            state = model.step(state)
    m1 = state.spec[:, [0, 3], 0, 0].real
    assert torch.isfinite(state.spec).all()
    torch.testing.assert_close(m1, m0, rtol=1e-13, atol=0.0)
    # and the flow did evolve
    assert state.spec[:, 2].abs().max() > 0


def test_drag_and_relaxation_damp_kinetic_energy_of_a_spun_up_flow():
    cfg = ShallowWaterConfig(nlat=16, nlon=32, dt_seconds=1800.0, tau_drag_ocean_days=0.5,
                             tau_drag_land_days=0.5,
                             forcing=ForcingConfig(jet_drop=0.0, diurnal=0.0, land_season=0.0,
                                                   orography_height=0.0))
    model = ShallowWaterModel(cfg, dtype=torch.float64)
    state = model.initial_state(0.0, torch.Generator().manual_seed(0))
    state.spec[:, 1, 2, 1] = 2e-5

    def ke(s):
        f = model.grid_fields(s.spec)
        w = torch.cos(torch.deg2rad(model.lat_deg))[:, None]
        return float(((f[:, 1] ** 2 + f[:, 2] ** 2) * w).mean())

    k0 = ke(state)
    with torch.no_grad():
        for _ in range(48):
            state = model.step(state)
    # linear drag with tau = 0.5 day halves... e-folds KE twice per day (plus diffusion)
    assert ke(state) < k0 * math.exp(-2 * 1.0) * 1.2


def test_semi_implicit_update_conserves_the_gravity_wave_invariant():
    # d phi/dt = -Phi0 delta, d delta/dt = e phi: Crank-Nicolson keeps e phi^2 + Phi0 delta^2
    L = 6
    l = torch.arange(L, dtype=torch.float64)[:, None].expand(L, L)
    lap = -l * (l + 1) / 6.37e6**2
    g = torch.Generator().manual_seed(0)
    spec = torch.randn((1, 4, L, L), dtype=torch.complex128, generator=g)
    phi0 = 9.8 * 6000.0
    inv = lambda s: (-lap) * s[:, 0].abs() ** 2 + phi0 * s[:, 2].abs() ** 2  # noqa: E731
    i0 = inv(spec)
    for _ in range(500):
        spec = semi_implicit_update(spec, torch.zeros_like(spec), lap, phi0, dt=3600.0)
    torch.testing.assert_close(inv(spec), i0, rtol=1e-10, atol=1e-12)


def test_synthesize_matches_the_inverse_transform_on_the_model_grid():
    model = ShallowWaterModel(TINY, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 16, 32), dtype=torch.float64, generator=g)
    spec = model.to_spec(x) * model.tril
    ref = model.to_grid(spec)
    out = synthesize(spec, model.lat_deg.numpy(), 32)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-11)


def test_tracer_physics_is_positive_and_relaxes_toward_saturation():
    cfg = ShallowWaterConfig()
    h = torch.full((3,), cfg.forcing.mean_height)
    qs = saturation(h, cfg)
    q = torch.tensor([-1e-3, 0.0, 10.0]) * qs
    land = torch.tensor([0.0, 1.0, 0.0])
    out = tracer_physics(q, h, land, 3600.0, cfg)
    assert (out >= 0).all()
    assert out[2] < q[2] and out[2] > qs[2]  # condensation toward q_sat, not below
    expected = qs[2] + (q[2] - qs[2]) * math.exp(-1.0 / cfg.tau_condense_hours)
    torch.testing.assert_close(out[2], expected)
    assert out[1] > 0  # evaporation over land from a dry column


def test_equilibrium_height_is_pointwise_and_diurnal_term_has_zero_daily_mean():
    cfg = ForcingConfig()
    lat = torch.tensor([[10.0, 50.0]], dtype=torch.float64)
    lon = torch.tensor([[30.0, 200.0]], dtype=torch.float64)
    land = torch.tensor([[0.2, 0.9]], dtype=torch.float64)
    days = 100.0 + torch.arange(96, dtype=torch.float64) / 96
    h = equilibrium_height(lat, lon, land, days, cfg)
    no_diurnal = equilibrium_height(lat, lon, land, days,
                                    ForcingConfig(diurnal=0.0))
    # the daily mean of the diurnal term is ~0 (declination changes a little within a day)
    assert (h - no_diurnal).mean(0).abs().max() < 0.05
    assert (h - no_diurnal).abs().max() > 0.5 * cfg.diurnal
    # one point alone gives the same value as inside a bigger array
    h1 = equilibrium_height(lat[:, 1:], lon[:, 1:], land[:, 1:], days[:1], cfg)
    assert torch.equal(h1[0, 0, 0], h[0, 0, 1])


def test_land_mask_cache_and_smooth_land():
    frac = land_fraction(Grid(32, 64))
    w = Grid(32, 64).area_weights()[:, None]
    assert 0.25 < float((frac * w).mean()) < 0.33  # Earth: about 29% land
    lsm = land_sea_mask(Grid(16, 32))
    assert set(np.unique(lsm)) <= {0.0, 1.0}
    s = smooth_land(np.array([0.0, 50.0, -80.0]), np.array([200.0, 15.0, 0.0]))  # Pacific,
    assert s[0] < 0.05 and s[1] > 0.7 and s[2] > 0.9  # central Europe, Antarctica
    with pytest.raises(ValueError, match="divide"):
        land_fraction(Grid(30, 60))


def test_stirring_is_a_seeded_function_of_time_confined_to_its_band():
    cfg = ShallowWaterConfig(nlat=32, nlon=64, stir_rms_per_day=5e-5, stir_lmin=6,
                             stir_lmax=10, stir_knot_hours=12.0)
    model = ShallowWaterModel(cfg)
    again = ShallowWaterModel(cfg)
    other = ShallowWaterModel(ShallowWaterConfig(nlat=32, nlon=64, stir_rms_per_day=5e-5,
                                                 stir_lmin=6, stir_lmax=10, stir_seed=1))
    t = 5 * 43200.0 + 3 * 3600.0
    a = model.stirring(t)
    assert torch.equal(a, again.stirring(t))  # a pure function of (seed, time): resumable
    assert (a - other.stirring(t)).abs().max() > 0.1 * a.abs().max()
    # linear in time between the knots at 12 h
    k0, k1 = model.stir_pattern(5), model.stir_pattern(6)
    torch.testing.assert_close(a, 0.75 * k0 + 0.25 * k1)
    torch.testing.assert_close(model.stirring(5 * 43200.0), k0)
    # no global-mean vorticity; requested rms in the band; small at the equator
    assert torch.all(k0[0] == 0)
    grid = model.to_grid(k0)
    lat = model.lat_deg
    band = (lat.abs() > 35) & (lat.abs() < 55)
    rms_band = grid[band].pow(2).mean().sqrt() * 86400.0
    rms_eq = grid[lat.abs() < 10].pow(2).mean().sqrt() * 86400.0
    assert 0.5 * 5e-5 < rms_band < 2.0 * 5e-5
    assert rms_eq < 0.2 * rms_band


def test_stirring_off_leaves_the_model_unchanged_and_on_changes_it():
    calm = ShallowWaterModel(replace(TINY, stir_rms_per_day=0.0))
    stirred = ShallowWaterModel(replace(TINY, stir_rms_per_day=1e-4))
    a, b = _run(calm, 0, 12), _run(stirred, 0, 12)
    assert torch.isfinite(b.spec).all()
    assert (a.spec[:, 1] - b.spec[:, 1]).abs().max() > 1e-3 * a.spec[:, 1].abs().max()
    with pytest.raises(ValueError, match="stirring"):
        ShallowWaterConfig(stir_rms_per_day=-1.0)
