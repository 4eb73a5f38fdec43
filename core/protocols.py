"""The seams of the system, one small Protocol each (see DESIGN.md, "Seams").

Dimension order inside the system, everywhere:

- gridded states: ``(member, var, lat, lon)``, latitude ascending, longitude 0..360;
- vector states (the linear test bed): ``(member, n)``;
- observations: ``(member, n_obs)`` after an operator, ``(n_obs,)`` for the observed values.

Variables are normalised inside the models; physical units live at the I/O edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar, runtime_checkable

import cftime
import torch
from torch import Tensor


@runtime_checkable
class Emulator(Protocol):
    """Steps a batch of states forward by ``dt_hours``.

    ``state``: ``(member, ...)``. ``time`` is the valid time of ``state``; the emulator
    evaluates its forcing there. Stochastic emulators draw from ``generator`` only.
    """

    dt_hours: float

    def step(
        self,
        state: Tensor,
        time: cftime.datetime | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


@runtime_checkable
class ObservationOperator(Protocol):
    """A differentiable map ``M`` from a batch of full states to observation space.

    ``__call__``: ``(member, *state_shape) -> (member, n_obs)``; it must be a plain torch
    function of its input, so that autograd (and, where stated, forward-mode AD) works.
    """

    def __call__(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma)``: the posterior mean of ``x_0`` given ``x = x_0 + sigma n``.

    EDM convention (Karras et al. 2022): ``sigma(t) = t``; score ``= (D - x) / sigma**2``.
    ``x``: ``(batch, ...)``; ``sigma``: a scalar or ``(batch,)`` tensor.
    """

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


PriorT = TypeVar("PriorT", contravariant=True)
ObsT = TypeVar("ObsT", contravariant=True)


@runtime_checkable
class Analysis(Protocol[PriorT, ObsT]):
    """Turns a prior (an ensemble, a Gaussian, or a denoiser) and observations into an
    analysis ensemble ``(member, *state_shape)``.

    Each member draws only from its own generator in ``generators`` (one per member,
    derived from (seed, cycle, member), see :mod:`diffda.core.rng`), so a member is
    reproducible whatever the ensemble size.
    """

    def analyse(
        self,
        prior: PriorT,
        observations: Sequence[ObsT],
        generators: Sequence[torch.Generator],
    ) -> Tensor: ...


@runtime_checkable
class LikelihoodTerm(Protocol):
    """One term ``j`` of the composite likelihood (paper Eq. 14).

    ``log_likelihood(x0, sigma)`` returns, per member, the Eq. 13 approximation
    ``-||y_j - M_j(x0)||^2 / (2 (Sigma_y + sigma^2 Gamma))`` evaluated at the denoised
    estimate ``x0 = D(x_t; sigma)`` (shape ``(member, *state)``), as a ``(member,)`` tensor.
    The factor 1/2 is part of the definition. The sampler multiplies by ``weight``
    (``lambda_j``) and differentiates through ``D`` with autograd.
    """

    weight: float

    def log_likelihood(self, x0: Tensor, sigma: Tensor) -> Tensor: ...
