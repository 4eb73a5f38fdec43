"""Figures 1 and 2 of Hodyss and Morzfeld ("Diffusion models for data assimilation"), redone,
with the extended likelihood's forecast made both ways: deterministically from the
posterior mean, and with the model's random draw as the paper does (its Eq. 73).

``make_figures(out_dir)`` writes ``fig1_posteriors.png``, ``fig2a_interval.png``,
``fig2b_extended.png`` and the plotted numbers as ``figures.json`` and one CSV per figure.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from diffda.core.config import json_safe  # noqa: E402
from diffda.cycler.analysis import kalman  # noqa: E402
from diffda.cycler.linear.testbed import (
    POSTERIORS,
    LinearSetup,
    make_truth_and_obs,
    paper_alpha_beta,
    run_kalman,
    run_steady,
)

FIG2A_INTERVALS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
FIG2A_OBS_VARS = (0.1, 1.0, 10.0)
FIG2B_OBS_VARS = tuple(float(v) for v in np.round(np.logspace(-1, 2, 10), 4))


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _savefig(fig: plt.Figure, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def figure1(base: LinearSetup, out: Path) -> dict:
    """Fig. 1: every component observed every model step; MSE and variance of the three
    posteriors, Kalman vs diffusion (and the EnKF for the cycling prior)."""
    setup = LinearSetup(**{**base.__dict__, "obs_every": 1})
    res = run_steady(setup, paper=False)
    rows = []
    for name in POSTERIORS:
        for method in ("kalman", "diffusion", "enkf"):
            if f"{name}_{method}_mse" in res:
                rows.append({"posterior": name, "method": method,
                             "mse": res[f"{name}_{method}_mse"],
                             "variance": res[f"{name}_{method}_var"],
                             "exact_variance": res[f"{name}_var"]})
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    width = 0.13
    methods = ("kalman", "diffusion", "enkf")
    for i, name in enumerate(POSTERIORS):
        for j, method in enumerate(methods):
            row = next((r for r in rows if r["posterior"] == name and r["method"] == method), None)
            if row is None:
                continue
            x = i + (j - 1) * 2.2 * width
            ax.bar(x - width / 2, row["mse"], width, color=f"C{j}",
                   label=f"{method} MSE" if name == "cycling" else None)
            ax.bar(x + width / 2, row["variance"], width, color=f"C{j}", alpha=0.45, hatch="//",
                   label=f"{method} variance" if name == "cycling" else None)
        ax.hlines(res[f"{name}_var"], i - 0.45, i + 0.45, colors="k", linestyles=":",
                  label="exact steady variance" if i == 0 else None)
    labels = {"extended": "extended\n(deterministic f)",
              "extended_stochastic": "extended\n(stochastic f)"}
    ax.set_xticks(range(len(POSTERIORS)), [labels.get(p, p) for p in POSTERIORS])
    ax.set_ylabel("time-averaged MSE and variance (state units²)")
    ax.set_title(f"Posterior MSE vs variance (dt={setup.dt}, obs every step, r={setup.obs_var})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # hides no data
    _savefig(fig, out / "fig1_posteriors.png")
    _write_csv(out / "fig1_posteriors.csv", rows)
    return {"setup": res["setup"], "rows": rows, "alpha": res["alpha"], "beta": res["beta"],
            "alpha_stochastic": res["alpha_stochastic"], "beta_stochastic": res["beta_stochastic"]}


def figure2a(base: LinearSetup, out: Path) -> dict:
    """Fig. 2a: steady-state posterior variance vs observation interval, several r:
    cycling (closed form, and the time-averaged MSE of a Kalman run) vs climatological."""
    rows = []
    c = base.c
    for r in FIG2A_OBS_VARS:
        for K in FIG2A_INTERVALS:
            setup = LinearSetup(**{**base.__dict__, "obs_every": K, "obs_var": r,
                                   "cycles": 2000, "spinup": 100})
            data = make_truth_and_obs(setup)
            run = run_kalman("cycling", setup, data)
            mse = float(np.mean((run.mean[setup.spinup:] - data.truth[1 + setup.spinup:]) ** 2))
            rows.append({"obs_var": r, "interval_steps": K, "interval_time": K * base.dt,
                         "cycling_var": float(kalman.steady_cycling_variance(setup.A, setup.q, r)),
                         "cycling_kalman_mse": mse,
                         "climatological_var": c * r / (c + r)})
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(FIG2A_OBS_VARS):
        sel = [row for row in rows if row["obs_var"] == r]
        t = [row["interval_time"] for row in sel]
        ax.plot(t, [row["cycling_var"] for row in sel], f"C{i}-", label=f"cycling, r={r}")
        ax.plot(t, [row["cycling_kalman_mse"] for row in sel], f"C{i}o", ms=4, mfc="none")
        ax.plot(t, [row["climatological_var"] for row in sel], f"C{i}--",
                label=f"climatological, r={r}")
    ax.set_xscale("log")
    ax.set_xlabel("time between observations (model time units)")
    ax.set_ylabel("steady-state posterior variance (state units²)")
    ax.set_title("Cycling → climatological as observations thin out\n"
                 "(lines: closed form; circles: MSE of a Kalman run)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # hides no data
    _savefig(fig, out / "fig2a_interval.png")
    _write_csv(out / "fig2a_interval.csv", rows)
    return {"rows": rows}


def figure2b(base: LinearSetup, out: Path) -> dict:
    """Fig. 2b: extended-likelihood posterior variance vs r at fixed interval, with the
    self-consistent (alpha, beta) of each forecast kind (deterministic: equal to cycling;
    stochastic, the paper's: between cycling and climatological) and with the paper's
    recipe; cycling and climatological for reference. For the paper's recipe both its
    assumed variance and its true MSE."""
    rows = []
    c = base.c
    for r in FIG2B_OBS_VARS:
        setup = LinearSetup(**{**base.__dict__, "obs_var": r, "cycles": 3000, "spinup": 100})
        fp = kalman.extended_fixed_point(setup.A, setup.q, c, r)
        st = kalman.extended_stationary(setup.A, setup.q, c, r, fp.alpha, fp.beta)
        fs = kalman.extended_fixed_point(setup.A, setup.q, c, r, forecast="stochastic")
        ss = kalman.extended_stationary(setup.A, setup.q, c, r, fs.alpha, fs.beta, "stochastic")
        # the paper's recipe as the paper ran it: with the stochastic forecast
        fit = paper_alpha_beta(setup, make_truth_and_obs(setup), "extended_stochastic")
        pst = kalman.extended_stationary(setup.A, setup.q, c, r, fit.alpha, fit.beta,
                                         "stochastic")
        rows.append({"obs_var": r, "climatological_var": c * r / (c + r),
                     "cycling_var": float(kalman.steady_cycling_variance(setup.A, setup.q, r)),
                     "extended_var": st.var, "alpha": fp.alpha, "beta": fp.beta,
                     "extended_stochastic_var": ss.var, "alpha_stochastic": fs.alpha,
                     "beta_stochastic": fs.beta,
                     "extended_paper_var": pst.var, "extended_paper_mse": pst.mse,
                     "alpha_paper": fit.alpha, "beta_paper": fit.beta})
    fig, ax = plt.subplots(figsize=(6, 4))
    r = [row["obs_var"] for row in rows]
    ax.plot(r, [row["climatological_var"] for row in rows], "k--", label="climatological")
    ax.plot(r, [row["cycling_var"] for row in rows], "C0-", lw=3, alpha=0.5, label="cycling")
    ax.plot(r, [row["extended_var"] for row in rows], "C1o-", ms=4,
            label="extended, deterministic f, self-consistent (α, β)")
    ax.plot(r, [row["extended_stochastic_var"] for row in rows], "C2^-", ms=4,
            label="extended, stochastic f (paper), self-consistent (α, β)")
    ax.plot(r, [row["extended_paper_var"] for row in rows], "C3s:", ms=4,
            label="extended, paper's recipe: assumed variance")
    mse = [row["extended_paper_mse"] if np.isfinite(row["extended_paper_mse"]) else np.nan
           for row in rows]
    ax.plot(r, mse, "C3x", ms=6, label="extended, paper's recipe: true MSE (unstable: absent)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("observation error variance r (state units²)")
    ax.set_ylabel("steady-state posterior variance (state units²)")
    ax.set_title(f"Extended likelihood, obs every {base.obs_every} steps (dt={base.dt})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # hides no data
    _savefig(fig, out / "fig2b_extended.png")
    _write_csv(out / "fig2b_extended.csv", rows)
    return {"rows": rows}


def make_figures(out_dir: str | Path, base: LinearSetup | None = None) -> dict:
    """Write all figures, their CSVs and ``figures.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base or LinearSetup()
    numbers = {"fig1": figure1(base, out), "fig2a": figure2a(base, out),
               "fig2b": figure2b(base, out)}
    text = json.dumps(json_safe(numbers), indent=1, allow_nan=False)
    _atomic_write_text(out / "figures.json", text)
    return numbers
