"""Generic training utilities (emulators/training.py) and the emulator's training command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffda.core.weights import WeightsError, export_weights, load_weights
from diffda.emulators.training import (
    DistContext,
    load_checkpoint,
    save_checkpoint,
    select_device,
    step_seeded_batches,
    train_loop,
)
from torch import nn


def _toy(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)  # test-only: initial weights of a toy model
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    return model, opt, sched


def _draw(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(16, 3, generator=g)
    return x, x.sum(-1, keepdim=True).sin()


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_select_device_cpu():
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA"):
            select_device("cuda")


def test_weights_round_trip_and_card(tmp_path):
    model, _, _ = _toy()
    card = {"variables": ["height", "u"], "grid": [16, 32], "scores": {"rmse": 0.1}}
    wpath, cpath = export_weights(tmp_path / "m.safetensors", model.state_dict(), card)
    state, back = load_weights(wpath)
    assert back["variables"] == ["height", "u"] and back["grid"] == [16, 32]
    assert back["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert json.loads(cpath.read_text())["format"] == back["format"]
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)


def test_load_weights_refuses_non_weights(tmp_path):
    model, opt, _ = _toy()
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a weights file\n")
    with pytest.raises(WeightsError, match="notes.safetensors"):
        load_weights(text)
    pickle_file = tmp_path / "model.pt"
    torch.save(model.state_dict(), pickle_file)
    with pytest.raises(WeightsError, match="model.pt"):
        load_weights(pickle_file)
    # A real safetensors file without its card is refused too.
    wpath, cpath = export_weights(tmp_path / "w.safetensors", model.state_dict(), {})
    cpath.unlink()
    with pytest.raises(WeightsError, match="card"):
        load_weights(wpath)
    # And a checkpoint is not weights, nor are weights a checkpoint.
    ckpt = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, step=0)
    with pytest.raises(WeightsError, match="c.pt"):
        load_weights(ckpt)
    with pytest.raises(WeightsError, match="notes.safetensors"):
        load_checkpoint(text, model=model)


def test_checkpoint_round_trip_restores_generators(tmp_path):
    model, opt, sched = _toy()
    g = torch.Generator().manual_seed(3)
    torch.randn(5, generator=g)
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, step=7,
        generators={"noise": g}, extra={"note": "x"},
    )
    expected = torch.randn(4, generator=g)
    model2, opt2, sched2 = _toy(seed=1)
    g2 = torch.Generator().manual_seed(99)
    step, extra = load_checkpoint(
        path, model=model2, optimizer=opt2, scheduler=sched2, generators={"noise": g2}
    )
    assert step == 7 and extra == {"note": "x"}
    assert torch.equal(torch.randn(4, generator=g2), expected)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_equals_uninterrupted_run(tmp_path):
    batches = step_seeded_batches(_draw, seed=5)
    model_a, opt_a, sched_a = _toy()
    full = train_loop(model=model_a, optimizer=opt_a, scheduler=sched_a, loss_fn=_loss,
                      batches=batches, steps=12, progress=False)
    model_b, opt_b, sched_b = _toy()
    ckpt = tmp_path / "ckpt.pt"
    first = train_loop(model=model_b, optimizer=opt_b, scheduler=sched_b, loss_fn=_loss,
                       batches=batches, steps=7, checkpoint_path=ckpt, progress=False)
    model_c, opt_c, sched_c = _toy(seed=123)  # a fresh process: different init, restored
    second = train_loop(model=model_c, optimizer=opt_c, scheduler=sched_c, loss_fn=_loss,
                        batches=batches, steps=12, checkpoint_path=ckpt, resume=True,
                        progress=False, log_path=tmp_path / "loss.jsonl", log_every=1)
    assert first.step == 7 and second.step == 12 and len(second.losses) == 5
    assert first.losses + second.losses == full.losses
    for a, c in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(a, c)
    lines = (tmp_path / "loss.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == [8, 9, 10, 11, 12]
    assert full.losses[-1] < full.losses[0]


def test_train_loop_stops_on_time_budget_and_checkpoints(tmp_path):
    model, opt, _ = _toy()
    ckpt = tmp_path / "ckpt.pt"
    res = train_loop(model=model, optimizer=opt, loss_fn=_loss,
                     batches=step_seeded_batches(_draw, seed=0), steps=1000,
                     checkpoint_path=ckpt, max_seconds=0.0, progress=False, ctx=DistContext())
    assert res.step == 1
    step, _ = load_checkpoint(ckpt, model=model)
    assert step == 1


# ------------------------------------------------------------------ the emulator command


def _load_test_helpers():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_sfno_test_helpers", Path(__file__).with_name("test_sfno.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


helpers = _load_test_helpers()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: the test machine's two cores are shared, and 2 threads are then slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_config(**train):
    from diffda.emulators.forecast.training import (
        DataConfig,
        EmulatorTrainConfig,
        ModelConfig,
        OptimConfig,
    )

    opt = {"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "rollout": 2,
           "rollout_from": 3, "checkpoint_every": 3, "log_every": 1, **train}
    return EmulatorTrainConfig(
        seed=1, data=DataConfig(path="unused", train_years=(1,), valid_years=(1,),
                                forcing="none"),
        model=ModelConfig(width=16, depth=1), train=OptimConfig(**opt),
    )


@pytest.fixture(scope="module")
def tiny_data():
    from diffda.core.grid import Grid
    from diffda.emulators.forecast.data import load_coarse_states

    return load_coarse_states(helpers.wave_dataset(), Grid(16, 32))


def test_emulator_training_resume_equals_uninterrupted(tiny_data, tmp_path):
    from diffda.emulators.forecast.training import train_emulator

    kw = {"data": tiny_data, "forcing_fn": helpers.day_forcing, "progress": False}
    # input noise on: its draws come from the step's generator, so resuming stays exact
    full, s_full = train_emulator(_tiny_config(input_noise=0.05), tmp_path / "a", **kw)
    half, s_half = train_emulator(_tiny_config(input_noise=0.05), tmp_path / "b", stop_at=3,
                                  **kw)
    assert s_half["step"] == 3 and not s_half["finished"]
    card_half = json.loads((tmp_path / "b" / "emulator.json").read_text())
    assert card_half["training"]["finished"] is False and card_half["training"]["step"] == 3
    resumed, s_res = train_emulator(_tiny_config(input_noise=0.05), tmp_path / "b", resume=True,
                                    **kw)
    clean, _ = train_emulator(_tiny_config(), tmp_path / "c", **kw)
    assert not torch.equal(next(clean.parameters()), next(full.parameters()))  # noise acts
    with pytest.raises(Exception, match="input_noise"):
        _tiny_config(input_noise=-1.0)
    assert s_full["finished"] and s_res["finished"] and s_res["step"] == 6
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    log = (tmp_path / "a" / "loss.jsonl").read_text().splitlines()
    losses = [json.loads(s)["loss"] for s in log]
    assert len(losses) == 6
    # the weights written at the end load back into the same emulator
    from diffda.emulators.forecast.model import SFNOEmulator

    back = SFNOEmulator.from_weights(tmp_path / "a" / "emulator.safetensors",
                                     forcing=helpers.day_forcing)
    x = tiny_data.states[:2]
    assert torch.equal(back.step(x, tiny_data.times[0]), full.step(x, tiny_data.times[0]))
    card = json.loads((tmp_path / "a" / "emulator.json").read_text())
    assert card["training"]["step"] == 6 and card["n_parameters"] > 0
    assert card["variables"] == ["height", "u", "v", "tracer"]


def test_init_from_starts_from_the_given_weights(tiny_data, tmp_path):
    import dataclasses

    from diffda.emulators.forecast.training import ModelConfig, init_from_weights, train_emulator

    kw = {"data": tiny_data, "forcing_fn": helpers.day_forcing, "progress": False}
    first, _ = train_emulator(_tiny_config(), tmp_path / "a", **kw)
    weights = str(tmp_path / "a" / "emulator.safetensors")
    other, _ = train_emulator(_tiny_config(steps=1), tmp_path / "b", **kw)
    assert not torch.equal(next(first.parameters()), next(other.parameters()))
    init_from_weights(other, weights)
    for (k, a), (_, b) in zip(first.state_dict().items(), other.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    # ... and a fine-tuning run moves on from there, recorded in the card
    tuned, _ = train_emulator(_tiny_config(init_from=weights, rollout=3, rollout_from=0,
                                           steps=2), tmp_path / "c", **kw)
    assert not torch.equal(next(first.parameters()), next(tuned.parameters()))
    card = json.loads((tmp_path / "c" / "emulator.json").read_text())
    assert card["training"]["init_from"] == weights
    wider = dataclasses.replace(_tiny_config(init_from=weights),
                                model=ModelConfig(width=24, depth=1))
    with pytest.raises(ValueError, match="init_from.*network"):
        train_emulator(wider, tmp_path / "d", **kw)
    with pytest.raises(FileNotFoundError, match="init_from.*missing.safetensors"):
        train_emulator(_tiny_config(init_from=str(tmp_path / "missing.safetensors")),
                       tmp_path / "e", **kw)


def test_tiny_emulator_overfits_tiny_dataset(tiny_data, tmp_path):
    from diffda.emulators.forecast.evaluation import forecast_scores
    from diffda.emulators.forecast.training import train_emulator

    cfg = _tiny_config(steps=150, batch_size=8, lr=1e-2, warmup_steps=10, rollout=1,
                       checkpoint_every=1000, log_every=10, grad_clip=None)
    emu, summary = train_emulator(cfg, tmp_path, data=tiny_data, forcing_fn=helpers.day_forcing,
                                  progress=False)
    losses = [json.loads(s)["loss"] for s in (tmp_path / "loss.jsonl").read_text().splitlines()]
    # the loss is in units of the tendency variance: persistence scores about 1
    assert losses[0] > 0.3
    assert summary["final_loss"] < 0.05 * losses[0]
    sc = forecast_scores(emu.eval(), tiny_data, n_leads=4, n_starts=16)
    assert (sc["rmse"] < 0.3 * sc["rmse_persistence"]).all()


def test_cli_train_evaluate_bench(tmp_path, capsys):
    from diffda.cycler.cli.main import main

    data_path = tmp_path / "waves.nc"
    helpers.wave_dataset(n_times=48).to_netcdf(data_path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f'seed = 0\n[data]\npath = "{data_path}"\ntrain_years = [1]\nvalid_years = [1]\n'
        'forcing = "none"\n[model]\nwidth = 8\ndepth = 1\n'
        '[train]\nsteps = 4\nbatch_size = 2\ncheckpoint_every = 2\n'
    )
    out = tmp_path / "run"
    assert main(["train", "emulator", str(cfg), "--out", str(out)]) == 0
    weights = out / "emulator.safetensors"
    assert weights.is_file() and (out / "emulator.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", "emulator", str(weights), "--data", str(data_path), "--json",
                 "--lead-days", "1", "--n-starts", "4", "--free-run-days", "2",
                 "--plots", str(tmp_path / "plots"), "--update-card"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["lead_hours"] == [6.0, 12.0, 18.0, 24.0]
    assert set(scores["rmse"]) == set(scores["rmse_persistence"]) == {"height", "u", "v",
                                                                     "tracer"}
    assert scores["free_run"]["finite"]
    assert (tmp_path / "plots" / "emulator_rmse_by_lead.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "emulator_free_run_climate.png").stat().st_size > 1000
    clim = scores["free_run"]["climatology_by_latitude"]
    assert set(clim) == {"emulator", "truth"} and len(clim["truth"]["u"]["mean"]) == 16
    assert json.loads((out / "emulator.json").read_text())["scores"]["n_starts"] == 4
    assert main(["bench", "emulator", "--json", "--weights", str(weights), "--members", "4",
                 "--steps", "2"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["steps_per_second"] > 0 and bench["members"] == 4
    # a file that is not weights is refused with a message naming it, not a traceback
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_text("nope")
    assert main(["evaluate", "emulator", str(bogus), "--data", str(data_path)]) == 2
    assert "bogus.safetensors" in capsys.readouterr().err


def test_free_run_reference_years_give_the_metric_floor(tiny_data, tmp_path):
    """The climate errors of a reference 'year' equal to the held-out data are zero, and the
    free run's errors are reported next to them."""
    from diffda.emulators.forecast.evaluation import evaluate_emulator
    from diffda.emulators.forecast.training import train_emulator

    emu, _ = train_emulator(_tiny_config(steps=1), tmp_path, data=tiny_data,
                            forcing_fn=helpers.day_forcing, progress=False)
    scores = evaluate_emulator(emu, tiny_data, lead_days=0.5, n_starts=2, free_run_days=2,
                               reference={1: tiny_data})
    floor = scores["free_run"]["nature_interannual"]["1"]
    assert all(e["mean_error"] == 0 and e["std_error"] == 0 for e in floor.values())
    assert set(scores["free_run"]["climatology_by_latitude"]) == {"emulator", "truth", "1"}


