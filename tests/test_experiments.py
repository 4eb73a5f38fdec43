"""Single-analysis experiments: the bicubic baseline on the sphere, the scores, time
selection, and the whole plumbing (observations, sampler, baselines, tables, figures,
netCDF, CLI) on a tiny world with a tiny prior. They check plumbing and closed forms,
not skill: the untrained prior is the exact N(0, I) denoiser in normalised units."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
from pathlib import Path

import cftime
import numpy as np
import pytest
import torch
import xarray as xr
from diffda.core.grid import Grid, coarsen_to
from diffda.core.times import parse_time
from diffda.cycler.analysis.sampler import SamplerConfig
from diffda.cycler.cli.main import main as cli_main
from diffda.cycler.metrics import (
    member_rmse,
    score,
    spread_skill_ratio,
    unresolved_rmse,
    zonal_spectra,
)
from diffda.cycler.single.ablation import default_ablation_grid, paper_to_project, run_ablation
from diffda.cycler.single.experiments import ExperimentConfig, run_experiment
from diffda.cycler.single.plots import plot_station_scatter
from diffda.cycler.single.truth import bicubic_upsample, select_index, truth_at
from diffda.emulators.dataio import make_dataset, open_dataset, write_netcdf
from diffda.emulators.prior.model import DiffusionPrior, area_weighted_moments, build_prior
from diffda.emulators.prior.unet import UNetConfig
from diffda.observations.operators import smooth_sphere_fields
from diffda.observations.stations import default_network, grid_land
from diffda.observations.synthetic import synthetic_station_observations, write_observations

VARIABLES = ("height", "u", "v", "tracer")
GRID = Grid(16, 32)
LR4 = Grid(4, 8)
TINY = UNetConfig(channels=4, model_channels=8, channel_mult=(1, 2), attn_levels=(1,),
                  num_heads=2, dropout=0.0)
FAST = SamplerConfig(num_steps=4)


def _world(grid: Grid, n_times: int = 6) -> xr.Dataset:
    """Smooth moving fields on ``grid``, 6-hourly from 0005-01-01 (noleap), with land."""
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    times = [cftime.DatetimeNoLeap(5, 1, 1) + datetime.timedelta(hours=6 * k)
             for k in range(n_times)]
    data: dict[str, np.ndarray] = {v: np.zeros((n_times, grid.nlat, grid.nlon))
                                   for v in VARIABLES}
    for k in range(n_times):
        ph = 0.3 * k
        s = smooth_sphere_fields(lat, lon - 20.0 * k)
        data["height"][k] = 5500 + 300 * np.cos(la) ** 2 + 80 * np.sin(3 * lo - ph) * np.cos(la)
        data["u"][k] = 15 * np.cos(la) ** 2 + 5 * s["u"]
        data["v"][k] = 5 * s["v"] + 3 * np.cos(2 * lo + ph) * np.cos(la)
        data["tracer"][k] = 1e-3 * np.exp(np.cos(la) + 0.5 * s["s"])
    data["orography"] = np.zeros((grid.nlat, grid.nlon))
    data["land_sea_mask"] = ((np.abs(lat) < 60) & (lon > 20) & (lon < 160)).astype(float)
    return make_dataset({k: v for k, v in data.items() if k in VARIABLES}, times, grid).assign(
        orography=(("lat", "lon"), data["orography"], {"units": "m"}),
        land_sea_mask=(("lat", "lon"), data["land_sea_mask"], {"units": "1"}),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny truth file and tiny (untrained) prior weights fitted to its climate."""
    folder = tmp_path_factory.mktemp("world")
    ds = _world(GRID)
    data = folder / "truth.nc"
    write_netcdf(ds, data)
    states = torch.as_tensor(np.stack([ds[v].values for v in VARIABLES], axis=1))
    mean, std = area_weighted_moments(states, GRID)
    prior = build_prior(TINY, VARIABLES, mean, std, GRID,
                        seed_generator=torch.Generator().manual_seed(0))
    weights = folder / "prior.safetensors"
    prior.export(weights, {"data": {"path": str(data), "valid_years": [5]}})
    return data, weights


