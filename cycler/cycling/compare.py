"""Comparing runs and modes: RMSE of the ensemble mean at chosen lead days per mode and
variable (the paper's Table 2), the best value of a swept parameter per lead, and the
``compare.json`` / ``compare.png`` pair of ``cycler compare``."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffda.core.io import atomic_write_text
from diffda.cycler.cycling.outputs import read_metrics
from diffda.cycler.cycling.plots import by_mode, plot_compare, variables_of

DEFAULT_LEAD_DAYS: tuple[int, ...] = (1, 3, 5, 7)


def lead_table(runs: dict[str, Sequence[dict[str, Any]]],
               lead_days: Sequence[float] = DEFAULT_LEAD_DAYS) -> dict[str, Any]:
    """RMSE per (run label, mode, variable) at ``lead_days``: ``{"lead_days": [...],
    "rows": [{"run", "mode", "variable", "rmse": [...]}]}`` (None where a lead is absent)."""
    rows = []
    for label, records in runs.items():
        for mode, rs in by_mode(records).items():
            at = {r["lead_hours"]: r for r in rs}
            for v in variables_of(rs):
                rows.append({"run": label, "mode": mode, "variable": v, "rmse": [
                    at[round(d * 24)][v]["rmse"] if round(d * 24) in at else None
                    for d in lead_days]})
    return {"lead_days": list(lead_days), "rows": rows}


def format_table(table: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`lead_table`."""
    head = f"{'run':<28} {'mode':<15} {'variable':<8} " + " ".join(
        f"{'day ' + format(d, 'g'):>10}" for d in table["lead_days"])
    lines = [head, "-" * len(head)]
    for r in table["rows"]:
        vals = " ".join(f"{x:>10.4g}" if x is not None else f"{'-':>10}" for x in r["rmse"])
        lines.append(f"{r['run']:<28} {r['mode']:<15} {r['variable']:<8} {vals}")
    return "\n".join(lines)


def best_by_lead(table: dict[str, Any]) -> dict[str, dict[str, list[str | None]]]:
    """For :func:`lead_table` output: per mode and variable, the run label with the lowest
    RMSE at each lead (``{mode: {variable: [label or None per lead]}}``)."""
    best: dict[str, dict[str, list[str | None]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in table["rows"]:
        groups[(r["mode"], r["variable"])].append(r)
    for (mode, var), rows in groups.items():
        picks: list[str | None] = []
        for i in range(len(table["lead_days"])):
            have = [r for r in rows if r["rmse"][i] is not None]
            picks.append(min(have, key=lambda r: r["rmse"][i])["run"] if have else None)
        best.setdefault(mode, {})[var] = picks
    return best


def compare_runs(run_dirs: list[Path], out: Path, leads: tuple[float, ...] = DEFAULT_LEAD_DAYS
                 ) -> dict[str, Any]:
    """The RMSE-by-lead table of several runs, written as ``compare.json`` and
    ``compare.png`` in ``out``; returns the table."""
    runs = {d.resolve().name: read_metrics(d) for d in run_dirs}
    if len(runs) != len(run_dirs):
        runs = {str(d): read_metrics(d) for d in run_dirs}
    table = lead_table(runs, leads)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(table, indent=2) + "\n")
    plot_compare(runs, out / "compare.png")
    return table
