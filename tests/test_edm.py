"""EDM preconditioning and loss against Karras et al. Table 1, the EMA, the spherical U-Net
(zonal-roll equivariance, size), prior weights round trip, and a tiny training run."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math

import cftime
import numpy as np
import pytest
import torch
import xarray as xr
from diffda.core.config import load_config
from diffda.core.grid import Grid
from diffda.core.rng import torch_generator
from diffda.core.weights import WeightsError
from diffda.cycler.metrics import zonal_power_spectrum
from diffda.emulators.dataio import Climatology
from diffda.emulators.forecast.data import load_coarse_states
from diffda.emulators.prior.edm import (
    EDMPrecond,
    EDMTrainer,
    edm_coefficients,
    edm_loss,
    ema_decay,
    loss_weight,
    sample_training_sigma,
)
from diffda.emulators.prior.evaluation import acceptance, compare_climates
from diffda.emulators.prior.model import DiffusionPrior, build_prior
from diffda.emulators.prior.training import (
    EDMTrainConfig,
    PriorDataConfig,
    PriorOptimConfig,
    PriorTrainConfig,
    train_prior,
)
from diffda.emulators.prior.unet import SongUNet, UNetConfig, count_parameters

DT = torch.float64
TINY = UNetConfig(channels=4, model_channels=8, channel_mult=(1, 2, 2), attn_levels=(2,),
                  num_heads=2, dropout=0.0)


def test_coefficients_match_table_1_closed_forms():
    sigma = torch.tensor([0.002, 0.5, 1.0, 80.0], dtype=DT)
    for sd in (1.0, 0.5):
        c = edm_coefficients(sigma, sd)
        for i, s in enumerate(sigma.tolist()):
            assert float(c.c_skip[i]) == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-14)
            assert float(c.c_out[i]) == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-14)
            assert float(c.c_in[i]) == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-14)
            assert float(c.c_noise[i]) == pytest.approx(math.log(s) / 4, rel=1e-14)
        # the design principles of Table 1: unit-variance input and training target
        # Var(c_in x) = c_in^2 (sd^2 + s^2) = 1; Var((x0 - c_skip x) / c_out) = 1
        torch.testing.assert_close(c.c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma))
        target_var = ((1 - c.c_skip) ** 2 * sd**2 + c.c_skip**2 * sigma**2) / c.c_out**2
        torch.testing.assert_close(target_var, torch.ones_like(sigma))
        torch.testing.assert_close(loss_weight(sigma, sd), 1 / c.c_out**2)


class _Const(torch.nn.Module):
    """A backbone that returns a fixed multiple of its input (so D is known in closed form)."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a
        self.seen: list[torch.Tensor] = []

    def forward(self, x, c_noise):
        self.seen.append(c_noise)
        return self.a * x