@pytest.fixture(scope="module")
def loaded(world: tuple[Path, Path]) -> tuple[xr.Dataset, DiffusionPrior]:
    data, weights = world
    return open_dataset(data), DiffusionPrior.load(weights)


# ------------------------------------------------------------------ bicubic baseline


def test_bicubic_upsample_constant_periodic_and_third_order():
    """Constants are kept exactly; a roll by one coarse column rolls the result by the
    refinement factor (periodic in longitude); on a smooth field the error falls by about
    8x per halving of the coarse spacing (third order) and beats block repetition."""
    c = torch.full((2, 4, 8, 16), 3.5, dtype=torch.float64)
    scalars = ("height", "tracer", "a", "b")
    assert torch.allclose(bicubic_upsample(c, Grid(32, 64), scalars), c.new_full((1,), 3.5))
    # a constant eastward wind is not a smooth vector field at the poles: the stencil
    # reverses its sign across them, so only the rows whose stencil stays off the pole keep it
    u = bicubic_upsample(c, Grid(32, 64), VARIABLES)[:, 1]
    assert torch.allclose(u[:, 6:-6], c.new_full((1,), 3.5))
    assert float(u[:, 0].max()) < 3.5

    x = torch.randn(1, 4, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    up = bicubic_upsample(x, Grid(32, 64), VARIABLES)
    up_rolled = bicubic_upsample(torch.roll(x, 1, dims=-1), Grid(32, 64), VARIABLES)
    assert torch.allclose(torch.roll(up, 4, dims=-1), up_rolled, atol=1e-12)

    def error(coarse: Grid, fine: Grid) -> tuple[float, float]:
        lat_c, lon_c = np.meshgrid(coarse.lat, coarse.lon, indexing="ij")
        lat_f, lon_f = np.meshgrid(fine.lat, fine.lon, indexing="ij")
        s_c = torch.as_tensor(smooth_sphere_fields(lat_c, lon_c)["s"])[None]
        s_f = torch.as_tensor(smooth_sphere_fields(lat_f, lon_f)["s"])
        up = bicubic_upsample(s_c[None], fine, ("s",))[0, 0]
        block = s_c[0].repeat_interleave(fine.nlat // coarse.nlat, 0).repeat_interleave(
            fine.nlon // coarse.nlon, 1)
        return float((up - s_f).abs().max()), float((block - s_f).abs().max())

    e16, block16 = error(Grid(16, 32), Grid(64, 128))
    e32, _ = error(Grid(32, 64), Grid(128, 256))
    assert e16 < 0.2 * block16
    assert e16 / e32 > 5.0  # third order: 8 asymptotically


# ------------------------------------------------------------------ scores


def test_scores_oracle_and_closed_forms():
    """An ensemble of copies of the truth scores 0; one member: CRPS = area-weighted MAE;
    two members +-d about the truth: RMSE 0, spread sqrt(2) d; the spread-skill ratio."""
    g = torch.Generator().manual_seed(2)
    truth = torch.randn(4, 16, 32, dtype=torch.float64, generator=g)
    s = score(truth.expand(2, -1, -1, -1), truth, VARIABLES)  # mean of 2 copies is exact
    for v in s:
        assert (s[v]["rmse"], s[v]["spread"], s[v]["crps"]) == (0.0, 0.0, 0.0)
    assert all(math.isnan(s[v]["spread_skill"]) for v in s)

    member = truth + torch.randn(4, 16, 32, dtype=torch.float64, generator=g)
    s1 = score(member[None], truth, VARIABLES)
    w = torch.as_tensor(GRID.area_weights())[:, None]
    mae = ((member - truth).abs() * w).mean(dim=(-2, -1))
    for k, v in enumerate(VARIABLES):
        assert s1[v]["crps"] == pytest.approx(float(mae[k]), rel=1e-12)
        assert s1[v]["rmse_member_mean"] == pytest.approx(s1[v]["rmse"], rel=1e-12)

    d = 0.7
    s2 = score(torch.stack([truth + d, truth - d]), truth, VARIABLES)
    assert s2["u"]["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert s2["u"]["spread"] == pytest.approx(math.sqrt(2) * d, rel=1e-12)
    assert s2["u"]["rmse_member_mean"] == pytest.approx(d, rel=1e-12)
    assert spread_skill_ratio(2.0, 2.0, 8) == pytest.approx(math.sqrt(9 / 8))
    assert member_rmse(torch.stack([truth + d, truth - d]), truth).shape == (2, 4)


def test_zonal_spectrum_parseval_and_a_single_wave():
    """Sum over k = area-weighted mean square; cos(3 lon) puts all its power 1/2 at k = 3."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 16, 32, dtype=torch.float64, generator=g)
    spec = zonal_spectra(x, GRID)
    w = torch.as_tensor(GRID.area_weights())[:, None]
    mean_square = (x**2 * w).mean(dim=(0, 2, 3))
    assert np.allclose(spec.sum(1), mean_square.numpy(), rtol=1e-12)
    wave = torch.cos(3 * torch.deg2rad(torch.as_tensor(GRID.lon)))
    one = zonal_spectra(wave.expand(1, 1, 16, 32), GRID)[0]
    assert one[3] == pytest.approx(0.5) and np.delete(one, 3).max() < 1e-20


def test_unresolved_rmse_keeps_only_zonal_scales_beyond_the_lr_nyquist():
    """On 16x32 with an 8x16 LR grid (Nyquist k = 8): cos(3 lon) is resolved (0),
    cos(9 lon) is not (its RMS, 1/sqrt(2)), and their sum keeps only the k = 9 part."""
    lon = torch.deg2rad(torch.as_tensor(GRID.lon))
    k3, k9 = torch.cos(3 * lon).expand(16, 32), torch.cos(9 * lon).expand(16, 32)
    x = torch.stack([k3, k9, k3 + 2 * k9])
    got = unresolved_rmse(x, Grid(8, 16))
    assert got.numpy() == pytest.approx([0.0, 2**-0.5, 2**0.5], abs=1e-12)
    with pytest.raises(ValueError, match="not coarser in longitude"):
        unresolved_rmse(x, Grid(16, 64))


def test_paper_values_are_halved_for_the_factor_one_half():
    assert paper_to_project(0.1, 5e-3) == pytest.approx((0.05, 2.5e-3))
    grid = default_ablation_grid()
    assert len(grid) == 7 and grid[2] == pytest.approx((0.05, 2.5e-3))


# ------------------------------------------------------------------ times and truth


def test_time_selection_and_errors(loaded):
    ds, _ = loaded
    assert select_index(ds, time="0005-01-01T12", source="t.nc") == 2
    assert select_index(ds, time="5-01-01 18:00", source="t.nc") == 3
    assert select_index(ds, index=-1) == ds.sizes["time"] - 1
    with pytest.raises(ValueError, match=r"0006-01-01 00:00:00 is not in t.nc.*6 times"):
        select_index(ds, time="0006-01-01", source="t.nc")
    with pytest.raises(ValueError, match="index 6 is outside"):
        select_index(ds, index=6)
    with pytest.raises(ValueError, match="cannot read time"):
        parse_time("yesterday", "noleap")
    with pytest.raises(KeyError, match=r"no variable\(s\) \['humidity'\]"):
        truth_at(ds, ("height", "humidity"), 0)


def test_finer_truth_is_coarsened_to_the_prior_grid(loaded):
    """A 16x32 truth read for an 8x16 prior is the area-weighted coarsening; 16x32 cannot
    be read for a 12x24 prior."""
    ds, _ = loaded
    fine = truth_at(ds, VARIABLES, 1)
    coarse = truth_at(ds, VARIABLES, 1, Grid(8, 16))
    assert torch.allclose(coarse.state, coarsen_to(fine.state, Grid(8, 16)))
    with pytest.raises(ValueError, match="cannot be coarsened"):
        truth_at(ds, VARIABLES, 1, Grid(12, 24))


# ------------------------------------------------------------------ experiments


def test_sample_lr_fits_the_observations_and_is_deterministic(loaded):
    """With the exact N(0, I) prior the posterior mean of each 4x4 block mean is
    ~0.86 y (prior variance ~1/16 against Sigma_y = 0.01): the coarsened ensemble mean fits
    the observation, in normalised units (a flipped guidance sign or a unit error would
    not). 4x4 blocks as on the real 32x64 -> 8x16 task: with 2x2 blocks the guidance gain
    ``|dt| t J^2 lambda_max(A A^T) / (Sigma_y + t^2 Gamma)`` exceeds 2 and 18 steps
    overshoot (NOTES.md). Same seed: same ensemble; the bicubic baseline is scored."""
    ds, prior = loaded
    cfg = ExperimentConfig(members=4, seed=3, sampler=SamplerConfig(num_steps=12),
                           lr_grid=LR4)
    r = run_experiment("sample-lr", prior, ds, 2, cfg)
    ens = torch.as_tensor(r.fields["ensemble"])
    assert ens.shape == (4, 4, 16, 32) and r.baseline == "bicubic"
    assert r.fields["lr"].shape == (4, 4, 8)
    z_mean = coarsen_to(prior.normalise(ens.mean(0)), LR4)
    z_obs = coarsen_to(prior.normalise(torch.as_tensor(r.fields["truth"])), LR4)
    misfit = float((z_mean - z_obs).pow(2).mean().sqrt())
    assert misfit < 0.25 * float(z_obs.std()), misfit
    for v in VARIABLES:
        s = r.scores[v]
        assert {"rmse", "spread", "spread_skill", "crps", "rmse_bicubic"} <= set(s)
        assert all(math.isfinite(s[k]) for k in ("rmse", "spread", "crps", "rmse_bicubic"))
        assert 0 < s["rmse_unresolved"] < s["rmse_bicubic"]
        k = VARIABLES.index(v)
        lr_std = float(np.std(r.fields["lr"][k]))
        assert 0 < s["rmse_lr_misfit"] < 0.25 * lr_std, (v, s["rmse_lr_misfit"], lr_std)
        assert s["sigma_y_lr"] == pytest.approx(math.sqrt(cfg.low_resolution.sigma_y)
                                                * float(prior.std[k]))
    fast = dataclasses.replace(cfg, sampler=FAST, members=2)
    once = run_experiment("sample-lr", prior, ds, 2, fast)
    again = run_experiment("sample-lr", prior, ds, 2, fast)
    assert np.array_equal(again.fields["ensemble"], once.fields["ensemble"])
    other = run_experiment("sample-lr", prior, ds, 2, dataclasses.replace(fast, seed=4))
    assert not np.allclose(other.fields["ensemble"], once.fields["ensemble"])
    part = run_experiment("sample-lr", prior, ds, 2, dataclasses.replace(
        fast, members=1, observed=("height", "v")))
    assert part.terms[0]["n_obs"] == 2 * 4 * 8
    assert [v for v in VARIABLES if "rmse_bicubic" in part.scores[v]] == ["height", "v"]
    assert np.isnan(part.fields["lr"][1]).all() and np.isfinite(part.fields["lr"][2]).all()
    with pytest.raises(ValueError, match=r"unknown observed variable\(s\) \['q'\]"):
        run_experiment("sample-lr", prior, ds, 2, ExperimentConfig(
            members=1, sampler=FAST, observed=("height", "q")))


def test_station_experiments_score_against_unconditional_samples(loaded, tmp_path):
    """sample-igra / sample-igra-lr: synthetic stations on the dataset's land, station and
    non-station RMSE, the unconditional baseline from its own stream; the stations pull
    the posterior mean towards the truth at the stations."""
    ds, prior = loaded
    cfg = ExperimentConfig(members=3, seed=0, sampler=SamplerConfig(num_steps=12),
                           n_stations=12, lr_grid=LR4)
    r = run_experiment("sample-igra", prior, ds, 0, cfg)
    lsm = ds["land_sea_mask"].values
    i = ((r.fields["station_lat"] + 90) * 16 / 180).astype(int)
    j = np.floor(r.fields["station_lon"] * 32 / 360 + 0.5).astype(int) % 32
    assert lsm[i, j].all()
    for v in VARIABLES:
        assert {"rmse_unconditional", "rmse_station", "rmse_nonstation",
                "spread_unconditional"} <= set(r.scores[v])
    assert not np.allclose(r.fields["unconditional"], r.fields["ensemble"])
    z = lambda a: (a - prior.mean.numpy()) / prior.std.numpy()  # noqa: E731
    err_post = np.abs(z(r.fields["station_mean"]) - z(r.fields["station_truth"])).mean(0)
    err_unc = np.abs(z(r.fields["station_unconditional"]) - z(r.fields["station_truth"])).mean(0)
    assert (err_post < 0.6 * err_unc).all(), (err_post, err_unc)
    scatter = plot_station_scatter(r, tmp_path / "stations.png")
    assert scatter.stat().st_size > 0
    both = run_experiment("sample-igra-lr", prior, ds, 0, cfg)
    assert [t["name"] for t in both.terms] == ["stations", "low_resolution"]
    assert both.terms[0]["n_obs"] == 12 * 4 and both.terms[1]["n_obs"] == 4 * 4 * 8
    assert "rmse_bicubic" in both.scores["height"]


def test_lr_noise_draws_observations_with_the_likelihood_variance(loaded):
    """--lr-noise: y = coarsen(z) + N(0, Sigma_y), seeded; the coarse field the bicubic
    baseline interpolates carries the same noise in physical units."""
    from diffda.core.rng import torch_generator
    from diffda.cycler.terms import low_resolution_term
    from diffda.observations.likelihood import ErrorModel

    ds, prior = loaded
    truth = truth_at(ds, prior.variables, 1, prior.grid)
    err = ErrorModel(sigma_y=0.04, gamma=0.01)
    clean, lr0 = low_resolution_term(prior, truth.state, LR4, err, VARIABLES)
    noisy, lr1 = low_resolution_term(prior, truth.state, LR4, err, VARIABLES,
                                     noise_generator=torch_generator(0, "lr-noise"))
    again, _ = low_resolution_term(prior, truth.state, LR4, err, VARIABLES,
                                   noise_generator=torch_generator(0, "lr-noise"))
    eps = noisy.y - clean.y
    assert torch.equal(again.y, noisy.y)
    assert float(eps.std()) == pytest.approx(0.2, rel=0.2)  # sqrt(0.04), 128 draws
    back = (lr1 - lr0) / prior.std.to(lr0.dtype)[:, None, None]
    torch.testing.assert_close(back.reshape(-1).to(eps.dtype), eps)
    cfg = ExperimentConfig(members=1, sampler=FAST, lr_grid=LR4, lr_noise=True)
    r = run_experiment("sample-lr", prior, ds, 1, cfg)
    r0 = run_experiment("sample-lr", prior, ds, 1, dataclasses.replace(cfg, lr_noise=False))
    assert r.scores["height"]["rmse_bicubic"] > r0.scores["height"]["rmse_bicubic"]
    with pytest.raises(ValueError, match="ablation: lr_noise"):
        run_ablation(prior, ds, 1, ((0.01, 0.01),), cfg)


def test_ablation_rows(loaded):
    ds, prior = loaded
    pairs = ((0.05, 2.5e-3), (0.01, 0.01))
    r = run_ablation(prior, ds, 1, pairs, ExperimentConfig(members=2, sampler=FAST))
    assert [(row["sigma_y"], row["gamma"]) for row in r.rows] == list(pairs)
    assert r.rows[0]["sigma_y_paper"] == pytest.approx(0.1)
    for row in r.rows:
        assert not row["diverged"]
        assert row["height"]["rmse_ratio_bicubic"] == pytest.approx(
            row["height"]["rmse"] / r.rmse_bicubic["height"])


def test_pool_summaries_closed_form():
    """RMSE-like scores pool as root-mean-squares, CRPS as the mean; the pooled
    spread-skill ratio is that of the pooled values; mismatched summaries are refused."""
    from diffda.cycler.single.experiments import pool_summaries

    def one(t, rmse, spread, base):
        return {"experiment": "sample-lr", "time": t, "members": 3, "variables": ["h"],
                "baseline": "bicubic", "nfe": 5, "seconds_per_analysis": 2.0,
                "scores": {"h": {"rmse": rmse, "spread": spread, "crps": rmse / 2,
                                 "rmse_bicubic": base,
                                 "spread_skill": spread_skill_ratio(rmse, spread, 3)}}}

    p = pool_summaries([one("a", 3.0, 3.0, 6.0), one("b", 4.0, 1.0, 8.0)])
    h = p["scores"]["h"]
    assert h["rmse"] == pytest.approx(math.sqrt(12.5))
    assert h["spread"] == pytest.approx(math.sqrt(5.0))
    assert h["crps"] == pytest.approx(1.75)
    assert h["rmse_ratio_bicubic"] == pytest.approx(0.5)
    assert h["spread_skill"] == pytest.approx(math.sqrt(4 / 3) * math.sqrt(5 / 12.5))
    assert h["spread_skill_by_time"] == pytest.approx(
        [math.sqrt(4 / 3), math.sqrt(4 / 3) / 4])
    assert p["pooled_over"] == ["a", "b"]
    same = pool_summaries([one("a", 3.0, 3.0, 6.0)])["scores"]["h"]
    assert same["rmse"] == 3.0 and same["spread_skill"] == pytest.approx(math.sqrt(4 / 3))
    other = one("c", 1.0, 1.0, 1.0)
    other["members"] = 5
    with pytest.raises(ValueError, match="cannot be pooled"):
        pool_summaries([one("a", 3.0, 3.0, 6.0), other])


# ------------------------------------------------------------------ command line


def _cli(world, tmp_path, *extra: str) -> list[str]:
    data, weights = world
    return ["experiment", "--data", str(data), "--weights", str(weights), "--members", "2",
            "--steps", "3", "--lr-grid", "4x8", "--out", str(tmp_path), *extra]


def test_cli_sample_lr_writes_tables_figures_netcdf_and_json(world, tmp_path, capsys):
    assert cli_main(_cli(world, tmp_path, "sample-lr", "--time", "0005-01-01T06",
                         "--json", "--sigma-y", "lr=0.02", "--gamma", "0.01")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["experiment"] == "sample-lr" and out["held_out"] is True and out["index"] == 1
    assert out["terms"][0]["sigma_y"] == pytest.approx(0.02)
    for v in VARIABLES:
        assert {"rmse", "spread", "rmse_bicubic", "crps", "spread_skill"} <= set(
            out["scores"][v])
    for name in ("sample-lr.json", "sample-lr.csv", "sample-lr_ensemble.nc",
                 "sample-lr_fields.png", "sample-lr_spectra.png", "sample-lr_mean_std.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = list(csv.DictReader((tmp_path / "sample-lr.csv").open()))
    assert [r["variable"] for r in rows] == list(VARIABLES)
    assert float(rows[0]["rmse"]) == pytest.approx(out["scores"]["height"]["rmse"], rel=1e-5)
    nc = xr.open_dataset(tmp_path / "sample-lr_ensemble.nc",
                         decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    assert nc["height"].shape == (2, 16, 32) and nc["u"].attrs["units"] == "m s-1"
    assert nc["time"].item() == cftime.DatetimeNoLeap(5, 1, 1, 6)
    nc.close()


def test_cli_several_times_pool_the_scores(world, tmp_path, capsys):
    assert cli_main(_cli(world, tmp_path, "sample-lr", "--time", "0005-01-01T06",
                         "0005-01-01T12", "--json", "--no-plots", "--lr-noise")) == 0
    pooled = json.loads(capsys.readouterr().out)
    assert pooled["pooled_over"] == ["0005-01-01 06:00:00", "0005-01-01 12:00:00"]
    assert len(pooled["scores"]["u"]["spread_skill_by_time"]) == 2
    on_disk = json.loads((tmp_path / "sample-lr_pooled.json").read_text())
    assert [s["time"] for s in on_disk["by_time"]] == pooled["pooled_over"]
    for s in on_disk["by_time"]:
        assert Path(s["files"][0]).is_file()
    rms = math.sqrt(sum(s["scores"]["u"]["rmse"] ** 2 for s in on_disk["by_time"]) / 2)
    assert pooled["scores"]["u"]["rmse"] == pytest.approx(rms)
    assert cli_main(_cli(world, tmp_path, "ablation", "--time", "0005-01-01T06",
                         "0005-01-01T12")) == 2
    assert "one --time" in capsys.readouterr().err


def test_cli_ablation_and_station_task(world, tmp_path, capsys):
    assert cli_main(_cli(world, tmp_path, "ablation", "--index", "0", "--json", "--no-plots",
                         "--sigma-y", "0.05", "0.01", "--gamma", "0.01")) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["sigma_y"], r["gamma"]) for r in out["rows"]] == [(0.05, 0.01), (0.01, 0.01)]
    assert len(list(csv.DictReader((tmp_path / "ablation.csv").open()))) == 2 * 4
    # a station file as `cycler obs make` writes it, observing height and u only
    ds = open_dataset(world[0])
    network = default_network(6, seed=1, is_land=grid_land(ds["land_sea_mask"].values))
    obs = synthetic_station_observations(ds, network, 0, ("height", "u"), progress=False)
    write_observations(obs, tmp_path / "stations.nc")
    assert cli_main(_cli(world, tmp_path, "sample-igra", "--index", "2", "--no-plots",
                         "--stations", str(tmp_path / "stations.nc"), "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["terms"][0]["n_obs"] == 6 * 2
    assert out["scores"]["u"]["rmse_at_stations"] is not None
    assert "rmse_at_stations" not in out["scores"]["v"]
    assert "rmse_unconditional" in out["scores"]["v"]
    assert not (tmp_path / "sample-igra_fields.png").exists()


@pytest.mark.parametrize("extra, message", [
    (("sample-lr", "--time", "0004-12-31T18"), "is not in"),
    (("sample-lr", "--index", "0", "--observed", "height,q"), "unknown observed variable"),
    (("sample-lr", "--index", "0", "--sigma-y", "stations=0.1"), "has no ['stations'] term"),
    (("ablation", "--index", "0", "--sigma-y", "0.1", "0.2", "--gamma", "1", "2", "3"),
     "--sigma-y has 2 values and --gamma 3"),
    (("sample-lr", "--index", "0", "--members", "0"), "--members and --steps must be >= 1"),
])
def test_cli_errors_name_the_problem(world, tmp_path, capsys, extra, message):
    assert cli_main(_cli(world, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err


def test_lr_misfit_is_the_coarsened_ensemble_mean_minus_the_observation():
    """Members whose mean coarsens to the LR field have no misfit (their own small scales
    and spread do not count); a constant offset c in one variable gives c there."""
    from diffda.cycler.metrics import lr_misfit_rmse

    g = torch.Generator().manual_seed(0)
    field = torch.randn(2, 16, 32, generator=g, dtype=torch.float64)
    lr = coarsen_to(field, LR4)
    noise = torch.randn(3, 2, 16, 32, generator=g, dtype=torch.float64)
    members = field + noise - noise.mean(0)
    assert lr_misfit_rmse(members, lr, LR4).tolist() == pytest.approx([0, 0], abs=1e-6)
    members[:, 1] += 0.7
    assert lr_misfit_rmse(members, lr, LR4).tolist() == pytest.approx([0, 0.7], abs=1e-6)