def test_held_out_years_from_several_stores_pool_one_year_runs(tmp_path):
    """A run and its continuation in two stores load as one time series; the free runs
    start from each held-out year's first state and their climate is pooled over the
    years; overlapping stores are refused."""
    from diffda.core.grid import Grid
    from diffda.emulators.forecast.climate import climate_errors
    from diffda.emulators.forecast.data import load_coarse_states
    from diffda.emulators.forecast.evaluation import evaluate_emulator
    from diffda.emulators.forecast.training import train_emulator

    paths = []
    for y in (1, 2):
        paths.append(tmp_path / f"y{y}.nc")
        helpers.wave_dataset(n_times=24, start_year=y).to_netcdf(paths[-1])
    data = load_coarse_states(paths[::-1], Grid(16, 32), years=[1, 2])
    assert [t.year for t in data.times] == [1] * 24 + [2] * 24
    assert torch.equal(data.states[24:],
                       load_coarse_states(paths[1], Grid(16, 32)).states)
    assert len(load_coarse_states(paths, Grid(16, 32), years=[2]).times) == 24
    with pytest.raises(ValueError, match="overlap"):
        load_coarse_states([paths[0], paths[0]], Grid(16, 32))

    # a training config may name several stores; the card records them
    cfg = _tiny_config(steps=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, path=tuple(str(q) for q in paths), train_years=(1, 2)))
    emu, summary = train_emulator(cfg, tmp_path, forcing_fn=helpers.day_forcing,
                                  progress=False)
    card = json.loads((tmp_path / "emulator.json").read_text())
    assert card["data"]["path"] == [str(q) for q in paths]
    assert card["data"]["n_times"] == 48
    fr = evaluate_emulator(emu, data, lead_days=0.25, n_starts=2, free_run_days=2)["free_run"]
    assert fr["years"] == [1, 2] and set(fr["climate_by_year"]) == {"1", "2"}
    assert fr["climate_compared_days"] == 4.0
    runs = [emu.rollout(data.states[i:i + 1], data.times[i], 8)[0][:, 0] for i in (0, 24)]
    expected = climate_errors(torch.cat(runs), torch.cat([data.states[1:9], data.states[25:33]]),
                              data.grid, data.variables)
    assert all(fr["climate"][v]["std_error"] == pytest.approx(expected[v]["std_error"], rel=1e-4)
               for v in expected)


