"""Scores: oracles (perfect forecast, one member), brute-force CRPS, weights, masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffda.core.grid import Grid
from diffda.cycler.metrics import (
    SCORES,
    crps,
    crps_ensemble,
    ensemble_scores,
    masked_rmse,
    rmse,
    spread,
    station_cell_mask,
    weighted_spatial_mean,
)

GRID = Grid(8, 16)


def _ens(m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(2, GRID.nlat, GRID.nlon, generator=g, dtype=torch.float64)
    ens = truth + torch.randn(m, 2, GRID.nlat, GRID.nlon, generator=g, dtype=torch.float64)
    return ens, truth


def test_perfect_forecast_scores_zero():
    _, truth = _ens(1)
    perfect = truth[None].expand(4, -1, -1, -1)
    assert torch.all(rmse(perfect, truth) == 0) and torch.all(spread(perfect) == 0)
    assert torch.allclose(crps(perfect, truth), torch.zeros(2, dtype=torch.float64))
    mask = torch.as_tensor(station_cell_mask(GRID, [10.0], [20.0]))
    assert torch.all(masked_rmse(perfect, truth, mask) == 0)


@pytest.mark.parametrize("fair", [True, False])
def test_one_member_crps_is_the_absolute_error(fair):
    ens, truth = _ens(1)
    torch.testing.assert_close(crps_ensemble(ens, truth, fair), (ens[0] - truth).abs())
    mae = weighted_spatial_mean((ens[0] - truth).abs())
    torch.testing.assert_close(crps(ens, truth, fair), mae)


@pytest.mark.parametrize("fair", [True, False])
def test_crps_matches_the_pairwise_definition(fair):
    ens, truth = _ens(5, seed=1)
    m = ens.shape[0]
    skill = sum((ens[i] - truth).abs() for i in range(m)) / m
    pairs = sum((ens[i] - ens[j]).abs() for i, j in itertools.product(range(m), repeat=2))
    brute = skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)
    torch.testing.assert_close(crps_ensemble(ens, truth, fair), brute)


@pytest.mark.parametrize("fair, estimator", [(True, "fair"), (False, "nrg")])
def test_crps_equals_scoringrules(fair, estimator):
    # the well-kept reference implementation (scoringrules, Zanetta & Allen): the fair
    # estimator (Ferro 2014) and the energy form of the empirical distribution's CRPS
    import scoringrules as sr
    rng = np.random.default_rng(0)
    ens, y = rng.normal(size=(8, 3, 5, 7)), rng.normal(size=(3, 5, 7))
    want = sr.crps_ensemble(y, ens, m_axis=0, estimator=estimator)
    got = crps_ensemble(torch.as_tensor(ens), torch.as_tensor(y), fair=fair).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fair_crps_is_unbiased_for_the_gaussian_closed_form():
    # y = 0, X ~ N(0, 1): CRPS = 2 phi(0) - 1/sqrt(pi) = (sqrt(2) - 1) / sqrt(pi)
    g = torch.Generator().manual_seed(3)
    ens = torch.randn(4, 20000, generator=g, dtype=torch.float64)
    exact = (np.sqrt(2) - 1) / np.sqrt(np.pi)
    fair = float(crps_ensemble(ens, torch.zeros(20000, dtype=torch.float64), True).mean())
    standard = float(crps_ensemble(ens, torch.zeros(20000, dtype=torch.float64), False).mean())
    assert abs(fair - exact) < 0.01
    assert standard - exact > 0.03  # the standard form is biased high for 4 members


def test_rmse_is_area_weighted_and_of_the_ensemble_mean():
    truth = torch.zeros(1, GRID.nlat, GRID.nlon, dtype=torch.float64)
    err = torch.zeros_like(truth)
    err[0, 0] = 1.0  # error only in the southernmost row (a small area)
    w = GRID.area_weights()
    expected = np.sqrt(w[0] / w.sum())
    assert float(rmse(err[None], truth)) == pytest.approx(expected)
    # +e and -e members: the ensemble mean is perfect, the spread is not
    ens = torch.stack([truth + 1, truth - 1])
    assert float(rmse(ens, truth)) == 0 and float(spread(ens)) == pytest.approx(np.sqrt(2))


def test_station_mask_and_schema():
    mask = station_cell_mask(GRID, [-89.0, 0.1, 45.0], [359.0, 0.0, 100.0])
    assert mask.sum() == 3 and mask[0, 0] and mask[4, 0] and mask[6, 4]
    ens, truth = _ens(3)
    scores = ensemble_scores(ens, truth, ["a", "b"], mask)
    assert set(scores) == {"a", "b"} and all(set(s) == set(SCORES) for s in scores.values())
    err2 = ((ens.mean(0) - truth) ** 2)[0]
    w = torch.as_tensor(GRID.area_weights())[:, None].expand_as(err2)
    m = torch.as_tensor(mask)
    assert scores["a"]["rmse_station"] == pytest.approx(
        float(((err2 * w)[m].sum() / w[m].sum()).sqrt()))
    assert scores["a"]["rmse_nonstation"] == pytest.approx(
        float(((err2 * w)[~m].sum() / w[~m].sum()).sqrt()))
    with pytest.raises(ValueError, match="ensemble must be"):
        rmse(ens[0], truth)


def test_rank_histogram_is_flat_for_a_reliable_ensemble_and_u_shaped_for_a_narrow_one():
    from diffda.cycler.metrics import rank_histogram

    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2, 40, 80, generator=g, dtype=torch.float64)
    reliable = torch.randn(9, 2, 40, 80, generator=g, dtype=torch.float64)
    counts = rank_histogram(reliable, truth)
    assert counts.shape == (2, 10) and int(counts.sum()) == 2 * 40 * 80
    freq = counts.double() / counts.sum(1, keepdim=True)
    assert float((freq - 0.1).abs().max()) < 0.02  # 3200 cells per variable
    narrow = rank_histogram(0.2 * reliable, truth).double()
    assert float(narrow[:, [0, -1]].sum() / narrow.sum()) > 0.6  # the truth falls outside
    mask = torch.zeros(40, 80, dtype=torch.bool)
    mask[3, 5] = True
    assert int(rank_histogram(reliable, truth, mask).sum()) == 2


def test_desroziers_statistics_recover_the_error_variances_of_an_optimal_analysis():
    """With y = x + e_o (R), x_b = x + e_b (B) and x_a = x_b + B / (B + R) (y - x_b):
    E[d_ob^2] = B + R and E[d_oa d_ob] = R (Desroziers et al. 2005)."""
    from diffda.cycler.metrics import station_innovations

    g = torch.Generator().manual_seed(1)
    n, r, b = 200_000, 4.0, 9.0
    x = 50 * torch.randn(n, generator=g, dtype=torch.float64)
    y = x + r ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    xb = x + b ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    xa = xb + b / (b + r) * (y - xb)
    idx = torch.zeros(n, dtype=torch.long)
    s = station_innovations(y, torch.full((n,), r), idx, ["height", "u"], xa, xb,
                            torch.full((n,), b))
    assert set(s) == {"height"}  # no observation of u
    h = s["height"]
    assert h["n"] == n and h["r_assumed"] == r and h["hbh_ensemble"] == b
    assert h["omf_var"] == pytest.approx(b + r, rel=0.02)
    assert h["desroziers_r"] == pytest.approx(r, rel=0.03)
    assert abs(h["omf_mean"]) < 0.05 and h["oma_var"] < h["omf_var"]