def test_precond_and_loss_weighting_in_closed_form():
    sd = 1.0
    backbone = _Const(0.3)
    den = EDMPrecond(backbone, sigma_data=sd)
    x0 = torch.randn(5, 2, 4, 8, dtype=DT, generator=torch.Generator().manual_seed(0))
    sigma = torch.linspace(0.1, 3.0, 5, dtype=DT)
    c = edm_coefficients(sigma, sd)
    out = den(x0, sigma)
    expect = (c.c_skip + c.c_out * 0.3 * c.c_in)[:, None, None, None] * x0  # Eq. 5
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(backbone.seen[-1], c.c_noise)
    # Eq. 6: the loss redraws sigma and n from the generator; recompute them by hand
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loss = edm_loss(den, x0, g1, p_mean=-0.5, p_std=1.5, sigma_data=sd)
    s = (-0.5 + 1.5 * torch.randn(5, generator=g2, dtype=DT)).exp()
    n = torch.randn(x0.shape, generator=g2, dtype=DT)
    d = den(x0 + s[:, None, None, None] * n, s)
    manual = (s**2 + sd**2) / (s * sd) ** 2 * ((d - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss, manual)
    # the 1/c_out^2 weight makes the loss the unit-variance target's MSE: for F = 0 the
    # expected loss is Var(target) = 1 whatever sigma
    zero = EDMPrecond(_Const(0.0), sigma_data=sd)
    big = torch.randn(4000, 1, 1, 4, dtype=DT, generator=torch.Generator().manual_seed(1)) * sd
    for sig in (0.05, 1.0, 20.0):
        n = torch.randn(big.shape, dtype=DT, generator=torch.Generator().manual_seed(2))
        noisy = big + sig * n
        per = loss_weight(torch.tensor(sig, dtype=DT), sd) * ((zero(noisy, sig) - big) ** 2).mean()
        assert float(per) == pytest.approx(1.0, abs=0.06)


def test_training_sigma_is_log_normal():
    s = sample_training_sigma(100_000, torch.Generator().manual_seed(0), -0.5, 1.5, dtype=DT)
    assert float(s.log().mean()) == pytest.approx(-0.5, abs=0.02)
    assert float(s.log().std()) == pytest.approx(1.5, abs=0.02)


def test_ema_follows_the_half_life_form():
    assert ema_decay(10_000, 100.0, None) == pytest.approx(0.5 ** (1 / 100))
    assert ema_decay(20, 100.0, 0.1) == pytest.approx(0.5 ** (1 / 2.0))  # warm-up: 0.1 * 20
    net = EDMPrecond(SongUNet(TINY))
    trainer = EDMTrainer(net, ema_halflife_steps=4.0, ema_warmup_ratio=None)
    old = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    beta = trainer.update_ema()
    assert beta == pytest.approx(0.5 ** 0.25)
    for k, v in trainer.ema.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, beta * old[k] + (1 - beta) * net.state_dict()[k])
    assert int(trainer.ema_updates) == 1
    assert not any(p.requires_grad for p in trainer.ema.parameters())


def test_unet_commutes_with_zonal_rolls_and_default_size():
    torch.manual_seed(0)
    net = SongUNet(dataclasses.replace(TINY, dropout=0.0)).eval()
    with torch.no_grad():  # make the zero-initialised output layer non-trivial
        net.conv_out.weight.normal_(0, 0.1)
    x = torch.randn(2, 4, 16, 32, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0.1, -0.4])
    with torch.no_grad():
        y = net(x, c)
        for shift in (4, 12, -8):  # multiples of 2^(levels-1) = 4 columns
            torch.testing.assert_close(net(x.roll(shift, -1), c), y.roll(shift, -1),
                                       rtol=1e-4, atol=1e-5)
        # latitude is not periodic: a roll in latitude does not commute
        assert not torch.allclose(net(x.roll(3, -2), c), y.roll(3, -2), atol=1e-3)
    n = count_parameters(SongUNet(UNetConfig()))
    assert 1_000_000 <= n <= 3_000_000


def _tiny_dataset(grid: Grid, years: tuple[int, ...] = (1, 2), days: int = 6) -> xr.Dataset:
    times = [cftime.DatetimeNoLeap(y, 1, 1) + k * datetime.timedelta(hours=6)
             for y in years for k in range(4 * days)]
    rng = np.random.default_rng(0)
    lat, lon = np.deg2rad(grid.lat), np.deg2rad(grid.lon)
    phase = rng.uniform(0, 2 * np.pi, (len(times), 3))
    la, lo = lat[None, :, None], lon[None, None, :]
    ph = phase[:, :, None, None]
    height = 5500 + 300 * np.cos(la) ** 2 + 60 * np.cos(2 * lo + ph[:, 0]) * np.cos(la)
    u = 20 * np.cos(la) ** 2 + 5 * np.sin(3 * lo + ph[:, 1]) * np.cos(la)
    v = 5 * np.cos(2 * lo + ph[:, 2]) * np.cos(la)
    tracer = 1e-2 * np.exp(-((la / 0.6) ** 2)) * (1.2 + np.cos(lo + ph[:, 0]))
    dims = ("time", "lat", "lon")
    return xr.Dataset(
        {"height": (dims, height), "u": (dims, u), "v": (dims, v), "tracer": (dims, tracer),
         "orography": (("lat", "lon"), np.zeros((grid.nlat, grid.nlon))),
         "land_sea_mask": (("lat", "lon"), np.zeros((grid.nlat, grid.nlon)))},
        coords={"time": times, "lat": grid.lat, "lon": grid.lon},
    )