def test_free_run_members_pool_their_climate(tiny_data, tmp_path):
    """With 3 members the pooled climate errors are those of the members' states together
    (member 0 runs from the unperturbed state: the same run as with one member), each
    member's own errors are listed, and a seed changes only the perturbed members."""
    from diffda.emulators.forecast.climate import climate_errors
    from diffda.emulators.forecast.evaluation import evaluate_emulator
    from diffda.emulators.forecast.training import train_emulator

    emu, _ = train_emulator(_tiny_config(steps=1), tmp_path, data=tiny_data,
                            forcing_fn=helpers.day_forcing, progress=False)
    kw = dict(lead_days=0.25, n_starts=2, free_run_days=2)
    one = evaluate_emulator(emu, tiny_data, **kw)["free_run"]
    three = evaluate_emulator(emu, tiny_data, free_run_members=3, **kw)["free_run"]
    other = evaluate_emulator(emu, tiny_data, free_run_members=3, seed=1, **kw)["free_run"]
    def close(a, b):  # batch size changes float32 rounding, not the run
        return all(a[v][k] == pytest.approx(b[v][k], rel=1e-4, abs=1e-9)
                   for v in a for k in ("mean_error", "std_error"))

    assert three["members"] == 3 and len(three["climate_by_member"]) == 3
    (year,) = three["climate_by_run"]
    assert len(three["climate_by_run"][year]) == 3 and "climate_by_run" not in one
    assert close(three["climate_by_run"][year][1], three["climate_by_member"][1])
    assert close(three["climate_by_member"][0], one["climate"])
    assert close(other["climate_by_member"][0], one["climate"])
    assert not close(other["climate_by_member"][1], three["climate_by_member"][1])
    assert not close(three["climate"], one["climate"])
    ci = three["climate_interval"]
    assert "climate_interval" not in one and ci["level"] == 0.9
    assert all(ci[v][k][0] <= ci[v][k][1] for v in tiny_data.variables
               for k in ("mean_error", "std_error"))
    runs, _ = emu.rollout(tiny_data.states[:1], tiny_data.times[0], 8)
    assert close(climate_errors(runs[:, 0], tiny_data.states[1:9], tiny_data.grid,
                                tiny_data.variables), one["climate"])
    with pytest.raises(ValueError, match="free_run_members"):
        evaluate_emulator(emu, tiny_data, free_run_members=0, **kw)


@pytest.mark.parametrize("recipe", [
    "runs/emulator.toml",
    "runs/experiments/emulator_seeds/pipeline.sh:SEED0",
    "runs/experiments/emulator_seeds/pipeline.sh:SEED1",
    "runs/experiments/emulator_variants/stages.sh:ROLLOUT",
    "runs/experiments/emulator_variants/stages.sh:NOISE01",
    "runs/experiments/emulator_variants/stages.sh:LONG",
    "runs/experiments/emulator_variants/y3_pipeline.sh:Y3",
])
def test_shipped_emulator_configs_load(recipe):
    """Every emulator recipe loads through the real loader: runs/emulator.toml, and each
    experiment's ``--set`` overrides of it (the ``NAME=(--set ...)`` line of its script);
    the second stages start from the seed-0 network of runs/experiments/emulator_seeds/."""
    import re
    import shlex
    from pathlib import Path

    from diffda.core.config import load_config, parse_overrides
    from diffda.emulators.forecast.training import EmulatorTrainConfig

    root = Path(__file__).parents[1]
    script, _, name = recipe.partition(":")
    overrides = {}
    if name:
        lines = [line.strip() for line in (root / script).read_text().splitlines()]
        found = [m.group(1) for line in lines
                 if (m := re.fullmatch(rf"{name}=\((.*)\)", line))]
        assert len(found) == 1, f"{script}: no single line {name}=(...)"
        words = shlex.split(found[0])
        assert len(words) % 2 == 0 and set(words[0::2]) <= {"--set"}, found[0]
        overrides = parse_overrides(words[1::2])
    cfg = load_config(EmulatorTrainConfig, root / "runs" / "emulator.toml", overrides)
    assert cfg.model.width == 48 and cfg.data.nlat == 16
    second_stage = name in ("ROLLOUT", "NOISE01", "LONG")
    assert cfg.train.init_from == (
        "outputs/emulator_seed0/emulator.safetensors" if second_stage else None)
    expected_seed = {"": 2, "SEED0": 0, "SEED1": 1, "Y3": 0}  # 2: the shipped draw
    if name in expected_seed:
        assert cfg.seed == expected_seed[name]
    if name == "Y3":
        assert list(cfg.data.train_years) == [2000, 2001, 2003]
        assert list(cfg.data.valid_years) == [2002, 2004]


