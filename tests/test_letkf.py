"""The localized, inflated stochastic EnKF: limits, tapers, and locality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffda.core.grid import Grid
from diffda.core.rng import member_generators
from diffda.cycler.analysis.enkf import stochastic_enkf_analysis
from diffda.cycler.analysis.letkf import (
    LocalizedEnKF,
    PointObservations,
    gaspari_cohn,
    great_circle_km,
    inflate,
    localization,
    localized_enkf_analysis,
    rtps_factor,
)
from diffda.observations.operators import PointOperator

GRID = Grid(8, 16)
D64 = torch.float64


def test_gaspari_cohn_closed_form_values_and_support():
    r = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], dtype=D64)
    g = gaspari_cohn(r)
    assert float(g[0]) == 1.0 and float(g[4]) == 0.0 and float(g[5]) == 0.0
    # value at r = 1 from both branches: 1 - 5/3 + 5/8 + 1/2 - 1/4 = 5/24 (continuous)
    assert abs(float(g[2]) - 5 / 24) < 1e-12
    outer_at_1 = 4 - 5 + 5 / 3 + 5 / 8 - 1 / 2 + 1 / 12 - 2 / 3
    assert abs(outer_at_1 - 5 / 24) < 1e-12
    assert torch.all(torch.diff(gaspari_cohn(torch.linspace(0, 2, 101, dtype=D64))) <= 0)


def test_great_circle_distances():
    d = great_circle_km(torch.tensor([0.0, 90.0], dtype=D64), torch.tensor([0.0, 0.0], dtype=D64),
                        torch.tensor([0.0], dtype=D64), torch.tensor([180.0], dtype=D64))
    assert abs(float(d[0, 0]) - np.pi * 6371.0) < 1e-6
    assert abs(float(d[1, 0]) - np.pi / 2 * 6371.0) < 1e-6


def _problem(m: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 2, GRID.nlat, GRID.nlon, generator=g, dtype=D64)
    op = PointOperator(GRID, ["a", "b"], [10.0, -30.0, 40.0], [20.0, 200.0, 300.0],
                       ["a", "b", "a"])
    y = torch.randn(3, generator=g, dtype=D64)
    z = torch.randn(m, 3, generator=g, dtype=D64)
    return x, op, y, z


def test_without_localization_and_inflation_it_is_the_stochastic_enkf():
    x, op, y, z = _problem()
    flat = x.reshape(x.shape[0], -1)
    H = op.matrix(D64)
    rho_xy, rho_yy = localization(GRID, 2, torch.as_tensor(op.obs_lat),
                                  torch.as_tensor(op.obs_lon), None)
    r = torch.tensor([0.1, 0.2, 0.3], dtype=D64)
    ours = localized_enkf_analysis(flat, op(x), y, r, z, rho_xy, rho_yy)
    ref = stochastic_enkf_analysis(flat, y, H, r, z)
    torch.testing.assert_close(ours, ref)


def test_localization_leaves_distant_points_untouched_and_inflation_scales_anomalies():
    x, op, y, z = _problem()
    gens = member_generators(0, "test", 1, x.shape[0])
    obs = PointObservations(op, y, torch.full((3,), 0.1, dtype=D64),
                            torch.as_tensor(op.obs_lat), torch.as_tensor(op.obs_lon))
    radius = 1000.0
    xa = LocalizedEnKF(grid=GRID, radius_km=radius, inflation=1.0).analyse(x, [obs], gens)
    la, lo = np.meshgrid(GRID.lat, GRID.lon, indexing="ij")
    d = great_circle_km(torch.as_tensor(la.ravel()), torch.as_tensor(lo.ravel()),
                        torch.as_tensor(op.obs_lat), torch.as_tensor(op.obs_lon))
    far = (d.min(1).values >= 2 * radius).reshape(GRID.nlat, GRID.nlon)
    near = (d.min(1).values < 0.5 * radius).reshape(GRID.nlat, GRID.nlon)
    assert far.any() and near.any()
    torch.testing.assert_close(xa[:, :, far], x[:, :, far], rtol=0, atol=1e-12)
    assert (xa[:, :, near] - x[:, :, near]).abs().max() > 1e-3
    # inflation: mean kept, anomalies scaled
    xi = inflate(x, 1.5)
    torch.testing.assert_close(xi.mean(0), x.mean(0))
    torch.testing.assert_close(xi - xi.mean(0), 1.5 * (x - x.mean(0)))


def test_analysis_moves_the_mean_towards_accurate_observations():
    g = torch.Generator().manual_seed(5)
    m = 40
    truth = torch.zeros(1, GRID.nlat, GRID.nlon, dtype=D64)
    x = truth + 1.0 + torch.randn(m, 1, GRID.nlat, GRID.nlon, generator=g, dtype=D64)
    lat, lon = GRID.lat[2:6].repeat(4), np.repeat(GRID.lon[::4], 4)
    op = PointOperator(GRID, ["a"], lat, lon, ["a"] * len(lat))
    y = op(truth[None])[0]
    obs = PointObservations(op, y, torch.full((len(lat),), 1e-2, dtype=D64),
                            torch.as_tensor(op.obs_lat), torch.as_tensor(op.obs_lon))
    xa = LocalizedEnKF(grid=GRID, radius_km=3000.0, inflation=1.05).analyse(
        x, [obs], member_generators(0, "test", 1, m))
    before = (op(x).mean(0) - y).abs().mean()
    after = (op(xa).mean(0) - y).abs().mean()
    assert after < 0.3 * before


def test_rtps_factor():
    g = torch.Generator().manual_seed(0)
    analysis = 3.0 + 0.5 * torch.randn(16, 2, 4, 5, generator=g, dtype=torch.float64)
    forecast = -1.0 + 2.0 * torch.randn(16, 2, 4, 5, generator=g, dtype=torch.float64)
    analysis[:, 0, 0, 0] = 7.0  # no analysis spread: left as it is
    sa, sf, mean = analysis.std(0), forecast.std(0), analysis.mean(0)
    for alpha in (0.0, 0.3, 1.0):
        out = mean + rtps_factor(analysis, forecast, alpha) * (analysis - mean)
        torch.testing.assert_close(out.mean(0), analysis.mean(0))
        want = torch.where(sa > 0, alpha * sf + (1 - alpha) * sa, sa)
        torch.testing.assert_close(out.std(0), want)
    # the relaxed anomalies are the analysis's, rescaled: their correlations are kept
    out = mean + rtps_factor(analysis, forecast, 0.5) * (analysis - mean)
    a, o = analysis - analysis.mean(0), out - out.mean(0)
    cosine = (a[:, 1] * o[:, 1]).sum(0) / (a[:, 1].norm(dim=0) * o[:, 1].norm(dim=0))
    torch.testing.assert_close(cosine, torch.ones(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="RTPS alpha = 1.5"):
        rtps_factor(analysis, forecast, 1.5)
