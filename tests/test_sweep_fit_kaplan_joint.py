"""Kaplan's joint L(N, D): their own numbers back, exact recovery, covering intervals, an exact
gradient, the compute split and data need it implies, and the warnings and skips of the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from sweep.fit.analysis import FitOptions, fit_report
from sweep.fit.kaplan_joint import (
    PENALTY,
    KaplanLaw,
    fit_kaplan_joint,
    objective,
    start_grid,
)
from sweep.fit.synthetic import EPOCH_LAW, isoflop_table
from sweep.fit.table import Columns, load

# Kaplan et al. 2020, Table 2, their fit of L(N, D) (eq. 1.5).
KAPLAN_LAW = KaplanLaw(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103)


def _grid(law: KaplanLaw, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, ...]:
    # 6 sizes x 5 token counts, each 5 x 300 apart (a horizons-like sweep)
    n = np.repeat(np.geomspace(1e6, 3e8, 6), 5)
    d = np.tile(np.geomspace(1e8, 3e10, 5), 6)
    rng = np.random.default_rng(seed)
    return n, d, law.loss(n, d) * np.exp(noise * rng.standard_normal(len(n)))


def test_kaplans_table_2_gives_their_data_requirement():
    # Their eq. 4.4, derived from this fit at a 2 % penalty: D >~ 5e3 N^0.74
    values = KAPLAN_LAW.values()
    assert values["data_exponent"] == pytest.approx(0.738, abs=1e-3)
    assert 5e3 < values["data_coefficient"] < 6e3
    assert values["a"] == pytest.approx(0.103 / 0.179)
    assert values["a"] + values["b"] == pytest.approx(1.0)
    assert KAPLAN_LAW.warning() is None


def test_data_coefficient_is_where_the_penalty_is_exactly_two_percent():
    for n in (1e6, 1e8, 1e10):
        d = KAPLAN_LAW.data_coefficient() * n**KAPLAN_LAW.ratio
        at_d, converged = KAPLAN_LAW.loss(n, d), KAPLAN_LAW.loss(n, np.inf)
        assert at_d / converged == pytest.approx(1 + PENALTY, rel=1e-12)


def test_a_is_the_slope_of_the_compute_optimal_n():
    def n_opt(c: float) -> float:
        res = minimize_scalar(lambda ln_n: np.log(KAPLAN_LAW.loss(np.exp(ln_n),
                                                                   c / (6 * np.exp(ln_n)))),
                              bounds=(np.log(1e3), np.log(1e18)), method="bounded",
                              options={"xatol": 1e-10})
        return float(np.exp(res.x))
    slope = np.log(n_opt(1e24) / n_opt(1e20)) / np.log(1e4)
    assert slope == pytest.approx(KAPLAN_LAW.a, abs=1e-6)


def test_gradient_is_exact():
    n, d, loss = _grid(KAPLAN_LAW, noise=0.02)
    x = start_grid()[::37] + 0.01
    rows = np.zeros(len(x), dtype=int)
    # delta 10 keeps every residual quadratic; 1e-3 puts most on the linear side of the Huber
    for delta in (10.0, 1e-3):
        fun = objective(np.log(n), np.log(d), np.log(loss), np.ones((1, len(n))), delta)
        _, grad = fun(x, rows)
        numeric = np.zeros_like(grad)
        for k in range(4):
            step = np.zeros(4)
            step[k] = 1e-6
            numeric[:, k] = (fun(x + step, rows)[0] - fun(x - step, rows)[0]) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_clean_runs_give_the_law_back_exactly():
    section = fit_kaplan_joint(*_grid(KAPLAN_LAW), bootstrap=20, rng=np.random.default_rng(0),
                               predict=[(1e10, 1e12)])
    (row,) = section["predictions"]
    assert row["loss"] == pytest.approx(float(KAPLAN_LAW.loss(1e10, 1e12)), rel=1e-9)
    for name, truth in KAPLAN_LAW.values().items():
        assert section[name] == pytest.approx(truth, rel=1e-6), name
    assert section["rms_log_residual"] < 1e-10
    assert section["converged"] and "warning" not in section
    assert section["bootstrap"] == 20 and section["starts"] == 576


def test_noisy_runs_give_intervals_that_cover_the_law():
    far = [(3e9, 1e11), (1e11, 3e12)]  # 10x and 300x past the largest N, 3x and 100x past D
    section = fit_kaplan_joint(*_grid(KAPLAN_LAW, noise=0.01, seed=1), bootstrap=300,
                               rng=np.random.default_rng(1), predict=far)
    for (n, d), row in zip(far, section["predictions"], strict=True):
        truth = float(KAPLAN_LAW.loss(n, d))
        lo, hi = row["ci95"]["loss"]
        assert (row["N"], row["D"]) == (n, d) and lo < truth < hi and lo < row["loss"] < hi
        assert row["loss"] == pytest.approx(truth, rel=0.03)
    assert section["bootstrap"] == section["bootstrap_converged"] == 300
    for name in ("alpha_N", "alpha_D", "a", "data_exponent"):
        lo, hi = section["ci95"][name]
        assert lo < KAPLAN_LAW.values()[name] < hi, (name, lo, hi)
        assert lo < section[name] < hi
    assert section["alpha_N"] == pytest.approx(0.076, rel=0.1)


def test_runs_with_an_irreducible_loss_are_a_poor_fit():
    table = isoflop_table(EPOCH_LAW, noise=0.0)
    section = fit_kaplan_joint(table.N, table.D, table.loss, bootstrap=0,
                               rng=np.random.default_rng(0))
    assert section["rms_log_residual"] > 0.05
    assert section["warning"].startswith("poor fit (rms log residual 0.05")
    assert section["bootstrap"] == 0 and section["ci95"] == {}


def test_non_physical_and_degenerate_laws_are_flagged():
    law = KaplanLaw(N_c=1e10, D_c=1e9, alpha_N=-0.05, alpha_D=0.1)
    assert law.warning().startswith("non-physical fit: alpha_N=-0.05 (the loss does not fall")
    assert KaplanLaw.from_theta(np.array([1.0, 20.0, 0.0, 0.1])).warning().startswith(
        "degenerate fit")


def _fit(tmp_path, table: pd.DataFrame, bootstrap: int = 0) -> dict:
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    return fit_report(load(path, Columns()), FitOptions(bootstrap=bootstrap))


def test_two_token_counts_are_skipped_with_a_reason(tmp_path):
    n = np.repeat(np.geomspace(1e6, 3e8, 6), 2)
    d = np.tile([1e9, 1e10], 6)
    report = _fit(tmp_path, pd.DataFrame({"run_id": [f"r{i}" for i in range(12)], "N": n,
                                          "D": d, "loss": KAPLAN_LAW.loss(n, d)}))
    assert "kaplan_nd" not in report
    assert report["skipped"]["kaplan_nd"] == ("6 distinct N and 2 distinct D; Kaplan's L(N, D) "
                                              "needs 3 or more of each")