# ---------------------------------------------------------------------- stochastic emulator


def test_residual_noise_modes_reproduce_the_residual_covariance(tiny_data, tmp_path):
    """All modes, no polar rows zeroed: sum_k e_k e_k^T is the residuals' sample covariance;
    zeroed polar rows are zero in every mode; bad arguments are refused."""
    from diffda.emulators.forecast.stochastic import fit_residual_noise, one_step_residuals
    from diffda.emulators.forecast.training import train_emulator

    emu, _ = train_emulator(_tiny_config(steps=2), tmp_path, data=tiny_data,
                            forcing_fn=helpers.day_forcing, progress=False)
    res = one_step_residuals(emu, tiny_data).double()
    n = res.shape[0]
    modes, info = fit_residual_noise(emu, tiny_data, n_modes=10_000, polar_rows=0)
    assert info["n_modes"] == n - 1 and info["variance_fraction"] == pytest.approx(1.0)
    x = (res - res.mean(0)).reshape(n, -1)
    cov = x.T @ x / (n - 1)
    e = modes.double().reshape(modes.shape[0], -1)
    assert torch.allclose(e.T @ e, cov, atol=1e-5 * float(cov.diagonal().max()))
    few, info2 = fit_residual_noise(emu, tiny_data, n_modes=3, polar_rows=2)
    assert few.shape == (3, 4, 16, 32) and 0 < info2["variance_fraction"] < 1
    assert few[:, :, :2].abs().max() == 0 and few[:, :, -2:].abs().max() == 0
    assert few[:, :, 2:-2].abs().max() > 0
    half, info3 = fit_residual_noise(emu, tiny_data, n_modes=3, polar_rows=2,
                                     scale={"tracer": 0.5})
    assert torch.allclose(half[:, 3], 0.5 * few[:, 3]) and torch.equal(half[:, :3], few[:, :3])
    assert info3["scale"] == {"tracer": 0.5}
    with pytest.raises(ValueError, match="not one of"):
        fit_residual_noise(emu, tiny_data, n_modes=3, scale={"humidity": 0.5})
    with pytest.raises(ValueError, match="polar_rows"):
        fit_residual_noise(emu, tiny_data, polar_rows=8)
    with pytest.raises(ValueError, match="n_modes"):
        fit_residual_noise(emu, tiny_data, n_modes=0)


def test_stochastic_steps_draw_the_modes_covariance_only_with_a_generator(tiny_data, tmp_path):
    """Without a generator a stochastic emulator steps exactly as the deterministic one;
    with one, the same seed repeats, members differ, and the spread of many draws from one
    state has the modes' variance (normalised units). Export/load keeps the modes."""
    from diffda.core.rng import torch_generator
    from diffda.emulators.forecast.model import SFNOEmulator
    from diffda.emulators.forecast.training import train_emulator

    emu, _ = train_emulator(_tiny_config(steps=2), tmp_path, data=tiny_data,
                            forcing_fn=helpers.day_forcing, progress=False)
    x = tiny_data.states[:1].expand(512, -1, -1, -1).clone()
    t = tiny_data.times[0]
    det = emu.step(x, t)
    g = torch.Generator().manual_seed(0)
    modes = 0.1 * torch.randn(32, 4, 16, 32, generator=g)
    emu.set_noise(modes)
    assert emu.stochastic and torch.equal(emu.step(x, t), det)
    with torch.no_grad():
        a = emu.step_normalised(emu.normalise(x), t, torch_generator(0, "t", 0))
        b = emu.step_normalised(emu.normalise(x), t, torch_generator(0, "t", 0))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    var = a.var(0)
    expected = (modes**2).sum(0)
    assert float((var.mean() / expected.mean() - 1).abs()) < 0.05
    path, _ = emu.export(tmp_path / "stoch.safetensors")
    back = SFNOEmulator.from_weights(path, forcing=helpers.day_forcing)
    assert back.stochastic and torch.equal(back.noise_modes, emu.noise_modes)
    emu.set_noise(None)
    assert not emu.stochastic
    path2, _ = emu.export(tmp_path / "det.safetensors")
    assert not SFNOEmulator.from_weights(path2, forcing=helpers.day_forcing).stochastic
    with pytest.raises(ValueError, match="noise modes must be"):
        emu.set_noise(torch.zeros(2, 4, 8, 32))


