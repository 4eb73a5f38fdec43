"""runtime.device and runtime.precision, and the members split over CPU threads: the
choices resolve or fail with a clear message, the threaded sampler gives the serial
sampler's numbers, and bfloat16 gives the same law within its rounding."""

from __future__ import annotations

import math

import pytest
import torch
from diffda.core.execution import (
    SERIAL,
    Execution,
    check_device_spec,
    precision_name,
    resolve_device,
    resolve_precision,
)
from diffda.core.rng import member_generators
from diffda.cycler.analysis.sampler import (
    SamplerConfig,
    StepDiagnostics,
    denoise_with_likelihood_score,
    sample_posterior,
)
from diffda.cycler.cycling.config import RuntimeConfig
from diffda.emulators.prior.edm import EDMPrecond
from diffda.emulators.prior.unet import SongUNet, UNetConfig
from diffda.observations.likelihood import ObservationTerm


class MatrixOperator(torch.nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.a.T.to(x.dtype)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = UNetConfig(channels=2, model_channels=8, channel_mult=(1, 2), attn_levels=(1,),
                     dropout=0.0)
    net = EDMPrecond(SongUNet(cfg)).eval().requires_grad_(False)
    with torch.no_grad():  # a non-trivial output layer (it starts at zero)
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return net


def _term(shape: tuple[int, ...]) -> ObservationTerm:
    g = torch.Generator().manual_seed(5)
    op = MatrixOperator(torch.randn(12, math.prod(shape), generator=g) / 16)
    return ObservationTerm(op, torch.randn(12, generator=g), sigma_y=0.1, gamma=0.05)


def test_device_choices_resolve_or_fail_clearly():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match="runtime.device"):
            check_device_spec(bad)
    with pytest.raises(ValueError, match="runtime.device = 'tpu'"):
        RuntimeConfig(device="tpu")
    with pytest.raises(ValueError, match="runtime.precision"):
        RuntimeConfig(precision="float16")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(RuntimeError, match=rf"runtime.device = '{spec}': .*use 'cpu'"):
                resolve_device(spec)
    else:  # pragma: no cover - only where a GPU is present
        n = torch.cuda.device_count()
        with pytest.raises(RuntimeError, match=f"has {n} CUDA"):
            resolve_device(f"cuda:{n}")


def test_precision_choices(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) == torch.float32
    assert resolve_precision("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr("diffda.core.execution.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == torch.float32
    monkeypatch.setattr("diffda.core.execution.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    assert precision_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError, match="runtime.precision = 'half'"):
        resolve_precision("half", cpu)
    ex = Execution.resolve("cpu", "float32", threads=3)
    assert ex.member_threads == 3 and ex.precision == torch.float32


def test_threaded_members_give_the_serial_numbers():
    """Chunks of members in two threads: the denoiser, the likelihood score and whole
    samples equal the one-call path (the members are independent in the network)."""
    net, shape = _net(), (2, 8, 16)
    term = _term(shape)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor(0.7)
    threaded = Execution(member_threads=2)
    d0, s0, l0 = denoise_with_likelihood_score(net, x, sigma, [term])
    d1, s1, l1 = denoise_with_likelihood_score(net, x, sigma, [term], execution=threaded)
    torch.testing.assert_close(d1, d0, rtol=0, atol=1e-6)
    torch.testing.assert_close(s1, s0, rtol=0, atol=1e-6)
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-6)
    assert torch.get_num_threads() >= 1
    cfg = SamplerConfig(num_steps=4, s_churn=2.0)
    gens = lambda: member_generators(3, "exec", 1, 5)  # noqa: E731
    a = sample_posterior(net, gens(), shape, [term], cfg)
    b = sample_posterior(net, gens(), shape, [term], cfg, execution=threaded)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    u0 = sample_posterior(net, gens(), shape, [], cfg)
    u1 = sample_posterior(net, gens(), shape, [], cfg, execution=threaded)
    torch.testing.assert_close(u1, u0, rtol=0, atol=1e-5)


def test_bfloat16_network_is_close_and_keeps_the_state_in_float32():
    net, shape = _net(), (2, 8, 16)
    term = _term(shape)
    cfg = SamplerConfig(num_steps=4, s_churn=0.0)
    gens = lambda: member_generators(4, "exec", 2, 4)  # noqa: E731
    diag: list[StepDiagnostics] = []
    full = sample_posterior(net, gens(), shape, [term], cfg)
    half = sample_posterior(net, gens(), shape, [term], cfg,
                            execution=Execution(precision=torch.bfloat16), diagnostics=diag)
    assert half.dtype == torch.float32 and len(diag) == cfg.nfe
    err = float((half - full).square().mean().sqrt() / full.square().mean().sqrt())
    assert 0 < err < 0.05, err  # rounding, not a different answer
    assert SERIAL.precision == torch.float32 and SERIAL.member_threads == 1


def test_independent_cycles_in_one_batch_equal_the_single_analyses(tmp_path):
    """Climatological cycles share one batch (cycle_group); each analysis is bitwise the
    one computed alone, and a resume from inside a group computes the same group."""
    import importlib.util
    from pathlib import Path

    from diffda.cycler.cycling.config import load_run_config
    from diffda.cycler.cycling.modes import MODES, _sample, _stations, cycle_group
    from diffda.cycler.cycling.world import load_world

    spec = importlib.util.spec_from_file_location(
        "driver_helpers", Path(__file__).with_name("test_driver.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    path = helpers.tiny_world(tmp_path / "world", modes=("climatological",))
    world = load_world(load_run_config(path, {"data.days": 2}))
    assert world.n_cycles == 4 and cycle_group(world, 3) == [1, 2, 3, 4]
    first = MODES["climatological"].cycle(world, 1, None)
    assert set(world.prefetched) == {("climatological", j) for j in (2, 3, 4)}
    batched = MODES["climatological"].cycle(world, 3, None)
    alone, states, info = _sample(world, [_stations(world, 3, 1.0)[0]], 3)
    assert torch.equal(batched.analysis, alone)
    assert torch.equal(batched.tensors["generator_states"], states)
    assert batched.info == info and not torch.equal(first.analysis, batched.analysis)
    world.prefetched.clear()  # a resume at cycle 3: the group from cycle 3 on, same numbers
    assert torch.equal(MODES["climatological"].cycle(world, 3, None).analysis, alone)
