"""The cycle driver end to end on a tiny world: every mode, outputs, config validation.

The tiny world: a canonical dataset on a 16x32 grid (6-hourly, waves moving east), an
untrained SFNO emulator on 8x16 and an untrained EDM prior on 16x32, both built with fixed
seeds and written as safetensors weights (the plumbing, not the skill, is under test);
2 cycles of 12 h, 3 members, 6 sampler steps.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import cftime
import numpy as np
import pytest
import torch
import xarray as xr
from diffda.core.config import ConfigError, parse_value
from diffda.core.grid import Grid, coarsen_to
from diffda.core.io import file_sha256
from diffda.core.rng import torch_generator
from diffda.cycler.cli.main import main as cli_main
from diffda.cycler.cycling.checkpoint import cycle_path, load_cycle
from diffda.cycler.cycling.compare import best_by_lead, lead_table
from diffda.cycler.cycling.config import DEFAULT_MODES as MODES
from diffda.cycler.cycling.config import MODES as ALL_MODES
from diffda.cycler.cycling.config import (
    config_hash,
    load_run_config,
    read_resolved,
    run_config_from_mapping,
)
from diffda.cycler.cycling.driver import run_experiment
from diffda.cycler.cycling.modes import MODES as MODE_CLASSES
from diffda.cycler.cycling.modes import bilinear_upsample
from diffda.cycler.cycling.outputs import read_metrics
from diffda.cycler.cycling.sweep import sweep_configs
from diffda.cycler.metrics import SCORES
from diffda.emulators.forecast.data import load_coarse_states
from diffda.emulators.forecast.model import build_emulator
from diffda.emulators.prior.model import area_weighted_moments, build_prior
from diffda.emulators.prior.unet import UNetConfig
from diffda.observations.likelihood import ErrorModel, ObservationTerm
from diffda.observations.operators import forecast_grid_operator

FULL, COARSE = Grid(16, 32), Grid(8, 16)
VARIABLES = ("height", "u", "v", "tracer")


def tiny_dataset(days: int = 6) -> xr.Dataset:
    """Canonical (time, lat, lon) dataset, noleap times from 0001-01-01, 6-hourly."""
    times = [cftime.DatetimeNoLeap(1, 1, 1) + k * datetime.timedelta(hours=6)
             for k in range(4 * days)]
    la = np.deg2rad(FULL.lat)[None, :, None]
    lo = np.deg2rad(FULL.lon)[None, None, :]
    t = np.arange(len(times))[:, None, None] * 0.4
    height = 5500 + 300 * np.cos(la) ** 2 + 80 * np.cos(2 * lo - t) * np.cos(la) ** 2
    u = 20 * np.cos(la) ** 2 + 6 * np.sin(3 * lo - 0.7 * t) * np.cos(la)
    v = 5 * np.cos(2 * lo - t) * np.cos(la)
    tracer = 1e-2 * np.exp(-((la / 0.6) ** 2)) * (1.2 + np.cos(lo - 0.5 * t))
    land = (np.cos(np.deg2rad(FULL.lon))[None, :] > 0.3) & (np.abs(FULL.lat)[:, None] < 60)
    dims = ("time", "lat", "lon")
    ds = xr.Dataset(
        {"height": (dims, height, {"units": "m"}), "u": (dims, u, {"units": "m s-1"}),
         "v": (dims, v, {"units": "m s-1"}), "tracer": (dims, tracer, {"units": "kg kg-1"}),
         "orography": (("lat", "lon"), 500.0 * land),
         "land_sea_mask": (("lat", "lon"), land.astype(float))},
        coords={"time": times, "lat": FULL.lat, "lon": FULL.lon},
    )
    ds["time"].encoding.update({"units": "hours since 0001-01-01", "calendar": "noleap"})
    return ds


def tiny_world(folder: Path, *, modes: tuple[str, ...] = MODES, **extra: str) -> Path:
    """Write the tiny dataset, models and a run config into ``folder``; returns the config."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = tiny_dataset()
    ds.to_netcdf(folder / "nature.nc")
    data = load_coarse_states(ds, COARSE)
    emulator = build_emulator(data, None, "none", {"width": 8, "depth": 1}, 6.0,
                              generator=torch_generator(0, "test-emulator"))
    emulator.export(folder / "emulator.safetensors")
    full = load_coarse_states(ds, FULL)
    mean, std = area_weighted_moments(full.states, FULL)
    unet = UNetConfig(channels=4, model_channels=8, channel_mult=(1, 2), attn_levels=(1,))
    prior = build_prior(unet, VARIABLES, mean.float(), std.float(), FULL,
                        seed_generator=torch_generator(0, "test-prior"))
    prior.export(folder / "prior.safetensors", {"note": "untrained test prior"})
    lines = [
        'name = "tiny"', "seed = 3", "members = 3",
        "[data]", f'path = "{folder / "nature.nc"}"', 'start = "0001-01-03T00:00"',
        "days = 1", "cadence_hours = 12",
        "[models]", f'emulator = "{folder / "emulator.safetensors"}"',
        f'prior = "{folder / "prior.safetensors"}"',
        "[stations]", "n = 12", "min_separation_km = 100.0",
        "[analysis]", f"modes = {json.dumps(list(modes))}", "lambda = 0.5",
        f'reinitialize_from = "{extra.get("reinitialize_from", "mean")}"',
        "[analysis.forecast]", "sigma_y = 0.01", "gamma = 0.1",
        "[analysis.sampler]", "num_steps = 6",
        "[enkf]", "radius_km = 3000.0", "inflation = 1.05",
        f"model_noise = {extra.get('model_noise', 'false')}",
        "[runtime]", "threads = 1", "progress = false",
    ]
    path = folder / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bilinear_upsample_is_exact_for_zonally_linear_and_constant_fields():
    x = torch.ones(2, 3, COARSE.nlat, COARSE.nlon) * torch.arange(3.0)[:, None, None]
    torch.testing.assert_close(bilinear_upsample(x, FULL), x[..., :1, :1].expand(2, 3, 16, 32))
    # periodic in longitude: cos(lon) interpolates with second-order error only
    c = torch.as_tensor(np.cos(np.deg2rad(COARSE.lon)))[None].expand(COARSE.nlat, -1)
    up = bilinear_upsample(c, FULL)
    exact = np.cos(np.deg2rad(FULL.lon))
    assert float((up[0] - torch.as_tensor(exact)).abs().max()) < 0.04


