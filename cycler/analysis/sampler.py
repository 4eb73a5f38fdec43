"""Zero-shot posterior sampling: Algorithm 1 of the paper (stochastic Heun sampler with
likelihood guidance), as one pure function, :func:`sample_posterior`.

Conventions (DESIGN.md; Karras et al. 2022): ``sigma(t) = t``, ``x_t = x_0 + t n``, the
denoiser ``D(x; t)`` predicts ``x_0``, the prior score is ``(D - x) / t^2`` and the
probability-flow drift ``d = (x - D) / t`` (paper Eq. 7). Guidance (Algorithm 1 lines 9-11,
14-16) is written once, in :func:`posterior_drift`::

    d_pos = d_prior - lambda_g * t * s_l,     s_l = grad_x sum_j lambda_j log p_j(y_j | x)

where each ``log p_j(y_j | x_t)`` is the Eq. 13 approximation evaluated by a
:class:`~diffda.core.protocols.LikelihoodTerm` at ``x0 = D(x_t; t)`` (its factor 1/2 is part
of the term: ``-||y - M(x0)||^2 / (2 (Sigma_y + t^2 Gamma))``), and the sum over terms with
their weights ``lambda_j`` is the composite likelihood of Eq. 14. The gradient is a
vector-Jacobian product through ``D`` (autograd). Since ``-t s_l`` is a drift in ``dt`` with
``dt < 0``, a positive log-likelihood gradient moves the sample *towards* the observations.

The sampler knows nothing of which observations exist: it receives a denoiser and a list of
terms. All members run in one batch; every random draw of member ``m`` comes from
``generators[m]``, so a member's sample does not depend on the ensemble size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from diffda.core.config import require
from diffda.core.execution import SERIAL, Execution
from diffda.core.profiling import clock
from diffda.core.protocols import Denoiser, LikelihoodTerm
from diffda.core.rng import randn_members
from torch import Tensor
from tqdm.auto import tqdm


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """Parameters of Algorithm 1 (names as in Karras et al. 2022 and the paper).

    The default: 20 steps (39 network evaluations), no churn, ``lambda_g = 1``, guidance at
    predictor and corrector, capped per member at the prior drift (``max_guidance_ratio =
    1``). Against the prototype's configuration (NOTES.md: 18 steps, ``S_churn = 2``, no
    cap) it lowered the super-resolution and station-task errors and brought the spread-skill
    ratio from 1.2-1.45 to 1.1-1.3 on four held-out times, within the 30 s budget of a
    16-member analysis (README, "The diffusion prior and the posterior sampler").
    """

    num_steps: int = 20  # N: number of noise levels t_0 > ... > t_{N-1} > t_N = 0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float = 0.0  # total churn; gamma_i = min(S_churn / N, sqrt(2) - 1)
    s_tmin: float = 0.0  # churn only for t_i in [S_tmin, S_tmax]
    s_tmax: float = math.inf
    s_noise: float = 1.0  # std of the churn noise (Karras et al. Alg. 2)
    guidance_scale: float = 1.0  # lambda_g
    # Algorithm 1 line 15, "re-evaluate likelihood gradient (optional)": true re-evaluates
    # it at the corrector's point (a second vector-Jacobian product); "reuse" skips line 15,
    # so line 16 takes the predictor's s_l (the corrector's network call needs no graph);
    # false: no guidance in the corrector (its drift is the prior's alone)
    guide_corrector: bool | Literal["reuse"] = True
    clip_grad_norm: float | None = None  # per-member L2 cap on s_l (paper Sec. 3.4)
    max_guidance_ratio: float | None = 1.0  # per-member cap on |lambda_g t s_l| / |d_prior|

    def __post_init__(self) -> None:
        require(self.num_steps >= 1, "num_steps", self.num_steps, "must be >= 1")
        require(0 < self.sigma_min < self.sigma_max, "sigma_min", self.sigma_min,
                f"must satisfy 0 < sigma_min < sigma_max = {self.sigma_max}")
        require(self.rho > 0, "rho", self.rho, "must be positive")
        require(self.s_churn >= 0, "s_churn", self.s_churn, "must be >= 0")
        require(self.s_tmin <= self.s_tmax, "s_tmin", self.s_tmin,
                f"must be <= s_tmax = {self.s_tmax}")
        require(self.s_noise > 0, "s_noise", self.s_noise, "must be positive")
        require(self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip_grad_norm",
                self.clip_grad_norm, "must be positive (or absent for no clipping)")
        require(self.max_guidance_ratio is None or self.max_guidance_ratio > 0,
                "max_guidance_ratio", self.max_guidance_ratio, "must be positive (or absent)")
        require(self.guide_corrector in (True, False, "reuse"), "guide_corrector",
                self.guide_corrector, 'expected true, false or "reuse"')

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: 2 per step but 1 for the last (``t_N = 0``)."""
        return 2 * self.num_steps - 1


