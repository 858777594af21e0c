"""Chinchilla approach 2: per compute budget, a parabola of loss in log N around the minimum.

Budgets whose minimum sits at the edge of their grid are flagged and, by default, left out of the
N_opt ~ C^a and D_opt ~ C^b fits; CIs come from resampling residuals with every budget's sizes kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sweep.fit.optimize import loglog_fit, percentile_ci
from sweep.fit.points import log_clusters

# Runs whose C lie within this many decades of a neighbour share a budget when no budget column
# is given: step rounding moves a run's C by well under 1 %, and IsoFLOP budgets sit >= 0.1 apart.
BUDGET_GAP_DECADES = 0.05
# A "budget" whose runs spread wider than this is not an IsoFLOP slice at all.
BUDGET_MAX_SPAN_DECADES = 0.2
MIN_SIZES = 3
# Runs that land close in C by chance (a grid over N and tokens per parameter) can form a cluster
# of 3; a parabola through 3 points fits them exactly and says nothing. A cluster needs one more.
MIN_BINNED_RUNS = MIN_SIZES + 1


def assign_budgets(runs: pd.DataFrame, source: str | None = None) -> tuple[np.ndarray, str]:
    """Budget C per run (NaN where a run belongs to no usable budget) and how it was found.

    `source` names the budget column when the table has one; runs without a value in it are
    left out. Without one, C is binned in log space.
    """
    given = runs["budget"].notna().to_numpy()
    if given.any():
        left = int((~given).sum())
        return runs["budget"].to_numpy(dtype=float), (
            (source or "the budget column")
            + (f"; {left} runs without a budget left out" if left else ""))
    c = runs["C"].to_numpy(dtype=float)
    ids = log_clusters(c, BUDGET_GAP_DECADES)
    budget = np.full(len(c), np.nan)
    for gid in np.unique(ids):
        members = ids == gid
        span = np.log10(c[members].max() / c[members].min())
        if members.sum() >= MIN_BINNED_RUNS and span <= BUDGET_MAX_SPAN_DECADES:
            budget[members] = float(np.exp(np.log(c[members]).mean()))
    return budget, (f"C binned (runs within {BUDGET_GAP_DECADES} decades share a budget; "
                    f"{MIN_BINNED_RUNS} or more runs make one)")


def fit_budget(n: np.ndarray, d: np.ndarray, loss: np.ndarray, window_decades: float
               ) -> dict[str, Any] | str:
    """Parabola of loss in ln N over the window around the empirical minimum, or a reason."""
    if len(np.unique(n)) < MIN_SIZES:
        return f"{len(np.unique(n))} model sizes; a parabola needs {MIN_SIZES}"
    x, y = np.log(n), loss
    k = int(np.argmin(y))
    dist = np.abs(x - x[k])
    inside = dist <= window_decades * np.log(10.0)
    if len(np.unique(x[inside])) < MIN_SIZES:
        # Too few sizes in the window: widen it to the nearest three distinct sizes.
        nearest = np.sort(np.unique(dist))[:MIN_SIZES]
        inside = dist <= nearest[-1]
    p2, p1, p0 = np.polyfit(x[inside], y[inside], 2)
    if p2 <= 0:
        return "loss is not convex in log N around its minimum"
    vertex = -p1 / (2.0 * p2)
    width = x.max() - x.min()
    if not x.min() - width <= vertex <= x.max() + width:
        # A near-flat parabola: its vertex says nothing of N_opt (and exp() of it over- or
        # underflows), which an edge flag alone would not keep out of --include-edge fits.
        return ("the parabola's minimum lies more than the grid's width outside the sizes run "
                "(loss almost flat in log N)")
    edge = bool(x[k] in (x.min(), x.max()) or not x.min() < vertex < x.max())
    # D along the budget, at the vertex: quadratic in ln N, as D = C / f(N) is with exact FLOPs
    # per token f (a straight line only when f is proportional to N, C = 6ND)
    n_opt = float(np.exp(vertex))
    d_opt = float(np.exp(np.polyval(np.polyfit(x, np.log(d), 2), vertex)))
    return {"N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt,
            "L_min": float(p0 + p1 * vertex + p2 * vertex**2), "edge": edge,
            "points": int(len(x)), "window_points": int(inside.sum()),
            "parabola": [float(p0), float(p1), float(p2)],
            "window": [float(np.exp(x[inside].min())), float(np.exp(x[inside].max()))]}


def fit_approach2(
    runs: pd.DataFrame, *, window_decades: float, include_edge: bool, bootstrap: int,
    rng: np.random.Generator, budget_source: str | None = None,
) -> tuple[dict[str, Any] | None, str | None, np.ndarray]:
    """(report section, None, budget per run) or (None, reason it cannot be fitted, budgets).

    budget_source: what the runs' budget column holds, for the report (see assign_budgets)."""
    budget, how = assign_budgets(runs, budget_source)
    groups = [(c, np.flatnonzero(budget == c)) for c in np.unique(budget[np.isfinite(budget)])]
    n, d, loss = (runs[k].to_numpy(dtype=float) for k in ("N", "D", "loss"))
    budgets, skipped, used = [], {}, []
    for c, idx in groups:
        fit = fit_budget(n[idx], d[idx], loss[idx], window_decades)
        if isinstance(fit, str):
            skipped[f"{c:.3g}"] = fit
            continue
        fit["used"] = include_edge or not fit["edge"]
        budgets.append({"C": float(c), **fit})
        if fit["used"]:
            used.append((c, idx))
    if len(used) < 2:
        edge = sum(b["edge"] for b in budgets)
        return None, (f"{len(used)} usable budgets (found via {how}; {len(budgets)} fitted, "
                      f"{edge} with the minimum at the grid edge); N_opt ~ C^a needs 2 or more: "
                      "widen the size grids, add budgets, or pass --include-edge"), budget
    c_used = np.array([c for c, _ in used])
    fits = [b for b in budgets if b["used"]]
    n_fit = loglog_fit(c_used, np.array([b["N_opt"] for b in fits]))
    d_fit = loglog_fit(c_used, np.array([b["D_opt"] for b in fits]))
    samples = _bootstrap(used, n, d, loss, window_decades, include_edge, bootstrap, rng)
    ci = {"a": percentile_ci(samples[:, 0]), "b": percentile_ci(samples[:, 1])} if len(
        samples) else {}
    warning = None
    if bootstrap and not len(samples):
        warning = ("no confidence intervals: every budget used has 3 runs, which its parabola "
                   "fits exactly, so there are no residuals to resample; add sizes per budget")
    return {"a": n_fit["slope"], "b": d_fit["slope"], "ci95": ci, "N_fit": n_fit,
            **({"warning": warning} if warning else {}),
            "D_fit": d_fit, "bootstrap": len(samples), "window_decades": window_decades,
            "include_edge": include_edge, "budgets_from": how, "budgets": budgets,
            "budgets_skipped": skipped}, None, budget


