"""Approach 2: parabola vertices, edge flags, budget binning, and recovery of a known exponent a."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweep.fit.isoflop import assign_budgets, fit_approach2, fit_budget
from sweep.fit.synthetic import EPOCH_LAW, isoflop_table


def _runs(table: pd.DataFrame, with_budget: bool = False) -> pd.DataFrame:
    runs = table.rename(columns={"run_id": "run"})
    if not with_budget:
        runs["budget"] = np.nan
    return runs


def test_vertex_of_an_exact_parabola():
    n = np.geomspace(1e6, 1e8, 9)
    x = np.log(n)
    loss = 3.0 + 0.05 * (x - np.log(1e7)) ** 2
    fit = fit_budget(n, 1e17 / (6 * n), loss, window_decades=0.75)
    assert fit["N_opt"] == pytest.approx(1e7, rel=1e-9)
    assert fit["L_min"] == pytest.approx(3.0, abs=1e-12)
    assert fit["D_opt"] == pytest.approx(1e17 / 6e7, rel=1e-9)
    assert not fit["edge"]
    assert fit["window_points"] == 7  # +-0.75 decades around 1e7 on a 0.25-decade grid


def test_minimum_at_the_grid_edge_is_flagged_and_concave_budgets_refused():
    n = np.geomspace(1e6, 1e8, 7)
    rising = 3.0 + 0.05 * (np.log(n) - np.log(1e5)) ** 2
    assert fit_budget(n, 1 / n, rising, 0.75)["edge"]
    assert "not convex" in fit_budget(n, 1 / n, 3.0 - 0.01 * (np.log(n) - 16) ** 2, 2.0)
    assert "model sizes" in fit_budget(n[:2], 1 / n[:2], rising[:2], 0.75)


def test_a_near_flat_parabola_is_no_estimate_of_n_opt():
    # Barely convex: the vertex sits ~10^7 grid widths away, where exp() over- or underflowed
    # (a ZeroDivisionError in a bootstrap draw ended the whole CLI)
    n = np.geomspace(1e7, 1e9, 5)
    x = np.log(n) - np.log(n).mean()
    for slope in (0.05, -0.05):
        reason = fit_budget(n, 1e18 / (6 * n), 3.0 + slope * x + 1e-9 * x**2, 0.75)
        assert "more than the grid's width outside the sizes run" in reason


def test_budgets_binned_from_c_match_the_grid():
    runs = _runs(isoflop_table(noise=0.0))
    runs["C"] *= np.random.default_rng(0).uniform(0.99, 1.01, len(runs))  # step rounding
    budget, how = assign_budgets(runs)
    assert "binned" in how
    np.testing.assert_allclose(np.unique(budget), [1e16, 3e16, 1e17, 3e17, 1e18, 3e18, 1e19],
                               rtol=0.01)


def test_recovers_a_known_exponent_with_a_covering_interval():
    runs = _runs(isoflop_table(EPOCH_LAW, sizes_per_budget=13, span=10, noise=0.005, seed=2))
    section, reason, _ = fit_approach2(runs, window_decades=0.75, include_edge=False,
                                       bootstrap=300, rng=np.random.default_rng(0))
    assert reason is None
    assert section["a"] == pytest.approx(EPOCH_LAW.a, abs=0.02)
    assert section["a"] + section["b"] == pytest.approx(1.0, abs=1e-6)  # D = C / 6N exactly
    lo, hi = section["ci95"]["a"]
    assert lo < EPOCH_LAW.a < hi
    assert all(not b["edge"] for b in section["budgets"])


def test_interval_measures_the_fit_not_three_point_parabolas():
    # Resampling runs within a budget left 3-4 distinct sizes in each window and gave [0.386,
    # 0.674] here; the estimate's real spread over noise seeds is sd 0.014 (95 %: +-0.028).
    runs = _runs(isoflop_table(EPOCH_LAW, noise=0.01, seed=0))
    section, _, _ = fit_approach2(runs, window_decades=0.75, include_edge=False,
                                  bootstrap=300, rng=np.random.default_rng(0))
    lo, hi = section["ci95"]["a"]
    assert lo < EPOCH_LAW.a < hi
    assert lo < section["a"] < hi
    assert hi - lo < 0.1
    assert section["bootstrap"] == 300


def test_edge_budgets_left_out_unless_asked():
    # Shift every grid far below the optimum: minima sit at the largest size of each budget.
    runs = _runs(isoflop_table(EPOCH_LAW, span=3, noise=0.0))
    runs["N"] /= 30
    runs["D"] = runs["C"] / (6 * runs["N"])
    runs["loss"] = EPOCH_LAW.loss(runs["N"], runs["D"])
    section, reason, _ = fit_approach2(runs, window_decades=0.75, include_edge=False,
                                       bootstrap=0, rng=np.random.default_rng(0))
    assert section is None and "edge" in reason and "--include-edge" in reason
    section, _, _ = fit_approach2(runs, window_decades=0.75, include_edge=True, bootstrap=0,
                                  rng=np.random.default_rng(0))
    assert all(b["edge"] and b["used"] for b in section["budgets"])


def test_three_runs_close_in_c_by_chance_are_no_budget():
    # A grid over N and tokens per parameter (no IsoFLOP budgets): three runs fell within 0.05
    # decades of C and were fitted as a "budget" whose parabola fits them exactly.
    n = np.array([1e7, 2e7, 4e7, 1e7, 2e7, 4e7])
    c = np.array([1e17, 1.05e17, 0.95e17, 1e18, 1.02e18, 0.98e18])
    runs = pd.DataFrame({"N": n, "C": c, "D": c / (6 * n), "budget": np.nan,
                         "run": [f"r{i}" for i in range(6)]})
    runs["loss"] = EPOCH_LAW.loss(runs["N"], runs["D"])
    budget, how = assign_budgets(runs)
    assert np.isnan(budget).all() and "4 or more runs" in how
    section, reason, _ = fit_approach2(runs, window_decades=0.75, include_edge=False,
                                       bootstrap=10, rng=np.random.default_rng(0))
    assert section is None and "0 usable budgets" in reason
    runs["budget"] = np.repeat([1e17, 1e18], 3)  # named budgets of three sizes: fitted, no CI
    section, _, _ = fit_approach2(runs, window_decades=0.75, include_edge=True, bootstrap=10,
                                  rng=np.random.default_rng(0))
    assert section["bootstrap"] == 0 and "no confidence intervals" in section["warning"]


def test_runs_without_a_budget_are_left_out_when_others_have_one():
    runs = _runs(isoflop_table(noise=0.0), with_budget=True)
    runs.loc[runs.index[:9], "budget"] = np.nan  # the 1e16 budget's runs: token budgets
    budget, how = assign_budgets(runs, "each run's budget.flops")
    assert np.isnan(budget[:9]).all() and set(budget[9:]) == {3e16, 1e17, 3e17, 1e18, 3e18, 1e19}
    assert how == "each run's budget.flops; 9 runs without a budget left out"