def test_stochastic_steps_stay_within_the_latitude_bounds(tiny_data, tmp_path):
    """latitude_bounds(margin=0) are the data's normalised extremes by latitude; noise far
    larger than the data's range is clamped to them, row by row; deterministic steps are
    not clamped; the bounds survive export/load; inconsistent bounds are refused."""
    from diffda.core.rng import torch_generator
    from diffda.emulators.forecast.model import SFNOEmulator
    from diffda.emulators.forecast.stochastic import latitude_bounds
    from diffda.emulators.forecast.training import train_emulator

    emu, _ = train_emulator(_tiny_config(steps=2), tmp_path, data=tiny_data,
                            forcing_fn=helpers.day_forcing, progress=False)
    b0 = latitude_bounds(emu, tiny_data, margin=0.0)
    z = emu.normalise(tiny_data.states)
    assert torch.allclose(b0[0], z.amin((0, 3))) and torch.allclose(b0[1], z.amax((0, 3)))
    b = latitude_bounds(emu, tiny_data, margin=0.1)
    assert torch.allclose(b[1] - b[0], 1.2 * (b0[1] - b0[0]), rtol=1e-5)
    x, t = tiny_data.states[:4], tiny_data.times[0]
    with torch.no_grad():
        free = emu.step_normalised(emu.normalise(x), t)
    mid = 0.5 * (b[0] + b[1])
    tight = torch.stack([mid - 0.01, mid + 0.01])
    emu.set_noise(torch.full((1, 4, 16, 32), 100.0), tight)
    with torch.no_grad():
        out = emu.step_normalised(emu.normalise(x), t, torch_generator(0, "b", 0))
        again = emu.step_normalised(emu.normalise(x), t)
    lo, hi = tight[0][..., None], tight[1][..., None]
    assert bool((out >= lo - 1e-6).all() and (out <= hi + 1e-6).all())
    assert bool(((free < lo) | (free > hi)).any())  # the deterministic step is outside ...
    assert torch.equal(again, free)                  # ... and is not clamped
    emu.set_noise(torch.full((1, 4, 16, 32), 0.1), b)
    path, _ = emu.export(tmp_path / "b.safetensors")
    back = SFNOEmulator.from_weights(path, forcing=helpers.day_forcing)
    assert torch.equal(back.noise_bounds, emu.noise_bounds)
    with pytest.raises(ValueError, match="lower limit"):
        emu.set_noise(emu.noise_modes, b.flip(0))
    with pytest.raises(ValueError, match="come with noise modes"):
        emu.set_noise(None, b)


def _cli_tiny_emulator(tmp_path):
    """A tiny dataset and an emulator trained on it by ``cycler train emulator`` (2 steps):
    ``(data_path, weights_path)``."""
    from diffda.cycler.cli.main import main

    data_path = tmp_path / "waves.nc"
    helpers.wave_dataset(n_times=48).to_netcdf(data_path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f'seed = 0\n[data]\npath = "{data_path}"\ntrain_years = [1]\nvalid_years = [1]\n'
        'forcing = "none"\n[model]\nwidth = 8\ndepth = 1\n[train]\nsteps = 2\nbatch_size = 2\n')
    assert main(["train", "emulator", str(cfg), "--out", str(tmp_path / "run")]) == 0
    base = tmp_path / "run" / "emulator.safetensors"
    return data_path, base


