"""The diffusion prior: an EDM denoiser of full-resolution states, with its normalisation.

:class:`DiffusionPrior` satisfies the :class:`~diffda.core.protocols.Denoiser` protocol in
**normalised** space (per-variable mean/std of the training climate, ``sigma_data = 1``):
``prior(x, sigma)`` with ``x`` ``(member, var, lat, lon)`` returns ``D(x; sigma)``. The
posterior sampler runs in that space; :meth:`DiffusionPrior.denormalise` maps its samples
(and, passed as ``to_observed``, its denoised estimates) to physical units, where the
observation operators live.

An analysis (Algorithm 1) with observation terms in normalised units::

    prior = DiffusionPrior.load()                      # emulators/weights/prior.safetensors
    op = low_resolution_operator(prior.grid, prior.variables)
    terms = [ObservationTerm(op, y, sigma_y=1e-2, gamma=1e-2)]
    gens = member_generators(seed, "analysis", cycle, 16)
    z = sample_posterior(prior, gens, prior.state_shape, terms, SamplerConfig())
    analysis = prior.denormalise(z)                    # (16, var, lat, lon), physical units

Weights are one ``prior.safetensors`` (tensors only: the EMA network and the normalisation)
and a ``prior.json`` card (variables, grid, network size, EDM parameters, training command,
data and scores), written and read by :mod:`diffda.emulators.training`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffda.core.config import from_mapping
from diffda.core.grid import Grid
from diffda.core.weights import WeightsError, export_weights, load_weights
from diffda.emulators.prior.edm import EDMPrecond
from diffda.emulators.prior.unet import SongUNet, UNetConfig
from torch import Tensor, nn

DEFAULT_WEIGHTS = Path(__file__).parents[1] / "weights" / "prior.safetensors"
KIND = "diffusion-prior"


def area_weighted_moments(states: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Per-variable area-weighted mean and standard deviation of ``(time, var, lat, lon)``
    states over time, latitude and longitude: two ``(var,)`` tensors (float64 sums)."""
    w = torch.as_tensor(grid.area_weights(), dtype=torch.float64)[:, None]
    x = states.double()
    wsum = w.sum() * x.shape[0] * x.shape[-1]
    mean = (x * w).sum(dim=(0, 2, 3)) / wsum
    var = (((x - mean[:, None, None]) ** 2) * w).sum(dim=(0, 2, 3)) / wsum
    return mean, var.sqrt()


