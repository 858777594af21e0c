"""Extrapolation check: held-out runs are the large budgets, and a true law predicts them."""

from __future__ import annotations

import numpy as np

from sweep.fit.extrapolate import extrapolation_check
from sweep.fit.synthetic import EPOCH_LAW, isoflop_table


def _runs(noise: float):
    runs = isoflop_table(EPOCH_LAW, noise=noise, seed=4).rename(columns={"run_id": "run"})
    runs["C"] *= 1.001  # step rounding lifts C a hair above the budget
    return runs


def test_holds_out_budgets_above_a_tenth_of_the_largest():
    section, reason = extrapolation_check(_runs(0.01), holdout_factor=10)
    assert reason is None
    held = {r["run"].split("-")[0] for r in section["runs"] if r["held_out"]}
    assert held == {"c3e+18", "c1e+19"}
    assert section["n_fit"] == 5 * 9 and section["n_held_out"] == 2 * 9
    # 1 % noise: a law fitted three decades below predicts the held-out runs to ~1 %.
    assert section["mean_abs_rel_error"] < 0.02
    assert abs(section["mean_rel_error"]) < 0.02


def test_exact_data_extrapolates_exactly():
    section, _ = extrapolation_check(_runs(0.0), holdout_factor=10)
    assert section["max_abs_rel_error"] < 1e-4


def test_too_few_small_runs_is_a_reason():
    runs = _runs(0.01)
    runs["budget"] = np.nan
    section, reason = extrapolation_check(runs, holdout_factor=1e4)
    assert section is None and "--holdout-factor" in reason


def test_budgets_are_the_scale_only_when_every_run_has_one():
    # budget.flops budgets count exact FLOPs, C counts 6ND: a threshold over a mix of the two
    # would hold out by different measures. One run without a budget: C for all.
    runs = _runs(0.0)
    runs["budget"] *= 3.0  # as if exact FLOPs were 3x the 6ND C
    section, _ = extrapolation_check(runs, holdout_factor=10)
    assert section["threshold_C"] == runs["budget"].max() / 10
    runs.loc[0, "budget"] = np.nan
    section, _ = extrapolation_check(runs, holdout_factor=10)
    assert section["threshold_C"] == runs["C"].max() / 10


def test_small_runs_on_one_budget_cannot_be_fitted():
    # Held out at factor 10, only the 1e16 budget is left to fit on: N and D along one line
    runs = _runs(0.01)
    runs = runs[runs["budget"].isin([1e16, 1e18])]
    section, reason = extrapolation_check(runs, holdout_factor=10)
    assert section is None
    assert reason.startswith("the 9 runs with C <= 1e+17 (max C / 10) cannot be fitted: the "
                             "runs' N and D move together")