def test_cli_emulator_noise_and_a_stochastic_free_run(tmp_path, capsys):
    """`cycler train emulator-noise` writes a stochastic copy with its card; the evaluation
    runs its free run with noise (or without, --no-noise); the base file is not overwritten."""
    from diffda.cycler.cli.main import main

    data_path, base = _cli_tiny_emulator(tmp_path)
    out = tmp_path / "stoch.safetensors"
    assert main(["train", "emulator-noise", str(base), "--data", str(data_path), "--modes", "4",
                 "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["stochastic"]["n_modes"] == 4 and card["stochastic"]["polar_rows_zeroed"] == 2
    assert card["stochastic"]["fitted_on"]["years"] == [1] and "training" in card
    assert "scores" not in card
    capsys.readouterr()
    common = ["--data", str(data_path), "--json", "--lead-days", "0.5", "--n-starts", "2",
              "--free-run-days", "2", "--free-run-members", "2"]
    assert main(["evaluate", "emulator", str(out), *common]) == 0
    noisy = json.loads(capsys.readouterr().out)["free_run"]
    assert main(["evaluate", "emulator", str(out), *common, "--no-noise"]) == 0
    quiet = json.loads(capsys.readouterr().out)["free_run"]
    assert noisy["stochastic"] and not quiet["stochastic"]
    assert noisy["climate"] != quiet["climate"]
    assert main(["train", "emulator-noise", str(base), "--data", str(data_path),
                 "--out", str(base)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["train", "emulator-noise", str(base), "--data", str(data_path),
                 "--scale", "tracer", "--out", str(tmp_path / "s.safetensors")]) == 2
    assert "VAR=FACTOR" in capsys.readouterr().err


class _Relax(torch.nn.Module):
    """A stand-in network: the step relaxes each state toward ``m`` ``(var, lat)`` in ``T``
    steps (normalised units), so a correction ``c`` moves the equilibrium to ``m + T c``."""

    def __init__(self, m: torch.Tensor, steps: float, tendency_std: torch.Tensor):
        super().__init__()
        self.m, self.steps, self.tstd = m, steps, tendency_std

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        z = inp[:, :self.m.shape[0]]
        return -(z - self.m[..., None]) / (self.steps * self.tstd[:, None, None])


def test_tendency_correction_fit_removes_a_free_run_bias(tmp_path):
    """An emulator that relaxes to the data's zonal-time mean + 0.5 (normalised) has a
    bias of about 0.5 in its free runs; two fixed-point updates with tau = the relaxation
    time remove it for the corrected variables and leave the others alone; the correction
    is applied by every step (no generator needed) and survives export/load."""
    import xarray as xr
    from diffda.core.grid import Grid
    from diffda.emulators.forecast.adjustment import fit_tendency_correction, free_run_bias
    from diffda.emulators.forecast.data import load_coarse_states, year_segments
    from diffda.emulators.forecast.training import train_emulator

    ds = xr.concat([helpers.wave_dataset(n_times=80, start_year=y) for y in (1, 2)],
                   "time", data_vars="minimal")
    data = load_coarse_states(ds, Grid(16, 32))
    assert year_segments(data) == {1: slice(0, 80), 2: slice(80, 160)}
    emu, _ = train_emulator(_tiny_config(steps=2), tmp_path, data=data,
                            forcing_fn=helpers.day_forcing, progress=False)
    with torch.no_grad():
        mu = emu.normalise(data.states).mean((0, 3))
    emu.net = _Relax(mu + 0.5, 4.0, emu.tendency_std)
    bias0, _, _ = free_run_bias(emu, data, members=2)
    assert float(bias0.mean()) > 0.4
    c, info = fit_tendency_correction(emu, data, iterations=2, tau=4.0, members=2,
                                      variables=["height", "u", "v"])
    assert torch.equal(emu.tendency_correction, c) and len(info["history"]) == 2
    assert c[3].abs().max() == 0 and float(c[:3].mean()) < -0.1
    bias, _, _ = free_run_bias(emu, data, members=2)
    assert float(bias[:3].abs().max()) < 0.05 * float(bias0[:3].abs().max())
    assert torch.allclose(bias[3], bias0[3])
    x, t = data.states[:2], data.times[0]
    with torch.no_grad():
        corrected = emu.step_normalised(emu.normalise(x), t)
        emu.set_tendency_correction(None)
        plain = emu.step_normalised(emu.normalise(x), t)
    assert torch.allclose(corrected - plain, c[..., None].expand_as(plain), atol=1e-5)
    with pytest.raises(ValueError, match="tendency correction must be"):
        emu.set_tendency_correction(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="not the emulator"):
        fit_tendency_correction(emu, data, variables=["pressure"])


def test_noise_scale_fit_matches_the_variability_of_the_chosen_variable(tmp_path):
    """An emulator that relaxes to the data's mean in 4 steps, driven by too much noise,
    has all its variability from the noise: the noise-scale update brings the tracer's std
    by latitude to the data's, and leaves the other variables' noise alone."""
    import xarray as xr
    from diffda.core.grid import Grid
    from diffda.emulators.forecast.adjustment import fit_tendency_correction, free_run_bias
    from diffda.emulators.forecast.data import load_coarse_states
    from diffda.emulators.forecast.training import train_emulator

    ds = xr.concat([helpers.wave_dataset(n_times=80, start_year=y) for y in (1, 2)],
                   "time", data_vars="minimal")
    data = load_coarse_states(ds, Grid(16, 32))
    emu, _ = train_emulator(_tiny_config(steps=2), tmp_path, data=data,
                            forcing_fn=helpers.day_forcing, progress=False)
    with torch.no_grad():
        mu = emu.normalise(data.states).mean((0, 3))
    emu.net = _Relax(mu, 4.0, emu.tendency_std)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 4, 16, 32, generator=g) / 8.0  # about unit std per point
    emu.set_noise(base)
    _, ratio0, _ = free_run_bias(emu, data, members=2)
    assert float(ratio0[3].mean()) > 0.3  # too variable
    with pytest.raises(ValueError, match="not the emulator"):
        fit_tendency_correction(emu, data, noise_variables=["pressure"])
    _, info = fit_tendency_correction(emu, data, iterations=2, tau=4.0, members=2,
                                      noise_variables=["tracer"],
                                      noise_scale_range=(0.01, 2.0))
    _, ratio, _ = free_run_bias(emu, data, members=2)
    assert float(ratio[3].abs().mean()) < 0.25 * float(ratio0[3].abs().mean())
    assert torch.equal(emu.noise_modes[:, :3], base[:, :3])
    assert len(info["noise_scale"]["by_latitude"]["tracer"]) == 16
    emu.set_noise(None)
    with pytest.raises(ValueError, match="no noise"):
        fit_tendency_correction(emu, data, noise_variables=["tracer"])


def test_cli_emulator_adjust_writes_the_correction(tmp_path, capsys):
    """`cycler train emulator-adjust` writes a copy with a zonal correction and its card
    (history, years); the copy loads with it; the base file is not overwritten."""
    from diffda.cycler.cli.main import main
    from diffda.emulators.forecast.model import SFNOEmulator

    data_path, base = _cli_tiny_emulator(tmp_path)
    out = tmp_path / "adjusted.safetensors"
    assert main(["train", "emulator-adjust", str(base), "--data", str(data_path),
                 "--iterations", "1", "--members", "2", "--no-progress",
                 "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    adj = card["adjustment"]
    assert adj["iterations"] == 1 and adj["fitted_on"]["years"] == [1]
    assert list(adj["history"][0]["climate_errors"]) == ["1"] and "training" in card
    back = SFNOEmulator.from_weights(out)
    assert back.tendency_correction is not None
    assert back.tendency_correction.abs().max() > 0
    assert SFNOEmulator.from_weights(base).tendency_correction is None
    assert "previous" not in adj
    more = tmp_path / "adjusted_more.safetensors"
    assert main(["train", "emulator-adjust", str(out), "--data", str(data_path),
                 "--iterations", "1", "--members", "2", "--no-progress",
                 "--out", str(more)]) == 0
    chain = json.loads(more.with_suffix(".json").read_text())["adjustment"]
    assert chain["base_weights"] == str(out) and chain["previous"] == adj
    capsys.readouterr()
    assert main(["train", "emulator-adjust", str(base), "--data", str(data_path),
                 "--out", str(base)]) == 2
    assert "overwrite" in capsys.readouterr().err


def _sun_and_season(times, grid):
    """``day_forcing`` plus a uniform part whose global mean varies over 3 days."""
    days = np.array([(t.dayofyr - 1) + t.hour / 24 for t in times], dtype=float)
    uniform = torch.as_tensor(1.0 + 0.5 * np.sin(2 * np.pi * days / 3.0), dtype=torch.float32)
    return helpers.day_forcing(times, grid) + uniform[:, None, None, None]


def _budget_world(n_times: int = 80, rate: float = 0.1):
    """Coarse states whose global-mean height relaxes to ``100 <f>`` at ``rate`` per step
    (``<f>``: the global mean of :func:`_sun_and_season`), an exact linear budget law."""
    from diffda.core.grid import Grid, lat_weighted_mean
    from diffda.emulators.forecast.data import load_coarse_states

    data = load_coarse_states(helpers.wave_dataset(n_times=n_times), Grid(16, 32))
    fbar = lat_weighted_mean(_sun_and_season(data.times, data.grid).double())[:, 0]
    g = torch.zeros(n_times, dtype=torch.float64)
    for n in range(n_times - 1):
        g[n + 1] = g[n] + rate * (100 * fbar[n] - g[n])
    data.states[:, 0] += g.float()[:, None, None]
    return data


def test_global_budget_fit_recovers_the_law_and_holds_a_free_run_to_it(tmp_path):
    """The fit recovers an exact relaxation law of the global-mean height (rate 0.1 per
    6-h step: 2.5 days); with it, every step's global-mean height is the law's value (the
    other variables untouched), and a free run of a network that drifts (it relaxes to the
    data's mean + 0.5 std) keeps the data's global-mean height instead of drifting; the law
    survives export/load; the tracer (log-transformed) and bad shapes are refused."""
    from diffda.core.grid import lat_weighted_mean
    from diffda.emulators.forecast.budget import fit_global_budget
    from diffda.emulators.forecast.model import SFNOEmulator
    from diffda.emulators.forecast.training import train_emulator

    data = _budget_world()
    emu, _ = train_emulator(_tiny_config(steps=2), tmp_path, data=data,
                            forcing_fn=_sun_and_season, progress=False)
    coef, mask, info = fit_global_budget(emu, data, ["height"])
    assert mask.tolist() == [1.0, 0.0, 0.0, 0.0] and coef[1:].abs().max() == 0
    h = info["height"]
    assert h["r2"] > 0.999 and h["residual_rms"] < 0.01 * h["change_rms"]
    assert h["relaxation_days"] == pytest.approx(2.5, rel=0.01)
    with torch.no_grad():
        mu = emu.normalise(data.states).mean((0, 3))
    net = emu.net
    emu.net = _Relax(mu + 0.5, 4.0, emu.tendency_std)
    z = emu.normalise(data.states[:3])
    f = emu.forcing_at(data.times[:3])
    with torch.no_grad():
        free = emu.step_from(z, f)
        emu.set_global_budget(coef, mask)
        held = emu.step_from(z, f)
        target = emu.budget_target(z, f)
    assert torch.allclose(lat_weighted_mean(held)[:, 0], target[:, 0], atol=1e-5)
    assert torch.equal(held[:, 1:], free[:, 1:])
    assert not torch.allclose(lat_weighted_mean(free)[:, 0], target[:, 0], atol=1e-2)
    # free runs of 60 steps: the global-mean height error, with and without the law
    gm_data = lat_weighted_mean(data.states[1:61, 0].double())
    run, _ = emu.rollout(data.states[:1], data.times[0], 60)
    err_held = (lat_weighted_mean(run[:, 0, 0].double()) - gm_data).abs().max()
    emu.set_global_budget(None)
    run, _ = emu.rollout(data.states[:1], data.times[0], 60)
    err_free = (lat_weighted_mean(run[:, 0, 0].double()) - gm_data).abs().max()
    assert err_free > 0.3 * float(emu.state_std[0]) and err_held < 0.5
    emu.net = net
    emu.set_global_budget(coef, mask)
    emu.export(tmp_path / "b.safetensors")
    back = SFNOEmulator.from_weights(tmp_path / "b.safetensors", forcing=_sun_and_season)
    assert torch.equal(back.budget_coef, coef) and torch.equal(back.budget_mask, mask)
    with pytest.raises(ValueError, match="log-transformed"):
        fit_global_budget(emu, data, ["tracer"])
    with pytest.raises(ValueError, match="log-transformed"):
        emu.set_global_budget(coef, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="must be some of"):
        fit_global_budget(emu, data, ["pressure"])
    with pytest.raises(ValueError, match="coef must be"):
        emu.set_global_budget(coef[:, :2], mask)
    with pytest.raises(ValueError, match="both coef and mask"):
        emu.set_global_budget(coef)


def test_cli_emulator_budget_writes_the_law(tmp_path, capsys):
    """`cycler train emulator-budget` (an unforced emulator: the law has no forcing terms)
    writes a copy whose card records the law; the copy loads with it."""
    from diffda.cycler.cli.main import main
    from diffda.emulators.forecast.model import SFNOEmulator

    data_path, base = _cli_tiny_emulator(tmp_path)
    out = tmp_path / "budget.safetensors"
    assert main(["train", "emulator-budget", str(base), "--data", str(data_path),
                 "--out", str(out)]) == 0
    assert "global-mean budget" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    law = card["global_budget"]
    assert law["variables"] == ["height"] and len(law["height"]["coefficients"]) == 2
    assert law["fitted_on"]["years"] == [1] and law["n_pairs"] == 47
    back = SFNOEmulator.from_weights(out)
    assert back.budget_coef.shape == (4, 2) and back.budget_mask.tolist() == [1, 0, 0, 0]
    assert SFNOEmulator.from_weights(base).budget_coef is None
    assert main(["train", "emulator-budget", str(base), "--data", str(data_path),
                 "--variables", "tracer", "--out", str(out)]) == 2
    assert "log-transformed" in capsys.readouterr().err


def test_median_bias_is_not_steered_by_one_run_in_a_regime(tmp_path, monkeypatch):
    """Of three runs equal to the data, one shifted by 3 normalised units: the mean bias is
    1, the median bias 0 (``--bias-statistic median``); unknown statistics are refused."""
    import diffda.emulators.forecast.adjustment as adjustment
    from diffda.emulators.forecast.training import train_emulator

    data = _budget_world(n_times=12)
    emu, _ = train_emulator(_tiny_config(steps=1), tmp_path, data=data,
                            forcing_fn=_sun_and_season, progress=False)
    truth = data.states[1:]
    runs = truth[:, None].repeat(1, 3, 1, 1, 1)
    with torch.no_grad():
        std = emu.state_std[:3]
        runs[:, 2, :3] += 3 * std[:, None, None]  # height, u, v: identity transforms
    monkeypatch.setattr(adjustment, "yearly_free_runs", lambda *a, **k: [(1, runs, truth)])
    mean, _, _ = adjustment.free_run_bias(emu, data, members=3)
    median, _, _ = adjustment.free_run_bias(emu, data, members=3, statistic="median")
    assert torch.allclose(mean[:3], torch.ones(3, 16), atol=1e-4)
    assert median.abs().max() < 1e-4
    with pytest.raises(ValueError, match="bias statistic"):
        adjustment.free_run_bias(emu, data, statistic="mode")


def test_bootstrap_interval_of_pooled_climate_scores():
    """Resampling members: with all members equal the interval is the pooled score itself;
    with members that differ it has a width and holds the pooled score; the moments'
    formula gives climate_errors."""
    from diffda.core.grid import Grid
    from diffda.emulators.forecast.climate import (
        bootstrap_climate_errors,
        climate_errors,
        climate_errors_from_moments,
        climatology_by_latitude,
    )

    g = torch.Generator().manual_seed(0)
    grid, names = Grid(4, 8), ("a", "b")
    truth = torch.randn(30, 2, 4, 8, generator=g)
    one = torch.randn(30, 1, 2, 4, 8, generator=g) * 1.3 + 0.2
    same = [one.repeat(1, 4, 1, 1, 1), one[:20].repeat(1, 4, 1, 1, 1)]
    pooled = torch.cat([r.transpose(0, 1).reshape(-1, 2, 4, 8) for r in same])
    ref = climate_errors(pooled, truth, grid, names)
    m_r, s_r = climatology_by_latitude(pooled)
    m_t, s_t = climatology_by_latitude(truth)
    moments = climate_errors_from_moments(m_r, s_r, m_t, s_t, grid, names)
    assert all(moments[v][k] == pytest.approx(ref[v][k]) for v in names for k in moments[v])
    ci = bootstrap_climate_errors(same, truth, grid, names, resamples=20)
    for v in names:
        for k in ("mean_error", "std_error"):
            assert ci[v][k] == pytest.approx([ref[v][k]] * 2, rel=1e-6)
    differ = [torch.randn(30, 6, 2, 4, 8, generator=g) * torch.linspace(0.5, 2, 6)[:, None,
              None, None]]
    ref = climate_errors(differ[0].transpose(0, 1).reshape(-1, 2, 4, 8), truth, grid, names)
    ci = bootstrap_climate_errors(differ, truth, grid, names, resamples=200)
    lo, hi = ci["a"]["std_error"]
    assert hi - lo > 0.05 and lo <= ref["a"]["std_error"] <= hi
    with pytest.raises(ValueError, match="no runs"):
        bootstrap_climate_errors([], truth, grid, names)


def test_combined_networks_step_with_the_mean_tendency_and_round_trip(tiny_data, tmp_path):
    """Two networks (seeds 1 and 2) combined: each step's tendency is the mean of theirs; the
    combination survives export/load (and a noise fit's loader); mismatches are refused."""
    from diffda.emulators.forecast.combine import combine_emulators
    from diffda.emulators.forecast.model import SFNOEmulator
    from diffda.emulators.forecast.training import train_emulator

    cfg = _tiny_config(steps=2)
    a, _ = train_emulator(cfg, tmp_path / "a", data=tiny_data, progress=False)
    b, _ = train_emulator(dataclasses.replace(cfg, seed=2), tmp_path / "b", data=tiny_data,
                          progress=False)
    both = combine_emulators([a, b], ["a", "b"])
    x = tiny_data.states[:3]
    with torch.no_grad():
        step_a, step_b, step_ab = a.step(x), b.step(x), both.step(x)
        za, zb, zab = (e.normalise(s) for e, s in ((a, step_a), (b, step_b), (both, step_ab)))
    assert not torch.allclose(step_a, step_b)
    assert torch.allclose(zab, (za + zb) / 2, atol=1e-5)
    path = tmp_path / "both.safetensors"
    both.export(path)
    back = SFNOEmulator.from_weights(path)
    assert json.loads(path.with_suffix(".json").read_text())["n_networks"] == 2
    assert torch.equal(back.step(x), step_ab)
    with pytest.raises(ValueError, match="at least two"):
        combine_emulators([a])
    with pytest.raises(ValueError, match="b: already a combination"):
        combine_emulators([a, both], ["a", "b"])
    other_data = dataclasses.replace(tiny_data, states=tiny_data.states * 1.5)
    c, _ = train_emulator(cfg, tmp_path / "c", data=other_data, progress=False)
    with pytest.raises(ValueError, match="c: normalisation buffer state_mean differs"):
        combine_emulators([a, c], ["a", "c"])


def test_cli_emulator_combine_writes_the_members(tmp_path, capsys):
    """`cycler train emulator-combine` records its members in the card; a noise fit then
    runs on the combination; an --out among the inputs is refused."""
    from diffda.cycler.cli.main import main
    from diffda.emulators.forecast.model import SFNOEmulator

    data_path, base = _cli_tiny_emulator(tmp_path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(cfg.read_text().replace("seed = 0", "seed = 5"))
    assert main(["train", "emulator", str(cfg), "--out", str(tmp_path / "run5")]) == 0
    other = tmp_path / "run5" / "emulator.safetensors"
    out = tmp_path / "both.safetensors"
    assert main(["train", "emulator-combine", str(base), str(other), "--out", str(out)]) == 0
    assert "combined 2 networks" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert [m["seed"] for m in card["combination"]["members"]] == [0, 5]
    assert card["n_networks"] == 2 and card["data"]["train_years"] == [1]
    noise = tmp_path / "noise.safetensors"
    assert main(["train", "emulator-noise", str(out), "--data", str(data_path), "--modes", "4",
                 "--out", str(noise)]) == 0
    assert SFNOEmulator.from_weights(noise).stochastic
    noisy_base = tmp_path / "noisy_base.safetensors"
    assert main(["train", "emulator-noise", str(base), "--data", str(data_path), "--modes", "4",
                 "--out", str(noisy_base)]) == 0
    again = tmp_path / "again.safetensors"
    assert main(["train", "emulator-combine", str(noisy_base), str(other),
                 "--out", str(again)]) == 0
    card = json.loads(again.with_suffix(".json").read_text())
    assert "stochastic" not in card and not SFNOEmulator.from_weights(again).stochastic
    assert card["combination"]["fitted_additions_dropped"] == {str(noisy_base): ["stochastic"]}
    assert main(["train", "emulator-combine", str(base), str(other), "--out", str(base)]) == 2
    assert "would overwrite" in capsys.readouterr().err


def test_train_command_options_override_the_config():
    """``cycler train emulator CONFIG --threads N --init-from W --max-minutes M`` replace
    those ``[train]`` fields and nothing else; a bad value names its key."""
    import argparse
    from pathlib import Path

    from diffda.core.config import ConfigError, load_config
    from diffda.cycler.cli import emulator as emulator_cli
    from diffda.cycler.cli.train_options import override_train

    path = str(Path(__file__).parents[1] / "runs" / "emulator.toml")
    parser = argparse.ArgumentParser()
    emulator_cli.add_train_arguments(parser)
    cfg = load_config(emulator_cli.EmulatorTrainConfig, path)
    new = override_train(cfg, parser.parse_args(
        [path, "--threads", "4", "--init-from", "w.safetensors", "--max-minutes", "5"]))
    assert (new.train.threads, new.train.init_from, new.train.max_minutes) == (
        4, "w.safetensors", 5.0)
    assert dataclasses.replace(new, train=cfg.train) == cfg
    assert override_train(cfg, parser.parse_args([path])) == cfg
    with pytest.raises(ConfigError, match="train.threads = 0"):
        override_train(cfg, parser.parse_args([path, "--threads", "0"]))
