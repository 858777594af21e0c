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


def test_a_trajectory_is_its_stable_hash_else_its_experiment_size_and_seed():
    described = pd.DataFrame({"hparams_schedule": ["wsd", "wsd", "cosine", "wsd"],
                              "stable_hash": ["abc", None, None, "abc"],
                              "experiment": ["e", "e", "e", "f"], "seed": [0, 1, 0, 0]})
    n = pd.Series([1e6, 2e6, 1e6, 3e6], index=[4, 7, 9, 12])
    keys = wsd_trajectories(described, n)
    assert list(keys.index) == [4, 7, 9, 12]
    assert keys.tolist() == ["stable:abc", "wsd:e:2000000.0:1", None, "stable:abc"]
    # No schedule column (a table from elsewhere): no run is taken for WSD
    assert wsd_trajectories(described.drop(columns="hparams_schedule"), n).isna().all()


def test_approach1_on_finished_runs_recovers_the_law_that_raw_wsd_curves_bias():
    curves = wsd_curves(stable_excess=0.05)
    runs = curves.groupby("run", sort=False).tail(1)[["run", "N"]].assign(
        trajectory=lambda r: "t" + r["N"].astype(str))
    finished, trajectories = finished_curves(curves, runs)
    assert trajectories == len(SIZES)
    assert len(finished) == len(SIZES) * len(TOKENS_PER_PARAM)  # one point per run
    rng = np.random.default_rng(0)
    fair, _ = fit_approach1(curve_grid(finished), bootstrap=20, rng=rng)
    raw, _ = fit_approach1(curve_grid(curves), bootstrap=20, rng=rng)
    # 0.504 against a true 0.513; the runs' own curves give 0.434
    assert fair["a"] == pytest.approx(EPOCH_LAW.a, abs=0.015)
    assert raw["a"] < EPOCH_LAW.a - 0.05
    # Runs of no trajectory keep their own curves
    assert finished_curves(curves, runs.assign(trajectory=None))[0] is curves


def test_fit_of_a_wsd_curves_table_says_its_curves_are_finished_runs(tmp_path):
    source = tmp_path / "wsd.csv"
    wsd_curves(stable_excess=0.05).to_csv(source, index=False)
    result = fit_cli(source, "--out", tmp_path / "report", "--run-col", "run",
                     "--bootstrap", 20, timeout=120)
    assert result.returncode == 0, result.stderr
    report = strict_json((tmp_path / "report" / "report.json").read_text())
    assert report["approach1"]["wsd_trajectories"] == len(SIZES)
    assert report["approach1"]["a"] == pytest.approx(EPOCH_LAW.a, abs=0.015)
    assert report["kaplan"]["L_C"]["note"].endswith(
        ", WSD runs as their trajectories' finished runs")
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"The WSD runs' curves are their {len(SIZES)} trajectories' finished runs" in text
