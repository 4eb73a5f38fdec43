"""A compact SongUNet-style U-Net for states on the sphere (the backbone ``F`` of paper Eq. 5).

As the paper's Sec. 3.4 network (Song et al. 2021 "DDPM++", as in NVlabs/edm ``SongUNet``),
scaled down for CPUs: residual blocks whose normalised activations are modulated by the
noise embedding (``h * (1 + scale) + shift``), self-attention at the coarsest levels,
dropout, skip connections between encoder and decoder, a zero-initialised output layer.
On the sphere:

- convolutions pad **circularly in longitude** and with **zeros in latitude** (no wrap over
  the poles);
- ``sin(lat)`` and ``cos(lat)`` (WeatherBench cell centres, computed from the input height)
  are extra input channels, so the network knows where it is in latitude; nothing depends
  on longitude, so the network commutes with zonal rolls by multiples of
  ``2 ** (levels - 1)`` columns (average pooling and nearest upsampling are exact there).

Shapes: ``forward(x, c_noise)``: ``x`` ``(B, C, H, W)``, ``c_noise`` ``(B,)`` -> ``(B, C, H, W)``;
``H`` and ``W`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffda.core.config import require
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Size of the U-Net. The default has 2.0 M parameters for 4 variables (widths 24, 48,
    72, 96 at 32x64, 16x32, 8x16, 4x8); narrow at full resolution, where the cost is."""

    channels: int = 4  # state variables in and out
    model_channels: int = 24  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # width multiplier per level
    num_blocks: int = 1  # residual blocks per encoder level (decoder: one more)
    attn_levels: tuple[int, ...] = (2, 3)  # levels (0 = full resolution) with attention
    num_heads: int = 4
    dropout: float = 0.1
    lat_features: bool = True  # sin/cos latitude input channels

    def __post_init__(self) -> None:
        require(self.channels >= 1, "channels", self.channels, "must be >= 1")
        require(self.model_channels >= 4, "model_channels", self.model_channels, "must be >= 4")
        require(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult),
                "channel_mult", self.channel_mult, "must be a non-empty list of positive ints")
        require(self.num_blocks >= 1, "num_blocks", self.num_blocks, "must be >= 1")
        require(all(0 <= a < len(self.channel_mult) for a in self.attn_levels),
                "attn_levels", self.attn_levels,
                f"levels must be in 0..{len(self.channel_mult) - 1}")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        require(self.num_heads >= 1, "num_heads", self.num_heads, "must be >= 1")


