"""Experiments as sets of cases, and comparisons with confidence: the bootstrap interval
covers a known mean at its rate, a mode compared with itself differs by exactly zero, a
two-case experiment runs end to end and resumes to the same comparison, bad cases are
refused by name, and a run can start from a state that is not the truth."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffda.core.config import ConfigError
from diffda.cycler.cli.main import main as cli_main
from diffda.cycler.cycling.cases import CasesFailed, load_experiment, run_cases
from diffda.cycler.cycling.confidence import bootstrap_mean_ci, compare_cases
from diffda.cycler.cycling.config import load_run_config
from diffda.cycler.cycling.world import load_world

_spec = importlib.util.spec_from_file_location(
    "driver_helpers", Path(__file__).with_name("test_driver.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # the tiny world of tests/test_driver.py


def test_bootstrap_interval_covers_a_known_mean_at_its_rate():
    rng = np.random.default_rng(0)
    trials, n = 300, 20
    hits = 0
    for k in range(trials):
        x = rng.normal(3.0, 2.0, size=n)
        lo, hi = bootstrap_mean_ci(x, seed=k)
        hits += lo <= 3.0 <= hi
    # percentile intervals of a mean of 20 normal values cover ~93-95 %
    assert 0.89 <= hits / trials <= 0.99, hits / trials
    assert bootstrap_mean_ci([1.0]) is None
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def _records(rmse_by_case: dict[str, list[list[float]]]) -> list[list[dict]]:
    """Synthetic records: ``{mode: [[rmse at lead 12 h, 24 h, ...] per case]}``."""
    cases = []
    n_cases = len(next(iter(rmse_by_case.values())))
    for c in range(n_cases):
        records = []
        for mode, per_case in rmse_by_case.items():
            for k, r in enumerate(per_case[c], start=1):
                records.append({"mode": mode, "cycle": k, "lead_hours": 12 * k, "members": 4,
                                "height": {"rmse": r, "spread": 0.5 * r, "crps": 0.3 * r}})
        cases.append(records)
    return cases


def test_paired_difference_of_a_mode_with_itself_is_zero_and_real_gaps_are_found():
    rng = np.random.default_rng(1)
    base = rng.uniform(50, 150, size=(8, 6))  # 8 cases: large case-to-case noise
    cases = _records({"a": base.tolist(), "same": base.tolist(),
                      "better": (base - 5.0 + rng.normal(0, 0.5, base.shape)).tolist()})
    table = compare_cases(cases, steady_from_hours=24.0)
    assert table["n_cases"] == 8 and table["leads_hours"] == [12.0 * k for k in range(1, 7)]
    same = table["paired"]["a-same"]["height"]
    assert same["steady_diff"] == 0.0 and same["steady_diff_ci95"] == (0.0, 0.0)
    assert all(d == 0.0 for d in same["rmse_diff"])
    # the 5-unit gap is real although the means' own intervals overlap widely
    gap = table["paired"]["a-better"]["height"]
    assert 4.0 < gap["steady_diff"] < 6.0 and gap["steady_diff_ci95"][0] > 0
    lo, hi = table["modes"]["a"]["height"]["steady_rmse_ci95"]
    assert hi - lo > 10.0
    # the steady part: leads after 24 h; spread-skill of spread = rmse / 2 with 4 members
    steady = base[:, 2:].mean(1).mean()
    assert table["modes"]["a"]["height"]["steady_rmse"] == pytest.approx(steady)
    assert table["modes"]["a"]["height"]["spread_skill"][0] == pytest.approx(
        np.sqrt(5 / 4) * 0.5)


def test_spread_skill_uses_each_modes_own_ensemble_size():
    # a one-member reference line (free) beside an ensemble must not change the ensemble's
    # finite-size correction sqrt((M + 1) / M)
    cases = _records({"ens": [[10.0, 10.0]] * 3, "free": [[12.0, 12.0]] * 3})
    for records in cases:
        for r in records:
            if r["mode"] == "free":
                r["members"] = 1
    table = compare_cases(cases, steady_from_hours=0.0)
    assert table["modes"]["ens"]["height"]["spread_skill"][0] == pytest.approx(
        np.sqrt(5 / 4) * 0.5)


def _experiment_file(folder: Path, starts: list[str], tuning: list[str] | None = None) -> Path:
    cfg = helpers.tiny_world(folder, modes=("climatological", "enkf", "free"))
    text = cfg.read_text() + "\n[cases]\n" + f"starts = {json.dumps(starts)}\n" + (
        f"tuning = {json.dumps(tuning)}\n" if tuning else "") + "steady_from_days = 0.5\n"
    path = folder / "cases.toml"
    path.write_text(text)
    return path


def test_two_case_experiment_end_to_end_and_resumed(tmp_path, capsys):
    torch.set_num_threads(1)
    path = _experiment_file(tmp_path / "world", ["0001-01-02T00:00", "0001-01-04T00:00"])
    out = tmp_path / "exp"
    assert cli_main(["cases", str(path), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli_main(["compare", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n_cases"] == 2 and first["leads_hours"] == [12.0, 24.0]
    assert set(first["modes"]) == {"climatological", "enkf", "free"}
    s = first["modes"]["enkf"]["u"]
    assert len(s["rmse"]) == 2 and s["rmse_ci95"][0][0] <= s["rmse"][0] <= s["rmse_ci95"][0][1]
    assert set(first["paired"]["climatological-enkf"]["height"]) >= {
        "steady_diff", "steady_diff_ci95"}
    assert (out / "confidence.png").stat().st_size > 1000
    # kill one case after its first cycle (drop what came later) and resume: same numbers
    case = out / "case_0001-01-04T00"
    for f in case.glob("checkpoints/*/cycle_0002.pt"):
        f.unlink()
    (case / "metrics.jsonl").unlink()
    run_cases(load_experiment(path), out)
    assert cli_main(["compare", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first


def test_cases_in_parallel_dask_workers_equal_the_serial_run(tmp_path):
    # the workers read their data lazily (dask arrays): without computing them inside the
    # task, two cases stalled for good; an alarm turns a stall into a failure
    import signal

    torch.set_num_threads(1)
    path = _experiment_file(tmp_path / "world", ["0001-01-02T00:00", "0001-01-04T00:00"])
    over = {"analysis.modes": ["free", "enkf"]}
    run_cases(load_experiment(path, over), tmp_path / "serial")

    def stalled(signum, frame):
        raise TimeoutError("the dask workers stalled")

    previous = signal.signal(signal.SIGALRM, stalled)
    signal.alarm(240)
    try:
        run_cases(load_experiment(path, {**over, "cases.workers": 2}), tmp_path / "dask")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    for case in ("case_0001-01-02T00", "case_0001-01-04T00"):
        assert ((tmp_path / "dask" / case / "metrics.jsonl").read_text()
                == (tmp_path / "serial" / case / "metrics.jsonl").read_text())


def test_bad_cases_are_refused_by_name(tmp_path):
    outside = _experiment_file(tmp_path / "a", ["0001-01-02T00:00", "0001-01-06T00:00"])
    with pytest.raises(ConfigError, match=r"case case_0001-01-06T00: its window .* is not in"):
        run_cases(load_experiment(outside), tmp_path / "out_a")
    overlap = _experiment_file(tmp_path / "b", ["0001-01-02T00:00"], ["0001-01-02T12:00"])
    with pytest.raises(ConfigError, match="cases overlap: verification case case_0001-01-02T00"):
        run_cases(load_experiment(overlap), tmp_path / "out_b")
    with pytest.raises(ConfigError, match="cases.count"):
        load_experiment(outside, {"cases.starts": [], "cases.start": "0001-01-02T00:00"})
    # a case that fails is named, not dropped: here the prior weights vanish
    ok = _experiment_file(tmp_path / "c", ["0001-01-02T00:00"])
    shutil.move(tmp_path / "c" / "prior.safetensors", tmp_path / "c" / "gone.safetensors")
    with pytest.raises(CasesFailed, match="case_0001-01-02T00: FileNotFoundError"):
        run_cases(load_experiment(ok, {"cases.retries": 0}), tmp_path / "out_c")


@pytest.mark.parametrize("init", ["background", "climatology"])
def test_a_run_can_start_from_a_state_that_is_not_the_truth(tmp_path, init):
    path = helpers.tiny_world(tmp_path / "world", modes=("free", "enkf"))
    truth_world = load_world(load_run_config(path))
    world = load_world(load_run_config(path, {"data.init": init}))
    assert world.initial.shape == truth_world.initial.shape
    assert not torch.equal(world.initial, truth_world.initial)
    assert torch.equal(truth_world.initial, truth_world.truth[:1])
    assert not torch.equal(world.free[1], truth_world.free[1])  # the free run starts there
    with pytest.raises(ConfigError, match="data.init = 'analysis'"):
        load_run_config(path, {"data.init": "analysis"})


def test_tuning_on_the_tuning_cases_and_a_tuned_file_for_another_config_refused(tmp_path):
    torch.set_num_threads(1)
    path = _experiment_file(tmp_path / "world", ["0001-01-02T00:00"], ["0001-01-04T00:00"])
    out = tmp_path / "tune"
    assert cli_main(["tune", str(path), "--param", "enkf.inflation=1.0,1.3",
                     "--param", "enkf.radius_km=3000", "--mode", "enkf",
                     "--variable", "height", "--out", str(out)]) == 0
    record = json.loads((out / "tuned.json").read_text())
    assert [g["values"] for g in record["grid"]] == [
        {"enkf.inflation": 1.0, "enkf.radius_km": 3000}, {"enkf.inflation": 1.3,
                                                          "enkf.radius_km": 3000}]
    assert record["score"] == min(g["score"] for g in record["grid"])
    assert (out / "inflation=1.0,radius_km=3000" / "case_0001-01-04T00" / "metrics.jsonl").is_file()
    tuned = {"cases.tuned": str(out / "tuned.json")}
    exp = load_experiment(path, tuned)
    assert exp.base.enkf.inflation == record["values"]["enkf.inflation"]
    assert exp.base.analysis.modes == ("climatological", "enkf", "free")  # only values change
    with pytest.raises(ConfigError, match=r"tuned for another configuration: members \(4 here"):
        load_experiment(path, {**tuned, "members": 4})


def test_an_experiment_file_states_only_what_it_changes_of_its_base(tmp_path):
    base = helpers.tiny_world(tmp_path / "world", modes=("free",))
    path = tmp_path / "world" / "exp.toml"
    path.write_text(f'base = "{base.name}"\nname = "exp"\n[analysis]\nlambda = 3.0\n'
                    '[cases]\nstart = "0001-01-02T00:00"\nevery_days = 2\ncount = 2\n')
    exp = load_experiment(path)
    ref = load_run_config(base)
    assert exp.base.name == "exp" and exp.base.analysis.lambda_ == 3.0
    assert exp.base.members == ref.members and exp.base.analysis.modes == ("free",)
    assert [label for label, _ in exp.case_configs()] == ["case_0001-01-02T00",
                                                          "case_0001-01-04T00"]
    # an experiment based on that experiment: its cases and values, its own on top
    child = tmp_path / "world" / "child.toml"
    child.write_text('base = "exp.toml"\nname = "child"\nmembers = 3\n[cases]\ncount = 3\n')
    exp2 = load_experiment(child)
    assert exp2.base.name == "child" and exp2.base.members == 3
    assert exp2.base.analysis.lambda_ == 3.0 and len(exp2.case_configs()) == 3
    (tmp_path / "world" / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "world" / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"in a loop: a.toml -> b.toml -> a.toml"):
        load_experiment(tmp_path / "world" / "a.toml")


def test_guidance_summary_counts_capped_evaluations_in_the_steady_cycles():
    from diffda.cycler.cycling.confidence import format_confidence, guidance_summary

    def rec(mode: str, lead: float, frac: float, share: float | None, ratio: float) -> dict:
        method = {"nfe": 23, "clipped_fraction_max": frac, "guidance_ratio_max": ratio}
        if share is not None:
            method["clipped_share"] = share
        return {"mode": mode, "lead_hours": lead, "method": method}

    cases = [[rec("reinitialized", 12, 1.0, 0.9, 50.0), rec("reinitialized", 36, 0.5, 0.2, 3.0),
              rec("reinitialized", 48, 0.0, 0.0, 0.5), rec("climatological", 48, 0.0, None, 0.3),
              {"mode": "enkf", "lead_hours": 48}]]
    g = guidance_summary(cases, steady_from_hours=24.0)
    assert set(g) == {"reinitialized", "climatological"}  # the EnKF has no guidance
    assert g["reinitialized"] == {"cycles": 2, "cycles_capped": 0.5, "capped_share": 0.1,
                                  "guidance_ratio_max_median": 1.75}
    assert "capped_share" not in g["climatological"]
    table = {"n_cases": 1, "leads_hours": [], "steady_from_hours": 24.0, "modes": {},
             "paired": {}, "guidance": g}
    assert "reinitialized      50%   10.0%    1.75" in format_confidence(table)


def test_calibration_summary_checks_innovations_against_the_ensemble_and_the_term():
    """Desroziers' ratios over the steady cycles: E[d_ob^2] / (HBH + R) against the forecast
    ensemble's variance, and against the (inflated) variance the ensemble mode's term
    assumes; cycles of the spin-up left out."""
    from diffda.cycler.cycling.confidence import calibration_summary

    def rec(lead: float, omf_var: float) -> dict:
        row = {"n": 10, "omf_var": omf_var, "r_assumed": 1.0, "hbh_ensemble": 2.0,
               "hbh_term": 6.0, "desroziers_r": 1.5}
        return {"mode": "ensemble", "lead_hours": lead, "innovations": {"height": row}}

    out = calibration_summary([[rec(12, 100.0), rec(60, 6.0)], [rec(72, 8.0)]], 48.0)
    stats = out["ensemble"]["height"]["innovations"]
    assert stats["omf_var_ratio"] == pytest.approx(7.0 / 3.0)
    assert stats["omf_var_ratio_term"] == pytest.approx(1.0)
    assert stats["desroziers_r_ratio"] == pytest.approx(1.5)
