"""A forced-dissipative shallow-water model on the sphere, batched, on torch-harmonics.

Spectral vorticity-divergence form (Williamson et al. 1992; the same tendencies as
torch-harmonics' ``ShallowWaterSolver.dudtspec``) with orography, a forcing "sun", drag,
hyperdiffusion and a humidity-like tracer. Prognostic spectral coefficients, per member:
``phi = g h`` (geopotential of the fluid depth ``h``), relative vorticity ``zeta``,
divergence ``delta`` and tracer ``q``. With ``V = (u, v)``, ``f`` the Coriolis parameter,
``phi_s = g h_s`` the orography and ``E = phi + phi_s + |V|^2 / 2``:

    d zeta / dt = -div((zeta + f) V + k x F) + S(t)                             (1)
    d delta / dt = curl((zeta + f) V + k x F) - lap E                           (2)
    d phi / dt  = -div(phi V) + (g h_eq - phi - phi_s) / tau_rad                (3)
    d q / dt    = -div(q V) + P(q)                                             (4)

with the drag ``F = -k(x) V`` (linear, stronger over land; adding ``k x F`` to the vorticity
flux gives ``curl F`` in (1) and ``div F`` in (2) at no extra transform), the stochastic
stirring ``S`` (below), the relaxation of the free-surface height ``h + h_s`` toward the
equilibrium ``h_eq(lat, lon, t)`` set by the sun (season and time of day) and the land
(:func:`~diffda.emulators.nature.forcing.equilibrium_height`), and the tracer physics
``P`` (:func:`tracer_physics`): evaporation toward a fraction of a saturation value
``q_sat(h + h_s)`` (large over ocean, small over land) and condensation (rain-out) of the
excess above ``q_sat``, both as exact exponential relaxations, with hole-filling that keeps
the tracer at or above zero on the grid after every step.

Time stepping: third-order Adams-Bashforth for (1)-(4) without (P) and without the linear
gravity-wave terms, which are Crank-Nicolson (semi-implicit, :func:`semi_implicit_update`,
Eq. 5; Robert 1969 / Hoskins and Simmons 1975 style, here with AB3), restarted honestly
(Euler, AB2, then AB3) only at the first step of a run (the history is part of the
:class:`SWState`, so resuming continues exactly), followed by an implicit hyperdiffusion
``exp(-dt / tau_hd (l (l + 1) / (L (L + 1)))^4)`` on all fields and the split tracer
physics. Mass (the global mean of ``phi``) is conserved exactly by (1)-(4) without forcing.

Weather (stochastic stirring). A one-layer model has no baroclinic instability, and with
the height relaxation alone the flow at 64x128 was smooth and nearly steady (screening below).
As Vallis, Gerber, Kushner and Cash (2004, J. Atmos. Sci. 61, 264-280) do for their
barotropic model, the vorticity equation (1) gets a stochastic stirring ``S(t)``
(:meth:`ShallowWaterModel.stirring`) that stands for the eddy sources a one-layer model cannot
make: white in total wavenumbers 10-18, confined to Gaussian bands at +-45 deg, a new random
pattern every 12 h (linear in time between), drawn from ``(stir_seed, knot)`` alone. It is part
of the forcing: twins of a twin experiment share it, so their divergence measures the flow's
own instability (2-D turbulence of the stirred jets), not the noise.

Screening (2026-11-22, 64x128, 30-40 days from rest, then a twin pair with 1 m white height
noise; e-folding fitted after the initial decay of the damped small scales; ac6 = 6-hour
autocorrelation of the eddy height):

- Until 2026-11-22 the reference depth was 6000 m. With orography (depth down to about 3000 m)
  the explicit remainder of AB3 / Crank-Nicolson then had a growing numerical mode at zonal
  wavenumbers 12-16 (flat spectra, winds to 160 m/s); its twin-error growth was not weather.
  Reference depth 4500 m (the default since) or dt 300 s removes it.
- Without stirring every height forcing tried was smooth and nearly steady (ac6 0.93-0.996,
  twin error decays over 15 days).
- Stirring 2e-5 s-1/day (bands 8-14, hyperdiffusion 6 h, drag 15/5 d): twin error decays;
  4e-5 with hyperdiffusion 24 h and drag 30/10 d: e-folding 2.8-3.4 d, saturation after 26 d;
  6e-5, bands 10-18, tau_rad 20 d: e-folding 2.2 d, saturation at day 21, winds to 77 m/s;
  8e-5 (the default): e-folding 1.7 d, saturation at day 18, ac6 0.90, winds to about
  100 m/s.

The model grid is torch-harmonics' Legendre-Gauss grid (latitudes north to south, as the
library returns them) with triangular truncation ``T = nlon // 3`` (alias-free for the
quadratic terms: T42 at 64x128). :func:`synthesize` evaluates the spectral fields at any
latitudes (e.g. the WeatherBench cell centres) exactly, for output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_harmonics as th
from diffda.emulators.nature.forcing import (
    DAYS_PER_YEAR,
    ForcingConfig,
    equilibrium_height,
    orography,
)
from torch import Tensor, nn
from torch_harmonics.legendre import legpoly
from torch_harmonics.quadrature import precompute_latitudes

GRAVITY = 9.80616  # m s-2
RADIUS = 6.37122e6  # m
OMEGA = 7.292e-5  # s-1
DAY = 86400.0


@dataclass(frozen=True, kw_only=True)
class ShallowWaterConfig:
    """Numerics and physics of :class:`ShallowWaterModel` (SI units, times in hours/days)."""

    nlat: int = 64
    nlon: int = 128
    truncation: int | None = None  # T; default nlon // 3 (alias-free); lmax = mmax = T + 1
    dt_seconds: float = 600.0  # 900 s blew up at 64x128 within 20 days
    # m, depth of the implicitly treated gravity waves; 6000 m (deeper than the fluid over
    # orography) let a numerical mode grow at zonal wavenumbers 12-16 (module docstring)
    reference_depth: float = 4500.0
    tau_rad_days: float = 20.0
    tau_drag_ocean_days: float = 30.0
    tau_drag_land_days: float = 10.0
    tau_hyperdiff_hours: float = 24.0  # e-folding time of the smallest resolved scale
    hyperdiff_order: int = 4  # (lap)^order
    # tracer ("humidity"): saturation q_sat = q_sat_ref exp((h + h_s - mean_height) / h_scale)
    q_sat_ref: float = 8e-3  # kg kg-1
    q_sat_scale: float = 400.0  # m
    evap_ocean: float = 0.8  # evaporation target = evap * q_sat
    evap_land: float = 0.2
    tau_evap_days: float = 1.5
    tau_condense_hours: float = 2.0
    # stochastic stirring of vorticity (Vallis et al. 2004), see :meth:`ShallowWaterModel.stirring`
    stir_rms_per_day: float = 8e-5  # s-1 per day: rms vorticity tendency at the stirring peak
    stir_lmin: int = 10  # band of total wavenumbers stirred
    stir_lmax: int = 18
    stir_lat: float = 45.0  # degrees: centre of the Gaussian stirring band in each hemisphere
    stir_width: float = 12.0  # degrees: its e-folding half-width
    stir_knot_hours: float = 12.0  # a new random pattern every knot, linear in time between
    stir_seed: int = 0
    forcing: ForcingConfig = field(default_factory=ForcingConfig)

    def __post_init__(self) -> None:
        if self.nlat < 4 or self.nlon < 8:
            raise ValueError(f"grid {self.nlat}x{self.nlon} too small")
        if self.dt_seconds <= 0:
            raise ValueError(f"dt_seconds = {self.dt_seconds} must be positive")
        if self.stir_rms_per_day < 0 or not 0 < self.stir_lmin <= self.stir_lmax:
            raise ValueError(f"stirring rms {self.stir_rms_per_day} must be >= 0 and the band "
                             f"{self.stir_lmin}..{self.stir_lmax} non-empty and above 0")
        if self.stir_knot_hours <= 0 or self.stir_width <= 0:
            raise ValueError(f"stir_knot_hours = {self.stir_knot_hours} and stir_width = "
                             f"{self.stir_width} must be positive")

    @property
    def lmax(self) -> int:
        t = self.truncation if self.truncation is not None else self.nlon // 3
        return min(t + 1, self.nlat)


# --------------------------------------------------------------------------- tracer (pure)


def saturation(height: Tensor, cfg: ShallowWaterConfig) -> Tensor:
    """``q_sat = q_ref exp((h + h_s - H0) / h_scale)``: warm (high) columns hold more."""
    return cfg.q_sat_ref * torch.exp((height - cfg.forcing.mean_height) / cfg.q_sat_scale)


def tracer_physics(q: Tensor, height: Tensor, land: Tensor, dt: float,
                   cfg: ShallowWaterConfig) -> Tensor:
    """One split step of evaporation and condensation, exact for each relaxation.

    ``q, height``: ``(..., nlat, nlon)`` grid values (kg kg-1, m; height = free surface);
    ``land`` in [0, 1]. Negative input values (spectral ringing) are first set to zero.
    Condensation: ``q > q_sat`` relaxes to ``q_sat`` with ``tau_c``; evaporation:
    ``q < e q_sat`` relaxes to ``e q_sat`` with ``tau_e``, ``e = e_ocean (1-land) + e_land land``.
    Returns ``q >= 0``.
    """
    q = q.clamp_min(0.0)
    qs = saturation(height, cfg)
    target = (cfg.evap_ocean * (1 - land) + cfg.evap_land * land) * qs
    a_c = math.exp(-dt / (cfg.tau_condense_hours * 3600.0))
    a_e = math.exp(-dt / (cfg.tau_evap_days * DAY))
    q = torch.where(q > qs, qs + (q - qs) * a_c, q)
    q = torch.where(q < target, target + (q - target) * a_e, q)
    return q


# --------------------------------------------------------------------------- time stepping


def semi_implicit_update(spec: Tensor, explicit: Tensor, lap: Tensor, phi0: float,
                         dt: float) -> Tensor:
    """Semi-implicit (AB3 / Crank-Nicolson) update of ``(phi, zeta, delta, q)`` spectra.

    The linear gravity-wave part ``d phi/dt = -Phi_0 delta``, ``d delta/dt = -lap phi``
    (Eq. 5) is trapezoidal; everything else (``explicit``, the AB3 combination of the other
    tendencies) is explicit. Per coefficient, with ``e = -lap = l (l + 1) / a^2``:

        phi' = A - dt/2 Phi_0 delta',   A = phi + dt N_phi - dt/2 Phi_0 delta
        delta' = (B + dt/2 e A) / (1 + (dt/2)^2 e Phi_0),   B = delta + dt N_delta + dt/2 e phi

    Gravity waves are then neutral for any ``dt`` (slowed at small scales), so the step is
    limited by advection only. ``spec, explicit``: ``(B, 4, L, M)``; ``lap``: ``(L, M)``.
    """
    e = -lap
    h = 0.5 * dt
    phi, delta = spec[:, 0], spec[:, 2]
    a = phi + dt * explicit[:, 0] - h * phi0 * delta
    b = delta + dt * explicit[:, 2] + h * e * phi
    delta_new = (b + h * e * a) / (1.0 + h * h * e * phi0)
    phi_new = a - h * phi0 * delta_new
    rest = spec + dt * explicit
    return torch.stack([phi_new, rest[:, 1], delta_new, rest[:, 3]], 1)


# --------------------------------------------------------------------------- model


@dataclass
class SWState:
    """Model state of a batch of members.

    ``spec``: ``(member, 4, lmax, mmax)`` complex: phi, zeta, delta, q coefficients.
    ``history``: previous AB tendencies, newest first (0-2 of them), same shape as ``spec``.
    ``seconds``: model time in seconds since the calendar origin used by the caller.
    """

    spec: Tensor
    seconds: float
    history: list[Tensor] = field(default_factory=list)

    def clone(self) -> SWState:
        return SWState(self.spec.clone(), self.seconds, [h.clone() for h in self.history])


DayOfYear = Callable[[float], float]


def noleap_day_of_year(seconds: float) -> float:
    """Fractional day of year for ``seconds`` since 0001-01-01 00:00 in the noleap calendar."""
    return (seconds / DAY) % DAYS_PER_YEAR


class ShallowWaterModel(nn.Module):
    """Batched forced shallow-water model (module docstring has the equations).

    ``land_fn(lat_deg, lon_deg) -> ndarray`` gives smooth land in [0, 1] at points (default:
    :func:`diffda.emulators.nature.landmask.smooth_land`). ``forcing=False`` switches off the
    relaxation, drag and tracer sources/sinks (for conservation tests).
    """

    def __init__(self, cfg: ShallowWaterConfig | None = None, *,
                 land_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 dtype: torch.dtype = torch.float32, forcing: bool = True) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ShallowWaterConfig()
        self.dtype = dtype
        self.forcing = forcing
        L = cfg.lmax
        kw = dict(lmax=L, mmax=L, grid="legendre-gauss", csphase=False)
        self.sht = th.RealSHT(cfg.nlat, cfg.nlon, **kw)
        self.isht = th.InverseRealSHT(cfg.nlat, cfg.nlon, **kw)
        self.vsht = th.RealVectorSHT(cfg.nlat, cfg.nlon, **kw)
        self.ivsht = th.InverseRealVectorSHT(cfg.nlat, cfg.nlon, **kw)
        self.lmax = self.mmax = L
        colat, _ = precompute_latitudes(cfg.nlat, grid="legendre-gauss")
        self.lat_deg = 90.0 - torch.rad2deg(colat)  # north to south
        self.lon_deg = torch.arange(cfg.nlon, dtype=torch.float64) * 360.0 / cfg.nlon
        if land_fn is None:
            from diffda.emulators.nature.landmask import smooth_land
            land_fn = smooth_land
        lat2, lon2 = np.meshgrid(self.lat_deg.numpy(), self.lon_deg.numpy(), indexing="ij")
        land = torch.as_tensor(land_fn(lat2, lon2), dtype=torch.float64)
        self.land64 = land
        self.lat2, self.lon2 = torch.as_tensor(lat2), torch.as_tensor(lon2)

        l = torch.arange(L, dtype=torch.float64)[:, None].expand(L, L)
        lap = -l * (l + 1) / RADIUS**2
        invlap = torch.where(l > 0, 1.0 / torch.where(l > 0, lap, 1.0), 0.0)
        lap_max = L * (L - 1) / RADIUS**2  # |lap| of the highest resolved degree (l = L - 1)
        hd = torch.exp(-cfg.dt_seconds / (cfg.tau_hyperdiff_hours * 3600.0)
                       * (-lap / lap_max) ** cfg.hyperdiff_order)
        tril = torch.tril(torch.ones(L, L, dtype=torch.bool))
        rdt = dtype
        cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.register_buffer("lap", lap.to(rdt))
        self.register_buffer("invlap", invlap.to(rdt))
        self.register_buffer("hyperdiff", hd.to(rdt))
        self.register_buffer("tril", tril)
        self.register_buffer("coriolis", (2 * OMEGA * torch.sin(torch.deg2rad(self.lat_deg)))
                             [:, None].to(rdt))
        self.register_buffer("land", land.to(rdt))
        h_s = orography(land, cfg.forcing)
        self.register_buffer("orography", h_s.to(rdt))
        k_drag = ((1 - land) / (cfg.tau_drag_ocean_days * DAY)
                  + land / (cfg.tau_drag_land_days * DAY))
        self.register_buffer("k_drag", k_drag.to(rdt))
        self.sht, self.isht, self.vsht, self.ivsht = (m.to(rdt) for m in
                                                       (self.sht, self.isht, self.vsht, self.ivsht))
        self.cdtype = cdt
        band = torch.exp(-(((self.lat_deg.abs() - cfg.stir_lat) / cfg.stir_width) ** 2))
        self.register_buffer("stir_mask", band[:, None].to(rdt))
        self.register_buffer("stir_band", ((l >= cfg.stir_lmin) & (l <= cfg.stir_lmax)
                                           & tril))
        self._stir_cache: dict[int, Tensor] = {}

    # -- transforms
    def to_spec(self, grid: Tensor) -> Tensor:
        return self.sht(grid)

    def to_grid(self, spec: Tensor) -> Tensor:
        return self.isht(spec)

    def vort_div(self, vec: Tensor) -> Tensor:
        """``(..., 2, nlat, nlon)`` vector (u, v) -> ``(..., 2, L, M)`` spectral (curl, div)."""
        return self.lap * RADIUS * self.vsht(vec)

    def winds(self, zeta_delta: Tensor) -> Tensor:
        """``(..., 2, L, M)`` spectral (zeta, delta) -> ``(..., 2, nlat, nlon)`` grid (u, v)."""
        return self.ivsht(self.invlap * zeta_delta / RADIUS)

    def equilibrium(self, seconds: float) -> Tensor:
        """``h_eq`` on the model grid at model time ``seconds``, ``(nlat, nlon)``."""
        doy = torch.tensor([noleap_day_of_year(seconds)], dtype=torch.float64)
        return equilibrium_height(self.lat2, self.lon2, self.land64, doy, self.cfg.forcing)[0].to(
            self.dtype)

    def stir_pattern(self, knot: int) -> Tensor:
        """Spectral vorticity-tendency pattern number ``knot``, ``(L, M)`` complex, s-2.

        White in the total wavenumbers ``stir_lmin..stir_lmax`` (all ``m``), drawn from a
        generator seeded by ``(stir_seed, knot)`` alone, then confined to the Gaussian bands
        at +-``stir_lat`` on the grid and scaled to rms ``stir_rms_per_day / DAY`` there (grid
        rms weighted by the band mask). A pure function of the knot: runs resume exactly.
        """
        if knot in self._stir_cache:
            return self._stir_cache[knot]
        cfg = self.cfg
        seq = np.random.SeedSequence([cfg.stir_seed, 0x5717, knot % 2**32, knot // 2**32 + 1])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
        L = self.lmax
        coef = torch.complex(torch.randn((L, L), generator=gen, dtype=torch.float64),
                             torch.randn((L, L), generator=gen, dtype=torch.float64))
        coef = (coef * self.stir_band).to(self.cdtype)
        grid = self.to_grid(coef) * self.stir_mask
        w = torch.cos(torch.deg2rad(self.lat_deg)).to(self.dtype)[:, None] * self.stir_mask
        rms = ((grid**2 * w).sum() / (w.sum() * grid.shape[-1])).sqrt()
        spec = self.to_spec(grid * (cfg.stir_rms_per_day / DAY / rms)) * self.tril
        spec[0] = 0.0  # the l = 0 (global mean) vorticity must stay zero
        if len(self._stir_cache) > 3:
            self._stir_cache.pop(min(self._stir_cache))
        self._stir_cache[knot] = spec
        return spec

    def stirring(self, seconds: float) -> Tensor:
        """The stochastic vorticity forcing at model time ``seconds``, ``(L, M)`` complex:
        independent random patterns at knots every ``stir_knot_hours``, linear in time
        between them (Vallis, Gerber, Kushner and Cash 2004 stir a barotropic model alike to
        stand for the baroclinic eddies a one-layer model cannot make)."""
        x = seconds / (self.cfg.stir_knot_hours * 3600.0)
        k = math.floor(x)
        a = x - k
        return (1 - a) * self.stir_pattern(k) + a * self.stir_pattern(k + 1)

    # -- tendencies
    def tendency(self, spec: Tensor, seconds: float) -> Tensor:
        """Explicit spectral tendencies of (phi, zeta, delta, q): Eqs. (1)-(4) without ``P``
        and without the linear gravity-wave terms ``-Phi_0 delta`` and ``-lap phi`` (Eq. 5),
        which :func:`semi_implicit_update` treats implicitly.

        ``spec``: ``(B, 4, L, M)``; returns the same shape.
        """
        g = self.to_grid(spec[:, [0, 1, 3]])  # phi, zeta, q
        phi, zeta, q = g[:, 0], g[:, 1], g[:, 2]
        uv = self.winds(spec[:, 1:3])
        flux = uv * (zeta + self.coriolis)[:, None]
        if self.forcing:
            # k x F with F = -k V: (-F_v, F_u) = (k v, -k u)
            flux = flux + self.k_drag * torch.stack([uv[:, 1], -uv[:, 0]], 1)
        vecs = torch.stack([flux, uv * phi[:, None], uv * q[:, None]], 1)  # (B, 3, 2, ...)
        cd = self.vort_div(vecs)  # (B, 3, 2, L, M): [curl, div]
        energy = phi + GRAVITY * self.orography + 0.5 * (uv**2).sum(1)
        scalars = [energy]
        if self.forcing:
            h_eq = self.equilibrium(seconds)
            relax = (GRAVITY * (h_eq - self.orography) - phi) / (self.cfg.tau_rad_days * DAY)
            scalars.append(relax.expand_as(phi))
        ss = self.to_spec(torch.stack(scalars, 1))
        dphi = -cd[:, 1, 1]
        if self.forcing:
            dphi = dphi + ss[:, 1]
        dzeta = -cd[:, 0, 1]
        if self.forcing and self.cfg.stir_rms_per_day > 0:
            dzeta = dzeta + self.stirring(seconds)
        ddelta = cd[:, 0, 0] - self.lap * ss[:, 0]
        dq = -cd[:, 2, 1]
        # the linear gravity-wave terms are treated implicitly: remove them here (Eq. 5)
        phi0 = GRAVITY * self.cfg.reference_depth
        dphi = dphi + phi0 * spec[:, 2]
        ddelta = ddelta + self.lap * spec[:, 0]
        return torch.stack([dphi, dzeta, ddelta, dq], 1) * self.tril

    def step(self, state: SWState) -> SWState:
        """One semi-implicit AB3 step + hyperdiffusion + tracer physics; a new state."""
        dt = self.cfg.dt_seconds
        tend = self.tendency(state.spec, state.seconds)
        hist = state.history
        if len(hist) == 0:
            incr = tend
        elif len(hist) == 1:
            incr = 1.5 * tend - 0.5 * hist[0]
        else:
            incr = (23.0 * tend - 16.0 * hist[0] + 5.0 * hist[1]) / 12.0
        spec = semi_implicit_update(state.spec, incr, self.lap, GRAVITY * self.cfg.reference_depth,
                                    dt) * self.hyperdiff
        if self.forcing:
            g = self.to_grid(spec[:, [0, 3]])
            height = g[:, 0] / GRAVITY + self.orography
            q = g[:, 1]
            dq = tracer_physics(q, height, self.land, dt, self.cfg) - q
            spec = spec.clone()
            spec[:, 3] = spec[:, 3] + self.to_spec(dq) * self.tril
        return SWState(spec, state.seconds + dt, [tend, *hist[:1]])

    # -- diagnostics and I/O helpers
    def grid_fields(self, spec: Tensor) -> Tensor:
        """``(B, 4, L, M)`` -> ``(B, 4, nlat, nlon)`` grid (height = free surface m, u, v,
        tracer clipped at 0), latitudes north to south."""
        g = self.to_grid(spec[:, [0, 3]])
        uv = self.winds(spec[:, 1:3])
        height = g[:, 0] / GRAVITY + self.orography
        return torch.stack([height, uv[:, 0], uv[:, 1], g[:, 1].clamp_min(0)], 1)

    def initial_state(self, seconds: float, generator: torch.Generator,
                      noise_m: float = 1.0) -> SWState:
        """Rest state at ``h + h_s = h_eq(t)`` plus seeded white height noise (``noise_m`` rms,
        then truncated), tracer at 0.5 q_sat. Shape ``(1, 4, L, M)``."""
        h_eq = self.equilibrium(seconds).to(torch.float64)
        noise = torch.randn(h_eq.shape, generator=generator, dtype=torch.float64) * noise_m
        phi = GRAVITY * (h_eq + noise - self.orography.double())
        q = 0.5 * saturation(h_eq, self.cfg)
        grid = torch.stack([phi, torch.zeros_like(phi), torch.zeros_like(phi), q])[None]
        spec = self.to_spec(grid.to(self.dtype)) * self.tril
        return SWState(spec, seconds)

    def perturb(self, state: SWState, generator: torch.Generator, height_m: float) -> SWState:
        """Add white height noise of rms ``height_m`` (grid) to each member, spectrally
        truncated; the AB history is kept (a tiny perturbation of the same trajectory)."""
        b = state.spec.shape[0]
        noise = torch.randn((b, self.cfg.nlat, self.cfg.nlon), generator=generator,
                            dtype=torch.float64).to(self.dtype) * (GRAVITY * height_m)
        spec = state.spec.clone()
        spec[:, 0] = spec[:, 0] + self.to_spec(noise) * self.tril
        return SWState(spec, state.seconds, [h.clone() for h in state.history])


def synthesize(spec: Tensor, lat_deg: np.ndarray, nlon: int, lon0_deg: float = 0.0) -> Tensor:
    """Evaluate real spherical-harmonic coefficients at latitudes ``lat_deg`` and ``nlon``
    equally spaced longitudes from ``lon0_deg`` (the inverse transform of torch-harmonics,
    ortho norm, no Condon-Shortley phase, at arbitrary latitudes and a shifted longitude
    origin: coefficient ``m`` is multiplied by ``exp(i m lon0)``).

    ``spec``: ``(..., L, M)`` complex; returns ``(..., len(lat_deg), nlon)`` real. ``nlon`` must
    be at least ``2 M - 1`` for exact evaluation.
    """
    L, M = spec.shape[-2:]
    if nlon < 2 * M - 1:
        raise ValueError(f"nlon = {nlon} too small to evaluate {M} zonal wavenumbers")
    colat = torch.as_tensor(np.deg2rad(90.0 - np.asarray(lat_deg, dtype=np.float64)))
    pct = legpoly(M, L, torch.cos(colat), norm="ortho", inverse=True, csphase=False)  # (M, L, K)
    rdt = spec.real.dtype
    pct = pct.to(rdt)
    re = torch.einsum("...lm,mlk->...km", spec.real, pct)
    im = torch.einsum("...lm,mlk->...km", spec.imag, pct)
    coef = torch.complex(re, im)
    if lon0_deg != 0.0:
        m = torch.arange(M, dtype=rdt)
        coef = coef * torch.polar(torch.ones_like(m), m * math.radians(lon0_deg))
    return torch.fft.irfft(coef, n=nlon, dim=-1, norm="forward")
