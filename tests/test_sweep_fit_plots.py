"""The fitter's plots: each report section yields its PNG, and partial reports never crash.

The report is hand-built from the synthetic table's true law, not fitted (fast, no optimiser).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweep.fit.figures import loss_label
from sweep.fit.plots import _contours, _loss_vs_compute, write_plots
from sweep.fit.residuals import residuals_figure
from sweep.fit.synthetic import EPOCH_LAW, isoflop_table

ALL = ["isoflop.png", "loss_vs_compute.png", "optimal_allocation.png",
       "approach3_contours.png", "extrapolation.png", "residuals.png"]
# Kaplan et al. 2020, Table 2: their L(N, D) fit (eq. 1.5).
KAPLAN_ND = {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103}


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    budgets = (1e16, 1e17, 1e18)
    runs = isoflop_table(budgets=budgets, sizes_per_budget=7)
    curves = isoflop_table(budgets=budgets, sizes_per_budget=7, curve_points=4)
    return runs, curves.rename(columns={"run_id": "run"})


def _fit(c: np.ndarray, v: np.ndarray) -> dict:
    slope, intercept = np.polyfit(np.log(c), np.log(v), 1)
    return {"slope": float(slope), "intercept": float(intercept)}


def _report(runs: pd.DataFrame) -> dict:
    law = EPOCH_LAW
    budgets = []
    for c, group in runs.groupby("budget"):
        x = np.log(group["N"].to_numpy())
        p2, p1, p0 = np.polyfit(x, group["loss"].to_numpy(), 2)
        x_min = -p1 / (2 * p2)
        n_opt = float(np.exp(x_min))
        budgets.append({"C": float(c), "N_opt": n_opt, "D_opt": float(c) / (6 * n_opt),
                        "L_min": float(p0 + p1 * x_min + p2 * x_min**2),
                        "edge": bool(x_min >= x.max()), "used": True,
                        "parabola": [float(p0), float(p1), float(p2)],
                        "window": [float(group["N"].min()), float(group["N"].max())]})
    budgets[-1]["edge"] = True  # one hollow edge budget, as a real sweep may have
    cs = np.array([b["C"] for b in budgets])
    n_fit = _fit(cs, np.array([b["N_opt"] for b in budgets]))
    d_fit = _fit(cs, np.array([b["D_opt"] for b in budgets]))
    best = runs.loc[runs.groupby("budget")["loss"].idxmin()]
    allocation = []
    for c in cs:
        n_opt, d_opt = (float(v) for v in law.optimal(c))
        allocation.append({"C": float(c), "N_opt": n_opt, "D_opt": d_opt,
                           "tokens_per_param": d_opt / n_opt,
                           "L_opt": float(law.loss(n_opt, d_opt)),
                           "ci95": {"N_opt": [0.8 * n_opt, 1.25 * n_opt],
                                    "D_opt": [0.8 * d_opt, 1.25 * d_opt]}})
    predicted = law.loss(runs["N"], runs["D"])
    largest = runs["budget"] == runs["budget"].max()
    extrapolation = [{"N": n, "D": d, "C": c, "loss": loss, "predicted": float(p),
                      "rel_error": float(p / loss - 1), "held_out": bool(h)}
                     for n, d, c, loss, p, h in zip(runs["N"], runs["D"], runs["C"], runs["loss"],
                                                    predicted, largest, strict=True)]
    frontier = runs.groupby("budget")["loss"].min()
    return {
        "approach3": {**law.values(), "ci95": {"a": [0.49, 0.52]}, "allocation": allocation},
        "approach2": {"a": n_fit["slope"], "b": d_fit["slope"],
                      "ci95": {"a": [n_fit["slope"] - 0.02, n_fit["slope"] + 0.02]},
                      "N_fit": n_fit, "D_fit": d_fit, "budgets": budgets},
        "approach1": {"a": n_fit["slope"], "b": d_fit["slope"], "ci95": {},
                      "N_fit": n_fit, "D_fit": d_fit,
                      "points": [{"C": float(r.C), "N_opt": float(r.N), "D_opt": float(r.D),
                                  "loss": float(r.loss)} for r in best.itertuples()]},
        "kaplan": {"L_C": {"with_offset": {"E": 1.8, "C_c": 1.7e19, "alpha_C": 0.18},
                           "without_offset": {"C_c": 7.5e23, "alpha_C": 0.095},
                           "points": [{"C": float(c), "loss": float(v)}
                                      for c, v in frontier.items()]}},
        "kaplan_nd": dict(KAPLAN_ND),
        "extrapolation": {"mean_abs_rel_error": float(np.mean([abs(r["rel_error"]) for r in
                                                                extrapolation if r["held_out"]])),
                          "runs": extrapolation},
        "skipped": {},
    }


def _check(names: list[str], expected: list[str], out: Path) -> None:
    assert sorted(names) == sorted(expected)
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no temporary files left
    for name in names:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(b"\x89PNG")


def test_full_report_writes_every_plot(tables, tmp_path: Path) -> None:
    runs, curves = tables
    _check(write_plots(_report(runs), runs, curves, tmp_path), ALL, tmp_path)


def test_approach3_only_without_curves(tables, tmp_path: Path) -> None:
    runs, _ = tables
    report = {"approach3": _report(runs)["approach3"],
              "skipped": {"approach2": "no budgets", "approach1": "too few runs"}}
    expected = ["loss_vs_compute.png", "optimal_allocation.png", "approach3_contours.png",
                "residuals.png"]
    _check(write_plots(report, runs, None, tmp_path), expected, tmp_path)


def test_residuals_are_each_runs_log_error_under_each_law(tables) -> None:
    runs, _ = tables
    by_c, by_n = residuals_figure(_report(runs), runs).axes
    series = {c.get_label().split(":")[0]: c for c in by_c.collections}
    assert sorted(series) == ["Kaplan L(N, D)", "approach 3"]
    # approach 3 here is the law the runs were drawn from: its residuals are the 1 % noise
    truth = np.log(EPOCH_LAW.loss(runs["N"], runs["D"]) / runs["loss"]).to_numpy()
    offsets = series["approach 3"].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], runs["C"])
    np.testing.assert_allclose(offsets[:, 1], 100 * truth)
    rms = 100 * np.sqrt(np.mean(truth**2))
    assert f"(rms {rms:.2f}%)" in series["approach 3"].get_label() and 0.5 < rms < 1.5
    assert len(series["Kaplan L(N, D)"].get_offsets()) == len(runs)
    # The same residuals against N in the second panel
    (against_n,) = [c for c in by_n.collections if c.get_label().startswith("approach 3")]
    np.testing.assert_allclose(against_n.get_offsets(), np.column_stack([runs["N"], 100 * truth]))


def test_residuals_draw_non_physical_laws_and_name_the_ones_left_off(tables) -> None:
    runs, _ = tables
    # A non-physical law is drawn (its residuals still say how it fits)
    report = {"kaplan_nd": {**KAPLAN_ND, "alpha_N": -0.1},
              "approach3": {**_report(runs)["approach3"], "alpha": -0.2}}
    assert len(residuals_figure(report, runs).axes[0].collections) == 2
    # One with a parameter missing is named in the legend as not drawn
    del report["kaplan_nd"]["D_c"]
    report["approach3"]["alpha"] = 800.0  # N^-800 underflows: L = E + B/D^beta, finite
    ax = residuals_figure(report, runs).axes[0]
    assert [c.get_label()[:10] for c in ax.collections] == ["approach 3"]
    (left_off,) = ax.get_legend().get_texts()[1:]
    assert left_off.get_text().startswith("Kaplan L(N, D)") and "not drawn" in left_off.get_text()
    report["approach3"]["alpha"] = -800.0  # overflows to inf at every run
    assert not residuals_figure(report, runs).axes[0].collections


def test_residuals_of_one_budget_get_a_span_around_its_c(tables) -> None:
    runs, _ = tables
    one = runs[runs["budget"] == runs["budget"].min()]
    one = one.assign(C=float(one["C"].iloc[0]))  # a single budget: one C for every run
    lo, hi = residuals_figure(_report(runs), one).axes[0].get_xlim()
    assert lo < one["C"].iloc[0] < hi and hi / lo == pytest.approx(1.5**2)


def test_contours_show_the_predicted_runs_beyond_the_data(tables) -> None:
    runs, _ = tables
    report = _report(runs)
    points = [(1e9, 2e10), (3e10, 6e11)]  # far past the largest run (N ~ 1e8, D ~ 2e10)
    report["approach3"]["predictions"] = [{"N": n, "D": d} for n, d in points]
    ax = _contours(report, runs).axes[0]
    stars = [c for c in ax.collections if c.get_label() == "--predict"]
    assert len(stars) == 1
    assert stars[0].get_offsets().tolist() == [list(p) for p in points]
    (n_lo, n_hi), (d_lo, d_hi) = ax.get_xlim(), ax.get_ylim()
    assert n_lo < runs["N"].min() and n_hi > 3e10 and d_lo < runs["D"].min() and d_hi > 6e11
    # Without predictions the axes hug the runs.
    del report["approach3"]["predictions"]
    ax = _contours(report, runs).axes[0]
    assert not [c for c in ax.collections if c.get_label() == "--predict"]
    assert ax.get_xlim()[1] == pytest.approx(3 * runs["N"].max())


def test_loss_vs_compute_draws_the_datas_floor_where_the_report_has_one(tables) -> None:
    runs, curves = tables
    report = _report(runs)
    assert not [line for line in _loss_vs_compute(report, runs, curves).axes[0].lines
                if line.get_label().startswith("window floor")]
    report["loss_floor"] = {"floor": 1.7, "floor_kind": "window floor"}
    (line,) = [line for line in _loss_vs_compute(report, runs, curves).axes[0].lines
               if line.get_label().startswith("window floor")]
    assert line.get_label() == "window floor 1.7" and set(line.get_ydata()) == {1.7}


def test_empty_report_writes_loss_vs_compute(tables, tmp_path: Path) -> None:
    runs, curves = tables
    report = {"skipped": {"approach3": "failed", "approach2": "no budgets"}}
    _check(write_plots(report, runs, curves, tmp_path), ["loss_vs_compute.png"], tmp_path)


def test_partial_sections_do_not_crash(tables, tmp_path: Path) -> None:
    runs, _ = tables
    runs = runs.assign(budget=np.nan)  # budgets could not be formed
    report = {
        # An incomplete law is drawn without it; unusable predictions are left out.
        "approach3": {"E": 1.8, "A": 400.0, "alpha": 0.3,
                      "predictions": [{"N": 1e9}, "junk", {"N": -1, "D": 1e9}]},
        "approach2": {"budgets": [{"C": 1e17, "edge": True}, {"parabola": [1, 2]}]},
        "approach1": {"points": [{"C": 1e17}], "N_fit": {"slope": 0.5}},
        "kaplan": {"L_N": {}, "L_C": {"without_offset": {"C_c": 1e4, "alpha_C": 0.05}}},
        "extrapolation": {"runs": [{"loss": 3.0}]},
    }
    _check(write_plots(report, runs, None, tmp_path), ALL, tmp_path)


def test_the_loss_axis_names_a_mapped_loss_column():
    # --loss-col val_bpb is bits per byte: the axes said nats/token whatever the column
    assert loss_label({"columns": {"loss": "loss"}}) == "loss (nats/token)"
    assert loss_label({"columns": {"loss": "val_bpb"}}) == "val_bpb"
