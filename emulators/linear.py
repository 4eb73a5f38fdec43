"""The linear test bed's model: a discrete Ornstein-Uhlenbeck process (LINEAR_THEORY.md).

SDE ``dx = -x dt + sqrt(2) dW`` (stationary law N(0, I)), discretised by forward Euler:
``x_{k+1} = a x_k + sqrt(2 dt) eta`` with ``a = 1 - dt``. Everything in the test bed uses
this discrete model, so its own climatology ``c = 2 / (2 - dt)`` (not 1) is the prior.
Time is nondimensional.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_dt(dt: float) -> None:
    if not (0.0 < dt < 1.0):
        raise ValueError(f"dt = {dt!r}: the discrete OU model needs 0 < dt < 1")


def decay(dt: float, steps: int = 1) -> float:
    """``a^K``: the factor by which the mean decays over ``steps`` model steps."""
    _check_dt(dt)
    return (1.0 - dt) ** steps


def climatological_variance(dt: float) -> float:
    """``c = 2 dt / (1 - a^2) = 2 / (2 - dt)``: stationary variance of the discrete model."""
    _check_dt(dt)
    return 2.0 / (2.0 - dt)


def interval_noise_variance(dt: float, steps: int) -> float:
    """``q = c (1 - a^(2K))``: variance of the noise accumulated over ``K`` steps, so that
    ``x_{k+K} = a^K x_k + w`` with ``w ~ N(0, q)`` exactly."""
    return climatological_variance(dt) * (1.0 - decay(dt, 2 * steps))


def advance(x, dt: float, steps: int, noise):
    """``steps`` model steps at once, exactly in law: ``a^K x + sqrt(q) noise``.

    The K-step composition of the Euler step is ``a^K x + sum_j a^(K-1-j) sqrt(2 dt) eta_j``,
    a Gaussian with variance ``q = c (1 - a^(2K))``; one standard-normal draw ``noise``
    (same shape as ``x``; numpy or torch) stands for the K draws. Pure function.
    """
    return decay(dt, steps) * x + interval_noise_variance(dt, steps) ** 0.5 * noise


class OrnsteinUhlenbeck:
    """The discrete OU model as an :class:`~diffda.core.protocols.Emulator`.

    ``step``: ``(member, n) -> (member, n)``, ``x' = (1 - dt) x + sqrt(2 dt) eta``.
    The model's time is nondimensional; ``dt_hours`` holds ``dt`` in that unit so the model
    fits the same seam as the atmospheric emulators.
    """

    def __init__(self, dt: float) -> None:
        _check_dt(dt)
        self.dt = dt
        self.dt_hours = dt

    def step(
        self,
        state: Tensor,
        time: object = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if generator is None:
            raise ValueError("OrnsteinUhlenbeck.step draws noise: pass a torch.Generator")
        eta = torch.randn(state.shape, generator=generator, dtype=state.dtype)
        return (1.0 - self.dt) * state + math.sqrt(2.0 * self.dt) * eta