class DiffusionPrior(nn.Module):
    """``D(x; sigma)`` on normalised states plus the normalisation (Denoiser protocol).

    ``forward(x, sigma)``: ``(member, var, lat, lon)``, scalar or ``(member,)`` ->
    ``(member, var, lat, lon)``, all normalised. ``mean``/``std``: ``(var,)`` physical units.
    """

    def __init__(
        self,
        net: EDMPrecond,
        variables: Sequence[str],
        mean: Tensor,
        std: Tensor,
        grid: Grid,
        card: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mean.shape != (len(variables),) or std.shape != (len(variables),):
            raise ValueError(
                f"mean/std must have shape ({len(variables)},) for variables {list(variables)}, "
                f"got {tuple(mean.shape)} / {tuple(std.shape)}"
            )
        if not bool((std > 0).all()):
            raise ValueError(f"normalisation std must be positive, got {std.tolist()}")
        self.net = net
        self.variables = tuple(variables)
        self.grid = grid
        self.card = dict(card or {})
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """``(var, lat, lon)`` of one member."""
        return (len(self.variables), self.grid.nlat, self.grid.nlon)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        if tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(
                f"prior expects states of shape (member, {', '.join(map(str, self.state_shape))})"
                f" for {list(self.variables)} on {self.grid}, got {tuple(x.shape)}"
            )
        return self.net(x, sigma)

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std as ``(var, 1, 1)``, broadcasting over ``(..., var, lat, lon)``."""
        if x.ndim < 3 or x.shape[-3] != len(self.variables):
            raise ValueError(
                f"expected (..., {len(self.variables)}, lat, lon) for {list(self.variables)}, "
                f"got {tuple(x.shape)}"
            )
        return (self.mean.to(x.dtype).reshape(-1, 1, 1), self.std.to(x.dtype).reshape(-1, 1, 1))

    def normalise(self, x: Tensor) -> Tensor:
        """Physical ``(..., var, lat, lon)`` -> normalised ``(x - mean) / std``."""
        m, s = self._stats(x)
        return (x - m) / s

    def denormalise(self, z: Tensor) -> Tensor:
        """Normalised ``(..., var, lat, lon)`` -> physical ``mean + std z``."""
        m, s = self._stats(z)
        return m + s * z

    def export(self, path: str | Path, card: dict[str, Any]) -> tuple[Path, Path]:
        """Write ``path`` (.safetensors: network + normalisation) and its JSON card."""
        unet = self.net.backbone.config  # type: ignore[union-attr]
        full = {
            "kind": KIND,
            "variables": list(self.variables),
            "grid": {"nlat": self.grid.nlat, "nlon": self.grid.nlon,
                     "convention": "WeatherBench cell centres, lat ascending, lon 0..360"},
            "normalisation": {v: {"mean": float(m), "std": float(s)}
                              for v, m, s in zip(self.variables, self.mean, self.std, strict=True)},
            "unet": {k: list(v) if isinstance(v, tuple) else v
                     for k, v in dataclasses.asdict(unet).items()},
            "sigma_data": self.net.sigma_data,
            **card,
        }
        return export_weights(path, self.state_dict(), full)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS, device: str | torch.device = "cpu"
             ) -> DiffusionPrior:
        """Read weights written by :meth:`export`; ready for sampling (eval mode, no
        parameter gradients: a vector-Jacobian product w.r.t. ``x`` costs one backward)."""
        tensors, card = load_weights(path, map_location=device)
        if card.get("kind") != KIND:
            raise WeightsError(f"{path}: card kind is {card.get('kind')!r}, expected {KIND!r}")
        try:
            unet = from_mapping(UNetConfig, card["unet"])
            grid = Grid(int(card["grid"]["nlat"]), int(card["grid"]["nlon"]))
            variables = card["variables"]
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"{path}: card is incomplete or invalid ({err})") from None
        net = EDMPrecond(SongUNet(unet), sigma_data=float(card.get("sigma_data", 1.0)))
        prior = cls(net, variables, torch.zeros(len(variables)), torch.ones(len(variables)), grid,
                    card)
        try:
            prior.load_state_dict(tensors)
        except RuntimeError as err:
            raise WeightsError(f"{path}: tensors do not match the card's network ({err})") from None
        return prior.to(device).eval().requires_grad_(False)


def build_prior(
    unet: UNetConfig, variables: Sequence[str], mean: Tensor, std: Tensor, grid: Grid,
    sigma_data: float = 1.0, seed_generator: torch.Generator | None = None,
) -> DiffusionPrior:
    """A fresh (untrained) prior, in eval mode (no dropout: safe to sample from; training
    switches modes itself). The weights are initialised from ``seed_generator``'s seed
    (``torch`` initialisers use the global generator, so it is forked and seeded locally:
    the global state is left untouched). Untrained, ``D(x; sigma) = x / (1 + sigma^2)``
    exactly (the output layer starts at zero): the denoiser of ``N(0, I)``."""
    if unet.channels != len(variables):
        unet = dataclasses.replace(unet, channels=len(variables))
    seed = int(torch.randint(0, 2**62, (1,), generator=seed_generator)) if seed_generator else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EDMPrecond(SongUNet(unet), sigma_data=sigma_data)
    return DiffusionPrior(net, variables, mean, std, grid).eval()


def negative_fraction(x: np.ndarray | Tensor) -> float:
    """Fraction of values below zero (for the positive tracer)."""
    a = np.asarray(x)
    return float((a < 0).mean())
