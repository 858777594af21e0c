"""Approach 1 and the compute frontier: envelope bookkeeping and the exponent it recovers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweep.fit.envelope import (
    curve_grid,
    fit_approach1,
    frontier_runs,
    lower_envelope,
    merge_replicates,
)
from sweep.fit.synthetic import EPOCH_LAW, isoflop_table


def _curves(rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["run", "N", "C", "loss"])
    frame["D"] = frame["C"] / (6 * frame["N"])
    return frame


def test_envelope_picks_the_lower_curve_where_runs_overlap():
    curves = _curves([("small", 1e6, 1e12, 4.0), ("small", 1e6, 1e14, 3.0),
                      ("big", 1e8, 1e13, 3.8), ("big", 1e8, 1e15, 2.0)])
    grid = curve_grid(curves, points=5)  # C = 1e12, 1e12.75, 1e13.5, 1e14.25, 1e15
    env, winner, defined = lower_envelope(grid)
    names = sorted(curves["run"].unique())  # runs are ordered by name: big, small
    assert list(defined) == [1, 1, 2, 1, 1]
    # At 10^13.5 (interpolated in log C) big is at 3.8 - 0.25 * 1.8 = 3.35, small at 3.25.
    assert [names[w] for w in winner] == ["small", "small", "small", "big", "big"]
    assert env[2] == pytest.approx(3.25)
    assert env[3] == pytest.approx(3.8 - 0.625 * 1.8)
    assert np.isinf(grid.loss[names.index("small"), -1])


def test_frontier_keeps_runs_no_cheaper_run_beats():
    c = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    loss = np.array([5.0, 4.0, 4.5, 3.0, 3.0])
    assert list(frontier_runs(c, loss)) == [True, True, False, True, False]


def test_frontier_keeps_one_run_per_budget_in_any_order():
    # The two middle runs are one IsoFLOP budget (C apart by step rounding): only its best is on
    # the frontier, whichever sorts first; before, the 3.5 run also was when it came first.
    c = np.array([1e17, 1e18, 1.005e18, 1e19])
    loss = np.array([4.0, 3.5, 3.2, 3.0])
    assert list(frontier_runs(c, loss)) == [True, False, True, True]
    swap = [0, 2, 1, 3]
    assert list(frontier_runs(c[swap], loss[swap])) == [True, True, False, True]
    assert list(frontier_runs(c[::-1], loss[::-1])) == [True, True, False, True]


def test_approach1_recovers_the_exponent_from_curves():
    curves = isoflop_table(EPOCH_LAW, sizes_per_budget=9, noise=0.0, curve_points=12)
    curves = curves.rename(columns={"run_id": "run"})
    section, reason = fit_approach1(curve_grid(curves), bootstrap=100,
                                    rng=np.random.default_rng(0))
    assert reason is None
    assert section["a"] == pytest.approx(EPOCH_LAW.a, abs=0.05)
    lo, hi = section["ci95"]["a"]
    assert lo <= section["a"] <= hi
    assert section["bootstrap"] > 50


def test_one_size_everywhere_is_a_reason_not_a_fit():
    curves = _curves([("a", 1e6, 1e12, 4.0), ("a", 1e6, 1e14, 3.0),
                      ("b", 1e6, 1e12, 4.1), ("b", 1e6, 1e14, 3.1)])
    section, reason = fit_approach1(curve_grid(curves), bootstrap=0,
                                    rng=np.random.default_rng(0))
    assert section is None and "single model size" in reason


def test_c_won_by_the_smallest_or_largest_size_is_left_out():
    """Runs of 6 sizes at 5-80 tokens per parameter (a horizons grid): the smallest size wins
    60 % of the C range, which only bounds N_opt. Kept, they gave a = 0.217 against 0.513."""
    rows = []
    for n in (6.1e6, 1.06e7, 1.69e7, 2.52e7, 4.92e7, 8.5e7):
        for k in (5, 10, 20, 40, 80):
            for d in np.geomspace(k * n / 300, k * n, 10):
                rows.append((f"n{n:.3g}-k{k}", n, 6 * n * d, float(EPOCH_LAW.loss(n, d))))
    section, reason = fit_approach1(curve_grid(_curves(rows)), bootstrap=0,
                                    rng=np.random.default_rng(0))
    assert reason is None
    assert section["a"] == pytest.approx(EPOCH_LAW.a, abs=0.05)
    assert section["edge_points"] > section["grid_points"]


def test_only_edge_sizes_winning_is_a_reason():
    curves = _curves([("small", 1e6, 1e12, 4.0), ("small", 1e6, 1e14, 3.0),
                      ("mid", 1e7, 1e12, 4.5), ("mid", 1e7, 1e14, 3.5),
                      ("big", 1e8, 1e12, 5.0), ("big", 1e8, 1e14, 2.5)])
    section, reason = fit_approach1(curve_grid(curves), bootstrap=0,
                                    rng=np.random.default_rng(0))
    assert section is None and "needs two sizes between the smallest and the largest" in reason
    assert "(0 of the 1 such sizes do;" in reason and reason.endswith(", 4 or more in all")


def test_seed_replicates_merge_into_their_mean_curve() -> None:
    # Two seeds of one point (one covers less C) and a run of its own
    curves = pd.DataFrame([
        *({"run": "a-s0", "N": 1e6, "C": c, "D": c / 6e6, "loss": 4.0 / c ** 0.05}
          for c in (1e12, 1e13, 1e14)),
        *({"run": "a-s1", "N": 1e6, "C": c, "D": c / 6e6, "loss": 4.4 / c ** 0.05}
          for c in (1e12, 1e13)),
        *({"run": "b", "N": 2e6, "C": c, "D": c / 1.2e7, "loss": 3.9 / c ** 0.05}
          for c in (1e12, 1e13, 1e14)),
    ])
    grid = curve_grid(curves, points=21)
    assert grid.runs == ("a-s0", "a-s1", "b")
    merged = merge_replicates(grid, {"a-s0": 0, "a-s1": 0, "b": -1})
    assert merged.runs == ("a-s0+a-s1", "b") and merged.n.tolist() == [1e6, 2e6]
    both = np.isfinite(grid.loss[1])  # where the shorter seed has data
    np.testing.assert_allclose(merged.loss[0][both], np.sqrt(grid.loss[0] * grid.loss[1])[both])
    assert np.isinf(merged.loss[0][~both]).all() and (~both).sum() == 10
    np.testing.assert_array_equal(merged.loss[1], grid.loss[2])
    np.testing.assert_allclose(merged.d[0][both], grid.d[0][both])


def test_a_seed_with_no_curve_leaves_its_point_without_a_mean_curve() -> None:
    curves = pd.DataFrame([{"run": run, "N": 1e6, "C": c, "D": c / 6e6, "loss": 4.0 / c ** 0.05}
                           for run in ("a-s0", "b") for c in (1e12, 1e13)])
    grid = curve_grid(curves, points=5)
    # a-s1, a second seed of a-s0's point, wrote no eval rows: the mean of one seed is not it
    merged = merge_replicates(grid, {"a-s0": 0, "a-s1": 0, "b": -1})
    assert merged.runs == ("a-s0", "b") and np.isinf(merged.loss[0]).all()
    assert np.isfinite(merged.loss[1]).all()