def test_every_mode_end_to_end(tmp_path):
    cfg = load_run_config(tiny_world(tmp_path / "world"))
    run_dir = tmp_path / "run"
    summary = run_experiment(cfg, run_dir, plots=True)
    records = read_metrics(run_dir)
    assert [r["mode"] for r in records] == [m for m in MODES for _ in (1, 2)]
    for r in records:
        assert set(r) >= {"mode", "cycle", "time", "lead_hours", "members", *VARIABLES}
        assert r["lead_hours"] == 12 * r["cycle"]
        for v in VARIABLES:
            assert set(r[v]) == set(SCORES)
            assert all(np.isfinite(r[v][s]) for s in SCORES), (r["mode"], v, r[v])
            assert r[v]["rmse"] > 0 and r[v]["crps"] > 0
    assert records[0]["time"] == "0001-01-03T12:00:00"
    # pinned: the numbers this tiny run gave before the driver was refactored (same seeds,
    # one thread); a change of method shows here first, and must be deliberate
    pinned_file = Path(__file__).parent / "data" / "pinned_tiny_metrics.jsonl"
    pinned = [json.loads(line) for line in pinned_file.read_text().splitlines()]
    assert [(r["mode"], r["cycle"]) for r in records] == [(r["mode"], r["cycle"]) for r in pinned]
    for got, want in zip(records, pinned, strict=True):
        for v in VARIABLES:
            for s in SCORES:
                assert got[v][s] == pytest.approx(want[v][s], rel=1e-6, abs=1e-9), (
                    got["mode"], v, s)
    for r in records:  # the sampler's diagnostics stand beside the scores
        if r["mode"] in ("climatological", "precomputed", "reinitialized"):
            assert r["method"]["nfe"] == 11 and r["method"]["guidance_ratio_max"] > 0
    by = {(r["mode"], r["cycle"]): r for r in records}
    # one-member reference: spread 0, fair CRPS = MAE <= RMSE
    assert by[("free", 1)]["members"] == 1 and by[("free", 1)]["height"]["spread"] == 0.0
    assert by[("free", 1)]["height"]["crps"] <= by[("free", 1)]["height"]["rmse"]
    # the ensembles have spread; the unconditional samples are one draw scored twice
    assert by[("enkf", 2)]["u"]["spread"] > 0 and by[("climatological", 1)]["u"]["spread"] > 0
    # the stations pull the climatological analysis towards the truth where they are
    # (3 members of an untrained prior: on average over variables and cycles)
    ratio = np.mean([by[("climatological", k)][v]["rmse_station"]
                     / by[("unconditional", k)][v]["rmse_station"]
                     for v in VARIABLES for k in (1, 2)])
    assert ratio < 0.9, ratio
    unc = xr.open_dataset(run_dir / "analyses" / "unconditional.nc")
    np.testing.assert_array_equal(unc["height"].values[0], unc["height"].values[1])
    # CF netCDF of the analyses: mean and std per variable, cftime times, units
    coder = xr.coders.CFDatetimeCoder(use_cftime=True)
    with xr.open_dataset(run_dir / "analyses" / "precomputed.nc", decode_times=coder) as ds:
        assert ds["height"].dims == ("time", "lat", "lon") and ds["height"].attrs["units"] == "m"
        assert ds["height_std"].attrs["cell_methods"] == "realization: standard_deviation"
        assert ds["time"].values[-1] == cftime.DatetimeNoLeap(1, 1, 4)
        assert ds.attrs["Conventions"] == "CF-1.8"
    for name in ("rmse_by_lead", "spread_skill", "point_series", "maps_last_cycle"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
    timings = json.loads((run_dir / "timings.json").read_text())
    assert set(timings) == set(MODES) and timings["climatological"]["nfe_per_analysis"] == 11
    assert summary.seconds["enkf"] and len(summary.seconds["enkf"]) == 2
    # the resolved config reads back to the same config (same hash)
    assert config_hash(read_resolved(run_dir / "config.json")) == config_hash(cfg)
    # the command line: resuming a finished run recomputes nothing and changes nothing
    before = (run_dir / "metrics.jsonl").read_bytes()
    assert cli_main(["resume", str(run_dir), "--no-plots"]) == 0
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    assert set(json.loads((run_dir / "timings.json").read_text())) == set(MODES)
    # compare: table at the leads present (day 1 = cycle 2), JSON + PNG
    out = tmp_path / "cmp"
    assert cli_main(["compare", str(run_dir), "--out", str(out), "--leads", "0.5,1,3"]) == 0
    table = json.loads((out / "compare.json").read_text())
    row = next(r for r in table["rows"] if r["mode"] == "enkf" and r["variable"] == "u")
    assert row["rmse"][:2] == [by[("enkf", 1)]["u"]["rmse"], by[("enkf", 2)]["u"]["rmse"]]
    assert row["rmse"][2] is None and (out / "compare.png").stat().st_size > 1000


def test_reinitialized_from_members_and_station_guidance(tmp_path):
    path = tiny_world(tmp_path / "world", modes=("reinitialized", "unconditional"),
                      reinitialize_from="members")
    cfg = load_run_config(path, {"analysis.sampler.num_steps": 10})
    run_experiment(cfg, tmp_path / "run", plots=False)
    by = {(r["mode"], r["cycle"]): r for r in read_metrics(tmp_path / "run")}
    assert set(by) == {(m, k) for m in ("reinitialized", "unconditional") for k in (1, 2)}
    # cycle 1: the forecast from the truth and the stations pull the analysis towards the
    # truth (later cycles of an untrained prior need not be better than its samples)
    for v in VARIABLES:
        assert by[("reinitialized", 1)][v]["rmse"] < by[("unconditional", 1)][v]["rmse"], v
        assert (by[("reinitialized", 1)][v]["rmse_station"]
                < by[("unconditional", 1)][v]["rmse_station"]), v
    # cycle 2: one forecast per member, each from its own analysis
    ck = load_cycle(cycle_path(tmp_path / "run", "reinitialized", 2), config_hash(cfg),
                    {"emulator": file_sha256(cfg.models.emulator),
                     "prior": file_sha256(cfg.models.prior)})
    forecast = ck.tensors["forecast"]
    assert forecast.shape[0] == 3 and not torch.equal(forecast[0], forecast[1])
    ck1 = load_cycle(cycle_path(tmp_path / "run", "reinitialized", 1), config_hash(cfg),
                     ck.weights)
    assert ck1.tensors["forecast"].shape[0] == 1


def test_mode_registry_matches_the_config_choices():
    assert set(MODE_CLASSES) == set(ALL_MODES)


@pytest.mark.parametrize(("mapping", "message"), [
    ({"analysis": {"lambda": -1.0}}, "analysis.lambda = -1.0"),
    ({"analysis": {"modes": ["enkf", "kalman"]}}, "analysis.modes = 'kalman'"),
    ({"analysis": {"reinitialize_from": "median"}}, "analysis.reinitialize_from = 'median'"),
    ({"analysis": {"sampler": {"num_steps": 0}}}, "analysis.sampler.num_steps = 0"),
    ({"data": {"start": "0005-01-01T06:00"}}, "data.start = '0005-01-01T06:00'"),
    ({"data": {"start": "yesterday"}}, "data.start = 'yesterday'"),
    ({"data": {"days": 0.3}}, "data.days = 0.3"),
    ({"data": {"cadence_hours": 7}}, "data.cadence_hours = 7"),
    ({"members": 1, "analysis": {"modes": ["enkf"]}}, "members = 1"),
    ({"stations": {"error_std": {"height": -5.0}}}, "stations.error_std.height = -5.0"),
    ({"enkf": {"inflation": 0.9}}, "enkf.inflation = 0.9"),
    ({"ensemble": 3}, "unknown key ensemble"),
    ({"members": "many"}, "members = 'many'"),
])
def test_config_errors_name_key_and_value(mapping, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_config_from_mapping(mapping)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[analysis]\nlambda = 'heavy'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: analysis\.lambda = 'heavy'"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "missing.toml")


def test_default_experiment_config_and_hash():
    root = Path(__file__).resolve().parents[1]
    cfg = load_run_config(root / "runs" / "sevenday.toml")
    assert cfg.members == 16 and cfg.data.days == 7 and set(cfg.analysis.modes) == set(MODES)
    assert cfg.data.n_cycles == 14 and cfg.data.schedule()[1].hour == 12
    # the hash follows what is computed, not how (runtime), and is stable
    other = load_run_config(root / "runs" / "sevenday.toml", {"runtime.threads": 1})
    assert config_hash(other) == config_hash(cfg)
    assert cfg.analysis.lambda_ == 2.0 and cfg.analysis.sampler.max_guidance_ratio == 1.0
    changed = load_run_config(root / "runs" / "sevenday.toml", {"analysis.lambda": 3.0})
    assert changed.analysis.lambda_ == 3.0 and config_hash(changed) != config_hash(cfg)
    assert parse_value("0.5") == 0.5 and parse_value("members") == "members"


def test_a_partial_table_keeps_the_run_configs_defaults(tmp_path):
    """`[analysis.sampler] num_steps = 6` changes the steps of the driver's default sampler
    (churn 2, no cap) and nothing else: not the experiments' SamplerConfig() defaults."""
    from diffda.cycler.analysis.sampler import SamplerConfig

    cfg = load_run_config(tiny_world(tmp_path / "world"))
    s = cfg.analysis.sampler
    assert s.num_steps == 6 and s.s_churn == 2.0 and s.max_guidance_ratio is None
    assert SamplerConfig().s_churn != s.s_churn  # the class default differs
    assert cfg.analysis.station.gamma == 0.3  # an untouched table keeps its default too


def test_forecast_term_closed_form_and_per_member_forecasts():
    op = forecast_grid_operator(FULL, VARIABLES, coarse=COARSE)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, FULL.nlat, FULL.nlon, generator=g, dtype=torch.float64)
    y = coarsen_to(x, COARSE).reshape(2, -1)
    n = y.shape[1]
    err = ErrorModel(sigma_y=0.01, gamma=0.1)
    # one forecast for every member: zero residual for member 0, a shift of 1 for member 1
    shared = ObservationTerm(op, y[:1], err.sigma_y, err.gamma)
    ll = shared.log_likelihood(torch.stack([x[0], x[0] + 1.0]), torch.tensor(0.5))
    torch.testing.assert_close(ll, torch.tensor([0.0, -0.5 * n / (0.01 + 0.25 * 0.1)],
                                                dtype=torch.float64))
    # one forecast per member: each member is compared with its own
    own = ObservationTerm(op, y, err.sigma_y, err.gamma)
    torch.testing.assert_close(own.log_likelihood(x, torch.tensor(0.0)),
                               torch.zeros(2, dtype=torch.float64))


def test_sweep_configs_and_best_value_table(tmp_path):
    path = tiny_world(tmp_path / "world", modes=("precomputed",))
    configs = sweep_configs(path, "analysis.lambda", [0.0, 2.0], ["precomputed", "free"], 1)
    assert [label for label, _ in configs] == ["lambda=0.0", "lambda=2.0"]
    assert [c.analysis.lambda_ for _, c in configs] == [0.0, 2.0]
    assert configs[1][1].name == "tiny-lambda=2.0" and configs[1][1].runtime.threads == 1
    assert configs[0][1].analysis.modes == ("precomputed", "free")

    def rec(rmse_day1: float) -> dict:
        return {"mode": "precomputed", "cycle": 2, "lead_hours": 24, "members": 3,
                "height": {"rmse": rmse_day1}}

    table = lead_table({"lambda=0.0": [rec(5.0)], "lambda=2.0": [rec(3.0)]}, (1, 3))
    assert table["rows"][1]["rmse"] == [3.0, None]
    assert best_by_lead(table) == {"precomputed": {"height": ["lambda=2.0", None]}}


def test_enkf_model_noise_draws_the_emulator_noise_reproducibly(tmp_path):
    """enkf.model_noise forecasts the members with the emulator's stochastic term: the
    EnKF's scores change, a second run repeats them exactly, and a deterministic emulator
    is refused with a message naming the file."""
    from diffda.emulators.forecast.model import SFNOEmulator

    plain_cfg = tiny_world(tmp_path / "plain", modes=("enkf",))
    noisy_cfg = tiny_world(tmp_path / "noisy", modes=("enkf",), model_noise="true")
    with pytest.raises(ValueError, match="emulator.safetensors has no noise modes"):
        run_experiment(load_run_config(noisy_cfg), tmp_path / "refused")
    emu = SFNOEmulator.from_weights(tmp_path / "plain" / "emulator.safetensors")
    g = torch.Generator().manual_seed(0)
    emu.set_noise(0.05 * torch.randn(4, len(VARIABLES), COARSE.nlat, COARSE.nlon,
                                     generator=g))
    for world in ("plain", "noisy"):  # the same stochastic emulator in both worlds
        emu.export(tmp_path / world / "emulator.safetensors")
    runs = {}
    for name, cfg in (("plain", plain_cfg), ("noisy", noisy_cfg), ("again", noisy_cfg)):
        run_experiment(load_run_config(cfg), tmp_path / f"run-{name}")
        runs[name] = read_metrics(tmp_path / f"run-{name}")
    assert runs["noisy"] == runs["again"]
    rmse = {k: [r["height"]["rmse"] for r in v] for k, v in runs.items()}
    assert rmse["noisy"] != rmse["plain"]
