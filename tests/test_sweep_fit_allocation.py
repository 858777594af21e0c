"""Approach 3's allocation with C in exact FLOPs: the closed form when FLOPs per token are 6 N,
and, on exact-FLOP IsoFLOP budgets, the optimum approach 2 measures (a + b no longer 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from sweep.fit.allocation import exact_allocation, flops_per_token_curve
from sweep.fit.analysis import FitOptions, _exact_allocation, fit_report
from sweep.fit.approach3 import fit_approach3
from sweep.fit.synthetic import EPOCH_LAW
from sweep.fit.table import Columns, load

LAW = np.array([EPOCH_LAW.E, EPOCH_LAW.A, EPOCH_LAW.B, EPOCH_LAW.alpha, EPOCH_LAW.beta])
VOCAB = 8192
BUDGETS = (1e16, 3e16, 1e17, 3e17, 1e18)


def _flops_per_token(n: np.ndarray) -> np.ndarray:
    # A GPT ladder's shape (n_layer = d_model / 64, N = 12 n_layer d_model^2): forward+backward
    # matmuls, 6 N, plus the output head's 6 V d_model, which is most of it for small models.
    d_model = (64.0 * np.asarray(n, dtype=float) / 12.0) ** (1.0 / 3.0)
    return 6.0 * n + 6.0 * VOCAB * d_model


def _true_optimum(c: float) -> float:
    """N minimising the law at fixed exact C, by a bounded scalar search (no grid)."""
    def loss(log_n: float) -> float:
        n = np.exp(log_n)
        return float(EPOCH_LAW.loss(n, c / _flops_per_token(n)))
    return float(np.exp(minimize_scalar(loss, bounds=(np.log(1e5), np.log(1e10)),
                                        method="bounded", options={"xatol": 1e-9}).x))


def test_with_six_n_flops_per_token_it_is_the_closed_form():
    n = np.geomspace(1e6, 1e8, 6)
    f = flops_per_token_curve(n, 6.0 * n)
    compute = [1e17, 1e18, 1e19]
    out = exact_allocation(LAW, np.empty((0, 5)), compute, f, (1e6, 1e8))
    assert out["a"] == pytest.approx(EPOCH_LAW.a, abs=1e-3)
    assert out["b"] == pytest.approx(EPOCH_LAW.b, abs=1e-3)
    n_opt, d_opt = EPOCH_LAW.optimal(np.array(compute))
    got = [r["N_opt"] for r in out["optima"]]
    np.testing.assert_allclose(got, n_opt, rtol=0.01)  # the search's grid step is 0.5 %
    assert out["ci95"] == {}


def test_no_curve_without_two_sizes_with_exact_flops():
    assert flops_per_token_curve([1e6, 1e6, 2e6], [6e6, 6e6, np.nan]) is None


def test_optimum_off_the_search_range_is_missing_not_the_edge():
    n = np.geomspace(1e6, 1e8, 6)
    f = flops_per_token_curve(n, 6.0 * n)
    flat = LAW.copy()
    flat[3] = -0.1  # alpha < 0: loss falls without end as N shrinks
    out = exact_allocation(flat, np.empty((0, 5)), [1e17, 1e18], f, (1e6, 1e8))
    assert np.isnan(out["a"]) and all(np.isnan(r["N_opt"]) for r in out["optima"])


def _exact_isoflop_csv(path: Path) -> Path:
    """What sweep.collect gives for a budget.flops sweep: D = C / exact FLOPs per token, the C
    column 6ND, and the budget in budget_kind / budget_value."""
    rows = []
    for c in BUDGETS:
        n_opt = _true_optimum(c)
        for i, n in enumerate(np.geomspace(n_opt / 8, n_opt * 8, 7)):
            d = c / _flops_per_token(n)
            rows.append({"run_id": f"c{c:.0e}-{i}", "N": n, "D": d, "C": 6.0 * n * d,
                         "loss": float(EPOCH_LAW.loss(n, d)), "budget_kind": "flops",
                         "budget_value": c, "flops_exact": _flops_per_token(n) * d})
    pd.DataFrame(rows).to_csv(path / "runs.csv", index=False)
    return path / "runs.csv"


def test_approaches_2_and_3_agree_on_exact_flop_budgets(tmp_path: Path):
    """The runs' own budgets are found without --budget-col; approach 2 and approach 3's exact
    allocation both land on the true exact-FLOP optimum, whose b is far from 6ND's 1 - a."""
    data = load(_exact_isoflop_csv(tmp_path), Columns())
    assert data.budget_source.startswith("each run's budget.flops")
    report = fit_report(data, FitOptions(bootstrap=0, methods=("approach3", "approach2")))
    log_c = np.log(BUDGETS)
    n_true = np.array([_true_optimum(c) for c in BUDGETS])
    d_true = np.array(BUDGETS) / _flops_per_token(n_true)
    a_true = np.polyfit(log_c, np.log(n_true), 1)[0]
    b_true = np.polyfit(log_c, np.log(d_true), 1)[0]
    assert a_true + b_true > 1.04  # exact FLOPs per token are not proportional to N
    two, exact = report["approach2"], report["approach3"]["allocation_exact"]
    assert two["budgets_from"].startswith("each run's budget.flops")
    assert [b["C"] for b in two["budgets"]] == list(BUDGETS)
    assert (two["a"], two["b"]) == (pytest.approx(a_true, abs=0.01),
                                    pytest.approx(b_true, abs=0.01))
    assert (exact["a"], exact["b"]) == (pytest.approx(a_true, abs=0.003),
                                        pytest.approx(b_true, abs=0.003))
    assert exact["over"] == "approach 2's budgets"
    # The 6ND allocation answers another question: its b is 1 - a.
    assert report["approach3"]["b"] == pytest.approx(1 - report["approach3"]["a"])
    assert abs(report["approach3"]["b"] - b_true) > 0.05