def _tiny_config(steps: int) -> PriorTrainConfig:
    return PriorTrainConfig(
        seed=1,
        data=PriorDataConfig(path="-", train_years=(1,), valid_years=(2,), nlat=8, nlon=16),
        model=dataclasses.replace(TINY, channel_mult=(1, 2), attn_levels=(1,)),
        edm=EDMTrainConfig(ema_halflife_steps=5.0, ema_warmup_ratio=0.1),
        train=PriorOptimConfig(steps=steps, batch_size=8, lr=3e-3, warmup_steps=5,
                               checkpoint_every=20, log_every=5, device="cpu"),
    )


def _fixed_loss(prior: DiffusionPrior, z: torch.Tensor) -> float:
    with torch.no_grad():
        losses = [edm_loss(prior.net, z, torch_generator(9, "eval", k)).mean() for k in range(8)]
    return float(torch.stack(losses).mean())


def test_tiny_prior_trains_exports_and_reloads(tmp_path):
    grid = Grid(8, 16)
    ds = _tiny_dataset(grid)
    data = load_coarse_states(ds, grid, years=(1,))
    cfg = _tiny_config(steps=80)
    prior, summary = train_prior(cfg, tmp_path / "run", data=ds, progress=False)
    assert summary["finished"] and summary["step"] == 80
    clim = Climatology.from_dataset(ds, list(cfg.data.variables))
    torch.testing.assert_close(prior.mean, torch.tensor([clim.mean[v] for v in clim.mean]))
    init = build_prior(cfg.model, cfg.data.variables, prior.mean, prior.std, grid,
                       seed_generator=torch_generator(1, "prior-init")).eval()
    z = prior.normalise(data.states[:16])
    before, after = _fixed_loss(init, z), _fixed_loss(prior, z)
    assert after < 0.7 * before, (before, after)
    # weights + card round trip; the loaded prior is the same function
    loaded = DiffusionPrior.load(tmp_path / "run" / "prior.safetensors")
    assert loaded.card["training"]["step"] == 80 and loaded.variables == cfg.data.variables
    x = torch.randn(3, *loaded.state_shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(x, torch.tensor(0.7)), prior(x, torch.tensor(0.7)))
    torch.testing.assert_close(loaded.denormalise(loaded.normalise(data.states[:2])),
                               data.states[:2], rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())
    # a resumed finished run does no more steps and gives the same weights
    again, s2 = train_prior(cfg, tmp_path / "run", data=ds, resume=True, progress=False)
    assert s2["step"] == 80 and s2["seconds_this_run"] < summary["seconds_this_run"]
    torch.testing.assert_close(again(x, torch.tensor(0.7)), prior(x, torch.tensor(0.7)))


def test_weights_of_another_kind_are_refused(tmp_path):
    from diffda.core.weights import export_weights

    export_weights(tmp_path / "w.safetensors", {"a": torch.zeros(2)}, {"kind": "emulator"})
    with pytest.raises(WeightsError, match="w.safetensors"):
        DiffusionPrior.load(tmp_path / "w.safetensors")