@dataclass(frozen=True)
class StepDiagnostics:
    """What one predictor or corrector evaluation did (means/maxima over members).

    ``guidance_ratio`` is ``|lambda_g t s_l| / |d_prior|`` (L2 norms per member): above ~1
    the observations, not the prior, drive the step (NOTES.md: a diverging run showed 23).
    """

    step: int
    stage: str  # "predictor" or "corrector"
    sigma: float
    guidance_ratio_mean: float
    guidance_ratio_max: float
    log_likelihood_mean: float  # sum_j lambda_j log p_j at this step, mean over members
    clipped_fraction: float  # fraction of members whose guidance was clipped
    guidance_ratio: tuple[float, ...] = ()  # per member
    clipped: tuple[bool, ...] = ()  # per member


def edm_time_steps(
    num_steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``(N + 1,)`` noise levels, Karras et al. Eq. 5 (Algorithm 1 line 1):
    ``t_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho`` for ``i < N``,
    ``t_N = 0``."""
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t = (a + i / denom * (b - a)) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)]).to(dtype)


def churn_gamma(t: float, num_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """``gamma_i = min(S_churn / N, sqrt(2) - 1)`` if ``t_i`` in ``[S_tmin, S_tmax]`` else 0
    (Algorithm 1 line 5)."""
    return min(s_churn / num_steps, math.sqrt(2.0) - 1.0) if s_tmin <= t <= s_tmax else 0.0


def composite_log_likelihood(terms: Sequence[LikelihoodTerm], x0: Tensor, sigma: Tensor) -> Tensor:
    """``sum_j lambda_j log p_j(y_j | x0)`` per member, ``(member,)`` (paper Eq. 14)."""
    total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    for term in terms:
        ll = term.log_likelihood(x0, sigma)
        if ll.shape != (x0.shape[0],):
            raise ValueError(
                f"{type(term).__name__}.log_likelihood returned shape {tuple(ll.shape)}, "
                f"expected one value per member ({x0.shape[0]},)"
            )
        total = total + term.weight * ll
    return total


class MemberBlocks:
    """Likelihood terms per block of members, as one term: block ``b`` (members ``b m`` to
    ``(b + 1) m - 1``) is guided by its own terms (e.g. the observations of its own cycle),
    so that several independent analyses share one batch of network calls. Its
    ``log_likelihood`` is each block's composite (Eq. 14, weights included); its weight 1."""

    weight = 1.0

    def __init__(self, blocks: Sequence[Sequence[LikelihoodTerm]], members: int) -> None:
        self.blocks = [list(b) for b in blocks]
        self.members = int(members)

    def log_likelihood(self, x0: Tensor, sigma: Tensor) -> Tensor:
        m = self.members
        if x0.shape[0] != m * len(self.blocks):
            raise ValueError(f"{len(self.blocks)} blocks of {m} members need "
                             f"{m * len(self.blocks)} members, got {x0.shape[0]}")
        return torch.cat([composite_log_likelihood(terms, x0[b * m:(b + 1) * m], sigma)
                          for b, terms in enumerate(self.blocks)])


def denoise_with_likelihood_score(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    terms: Sequence[LikelihoodTerm],
    to_observed: Callable[[Tensor], Tensor] | None = None,
    execution: Execution = SERIAL,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``D(x; sigma)``, the likelihood score ``s_l = grad_x sum_j lambda_j log p_j(y_j | D(x))``
    (Eq. 13-14; a vector-Jacobian product through ``D``) and the composite log-likelihood.

    ``x``: ``(member, *shape)``; ``sigma``: 0-d tensor. Without terms, ``D`` only (no graph).
    ``to_observed`` maps ``D`` to the space the terms expect (e.g. physical units).
    ``execution``: the network's precision and, on a CPU, the member chunks evaluated in
    parallel threads (:class:`~diffda.core.execution.Execution`); the terms see all members
    at once, in ``x``'s dtype. The gradient is taken in two stages, ``g = dL/dD`` through
    the terms, then ``g^T dD/dx`` through the network per chunk: the same chain rule as one
    backward pass.
    """
    if not terms:
        with torch.no_grad(), clock.section("denoiser"):
            parts = execution.map_members(lambda xc: denoiser(xc, sigma).to(x.dtype), x)
        return torch.cat(parts) if len(parts) > 1 else parts[0], None, None

    def forward(xc: Tensor) -> tuple[Tensor, Tensor]:
        xg = xc.detach().requires_grad_(True)
        return xg, denoiser(xg, sigma).to(x.dtype)

    def vjp(xg: Tensor, d: Tensor, g: Tensor) -> Tensor:
        (s,) = torch.autograd.grad(d, xg, g)
        return s

    with torch.enable_grad():
        with clock.section("denoiser"):
            graphs = execution.map_members(forward, x)
        d = torch.cat([dc.detach() for _, dc in graphs]).requires_grad_(True)
        x0 = to_observed(d) if to_observed is not None else d
        ll = composite_log_likelihood(terms, x0, sigma)
        (g,) = torch.autograd.grad(ll.sum(), d)  # members are independent: sum = per member
        with clock.section("denoiser_vjp"):
            sizes = [len(dc) for _, dc in graphs]
            s_l = execution.each(lambda item: vjp(*item),
                                 [(xg, dc, gc) for (xg, dc), gc
                                  in zip(graphs, g.split(sizes), strict=True)])
    return d.detach(), torch.cat(s_l) if len(s_l) > 1 else s_l[0], ll.detach()


def _norms(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


def posterior_drift(
    x: Tensor,
    d: Tensor,
    s_l: Tensor | None,
    sigma: Tensor,
    config: SamplerConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """``d_pos = (x - D) / t - lambda_g t s_l`` (Algorithm 1 lines 9-11 and 14-16), with the
    optional clipping of ``s_l`` (L2 norm per member) and of the guidance/prior drift ratio.

    Returns ``(d_pos, ratio, clipped)``: the drift ``(member, *shape)``, the per-member ratio
    ``|lambda_g t s_l| / |d_prior|`` before clipping, and a per-member clipped flag.
    """
    d_prior = (x - d) / sigma  # Eq. 7
    b = x.shape[0]
    if s_l is None:
        zeros = torch.zeros(b, dtype=x.dtype, device=x.device)
        return d_prior, zeros, zeros.bool()
    clipped = torch.zeros(b, dtype=torch.bool, device=x.device)
    if config.clip_grad_norm is not None:
        n = _norms(s_l)
        factor = (config.clip_grad_norm / n.clamp_min(1e-30)).clamp(max=1.0)
        clipped |= factor < 1.0
        s_l = s_l * factor.reshape(-1, *[1] * (x.ndim - 1))
    guidance = config.guidance_scale * sigma * s_l
    prior_norm = _norms(d_prior).clamp_min(1e-30)
    ratio = _norms(guidance) / prior_norm
    if config.max_guidance_ratio is not None:
        factor = (config.max_guidance_ratio / ratio.clamp_min(1e-30)).clamp(max=1.0)
        clipped |= factor < 1.0
        guidance = guidance * factor.reshape(-1, *[1] * (x.ndim - 1))
    return d_prior - guidance, ratio, clipped


def _record(
    diagnostics: list[StepDiagnostics] | None, step: int, stage: str, sigma: Tensor,
    ratio: Tensor, ll: Tensor | None, clipped: Tensor,
) -> None:
    if diagnostics is None:
        return
    diagnostics.append(StepDiagnostics(
        step=step, stage=stage, sigma=float(sigma),
        guidance_ratio_mean=float(ratio.mean()), guidance_ratio_max=float(ratio.max()),
        log_likelihood_mean=float(ll.mean()) if ll is not None else 0.0,
        clipped_fraction=float(clipped.float().mean()),
        guidance_ratio=tuple(ratio.tolist()), clipped=tuple(clipped.tolist()),
    ))


def sample_posterior(
    denoiser: Denoiser,
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    terms: Sequence[LikelihoodTerm] = (),
    config: SamplerConfig | None = None,
    *,
    to_observed: Callable[[Tensor], Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    execution: Execution = SERIAL,
    diagnostics: list[StepDiagnostics] | None = None,
    progress: bool = False,
) -> Tensor:
    """Algorithm 1: draw ``len(generators)`` samples of ``p(x | y_1..y_J)`` in one batch.

    Args:
        denoiser: ``D(x; sigma)``, ``(member, *shape), 0-d -> (member, *shape)``; it must treat
            members independently (no batch statistics).
        generators: one per member (:func:`diffda.core.rng.member_generators`); member ``m``
            draws its initial noise and churn noise from ``generators[m]`` only (on the
            generators' device, then moved to ``device``).
        shape: the state shape of one member, e.g. ``(var, lat, lon)``.
        terms: likelihood terms (Eq. 13), combined with their ``weight`` (Eq. 14). Empty:
            unconditional sampling (the EDM stochastic sampler).
        config: steps, churn, guidance scale, clipping.
        to_observed: applied to ``D`` before the terms (e.g. de-normalisation).
        dtype: the sampler's state (the network may run in a lower precision:
            ``execution``).
        device: where the state lives (default ``execution.device``); the denoiser and the
            terms must be there.
        execution: the network's device, precision and CPU member threads.
        diagnostics: if a list, one :class:`StepDiagnostics` is appended per evaluation.
        progress: show a tqdm bar over the steps.

    Returns:
        ``(member, *shape)`` samples in the denoiser's space.
    """
    config = config or SamplerConfig()
    device = execution.device if device is None else torch.device(device)
    shape = tuple(int(s) for s in shape)
    t_steps = edm_time_steps(config.num_steps, config.sigma_min, config.sigma_max, config.rho)
    n = config.num_steps

    def as_t(v: float) -> Tensor:  # a noise level as the 0-d tensor D and the terms receive
        return torch.tensor(float(v), dtype=dtype, device=device)

    gens = list(generators)
    if not gens:
        raise ValueError("sample_posterior needs one generator per member, got none")

    def noise() -> Tensor:  # drawn on the generators' device (CPU generators: the same
        # numbers on any device), then moved to ``device``
        return randn_members(gens, shape, dtype, gens[0].device).to(device)

    x = noise() * float(t_steps[0])  # line 3
    for i in tqdm(range(n), desc="posterior sampling", disable=not progress, leave=False):
        t_cur, t_next = float(t_steps[i]), float(t_steps[i + 1])
        gamma = churn_gamma(t_cur, n, config.s_churn, config.s_tmin, config.s_tmax)  # line 5
        t_hat = t_cur + gamma * t_cur  # line 6
        if gamma > 0:  # lines 7-8
            eps = noise() * config.s_noise
            x = x + math.sqrt(t_hat**2 - t_cur**2) * eps
        x = _heun_step(denoiser, x, t_hat, t_next, as_t, terms, config, to_observed,
                       lambda *a, i=i: _record(diagnostics, i, *a), execution)
    return x


def _heun_step(
    denoiser: Denoiser, x: Tensor, t_hat: float, t_next: float,
    as_t: Callable[[float], Tensor], terms: Sequence[LikelihoodTerm], config: SamplerConfig,
    to_observed: Callable[[Tensor], Tensor] | None, record: Callable[..., None],
    execution: Execution = SERIAL,
) -> Tensor:
    """Algorithm 1, lines 9-19: the guided Euler step from ``t_hat`` to ``t_next`` and, unless
    ``t_next = 0``, its second-order (Heun) correction."""
    s_hat = as_t(t_hat)
    d, s_l, ll = denoise_with_likelihood_score(denoiser, x, s_hat, terms, to_observed, execution)
    d_pred, ratio, clipped = posterior_drift(x, d, s_l, s_hat, config)  # lines 9-11
    record("predictor", s_hat, ratio, ll, clipped)
    x_pred = x + d_pred * (t_next - t_hat)  # line 12
    if t_next <= 0:
        return x_pred  # line 19
    s_next = as_t(t_next)  # lines 13-17
    reevaluate = config.guide_corrector is True
    d, s_corr, ll = denoise_with_likelihood_score(denoiser, x_pred, s_next,
                                                  terms if reevaluate else (), to_observed,
                                                  execution)
    if not reevaluate:  # line 15 skipped: line 16 with the predictor's s_l, or none
        s_corr = s_l if config.guide_corrector == "reuse" else None
    d_corr, ratio, clipped = posterior_drift(x_pred, d, s_corr, s_next, config)
    record("corrector", s_next, ratio, ll, clipped)
    return x + 0.5 * (d_pred + d_corr) * (t_next - t_hat)  # line 17


@dataclass(frozen=True)
class DiffusionAnalysis:
    """Algorithm 1 behind the :class:`~diffda.core.protocols.Analysis` seam.

    ``analyse(prior, observations, generators)``: ``prior`` a denoiser, ``observations`` the
    likelihood terms; returns ``(member, *shape)``.
    """

    shape: tuple[int, ...]
    config: SamplerConfig = SamplerConfig()
    to_observed: Callable[[Tensor], Tensor] | None = None
    dtype: torch.dtype = torch.float32
    execution: Execution = SERIAL

    def analyse(
        self,
        prior: Denoiser,
        observations: Sequence[LikelihoodTerm],
        generators: Sequence[torch.Generator],
        *,
        diagnostics: list[StepDiagnostics] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """``(member, *shape)`` samples of the posterior, in the denoiser's space; one
        :class:`StepDiagnostics` per network evaluation appended to ``diagnostics``."""
        return sample_posterior(
            prior, generators, self.shape, observations, self.config,
            to_observed=self.to_observed, dtype=self.dtype, execution=self.execution,
            diagnostics=diagnostics, progress=progress,
        )
