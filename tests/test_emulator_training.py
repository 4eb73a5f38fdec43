"""Generic training utilities (emulators/training.py) and the emulator's training command."""

from __future__ import annotations

import json

import pytest
import torch
from diffda.emulators.training import (
    DistContext,
    WeightsError,
    export_weights,
    load_checkpoint,
    load_weights,
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