def test_spectrum_parseval_and_identical_climates_score_zero():
    grid = Grid(8, 16)
    x = np.random.default_rng(0).normal(size=(5, 8, 16))
    w = np.ones(8)
    assert zonal_power_spectrum(x, w).sum() == pytest.approx((x**2).mean(), rel=1e-12)
    states = np.random.default_rng(1).normal(size=(20, 2, 8, 16))
    scores = compare_climates(states, states, grid, ("a", "b"), zonal_power_spectrum)
    assert scores["a"]["mean_by_lat_error"] == 0.0 and scores["b"]["std_by_lat_error"] == 0.0
    assert scores["a"]["spectrum_ratio_min"] == pytest.approx(1.0)
    assert acceptance(scores) == {n: {"mean_by_lat": True, "std_by_lat": True,
                                      "spectrum": True} for n in ("a", "b")}
    doubled = compare_climates(2 * states, states, grid, ("a", "b"),
                               zonal_power_spectrum)
    assert acceptance(doubled)["a"] == {"mean_by_lat": True, "std_by_lat": False,
                                        "spectrum": False}  # zero mean: only the std fails
    assert doubled["a"]["spectrum_ratio_max"] == pytest.approx(4.0)  # power scales as amp^2
    assert doubled["a"]["std_by_lat_error"] == pytest.approx(1.0)


def test_default_config_file_loads():
    """The shipped prior's recipe loads through the real loader: runs/prior.toml (stage 1),
    stages 2 and 3 as the ``--set`` overrides in runs/prior_pipeline.sh, and the prior
    experiments' overrides (runs/experiments/prior_*/run.sh)."""
    import re
    import shlex
    from pathlib import Path

    from diffda.core.config import parse_overrides  # load_config: this module's import
    from diffda.emulators.prior.training import PriorTrainConfig
    from diffda.emulators.prior.unet import UNetConfig

    root = Path(__file__).parents[1]

    def override_arrays(script: str) -> dict:
        """The ``NAME=(--set KEY=VALUE ...)`` lines of a recipe script, as overrides."""
        found = {}
        for line in (root / script).read_text().splitlines():
            match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=\((.*)\)", line.strip())
            if match:
                words = shlex.split(match.group(2))
                assert len(words) % 2 == 0 and set(words[0::2]) <= {"--set"}, line
                found[match.group(1)] = parse_overrides(words[1::2])
        return found

    base = root / "runs" / "prior.toml"
    cfg = load_config(PriorTrainConfig, base)
    assert cfg.model == UNetConfig()  # the file spells out the defaults
    assert cfg.edm.p_mean == -0.5 and cfg.edm.p_std == 1.5 and cfg.edm.sigma_data == 1.0
    assert (cfg.seed, cfg.train.steps, cfg.train.lr, cfg.train.init_from) == (0, 2500, 1e-3, None)
    stages = override_arrays("runs/prior_pipeline.sh")
    assert set(stages) == {"STAGE1", "STAGE2", "STAGE3"} and stages["STAGE1"] == {}
    for name, seed, max_minutes in (("STAGE2", 1, 50.0), ("STAGE3", 2, 38.0)):
        stage = load_config(PriorTrainConfig, base, stages[name])
        assert stage.model == cfg.model and stage.data == cfg.data and stage.edm == cfg.edm
        t = stage.train
        assert (stage.seed, t.steps, t.lr, t.warmup_steps, t.max_minutes) == (
            seed, 2000, 5e-4, 50, max_minutes)
    c28 = override_arrays("runs/experiments/prior_c28/run.sh")["C28"]
    wide = load_config(PriorTrainConfig, base, {**stages["STAGE3"], **c28})
    assert wide.model.model_channels == 28 and wide.seed == 2
    stage4 = override_arrays("runs/experiments/prior_stage4/run.sh")
    assert set(stage4) == {"STAGE4", "STAGE4Y"}
    assert load_config(PriorTrainConfig, base, stage4["STAGE4"]).train.lr == 3e-4
    four = load_config(PriorTrainConfig, base, stage4["STAGE4Y"]).data
    assert list(four.train_years) == [2000, 2001, 2003, 2004] and list(four.valid_years) == [2002]


