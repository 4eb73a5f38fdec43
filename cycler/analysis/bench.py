"""The speed of one analysis (Algorithm 1) on this machine.

It times a default analysis: ``--members`` (16) members at the prior's grid (32x64 by
default), the default :class:`~diffda.cycler.analysis.sampler.SamplerConfig` (20 steps, 39 network
evaluations), guided by one low-resolution likelihood term (8x16, the default
``Sigma_y = 0.003, Gamma = 0.01`` in normalised units), and the unit cost it should be
made of: one denoiser forward plus one vector-Jacobian product with respect to its input,
on the same batch. The overhead ratio is

    overhead_ratio = sampler time / (NFE x time of one denoiser forward + VJP)

(1.0 means the sampler costs nothing beyond the network; the likelihood terms, the noise
draws and the bookkeeping are the rest). The unit is timed before and after the sampler
and averaged, since the machine is shared. With no trained weights
(``emulators/weights/prior.safetensors``) an untrained network of the default size is
timed, and the output says so.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from diffda.core.grid import Grid
from diffda.core.protocols import Denoiser, LikelihoodTerm
from diffda.core.rng import member_generators, torch_generator
from diffda.cycler.analysis.sampler import SamplerConfig, StepDiagnostics, sample_posterior
from diffda.cycler.terms import low_resolution_term
from diffda.emulators.prior.model import DEFAULT_WEIGHTS, DiffusionPrior, build_prior
from diffda.emulators.prior.unet import UNetConfig
from diffda.observations.likelihood import DEFAULT_ERROR_MODELS
from diffda.observations.operators import LOW_RESOLUTION_GRID


def time_denoiser_vjp(denoiser: Denoiser, x: torch.Tensor, sigma: float, repeats: int = 3
                      ) -> float:
    """Median seconds of ``D(x; sigma)`` plus the vector-Jacobian product
    ``v^T dD/dx`` (one backward pass with respect to ``x``) on batch ``x``."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    s = torch.tensor(sigma, dtype=x.dtype)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad((denoiser(xg, s) * v).sum(), xg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_analysis(
    prior: Denoiser,
    shape: tuple[int, ...],
    terms: list[LikelihoodTerm],
    members: int = 16,
    config: SamplerConfig | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Time one ``members``-member analysis and its unit cost; see the module docstring."""
    config = config or SamplerConfig()
    x = torch.randn(members, *shape, generator=torch.Generator().manual_seed(1))
    time_denoiser_vjp(prior, x, 1.0, repeats=1)  # warm-up (allocator, kernels)
    unit_before = time_denoiser_vjp(prior, x, 1.0, repeats)
    diagnostics: list[StepDiagnostics] = []
    t0 = time.perf_counter()
    sample_posterior(prior, member_generators(0, "bench-analysis", 0, members), shape, terms,
                     config, diagnostics=diagnostics)
    seconds = time.perf_counter() - t0
    unit_after = time_denoiser_vjp(prior, x, 1.0, repeats)
    unit = 0.5 * (unit_before + unit_after)
    return {
        "seconds_per_analysis": round(seconds, 3),
        "seconds_per_member": round(seconds / members, 4),
        "nfe": config.nfe,
        "overhead_ratio": round(seconds / (config.nfe * unit), 3),
        "seconds_per_denoiser_vjp": round(unit, 4),
        "seconds_per_denoiser_vjp_before_after": [round(unit_before, 4), round(unit_after, 4)],
        "members": members,
        "num_steps": config.num_steps,
        "guidance_ratio_max": round(max(d.guidance_ratio_max for d in diagnostics), 4),
    }


def default_prior(weights: Path | None) -> tuple[DiffusionPrior, str]:
    """The trained prior at ``weights`` (default: the package's), else an untrained network
    of the default size at 32x64 (zero mean, unit std)."""
    path = weights or DEFAULT_WEIGHTS
    if path.is_file():
        return DiffusionPrior.load(path), str(path)
    if weights is not None:
        raise FileNotFoundError(f"{weights}: no such weights file")
    variables = ("height", "u", "v", "tracer")
    prior = build_prior(UNetConfig(), variables, torch.zeros(4), torch.ones(4), Grid(32, 64),
                        seed_generator=torch_generator(0, "bench-init"))
    return prior.eval().requires_grad_(False), "untrained default network (no trained weights)"


def bench_term(prior: DiffusionPrior, seed: int = 0) -> LikelihoodTerm:
    """One 8x16 low-resolution likelihood term of a random 'truth' (for timing), built as
    every analysis builds it (:func:`diffda.cycler.terms.low_resolution_term`)."""
    z = torch.randn(*prior.state_shape, generator=torch_generator(seed, "bench-truth"))
    truth = prior.denormalise(z.double())
    term, _ = low_resolution_term(prior, truth, LOW_RESOLUTION_GRID,
                                  DEFAULT_ERROR_MODELS["low_resolution"], prior.variables)
    return term
