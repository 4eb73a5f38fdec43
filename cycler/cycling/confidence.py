"""Comparing modes with confidence: means over cases with bootstrap intervals, and paired
differences between modes.

Input: the ``metrics.jsonl`` records of one or more experiments (each a set of cases,
:mod:`.cases`) or single runs (one case each). For every mode, variable and lead, the
mean over cases of the latitude-weighted RMSE of the ensemble mean, the spread, the
spread-skill ratio ``sqrt((M + 1) / M) mean(spread) / mean(rmse)`` and the CRPS; the RMSE
with a 95 % interval; the steady part (leads after ``steady_from_days`` of spin-up) as one
number per case, its mean over cases and interval; and, for every pair of modes, the mean
over cases of the paired difference of their steady RMSE with its interval. The modes of
one case share the truth, the observations and (the diffusion modes) the random numbers
of the sampler, so paired differences are far less noisy than the difference of two means.

Intervals: percentile bootstrap over cases (``scipy.stats.bootstrap``, 9999 resamples,
seeded): a case is the independent unit, cycles within a case are not. With fewer than
two cases an interval is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from diffda.cycler.analysis.forecast_error import (
    Moments,
    PairMoments,
    correlation_length,
    error_correlation,
    fit_from_moments,
)
from scipy import stats

#: The scores averaged over cases (per lead).
SCORES = ("rmse", "spread", "crps")
N_RESAMPLES = 9999


def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the mean of ``values`` (one per case); ``None`` with
    fewer than two values; ``(x, x)`` when every value is ``x``."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2 or not np.all(np.isfinite(x)):
        return None
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES,
                          method="percentile", random_state=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def case_arrays(cases: Sequence[Sequence[Mapping[str, Any]]]
                ) -> tuple[list[str], list[str], list[float], dict[str, np.ndarray],
                           dict[str, int]]:
    """Records of several cases -> ``(modes, variables, leads_hours, arrays, members)`` with
    ``arrays["<mode>/<var>/<score>"]`` of shape ``(case, lead)`` and ``members`` per mode.
    Every case must have the same modes, variables and leads (the same experiment from
    different start times)."""
    first = cases[0]
    modes = list(dict.fromkeys(r["mode"] for r in first))
    variables = [k for k in first[0] if isinstance(first[0][k], dict) and "rmse" in first[0][k]]
    leads = sorted({float(r["lead_hours"]) for r in first})
    members = {r["mode"]: int(r["members"]) for r in first}
    arrays: dict[str, np.ndarray] = {}
    for c, records in enumerate(cases):
        got = {(r["mode"], float(r["lead_hours"])): r for r in records}
        want = {(m, t) for m in modes for t in leads}
        if set(got) != want:
            missing = sorted(want - set(got))[:3]
            raise ValueError(f"case {c}: its records differ from the first case's (missing "
                             f"{missing}; is the case complete? resume it)")
        for m in modes:
            for v in variables:
                for s in SCORES:
                    key = f"{m}/{v}/{s}"
                    arr = arrays.setdefault(key, np.full((len(cases), len(leads)), np.nan))
                    arr[c] = [got[(m, t)][v][s] for t in leads]
    return modes, variables, leads, arrays, members


def _spread_skill(rmse: np.ndarray, spread: np.ndarray, members: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return math.sqrt((members + 1) / members) * spread / rmse


def _mode_summary(arrays: Mapping[str, np.ndarray], mode: str, variable: str, steady: np.ndarray,
                  members: int, seed: int) -> dict[str, Any]:
    rmse = arrays[f"{mode}/{variable}/rmse"]
    spread = arrays[f"{mode}/{variable}/spread"]
    crps = arrays[f"{mode}/{variable}/crps"]
    mean_rmse, mean_spread = rmse.mean(0), spread.mean(0)
    per_case_steady = rmse[:, steady].mean(1) if steady.any() else np.full(len(rmse), np.nan)
    return {
        "rmse": mean_rmse.tolist(),
        "rmse_ci95": [bootstrap_mean_ci(rmse[:, j], seed) for j in range(rmse.shape[1])],
        "spread": mean_spread.tolist(),
        "spread_skill": _spread_skill(mean_rmse, mean_spread, members).tolist(),
        "crps": crps.mean(0).tolist(),
        "steady_rmse": float(per_case_steady.mean()),
        "steady_rmse_ci95": bootstrap_mean_ci(per_case_steady, seed),
        "steady_spread_skill": float(_spread_skill(
            rmse[:, steady].mean(), spread[:, steady].mean(), members)) if steady.any()
        else None,
        "steady_rmse_by_case": per_case_steady.tolist(),
    }


def compare_cases(cases: Sequence[Sequence[Mapping[str, Any]]], steady_from_hours: float,
                  seed: int = 0) -> dict[str, Any]:
    """The comparison of the modes over ``cases`` (the records of each case); see the module
    docstring. JSON-ready: ``n_cases``, ``leads_hours``, ``steady_from_hours``,
    ``modes.<mode>.<variable>`` and ``paired.<modeA>-<modeB>.<variable>``."""
    if not cases:
        raise ValueError("compare_cases: no cases")
    modes, variables, leads, arrays, members = case_arrays(cases)
    steady = np.asarray(leads) > steady_from_hours
    out: dict[str, Any] = {
        "n_cases": len(cases), "leads_hours": leads, "steady_from_hours": steady_from_hours,
        "bootstrap": {"method": "percentile", "resamples": N_RESAMPLES, "seed": seed,
                      "unit": "case"},
        "modes": {m: {v: _mode_summary(arrays, m, v, steady, members[m], seed)
                      for v in variables}
                  for m in modes},
        "paired": {},
    }
    out["calibration"] = calibration_summary(cases, steady_from_hours)
    out["guidance"] = guidance_summary(cases, steady_from_hours)
    for i, a in enumerate(modes):
        for b in modes[i + 1:]:
            pair = {}
            for v in variables:
                diff = (np.asarray(out["modes"][a][v]["steady_rmse_by_case"])
                        - np.asarray(out["modes"][b][v]["steady_rmse_by_case"]))
                by_lead = arrays[f"{a}/{v}/rmse"] - arrays[f"{b}/{v}/rmse"]
                pair[v] = {"steady_diff": float(diff.mean()),
                           "steady_diff_ci95": bootstrap_mean_ci(diff, seed),
                           "rmse_diff": by_lead.mean(0).tolist(),
                           "rmse_diff_ci95": [bootstrap_mean_ci(by_lead[:, j], seed)
                                              for j in range(by_lead.shape[1])]}
            out["paired"][f"{a}-{b}"] = pair
    return out


def guidance_summary(cases: Sequence[Sequence[Mapping[str, Any]]],
                     steady_from_hours: float) -> dict[str, dict[str, float]]:
    """How often the sampler's guidance cap (``max_guidance_ratio``) bound, per diffusion
    mode over the steady cycles of every case: ``capped_share`` (the share of guided
    evaluations, steps x members, whose guidance was capped; runs that record it),
    ``cycles_capped`` (the share of cycles with any capped evaluation) and the median over
    cycles of the largest guidance/prior drift ratio (``guidance_ratio_max_median``)."""
    acc: dict[str, dict[str, list[float]]] = {}
    for records in cases:
        for r in records:
            method = r.get("method", {})
            if float(r["lead_hours"]) <= steady_from_hours or "clipped_fraction_max" not in method:
                continue
            a = acc.setdefault(r["mode"], {"any": [], "share": [], "ratio": []})
            a["any"].append(float(method["clipped_fraction_max"] > 0))
            a["ratio"].append(float(method["guidance_ratio_max"]))
            if "clipped_share" in method:
                a["share"].append(float(method["clipped_share"]))
    out: dict[str, dict[str, float]] = {}
    for mode, a in acc.items():
        out[mode] = {"cycles": len(a["any"]), "cycles_capped": float(np.mean(a["any"])),
                     "guidance_ratio_max_median": float(np.median(a["ratio"]))}
        if a["share"]:
            out[mode]["capped_share"] = float(np.mean(a["share"]))
    return out


def calibration_summary(cases: Sequence[Sequence[Mapping[str, Any]]],
                        steady_from_hours: float) -> dict[str, Any]:
    """Over every case and steady cycle, per mode and variable: the rank histograms
    (relative frequencies at grid and station cells) and the mean innovation statistics at
    the stations with the Desroziers ratios ``E[d_oa d_ob] / R`` (1 when the observation
    error is what the term assumes) and ``E[d_ob^2] / (H B H^T + R)`` (1 when the forecast
    ensemble's spread is its error; ensemble forecasts only; ``omf_var_ratio_term`` against
    the variance the ensemble mode's term assumes, the inflated one), and the forecast's
    ``(alpha, beta)`` (normalised) its pooled innovation moments imply
    (:mod:`diffda.cycler.analysis.forecast_error`)."""
    ranks: dict[tuple[str, str, str], np.ndarray] = {}
    innov: dict[tuple[str, str], dict[str, list[float]]] = {}
    moments: dict[tuple[str, str], Moments] = {}
    pairs: dict[tuple[str, str], PairMoments] = {}
    for records in cases:
        for r in records:
            if float(r["lead_hours"]) <= steady_from_hours:
                continue
            for v, h in r.get("rank_histogram", {}).items():
                for where, counts in h.items():
                    key = (r["mode"], v, where)
                    ranks[key] = ranks.get(key, 0) + np.asarray(counts, dtype=np.float64)
            for v, s in r.get("innovations", {}).items():
                acc = innov.setdefault((r["mode"], v), {})
                for name, value in s.items():
                    if name == "forecast_moments":
                        pooled = moments.get((r["mode"], v), Moments.zero())
                        moments[(r["mode"], v)] = pooled + Moments(**value)
                    elif name == "forecast_pairs":
                        total = pairs.get((r["mode"], v), PairMoments.zero())
                        pairs[(r["mode"], v)] = total + PairMoments.from_dict(value)
                    elif isinstance(value, (int, float)):
                        acc.setdefault(name, []).append(float(value))
    out: dict[str, Any] = {}
    for (mode, v, where), counts in ranks.items():
        row = out.setdefault(mode, {}).setdefault(v, {})
        row.setdefault("rank_histogram", {})[where] = (counts / counts.sum()).tolist()
    for (mode, v), acc in innov.items():
        mean = {name: float(np.mean(values)) for name, values in acc.items() if name != "n"}
        if "desroziers_r" in mean and mean["r_assumed"] > 0:
            mean["desroziers_r_ratio"] = mean["desroziers_r"] / mean["r_assumed"]
        if "hbh_ensemble" in mean and "omf_var" in mean:
            mean["omf_var_ratio"] = mean["omf_var"] / (mean["hbh_ensemble"] + mean["r_assumed"])
        if "hbh_term" in mean and "omf_var" in mean:
            mean["omf_var_ratio_term"] = mean["omf_var"] / (mean["hbh_term"] + mean["r_assumed"])
        if (mode, v) in moments:  # the forecast's error model its innovations imply
            try:
                fit = fit_from_moments(moments[(mode, v)])
                mean.update(forecast_alpha=fit.alpha, forecast_beta=fit.beta)
                if (mode, v) in pairs:  # its spatial correlation (Hollingsworth-Lonnberg)
                    d, rho, n = error_correlation(pairs[(mode, v)], fit)
                    mean["forecast_correlation_km"] = correlation_length(d, rho, n)
            except ValueError:
                pass
        out.setdefault(mode, {}).setdefault(v, {})["innovations"] = mean
    return out


def significant(ci: Sequence[float] | None) -> bool:
    """Whether a 95 % interval excludes zero."""
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def format_confidence(table: Mapping[str, Any], days: Sequence[float] = (1, 3, 5, 7)) -> str:
    """A text table: mean RMSE [95 % interval] per mode and variable at ``days`` and over the
    steady part, then the paired steady differences, ``*`` where the interval excludes 0."""
    leads = [h / 24 for h in table["leads_hours"]]
    cols = [(d, leads.index(d)) for d in days if d in leads]
    lines = [f"{table['n_cases']} cases; steady part: leads > "
             f"{table['steady_from_hours'] / 24:g} days; mean [95 % interval over cases]"]
    wm = max([15, *(len(m) + 1 for m in table["modes"])])
    wp = max([30, *(len(p) + 1 for p in table["paired"])])
    header = f"{'mode':<{wm}}{'variable':<9}" + "".join(f"{'day ' + format(d, 'g'):>24}"
                                                         for d, _ in cols) + f"{'steady':>24}"
    lines.append(header)

    def cell(x: float, ci: Sequence[float] | None) -> str:
        return f"{x:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else f"{x:.4g}"

    for mode, per_var in table["modes"].items():
        for v, s in per_var.items():
            row = "".join(f"{cell(s['rmse'][j], s['rmse_ci95'][j]):>24}" for _, j in cols)
            lines.append(f"{mode:<{wm}}{v:<9}{row}"
                         f"{cell(s['steady_rmse'], s['steady_rmse_ci95']):>24}")
    lines.append("paired steady RMSE differences (A - B; * : the interval excludes 0)")
    for pair, per_var in table["paired"].items():
        cells = [f"{v} {cell(s['steady_diff'], s['steady_diff_ci95'])}"
                 f"{'*' if significant(s['steady_diff_ci95']) else ' '}"
                 for v, s in per_var.items()]
        lines.append(f"  {pair:<{wp}}" + "  ".join(cells))
    guidance = table.get("guidance", {})
    if guidance:
        lines.append("guidance cap (steady cycles): cycles with a capped evaluation; share of "
                     "evaluations capped; median largest guidance/prior ratio")
        for mode, g in guidance.items():
            share = f"{g['capped_share']:.1%}" if "capped_share" in g else "-"
            lines.append(f"  {mode:<{wm}}{g['cycles_capped']:>7.0%}{share:>8}"
                         f"{g['guidance_ratio_max_median']:>8.3g}")
    return "\n".join(lines)


def plot_confidence(table: Mapping[str, Any], path: str | Path) -> Path:
    """RMSE of the ensemble mean by lead per mode, the mean over cases with its 95 % band,
    one panel per variable; the steady part shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from diffda.core.io import atomic_write_bytes
    from diffda.cycler.cycling.plots import mode_colour

    variables = list(next(iter(table["modes"].values())))
    days = np.asarray(table["leads_hours"]) / 24.0
    ncol = 2 if len(variables) > 1 else 1
    nrow = math.ceil(len(variables) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, 3.6 * nrow), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, v in zip(axes.ravel(), variables, strict=False):
        seen: dict[str, int] = {}
        for mode, per_var in table["modes"].items():
            s = per_var[v]
            base = mode.rsplit("/", 1)[-1]  # "<folder>/<mode>" of merged experiments
            colour, style = mode_colour(base), styles[seen.get(base, 0) % len(styles)]
            seen[base] = seen.get(base, 0) + 1
            ax.plot(days, s["rmse"], marker="o", ls=style, ms=3, color=colour, label=mode)
            ci = s["rmse_ci95"]
            if all(c is not None for c in ci):
                ax.fill_between(days, [c[0] for c in ci], [c[1] for c in ci],
                                color=colour, alpha=0.15, lw=0)
        ax.axvspan(table["steady_from_hours"] / 24.0, days.max(), color="0.93", zorder=0)
        ax.set_title(v)
        ax.set_xlabel("time since the first analysis's start (days)")
        ax.set_ylabel("RMSE of the ensemble mean")
    for ax in axes.ravel()[len(variables):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"RMSE by lead, mean over {table['n_cases']} cases with 95 % intervals "
                 "(shaded: steady part)")
    fig.tight_layout()
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