def test_untrained_prior_is_the_exact_standard_normal_denoiser():
    """The output layer starts at zero, so ``D = c_skip x = x / (1 + sigma^2)``: the exact
    denoiser of ``N(0, I)`` (``sigma_data = 1``), at the default size and grid."""
    prior = build_prior(UNetConfig(), ("height", "u", "v", "tracer"), torch.zeros(4),
                        torch.ones(4), Grid(32, 64), seed_generator=torch_generator(0, "t"))
    x = torch.randn(2, 4, 32, 64, generator=torch.Generator().manual_seed(0))
    for s in (0.1, 2.0):
        torch.testing.assert_close(prior.eval()(x, torch.tensor(s)), x / (1 + s**2))
    with pytest.raises(ValueError, match="expects states of shape"):
        prior(torch.zeros(2, 3, 32, 64), torch.tensor(1.0))


def test_interrupted_and_resumed_training_gives_the_same_weights(tmp_path):
    ds = _tiny_dataset(Grid(8, 16), days=3)
    cfg = _tiny_config(steps=12)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.2),
                              data=dataclasses.replace(cfg.data, in_memory=False))  # streamed
    straight, _ = train_prior(cfg, tmp_path / "a", data=ds, progress=False)
    _, part = train_prior(cfg, tmp_path / "b", data=ds, progress=False, stop_at=5)
    assert part["step"] == 5 and not part["finished"]
    resumed, s = train_prior(cfg, tmp_path / "b", data=ds, progress=False, resume=True)
    assert s["step"] == 12
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)


def test_init_from_continues_from_given_weights_and_refuses_a_mismatch(tmp_path):
    from diffda.emulators.prior.training import init_from_weights

    grid = Grid(8, 16)
    ds = _tiny_dataset(grid, days=3)
    cfg = _tiny_config(steps=6)
    first, _ = train_prior(cfg, tmp_path / "a", data=ds, progress=False)
    weights = tmp_path / "a" / "prior.safetensors"
    fresh = build_prior(cfg.model, cfg.data.variables, first.mean, first.std, grid,
                        seed_generator=torch_generator(5, "other"))
    x = torch.randn(2, *first.state_shape, generator=torch.Generator().manual_seed(0))
    init_from_weights(fresh, weights)
    torch.testing.assert_close(fresh.eval()(x, torch.tensor(0.5)), first(x, torch.tensor(0.5)))
    # a continued run starts there and its card says so
    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(weights)))
    _, s = train_prior(more, tmp_path / "b", data=ds, progress=False)
    card = DiffusionPrior.load(tmp_path / "b" / "prior.safetensors").card
    assert s["finished"] and card["training"]["init_from"] == str(weights)
    other = build_prior(dataclasses.replace(cfg.model, model_channels=cfg.model.model_channels
                                            + 4), cfg.data.variables, first.mean, first.std,
                        grid, seed_generator=torch_generator(5, "other"))
    with pytest.raises(ValueError, match="init_from.*U-Net"):
        init_from_weights(other, weights)
    shifted = build_prior(cfg.model, cfg.data.variables, first.mean + 1, first.std, grid,
                          seed_generator=torch_generator(5, "other"))
    with pytest.raises(ValueError, match="init_from.*normalised"):
        init_from_weights(shifted, weights)


