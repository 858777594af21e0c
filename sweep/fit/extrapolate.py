"""Extrapolation check: fit approach 3 on the small-compute runs, predict the held-out large ones.

A law that only interpolates is no use for planning a bigger run; this measures how far it carries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sweep.fit.approach3 import fit_law
from sweep.fit.points import joint_law_gap
from sweep.fit.table import MIN_RUNS


def extrapolation_check(runs: pd.DataFrame, holdout_factor: float
                        ) -> tuple[dict[str, Any] | None, str | None]:
    """Fit on runs with C <= max C / holdout_factor; relative errors on the rest.

    Runs are compared by their IsoFLOP budgets when all have one, so a run whose C rounds a
    hair above its budget is not held out alone.
    """
    c, n, d, loss = (runs[k].to_numpy(dtype=float) for k in ("C", "N", "D", "loss"))
    budget = runs["budget"].to_numpy(dtype=float)
    # Budgets only when every run has one: they may count FLOPs otherwise than C (budget.flops
    # is exact FLOPs, C is 6ND), so one threshold over a mix of the two would mean nothing.
    scale = budget if np.isfinite(budget).all() else c
    threshold = scale.max() / holdout_factor
    fit = scale <= threshold * (1.0 + 1e-9)
    held = ~fit
    if fit.sum() < MIN_RUNS or len(np.unique(n[fit])) < 3 or len(np.unique(d[fit])) < 3:
        return None, (f"{fit.sum()} runs have C <= {threshold:.3g} (max C / {holdout_factor:g}); "
                      f"fitting needs {MIN_RUNS} with three or more N and D: lower "
                      "--holdout-factor or add small runs")
    gap = joint_law_gap(n[fit], d[fit], "A/N^alpha and B/D^beta")
    if gap is not None:
        return None, (f"the {fit.sum()} runs with C <= {threshold:.3g} (max C / "
                      f"{holdout_factor:g}) cannot be fitted: {gap}")
    law, optima = fit_law(n[fit], d[fit], loss[fit])
    predicted = law.loss(n, d)
    rel = predicted / loss - 1.0
    rows = [{"run": r, "N": float(a), "D": float(b), "C": float(x), "loss": float(y),
             "predicted": float(p), "rel_error": float(e), "held_out": bool(h)}
            for r, a, b, x, y, p, e, h in zip(runs["run"], n, d, c, loss, predicted, rel, held,
                                              strict=True)]
    return {"method": "approach3", "holdout_factor": holdout_factor, "threshold_C": threshold,
            "n_fit": int(fit.sum()), "n_held_out": int(held.sum()), "law": law.values(),
            "converged": optima[0].converged,
            "mean_abs_rel_error": float(np.abs(rel[held]).mean()),
            "max_abs_rel_error": float(np.abs(rel[held]).max()),
            "mean_rel_error": float(rel[held].mean()),
            "fit_mean_abs_rel_error": float(np.abs(rel[fit]).mean()), "runs": rows}, None