def latitude_features(nlat: int, nlon: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(2, nlat, nlon)``: ``sin(lat), cos(lat)`` at WeatherBench cell centres (ascending)."""
    lat = torch.deg2rad(
        -90.0 + (torch.arange(nlat, dtype=torch.float64, device=device) + 0.5) * 180.0 / nlat
    )
    f = torch.stack([lat.sin(), lat.cos()]).to(dtype)
    return f[:, :, None].expand(2, nlat, nlon)


def noise_embedding(c_noise: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding ``(B,) -> (B, dim)`` of the noise level (Vaswani et al.)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=c_noise.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    arg = c_noise.float()[:, None] * freqs[None]
    return torch.cat([arg.cos(), arg.sin()], dim=1).to(c_noise.dtype)


def _groups(c: int) -> int:
    return math.gcd(32, c) if c >= 8 else 1


class SphereConv2d(nn.Conv2d):
    """Conv with circular padding in longitude (last dim) and zero padding in latitude."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, init_scale: float = 1.0) -> None:
        super().__init__(cin, cout, kernel, padding=(kernel // 2, 0))
        self.lon_pad = kernel // 2
        with torch.no_grad():
            self.weight.mul_(init_scale)
            if init_scale == 0.0:
                self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if self.lon_pad:
            x = F.pad(x, (self.lon_pad, self.lon_pad, 0, 0), mode="circular")
        return super().forward(x)


class Attention(nn.Module):
    """Multi-head self-attention over all ``H x W`` positions (no positional encoding)."""

    def __init__(self, c: int, num_heads: int) -> None:
        super().__init__()
        heads = math.gcd(num_heads, c)
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, h * w).unbind(1)
        # softmax(Q^T K / sqrt(d)) over key positions; plain matmuls (faster than SDPA on CPU)
        w_ = torch.softmax(torch.einsum("bhdq,bhdk->bhqk", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bhqk,bhdk->bhdq", w_, v)  # (b, heads, d, hw)
        return self.proj(a.reshape(b, c, h, w))


class ResBlock(nn.Module):
    """``x -> (skip(x) + conv(drop(act(mod(norm(conv(act(norm(x)))), emb))))) / sqrt 2``,
    then optional attention; ``mod(h, emb) = h (1 + scale(emb)) + shift(emb)``."""

    def __init__(
        self, cin: int, cout: int, emb_dim: int, dropout: float, attention: bool, num_heads: int
    ) -> None:
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(cin), cin)
        self.conv0 = SphereConv2d(cin, cout)
        self.affine = nn.Linear(emb_dim, 2 * cout)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv1 = SphereConv2d(cout, cout, init_scale=1e-2)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = Attention(cout, num_heads) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1.0 + scale) + shift)
        h = self.conv1(self.drop(h))
        x = (self.skip(x) + h) * math.sqrt(0.5)
        if self.attn is not None:
            x = (x + self.attn(x)) * math.sqrt(0.5)
        return x


class SongUNet(nn.Module):
    """The U-Net backbone ``F(x, c_noise)``; see the module docstring for shapes."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = 4 * mc
        self.levels = len(config.channel_mult)
        self.map = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        cin = config.channels + (2 if config.lat_features else 0)
        self.conv_in = SphereConv2d(cin, mc)

        def block(a: int, b: int, level: int) -> ResBlock:
            return ResBlock(a, b, emb_dim, config.dropout, level in config.attn_levels,
                            config.num_heads)

        self.enc = nn.ModuleList()
        skips = [mc]
        c = mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_blocks):
                self.enc.append(block(c, mc * mult, level))
                c = mc * mult
                skips.append(c)
            if level < self.levels - 1:
                skips.append(c)  # the downsampled activation
        coarsest = self.levels - 1
        self.mid = nn.ModuleList([block(c, c, coarsest), block(c, c, -1)])
        self.dec = nn.ModuleList()
        for level in reversed(range(self.levels)):
            for _ in range(config.num_blocks + 1):
                self.dec.append(block(c + skips.pop(), mc * config.channel_mult[level], level))
                c = mc * config.channel_mult[level]
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = SphereConv2d(c, config.channels, init_scale=0.0)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        b, _, h, w = x.shape
        k = 2 ** (self.levels - 1)
        if h % k or w % k:
            raise ValueError(
                f"U-Net with {self.levels} levels needs lat/lon sizes divisible by {k}, "
                f"got {h}x{w}"
            )
        emb = F.silu(self.map(noise_embedding(c_noise.to(x.dtype), self.config.model_channels)))
        if self.config.lat_features:
            lat = latitude_features(h, w, x.dtype, x.device).expand(b, 2, h, w)
            x = torch.cat([x, lat], dim=1)
        x = self.conv_in(x)
        skips = [x]
        nb = self.config.num_blocks
        for level in range(self.levels):
            for i in range(nb):
                x = self.enc[level * nb + i](x, emb)
                skips.append(x)
            if level < self.levels - 1:
                x = F.avg_pool2d(x, 2)
                skips.append(x)
        for blk in self.mid:
            x = blk(x, emb)
        j = 0
        for level in reversed(range(self.levels)):
            for _ in range(nb + 1):
                x = self.dec[j](torch.cat([x, skips.pop()], dim=1), emb)
                j += 1
            if level > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv_out(F.silu(self.norm_out(x)))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
