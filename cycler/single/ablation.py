"""The ``(Sigma_y, Gamma)`` ablation of the paper's Table 1 on the low-resolution task:
``sample-lr`` once per pair, the same seeds for every pair."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import xarray as xr
from diffda.core.grid import coarsen_to
from diffda.cycler.metrics import score
from diffda.cycler.single.experiments import (
    ExperimentConfig,
    SamplerDivergedError,
    run_experiment,
)
from diffda.cycler.single.truth import bicubic_upsample, truth_at
from diffda.emulators.prior.model import DiffusionPrior
from diffda.observations.likelihood import DEFAULT_ERROR_MODELS, ErrorModel

#: Table 1 of the paper, ``(Sigma_y, Gamma)`` as written there, i.e. for Eq. 13 *without*
#: the factor 1/2; :func:`paper_to_project` converts them to this project's Eq. 13.
TABLE1_PAPER: tuple[tuple[float, float], ...] = (
    (1e-1, 1e-2), (1e-1, 1e-3), (1e-1, 5e-3), (5e-1, 1e-3), (5e-1, 5e-3), (5e-2, 5e-3),
)


def paper_to_project(sigma_y: float, gamma: float) -> tuple[float, float]:
    """The paper's ``(Sigma_y, Gamma)`` in this project's convention.

    The paper's Eq. 13 is ``-||r||^2 / (Sigma_y + t^2 Gamma)``; here it is
    ``-||r||^2 / (2 (Sigma_y' + t^2 Gamma'))`` (:mod:`diffda.observations.likelihood`), so
    the same guidance needs ``Sigma_y' = Sigma_y / 2`` and ``Gamma' = Gamma / 2``.
    """
    return sigma_y / 2.0, gamma / 2.0


def default_ablation_grid() -> tuple[tuple[float, float], ...]:
    """Table 1's six pairs in this project's convention, then the project default for the
    low-resolution term (:data:`~diffda.observations.likelihood.DEFAULT_ERROR_MODELS`)."""
    lr = DEFAULT_ERROR_MODELS["low_resolution"]
    return (*(paper_to_project(s, g) for s, g in TABLE1_PAPER), (lr.sigma_y, lr.gamma))


@dataclasses.dataclass
class AblationResult:
    """Rows of the ``(Sigma_y, Gamma)`` ablation (one per pair) on the LR task."""

    time: str
    index: int
    members: int
    variables: tuple[str, ...]
    rows: list[dict[str, Any]]
    rmse_bicubic: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {"experiment": "ablation", "time": self.time, "index": self.index,
                "members": self.members, "variables": list(self.variables),
                "rmse_bicubic": self.rmse_bicubic, "rows": self.rows}


def run_ablation(
    prior: DiffusionPrior, ds: xr.Dataset, index: int,
    pairs: Sequence[tuple[float, float]] | None = None,
    config: ExperimentConfig | None = None, source: str = "dataset", progress: bool = False,
) -> AblationResult:
    """The LR experiment for each ``(Sigma_y, Gamma)`` in ``pairs`` (default
    :func:`default_ablation_grid`), the same seeds for every pair. A pair whose sampler
    diverges gets a row with ``diverged: true`` and no scores (Table 1 keeps such rows)."""
    config = config or ExperimentConfig()
    if config.lr_noise:
        raise ValueError("ablation: lr_noise would draw different observations for each "
                         "Sigma_y; run sample-lr with --lr-noise for each pair instead")
    pairs = tuple(pairs or default_ablation_grid())
    truth = truth_at(ds, prior.variables, index, prior.grid, source)
    lr = coarsen_to(truth.state, config.lr_grid)
    bicubic = bicubic_upsample(lr, truth.grid, prior.variables)
    b = score(bicubic[None], truth.state, prior.variables)
    rows = []
    for sigma_y, gamma in pairs:
        err = ErrorModel(sigma_y=sigma_y, gamma=gamma)
        row: dict[str, Any] = {"sigma_y": sigma_y, "gamma": gamma,
                               "sigma_y_paper": 2.0 * sigma_y, "gamma_paper": 2.0 * gamma}
        cfg = dataclasses.replace(config, low_resolution=err)
        try:
            r = run_experiment("sample-lr", prior, ds, index, cfg, source=source,
                               progress=progress)
        except SamplerDivergedError as e:
            row.update({"diverged": True, "message": str(e)})
            rows.append(row)
            continue
        row.update({"diverged": False, "seconds_per_analysis": round(r.seconds_per_analysis, 3),
                    "guidance_ratio_max": round(r.guidance_ratio_max, 4)})
        for v in prior.variables:
            s = r.scores[v]
            row[v] = {k: s[k] for k in ("rmse", "spread", "spread_skill", "crps",
                                        "rmse_member_mean", "rmse_member_std")}
            row[v]["rmse_ratio_bicubic"] = s["rmse"] / b[v]["rmse"]
        rows.append(row)
    return AblationResult(str(truth.time), truth.index, config.members, prior.variables, rows,
                          {v: b[v]["rmse"] for v in prior.variables})
