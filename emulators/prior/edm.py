"""EDM preconditioning, training loss and weight averaging (Karras et al. 2022).

Conventions (DESIGN.md, "Conventions that prevent the classic diffusion bugs"):
``sigma(t) = t``; ``x = x0 + sigma n``; the denoiser ``D(x; sigma)`` predicts ``x0``.

- Preconditioning, Karras et al. Table 1 ("EDM" column) and paper Eq. 5::

      D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
      c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
      c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
      c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
      c_noise = ln(sigma) / 4

- Loss, paper Eq. 6: ``E[lambda(sigma) ||x0 - D(x0 + sigma n; sigma)||^2]`` with
  ``lambda(sigma) = 1 / c_out(sigma)^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``
  and ``ln sigma ~ N(P_mean, P_std^2)`` (paper Sec. 3.4: -0.5, 1.5, ``sigma_data = 1`` on
  normalised data).

Shapes: states ``(batch, var, lat, lon)`` (any trailing shape works); ``sigma`` a scalar or
``(batch,)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn


class Backbone(Protocol):
    """The raw network ``F(x_in, c_noise)``: ``(B, C, H, W), (B,) -> (B, C, H, W)``."""

    def __call__(self, x: Tensor, c_noise: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class EDMCoefficients:
    """The four preconditioning coefficients of Karras et al. Table 1, each ``sigma``-shaped."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def edm_coefficients(sigma: Tensor, sigma_data: float = 1.0) -> EDMCoefficients:
    """``c_skip, c_out, c_in, c_noise`` of Karras et al. Table 1 (paper Eq. 5)."""
    s2 = sigma**2 + sigma_data**2
    return EDMCoefficients(
        c_skip=sigma_data**2 / s2,
        c_out=sigma * sigma_data / s2.sqrt(),
        c_in=1.0 / s2.sqrt(),
        c_noise=sigma.log() / 4.0,
    )


def loss_weight(sigma: Tensor, sigma_data: float = 1.0) -> Tensor:
    """``lambda(sigma) = 1 / c_out^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``
    (Karras et al. Table 1; paper Eq. 6)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_training_sigma(
    n: int,
    generator: torch.Generator,
    p_mean: float = -0.5,
    p_std: float = 1.5,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """``(n,)`` noise levels with ``ln sigma ~ N(P_mean, P_std^2)`` (Karras et al. Table 1)."""
    z = torch.randn(n, generator=generator, dtype=dtype, device=device)
    return (p_mean + p_std * z).exp()


def _expand(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` (scalar or ``(B,)``) as a ``(B, 1, ..., 1)`` tensor broadcastable to ``x``."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or of shape ({x.shape[0]},), got {tuple(s.shape)}"
        )
    return s.reshape(-1, *([1] * (x.ndim - 1)))


class EDMPrecond(nn.Module):
    """The EDM denoiser ``D(x; sigma)`` wrapping a backbone ``F`` (paper Eq. 5).

    ``forward(x, sigma)``: ``x`` ``(B, C, H, W)``, ``sigma`` scalar or ``(B,)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, backbone: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = _expand(sigma, x)
        c = edm_coefficients(sigma, self.sigma_data)
        f = self.backbone(c.c_in * x, c.c_noise.reshape(-1))
        return c.c_skip * x + c.c_out * f  # Eq. 5


def edm_loss(
    denoiser: nn.Module,
    x0: Tensor,
    generator: torch.Generator,
    p_mean: float = -0.5,
    p_std: float = 1.5,
    sigma_data: float = 1.0,
) -> Tensor:
    """Per-sample EDM loss ``lambda(sigma) ||x0 - D(x0 + sigma n; sigma)||^2`` (paper Eq. 6),
    averaged over the state elements: ``(B, ...) -> (B,)``.

    ``sigma`` and ``n`` are drawn from ``generator`` (the caller seeds it per step and rank).
    """
    sigma = sample_training_sigma(x0.shape[0], generator, p_mean, p_std, x0.dtype, x0.device)
    n = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    s = _expand(sigma, x0)
    d = denoiser(x0 + s * n, sigma)
    err = (d - x0) ** 2
    return loss_weight(sigma, sigma_data) * err.flatten(1).mean(dim=1)


def ema_decay(step: int, halflife_steps: float, warmup_ratio: float | None = 0.05) -> float:
    """Per-step EMA decay ``beta = 0.5 ** (1 / halflife)`` (Karras et al.'s half-life form).

    With ``warmup_ratio`` the half-life is at most ``warmup_ratio * step`` early in training,
    so the average does not keep the random initial weights (as in NVlabs/edm).
    """
    h = float(halflife_steps)
    if warmup_ratio is not None:
        h = min(h, warmup_ratio * step)
    return 0.5 ** (1.0 / max(h, 1e-8))


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers.

    ``ema = beta * ema + (1 - beta) * current`` after each optimiser step; ``module`` is the
    averaged copy (used for sampling and saved as the weights).
    """

    def __init__(self, model: nn.Module) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        ema_update(self.module, model, beta)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema <- beta ema + (1 - beta) model`` for floating-point tensors, copy for others."""
    if not 0.0 <= beta <= 1.0 or math.isnan(beta):
        raise ValueError(f"EMA decay must lie in [0, 1], got {beta}")
    src = model.state_dict()
    for name, t in ema.state_dict().items():
        if t.is_floating_point():
            t.lerp_(src[name].to(t.dtype), 1.0 - beta)
        else:
            t.copy_(src[name])


class EDMTrainer(nn.Module):
    """What training updates and checkpoints: the denoiser ``net`` and its EMA copy ``ema``.

    ``forward(x0, generator)`` is the per-sample loss of Eq. 6 for ``net`` (so DDP wraps the
    whole object and synchronises the gradients of ``net``); :meth:`update_ema` is called
    after every optimiser step (e.g. from ``optimizer.register_step_post_hook``). ``ema``'s
    parameters take no gradient; the number of EMA updates is a buffer, so a resumed run
    continues the average exactly.
    """

    def __init__(
        self,
        net: EDMPrecond,
        p_mean: float = -0.5,
        p_std: float = 1.5,
        ema_halflife_steps: float = 500.0,
        ema_warmup_ratio: float | None = 0.05,
    ) -> None:
        super().__init__()
        self.net = net
        self.ema = EMA(net).module
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.ema_halflife_steps = float(ema_halflife_steps)
        self.ema_warmup_ratio = ema_warmup_ratio
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))

    def forward(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        # Dropout draws from torch's global generator: run the forward pass under a forked
        # global state seeded from ``generator``, so the masks are a function of the step's
        # generator (exact resume) and the caller's global state is left untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [x0.device] if x0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return edm_loss(self.net, x0, generator, self.p_mean, self.p_std,
                            self.net.sigma_data)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters of ``net`` (those the optimiser updates)."""
        return list(self.net.parameters())

    @torch.no_grad()
    def update_ema(self) -> float:
        """One EMA step towards ``net``; returns the decay used."""
        self.ema_updates += 1
        beta = ema_decay(int(self.ema_updates), self.ema_halflife_steps, self.ema_warmup_ratio)
        ema_update(self.ema, self.net, beta)
        return beta