def test_a_non_physical_law_has_no_exact_allocation(tmp_path: Path):
    """Loss rising with N (runs far from convergence, as in the CPU smoke sweep): approach 3
    warns and its 6ND allocation is null, so the exact one is left out, not printed as nan."""
    rows = []
    for n in (1e6, 3e6, 1e7):
        for d in (5e4, 1e5, 2e5):
            rows.append({"run_id": f"n{n:.0e}-d{d:.0e}", "N": n, "D": d, "C": 6 * n * d,
                         "loss": 2.0 + 0.1 * np.log(n) + 50 / d**0.2,
                         "flops_exact": _flops_per_token(n) * d})
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    report = fit_report(load(tmp_path / "runs.csv", Columns()),
                        FitOptions(bootstrap=0, methods=("approach3",)))
    assert "non-physical" in report["approach3"]["warning"]
    assert "allocation_exact" not in report["approach3"]


def test_one_budget_or_bad_exact_flops_give_no_exact_allocation(tmp_path: Path):
    """One budget (step rounding spreads its C by 0.07 %): no slope to measure, where a search
    over that spread reported a = 0, b = 1 with a zero-width interval. A zero flops_exact is
    left out, not a crash."""
    data = load(_exact_isoflop_csv(tmp_path), Columns())
    runs = data.runs.copy()
    fit = fit_approach3(runs["N"], runs["D"], runs["loss"], bootstrap=0, seed=0, compute=[1e18])
    one = runs[runs["budget"] == 1e17].copy()
    one["D"] = np.floor(one["D"] / 65536) * 65536  # whole steps of a 64-sequence batch
    assert _exact_allocation(fit, one, None) is None
    runs.loc[0, "flops_per_token"] = 0.0
    section = _exact_allocation(fit, runs, None)
    assert section["over"] == "the runs' exact C" and section["C_range"][0] > 0
    assert section["a"] == pytest.approx(fit.law.a, abs=0.1)
