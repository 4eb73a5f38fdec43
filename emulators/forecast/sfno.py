"""A spherical Fourier neural operator (SFNO, Bonev et al. 2023) on cell-centre grids.

The structure follows ``torch_harmonics.examples.models.SphericalFourierNeuralOperator``
(as used by LUCIE, Guan et al. 2024), rebuilt here on the library's core transforms
(``RealSHT`` / ``InverseRealSHT``) because ``examples`` is not stable API:

    x -> encoder (1x1 MLP) -> [block] * depth -> decoder (1x1 MLP) -> y
    block(h) = h + MLP(act(SpectralConv(norm(h)) + W h))

where ``SpectralConv`` is the library's pattern: forward SHT, a channel mix ``K_l`` per degree
``l`` (isotropic kernel, the same for every order ``m``), inverse SHT.

Grid. The project's grids are WeatherBench cell centres: ``nlat`` latitudes
``-90 + (i + 1/2) 180/nlat``, no poles. None of torch-harmonics' grid types has these nodes
("equiangular" is Clenshaw-Curtis and includes both poles; "legendre-gauss" nodes are the
roots of ``P_nlat``, up to 2.5 deg away from the cell centres at 16 latitudes). The cell
centres are exactly the nodes of **Fejer's first quadrature rule** in ``cos(colatitude)``
(exact for polynomials of degree ``nlat - 1``), so :class:`CellCentreRealSHT` /
:class:`CellCentreInverseRealSHT` subclass the library transforms and replace only their
node-dependent buffers: Legendre functions evaluated by ``torch_harmonics.legendre.legpoly``
at the cell-centre colatitudes, times the Fejer weights. With the default triangular
truncation ``lmax = mmax = nlat // 2`` the transform pair is exact (to round-off) for fields
band-limited to degree ``< lmax``, which a test checks in float64. Latitude stays ascending
(south to north) as everywhere in the project: the nodes are simply given in that order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffda.core.config import require
from torch import Tensor, nn
from torch_harmonics import InverseRealSHT, RealSHT
from torch_harmonics.legendre import legpoly

# ------------------------------------------------------------------ quadrature, nodes


def cell_centre_colatitudes(nlat: int) -> Tensor:
    """Colatitudes (radians) of the WeatherBench cell centres, latitude ascending:
    ``theta_i = pi - (i + 1/2) pi / nlat``, shape ``(nlat,)``, float64."""
    i = torch.arange(nlat, dtype=torch.float64)
    return math.pi - (i + 0.5) * math.pi / nlat


def fejer1_weights(nlat: int) -> Tensor:
    """Fejer's first-rule weights for the cell-centre nodes ``x_i = cos(theta_i)`` on
    ``[-1, 1]`` (Waldvogel 2006, Eq. 2.5): ``w_i = 2/n (1 - 2 sum_{j=1}^{n//2}
    cos(2 j t_i) / (4 j^2 - 1))`` with ``t_i = (i + 1/2) pi / n``; shape ``(nlat,)``, sum 2.

    Exact for polynomials in ``x`` of degree ``<= nlat - 1``. The weight of a node depends
    only on its distance from the pole, so the order of the nodes does not matter.
    """
    n = nlat
    t = (torch.arange(n, dtype=torch.float64) + 0.5) * math.pi / n
    j = torch.arange(1, n // 2 + 1, dtype=torch.float64)
    s = (torch.cos(2 * j[:, None] * t[None, :]) / (4 * j[:, None] ** 2 - 1)).sum(0)
    return 2.0 / n * (1 - 2 * s)


def default_lmax(nlat: int) -> int:
    """Triangular truncation for ``nlat`` cell-centre latitudes: products of two Legendre
    functions of degree ``< lmax`` have degree ``<= 2 lmax - 2 <= nlat - 1`` and are then
    integrated exactly by Fejer's first rule, so ``lmax = nlat // 2``."""
    return max(1, nlat // 2)


class _OnCellCentres:
    """The constructor of both cell-centre transforms: the library's set-up at truncation
    ``lmax`` (default :func:`default_lmax`) and ``mmax`` (default ``min(lmax, nlon // 2 +
    1)``), then the Legendre functions at the cell-centre colatitudes (those of the
    synthesis when :attr:`inverse`) go in place of the library's Gauss-grid ones
    (:meth:`_set_legendre`)."""

    inverse: bool

    def __init__(
        self, nlat: int, nlon: int, lmax: int | None = None, mmax: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        lmax = default_lmax(nlat) if lmax is None else lmax
        mmax = min(lmax, nlon // 2 + 1) if mmax is None else mmax
        super().__init__(nlat, nlon, lmax=lmax, mmax=mmax, grid="legendre-gauss")
        self.grid = "cell-centre (Fejer 1)"
        x = torch.cos(cell_centre_colatitudes(nlat))
        pct = legpoly(self.mmax, self.lmax, x, norm="ortho", inverse=self.inverse, csphase=True)
        self._set_legendre(pct, nlat, dtype)

    def _set_legendre(self, pct: torch.Tensor, nlat: int, dtype: torch.dtype) -> None:
        """Store the transform's Legendre buffer from ``pct``: the forward transform also
        folds in the quadrature weights, the inverse does not. Each of the two subclasses
        below implements it; this mixin is never used on its own."""
        raise NotImplementedError(f"{type(self).__name__} must define _set_legendre")


class CellCentreRealSHT(_OnCellCentres, RealSHT):
    """``torch_harmonics.RealSHT`` on WeatherBench cell centres (latitude ascending).

    ``(..., nlat, nlon)`` real -> ``(..., lmax, mmax)`` complex, orthonormal harmonics.
    Only the ``weights`` buffer (Legendre functions x quadrature weights x 2 pi) differs from
    the library's; the forward pass is the library's.
    """

    inverse = False

    def _set_legendre(self, pct: torch.Tensor, nlat: int, dtype: torch.dtype) -> None:
        w = 2.0 * math.pi * fejer1_weights(nlat)
        self.register_buffer("weights", (pct * w).to(dtype).contiguous(), persistent=False)


class CellCentreInverseRealSHT(_OnCellCentres, InverseRealSHT):
    """``torch_harmonics.InverseRealSHT`` onto WeatherBench cell centres (latitude ascending).

    ``(..., lmax, mmax)`` complex -> ``(..., nlat, nlon)`` real.
    """

    inverse = True

    def _set_legendre(self, pct: torch.Tensor, nlat: int, dtype: torch.dtype) -> None:
        self.register_buffer(
            "pct", pct.permute(0, 2, 1).to(dtype).contiguous(), persistent=False
        )


# ----------------------------------------------------------------------------- layers


OPERATORS = ("driscoll-healy", "diagonal")
"""Spectral kernels, as ``operator_type`` of torch-harmonics' example SFNO:
``driscoll-healy``: ``K_l`` (isotropic, the same for every order ``m``); ``diagonal``:
``K_lm`` (a separate complex channel mix per ``(l, m)``, which can represent zonally
directed operators such as ``d/dlambda``, i.e. advection by a mean flow)."""


class SpectralConvS2(nn.Module):
    """The library's spectral convolution on cell centres: ``v = ISHT(K . SHT(u))``.

    ``K``: complex ``(in, out, lmax)`` for ``driscoll-healy`` (an isotropic kernel on the
    sphere) or ``(in, out, lmax, mmax)`` for ``diagonal``.
    ``(B, C_in, nlat, nlon) -> (B, C_out, nlat, nlon)``.
    """

    def __init__(
        self, sht: CellCentreRealSHT, isht: CellCentreInverseRealSHT, c_in: int, c_out: int,
        operator: str = "driscoll-healy",
    ):
        super().__init__()
        if operator not in OPERATORS:
            raise ValueError(f"operator {operator!r}: expected one of {OPERATORS}")
        self.sht, self.isht = sht, isht
        self.operator = operator
        shape = (c_in, c_out, sht.lmax) + ((sht.mmax,) if operator == "diagonal" else ())
        self.weight = nn.Parameter(torch.zeros(shape, dtype=torch.complex64))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """As the library: ``N(0, 1/c_in)`` complex entries, degree 0 scaled by sqrt(2)."""
        c_in, lmax = self.weight.shape[0], self.weight.shape[2]
        scale = torch.full((lmax,), math.sqrt(1.0 / c_in))
        scale[0] *= math.sqrt(2.0)
        if self.weight.ndim == 4:
            scale = scale[:, None]
        w = torch.randn(self.weight.shape, dtype=torch.complex64, generator=generator)
        with torch.no_grad():
            self.weight.copy_(w * scale)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xs = self.sht(x.float())  # (B, C_in, lmax, mmax)
        if self.operator == "diagonal":
            ys = torch.einsum("bilm,iolm->bolm", xs, self.weight)
        else:
            ys = torch.einsum("bilm,iol->bolm", xs, self.weight)
        return self.isht(ys).to(dtype)


class ChannelNorm(nn.Module):
    """Layer norm over channels at each grid point (keeps spatial means: a global-mean
    anomaly is a signal for a climate model, so no instance norm). ``(B, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class PointMLP(nn.Module):
    """Two 1x1 convolutions with GELU: ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c_in, c_hidden, 1)
        self.fc2 = nn.Conv2d(c_hidden, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class SFNOBlock(nn.Module):
    """``h + MLP(GELU(SpectralConv(norm(h)) + W norm(h)))``, as the library's SFNO block
    with an inner 1x1 skip and an outer identity skip."""

    def __init__(
        self, sht: CellCentreRealSHT, isht: CellCentreInverseRealSHT, width: int,
        mlp_ratio: float, operator: str = "driscoll-healy",
    ):
        super().__init__()
        self.norm = ChannelNorm(width)
        self.filter = SpectralConvS2(sht, isht, width, width, operator)
        self.inner_skip = nn.Conv2d(width, width, 1)
        self.mlp = PointMLP(width, int(width * mlp_ratio), width)

    def forward(self, h: Tensor) -> Tensor:
        z = self.norm(h)
        z = nn.functional.gelu(self.filter(z) + self.inner_skip(z))
        return h + self.mlp(z)


# ------------------------------------------------------------------------------ model


@dataclass(frozen=True, kw_only=True)
class SFNOConfig:
    """Shape of an :class:`SFNO`. ``lmax = None``: ``nlat // 2`` (see :func:`default_lmax`)."""

    in_channels: int
    out_channels: int
    nlat: int = 16
    nlon: int = 32
    width: int = 64
    depth: int = 4
    mlp_ratio: float = 2.0
    lmax: int | None = None
    operator: str = "diagonal"

    def __post_init__(self) -> None:
        require(self.operator in OPERATORS, "operator", self.operator, f"one of {OPERATORS}")
        for key in ("in_channels", "out_channels", "nlat", "nlon", "width", "depth"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        require(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "must be positive")
        if self.lmax is not None:
            require(
                1 <= self.lmax <= self.nlat, "lmax", self.lmax, f"must be in 1..nlat={self.nlat}"
            )


class SFNO(nn.Module):
    """Spherical Fourier neural operator: ``(B, in_channels, nlat, nlon) ->
    (B, out_channels, nlat, nlon)`` on cell-centre grids (latitude ascending, lon 0..360).

    The output layer starts at zero, so an untrained model in residual form is persistence.
    Parameters are initialised from ``generator`` only (:meth:`reset_parameters`).
    """

    def __init__(self, config: SFNOConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        c = config
        self.sht = CellCentreRealSHT(c.nlat, c.nlon, lmax=c.lmax)
        self.isht = CellCentreInverseRealSHT(c.nlat, c.nlon, lmax=self.sht.lmax)
        self.encoder = PointMLP(c.in_channels, c.width, c.width)
        self.blocks = nn.ModuleList(
            SFNOBlock(self.sht, self.isht, c.width, c.mlp_ratio, c.operator)
            for _ in range(c.depth)
        )
        self.decoder = PointMLP(c.width, c.width, c.out_channels)
        self.reset_parameters(generator or torch.Generator().manual_seed(0))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Seeded initialisation: 1x1 convs uniform(+-1/sqrt(fan_in)) (PyTorch's default
        bounds), spectral weights as the library, the last layer zero."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                bound = 1.0 / math.sqrt(module.in_channels)
                with torch.no_grad():
                    module.weight.uniform_(-bound, bound, generator=generator)
                    module.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(module, SpectralConvS2):
                module.reset_parameters(generator)
        with torch.no_grad():
            self.decoder.fc2.weight.zero_()
            self.decoder.fc2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return self.decoder(h)


class SFNOEnsemble(nn.Module):
    """The mean output of several :class:`SFNO` of one shape (independently trained
    networks, e.g. from different seeds): ``(B, in, nlat, nlon) -> (B, out, nlat, nlon)``.

    Averaging the tendencies of independently trained networks cancels part of each
    network's own error (the "deep ensemble" of Lakshminarayanan et al. 2017, used as a
    single deterministic model). ``config`` is the members' common :class:`SFNOConfig`, so
    the ensemble stands wherever one network does.
    """

    def __init__(self, members: Sequence[SFNO]):
        super().__init__()
        require(len(members) >= 1, "members", len(members), "at least one network")
        configs = {m.config for m in members}
        require(len(configs) == 1, "members", sorted(map(str, configs)),
                "networks of one SFNOConfig")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, x: Tensor) -> Tensor:
        out = self.members[0](x)
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)


def build_sfno(config: SFNOConfig, n_networks: int = 1) -> SFNO | SFNOEnsemble:
    """One network (``n_networks == 1``) or an :class:`SFNOEnsemble` of ``n_networks``,
    freshly initialised (weights to be loaded)."""
    require(n_networks >= 1, "n_networks", n_networks, "must be >= 1")
    if n_networks == 1:
        return SFNO(config)
    return SFNOEnsemble([SFNO(config) for _ in range(n_networks)])
