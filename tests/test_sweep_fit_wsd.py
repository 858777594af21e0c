"""Tests for WSD runs in the fitter: approach 1 and L(C) take a WSD trajectory's finished runs as
its curve, since the points before a cooldown sit above any finished run of that length.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweep.fit.envelope import curve_grid, finished_curves, fit_approach1
from sweep.fit.points import wsd_trajectories
from sweep.fit.synthetic import EPOCH_LAW
from tests.test_sweep_fit_cli import fit_cli, strict_json

SIZES = [float(round(n)) for n in np.geomspace(1e7, 3e9, 10)]
TOKENS_PER_PARAM = (5, 10, 20, 40, 80, 160, 320)


def wsd_curves(stable_excess: float) -> pd.DataFrame:
    """A WSD horizons grid drawn from Epoch's law: every run's points before its cooldown (at up
    to 80 % of its D) `stable_excess` above the law, its final point on it; the runs of one size
    share a stable phase (one stable_hash)."""
    rows = []
    for i, n in enumerate(SIZES):
        for k in TOKENS_PER_PARAM:
            d_final = k * n
            for d in [*(d_final * np.geomspace(0.02, 0.8, 10)), d_final]:
                excess = 0.0 if d == d_final else stable_excess
                rows.append({"run": f"n{i}-k{k}", "N": n, "D": d, "C": 6 * n * d,
                             "loss": float(EPOCH_LAW.loss(n, d)) * (1 + excess),
                             "hparams_schedule": "wsd", "stable_hash": f"s{i}",
                             "experiment": "h", "seed": 0})
    return pd.DataFrame(rows)


def test_a_trajectory_is_its_stable_hash_else_what_its_runs_share_but_the_budget():
    described = pd.DataFrame({"hparams_schedule": ["wsd", "wsd", "cosine", "wsd", "wsd"],
                              "stable_hash": ["abc", None, None, "abc", None],
                              "experiment": ["e", "e", "e", "f", "e"],
                              "seed": [0, 1, 0, 0, np.nan],
                              "hparams_lr": [1e-3, 2e-3, 1e-3, 1e-3, 1e-3]})
    n = pd.Series([1e6, 2e6, 1e6, 3e6, 2e6], index=[4, 7, 9, 12, 13])
    keys = wsd_trajectories(described, n)
    assert list(keys.index) == [4, 7, 9, 12, 13]
    # The LR is no part of it (a rule sets it per budget); a missing seed is a value too
    assert keys.tolist() == ["stable:abc", "wsd:2000000.0:e:1.0", None, "stable:abc",
                             "wsd:2000000.0:e:nan"]
    # No schedule column (a table from elsewhere): no run is taken for WSD
    assert wsd_trajectories(described.drop(columns="hparams_schedule"), n).isna().all()


def runs_of(curves: pd.DataFrame, seeds: int = 1) -> pd.DataFrame:
    """The runs frame the fitter builds: one row per run, its trajectory (a size and seed) and
    its replicate point (one per size and budget when there are several seeds)."""
    runs = curves.groupby("run", sort=False).tail(1)[["run", "N", "D"]]
    point = runs.groupby(["N", "D"], sort=False).ngroup()
    seed = runs["run"].str.extract(r"(-s\d+)$", expand=False).fillna("")
    return runs.assign(trajectory="t" + runs["N"].astype(str) + seed,
                       replicate=point if seeds > 1 else -1)


def test_approach1_on_finished_runs_recovers_the_law_that_raw_wsd_curves_bias():
    curves = wsd_curves(stable_excess=0.05)
    finished = finished_curves(curves, runs_of(curves))
    assert (finished.trajectories, finished.single_run, finished.seeds_merged) == (
        len(SIZES), 0, False)
    assert len(finished.curves) == len(SIZES) * len(TOKENS_PER_PARAM)  # one point per run
    rng = np.random.default_rng(0)
    fair, _ = fit_approach1(curve_grid(finished.curves), bootstrap=20, rng=rng)
    raw, _ = fit_approach1(curve_grid(curves), bootstrap=20, rng=rng)
    # 0.504 against a true 0.513; the runs' own curves give 0.434
    assert fair["a"] == pytest.approx(EPOCH_LAW.a, abs=0.015)
    assert raw["a"] < EPOCH_LAW.a - 0.05
    # Runs of no trajectory keep their own curves
    assert finished_curves(curves, runs_of(curves).assign(trajectory=None)).curves is curves


def test_seed_replicated_trajectories_are_one_curve_of_their_mean_losses():
    one = wsd_curves(stable_excess=0.05)
    two = one.assign(run=one["run"] + "-s1", loss=one["loss"] * 1.02)
    curves = pd.concat([one.assign(run=one["run"] + "-s0"), two], ignore_index=True)
    finished = finished_curves(curves, runs_of(curves, seeds=2))  # a trajectory per seed
    assert (finished.trajectories, finished.seeds_merged) == (len(SIZES), True)
    point = finished.curves[np.isclose(finished.curves["D"], 5 * SIZES[0])]
    # The geometric mean of the two seeds' final losses, not the luckier seed's
    truth = float(EPOCH_LAW.loss(SIZES[0], 5 * SIZES[0]))
    assert point["loss"].tolist() == [pytest.approx(truth * np.sqrt(1.02), rel=1e-12)]
    assert point["run"].str.count(r"\+").tolist() == [1]


def test_fit_of_a_wsd_curves_table_says_its_curves_are_finished_runs(tmp_path):
    source = tmp_path / "wsd.csv"
    wsd_curves(stable_excess=0.05).to_csv(source, index=False)
    result = fit_cli(source, "--out", tmp_path / "report", "--run-col", "run",
                     "--bootstrap", 0, "--methods", "approach3", "approach1", "kaplan",
                     timeout=120)
    assert result.returncode == 0, result.stderr
    report = strict_json((tmp_path / "report" / "report.json").read_text())
    assert report["approach1"]["wsd_trajectories"] == len(SIZES)
    assert report["approach1"]["a"] == pytest.approx(EPOCH_LAW.a, abs=0.015)
    assert report["kaplan"]["L_C"]["note"] == (
        "frontier of final points (a WSD run's curve before its cooldown is no finished run)")
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"The WSD runs' curves are their {len(SIZES)} trajectories' finished runs" in text
    # Exact data: many grid starts crawl on plateaus far above the best optimum (1e-25) and are
    # left early; the report counts them beside the converged ones
    a3 = report["approach3"]
    assert a3["starts_stalled"] > 1000 and a3["objective"] < 1e-20
    assert (f"4500 grid starts ({a3['starts_converged']} converged, {a3['starts_stalled']} left "
            "early, stalled far above the best optimum)") in text


def test_a_wsd_ladder_of_one_budget_per_size_says_why_approach1_has_no_curves(tmp_path):
    curves = wsd_curves(stable_excess=0.05)
    one_budget = curves[curves["run"].str.endswith(("-k20", "-k80"))]
    # Each size's two budgets in experiments of their own: no stable_hash joins them
    one_budget = one_budget.assign(stable_hash=None,
                                   experiment=one_budget["run"].str.split("-").str[1])
    source = tmp_path / "ladder.csv"
    one_budget.to_csv(source, index=False)
    result = fit_cli(source, "--out", tmp_path / "report", "--run-col", "run",
                     "--bootstrap", 0, "--methods", "approach1", "kaplan", timeout=120)
    assert result.returncode == 0, result.stderr
    report = strict_json((tmp_path / "report" / "report.json").read_text())
    assert "approach1" not in report
    assert report["skipped"]["approach1"].endswith(
        f"(WSD runs enter as their {2 * len(SIZES)} trajectories' finished runs, "
        f"{2 * len(SIZES)} of them a single run with no curve: a WSD sweep needs several budgets "
        "per size)")
    # Kaplan's L(C) takes the frontier of the finished runs
    assert report["kaplan"]["L_C"]["note"].startswith("frontier of final points")


def test_too_few_curves_for_the_bootstrap_give_no_interval_and_say_why():
    curves = wsd_curves(stable_excess=0.05)
    rng = np.random.default_rng(0)
    for sizes, interval in ((4, False), (6, True)):
        some = curves[curves["N"].isin(SIZES[2:2 + sizes])]
        section, _ = fit_approach1(curve_grid(finished_curves(some, runs_of(some)).curves),
                                   bootstrap=100, rng=rng)
        assert bool(section["ci95"]) is interval
        assert ("no_ci" in section) is not interval
    # 4 curves: most draws have no crossing envelope (13 of 100 with this seed)
    section, _ = fit_approach1(curve_grid(finished_curves(
        curves[curves["N"].isin(SIZES[2:6])], runs_of(curves[curves["N"].isin(SIZES[2:6])])
    ).curves), bootstrap=100, rng=np.random.default_rng(0))
    assert section["no_ci"] == ("no CI: 13 of 100 bootstrap draws over 4 curves place the "
                                "envelope (more sizes give an interval)")