def _bootstrap(used: list[tuple[float, np.ndarray]], n: np.ndarray, d: np.ndarray,
               loss: np.ndarray, window: float, include_edge: bool, draws: int,
               rng: np.random.Generator) -> np.ndarray:
    """(a, b) per draw: every budget's loss redrawn about a smooth fit, its sizes kept.

    Not runs resampled with replacement: that leaves 3-4 distinct sizes in a window the real fit
    sees 5-7 in, and measures how unstable near-exact 3-point parabolas are (on synthetic grids,
    intervals ~9x wider than the estimate's real spread). Here each budget's loss is its quadratic
    in ln N over all its runs plus residuals drawn from every budget's, pooled (eval noise is
    about the same at every budget) and scaled up for the 3 coefficients each quadratic fitted.
    """
    smooth, pooled = [], []
    for _, idx in used:
        x = np.log(n[idx])
        smooth.append(np.polyval(np.polyfit(x, loss[idx], 2), x))
        if len(idx) > 3:
            pooled.append((loss[idx] - smooth[-1]) * np.sqrt(len(idx) / (len(idx) - 3)))
    residuals = np.concatenate(pooled) if pooled else np.empty(0)
    out = []
    for _ in range(draws if residuals.size else 0):
        cs, n_opt, d_opt = [], [], []
        for (c, idx), fitted in zip(used, smooth, strict=True):
            fit = fit_budget(n[idx], d[idx], fitted + rng.choice(residuals, len(idx)), window)
            # a draw keeps the budgets the real fit would use
            if not isinstance(fit, str) and (include_edge or not fit["edge"]):
                cs.append(c)
                n_opt.append(fit["N_opt"])
                d_opt.append(fit["D_opt"])
        if len(cs) >= 2:
            out.append((loglog_fit(np.array(cs), np.array(n_opt))["slope"],
                        loglog_fit(np.array(cs), np.array(d_opt))["slope"]))
    return np.array(out).reshape(-1, 2)