def test_prior_trains_from_several_stores_as_from_one(tmp_path):
    """``data.path`` as a list (a run and its continuation, given in any order) trains the
    same prior as the joined dataset, also on years that are not contiguous; stores that
    overlap in time or differ in orography are refused, naming the files."""
    from diffda.emulators.dataio import open_datasets

    grid = Grid(8, 16)
    ds = _tiny_dataset(grid, years=(1, 2, 3), days=3)
    paths = []
    for k, years in enumerate(((1,), (2, 3))):
        part = ds.isel(time=np.isin(ds["time"].dt.year.values, years))
        paths.append(str(tmp_path / f"part{k}.nc"))
        part.to_netcdf(paths[-1])
    joined = open_datasets(paths[::-1])
    assert joined.sizes["time"] == ds.sizes["time"] and "time" not in joined["orography"].dims
    np.testing.assert_allclose(joined["u"].values, ds["u"].values)
    base = _tiny_config(steps=4)
    cfg = dataclasses.replace(base, data=dataclasses.replace(
        base.data, path=tuple(paths[::-1]), train_years=(1, 3)))
    from_files, _ = train_prior(cfg, tmp_path / "a", progress=False)
    ref = ds.isel(time=np.isin(ds["time"].dt.year.values, (1, 3)))
    from_memory, _ = train_prior(cfg, tmp_path / "b", data=ds, progress=False)
    card = json.loads((tmp_path / "a" / "prior.json").read_text())["data"]
    assert card["path"] == paths[::-1] and card["n_times"] == ref.sizes["time"]
    x = torch.randn(2, *from_files.state_shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(from_files(x, torch.tensor(0.7)), from_memory(x, torch.tensor(0.7)))
    ds.isel(time=slice(0, 20)).to_netcdf(tmp_path / "overlap.nc")
    with pytest.raises(ValueError, match="overlap in time"):
        open_datasets([paths[0], str(tmp_path / "overlap.nc")])
    other = ds.isel(time=slice(0, 4)).assign(orography=ds["orography"] + 100.0)
    other = other.assign_coords(time=[cftime.DatetimeNoLeap(9, 1, 1) + k * datetime.timedelta(
        hours=6) for k in range(4)])
    other.to_netcdf(tmp_path / "other.nc")
    with pytest.raises(ValueError, match="other.nc: its orography differs"):
        open_datasets([paths[0], str(tmp_path / "other.nc")])


def test_train_command_overrides_threads_and_init_from(tmp_path):
    """``cycler train prior CONFIG --threads N --init-from W`` runs the config with the
    machine's thread count and another stage's weights, and the card records both."""
    import argparse

    from diffda.core.config import ConfigError
    from diffda.cycler.cli import prior as prior_cli

    ds = _tiny_dataset(Grid(8, 16), days=3)
    ds.to_netcdf(tmp_path / "nature.nc")
    config = tmp_path / "p.toml"
    config.write_text(f"""seed = 1
[data]
path = "{tmp_path / 'nature.nc'}"
train_years = [1]
valid_years = [2]
nlat = 8
nlon = 16
[model]
model_channels = 8
channel_mult = [1, 2]
attn_levels = [1]
num_heads = 2
dropout = 0.0
[train]
steps = 3
batch_size = 4
warmup_steps = 1
device = "cpu"
threads = 1
""")
    parser = argparse.ArgumentParser()
    prior_cli.add_train_arguments(parser)
    threads = torch.get_num_threads()
    try:
        assert prior_cli.train(parser.parse_args(
            [str(config), "--out", str(tmp_path / "a"), "--threads", "2"])) == 0
        card = DiffusionPrior.load(tmp_path / "a" / "prior.safetensors").card
        assert card["training"]["threads"] == 2 and card["training"]["init_from"] is None
        first = tmp_path / "a" / "prior.safetensors"
        assert prior_cli.train(parser.parse_args(
            [str(config), "--out", str(tmp_path / "b"), "--init-from", str(first)])) == 0
        card = DiffusionPrior.load(tmp_path / "b" / "prior.safetensors").card
        assert card["training"]["threads"] == 1 and card["training"]["init_from"] == str(first)
        with pytest.raises(ConfigError, match="train.threads = 0"):
            prior_cli.train(parser.parse_args([str(config), "--threads", "0"]))
    finally:
        torch.set_num_threads(threads)
