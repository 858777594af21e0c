"""The optimal peak LR and global batch per compute budget, and their power laws in C.

DeepSeek LLM (arXiv 2401.02954, sec. 3.1) fitted eta_opt = k C^e and B_opt = k C^e to LR x batch
grids at several budgets; here each budget's optimum is the vertex of a quadratic of log loss in
(log LR, log batch), with intervals from residual draws, and DeepSeek's near-optimal band beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sweep.fit.optimize import loglog_fit, percentile_ci
from sweep.fit.points import log_clusters

AXES = ("lr", "batch")
# A parabola along an axis needs this many distinct values of it; the 2-D quadratic has 6
# coefficients, so it needs 3 of each and enough points to pin them (rank 6).
MIN_VALUES = 3
# Runs of one budget share its C exactly when the sweep made them; a table from elsewhere may
# round it. Budgets of one LR sweep sit a factor 2 or more apart.
SAME_C_DECADES = 0.01
# A surface whose runs' losses all lie within this (relative) of each other is a plateau: its
# vertex would be set by rounding and row order, not by the loss
FLAT_LOSS = 1e-4


@dataclass(frozen=True)
class OptimumOptions:
    """The knobs of `python -m sweep.fit.hparams` (its flags), with their defaults."""

    # LR and batch values within this of the best run's are fitted: +-2 steps of a factor-2
    # grid (as approach 2's window in N), so the steep side of a divergence skews it less
    window_decades: float = 0.75
    include_edge: bool = False  # use optima at (or beyond) the edge of their grid in the laws
    near_optimal: float = 0.0025  # DeepSeek's band: loss within this fraction of the minimum
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class Surface:
    """One quadratic of log loss around a budget's best run: over both axes ("2d") or one."""

    form: str  # "2d" | "lr" | "batch"
    rows: np.ndarray  # the budget's runs it is fitted on
    origin: tuple[float, float]  # (log10 LR, log10 batch) of the best run: the coordinates' zero


def _design(form: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    one = np.ones_like(u)
    if form == "2d":
        return np.column_stack([one, u, v, u * u, v * v, u * v])
    w = u if form == "lr" else v
    return np.column_stack([one, w, w * w])


def _coefficients(s: Surface, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """Least-squares coefficients of the surface on (x, y, z)[rows], or None if rank-deficient."""
    a = _design(s.form, x[s.rows] - s.origin[0], y[s.rows] - s.origin[1])
    coef, _, rank, _ = np.linalg.lstsq(a, z[s.rows], rcond=None)
    return coef if rank == a.shape[1] else None


def _vertex(form: str, coef: np.ndarray) -> tuple[dict[str, float], float] | None:
    """({axis: offset from the origin, log10}, log loss there), or None: no minimum (a saddle,
    a ridge, or a parabola open downwards)."""
    if form == "2d":
        hessian = np.array([[2 * coef[3], coef[5]], [coef[5], 2 * coef[4]]])
        if hessian[0, 0] <= 0 or np.linalg.det(hessian) <= 0:
            return None
        du, dv = np.linalg.solve(hessian, -coef[1:3])
        value = coef[0] + coef[1] * du + coef[2] * dv + coef[3] * du**2 + coef[4] * dv**2 \
            + coef[5] * du * dv
        return {"lr": float(du), "batch": float(dv)}, float(value)
    if coef[2] <= 0:
        return None
    dw = -coef[1] / (2 * coef[2])
    return {form: float(dw)}, float(coef[0] + coef[1] * dw + coef[2] * dw**2)


def surfaces(x: np.ndarray, y: np.ndarray, z: np.ndarray, window: float) -> list[Surface] | str:
    """The quadratics that may locate a budget's optimum, or why none can: the 2-D one over both
    axes where 3 or more of each lie in the window around the best run, and a parabola along
    each axis that has 3 values along one line of the other (a cross-shaped grid, or the
    fallback where the 2-D surface has no minimum: loss falling to the grid's edge in batch)."""
    k = int(np.argmin(z))
    near = (np.abs(x - x[k]) <= window + 1e-9) & (np.abs(y - y[k]) <= window + 1e-9)
    full = Surface("2d", np.flatnonzero(near), (float(x[k]), float(y[k])))
    found = []
    if min(len(np.unique(x[near])), len(np.unique(y[near]))) >= MIN_VALUES and \
            _coefficients(full, x, y, z) is not None:
        found.append(full)
    for form, along, held in (("lr", x, y), ("batch", y, x)):
        # the line through the window with the most values of this axis (a cross-shaped grid's
        # best run may sit on the other arm); of equals, the one holding the lowest loss
        def line(value: float) -> np.ndarray:
            return np.flatnonzero(near & (held == value))  # noqa: B023 (used at once)

        rows = max((line(v) for v in np.unique(held[near])),
                   key=lambda r: (len(np.unique(along[r])), -z[r].min()))
        if len(np.unique(along[rows])) >= MIN_VALUES:
            best = int(rows[np.argmin(z[rows])])
            found.append(Surface(form, rows, (float(x[best]), float(y[best]))))
    if found:
        return found
    return (f"{len(np.unique(x[near]))} LRs and {len(np.unique(y[near]))} batch sizes lie within "
            f"{window:g} decades of the best run; a parabola needs {MIN_VALUES} values of one "
            "(along one line of the other)")


def locate(s: Surface, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict[str, Any] | str:
    """The optimum one surface gives, with edge flags per axis, or why it gives none."""
    spread = float(np.ptp(z[s.rows]))
    if spread < FLAT_LOSS:
        return (f"the loss is flat (its runs within {100 * spread:.2g} % of each other): the "
                "grid does not see the optimum")
    coef = _coefficients(s, x, y, z)
    vertex = None if coef is None else _vertex(s.form, coef)
    if vertex is None:
        where = "(log LR, log batch)" if s.form == "2d" else f"log {s.form}"
        return (f"log loss has no minimum in {where} around the best run: the grid does not "
                "bracket the optimum")
    offsets, log_loss = vertex
    out: dict[str, Any] = {"loss": float(np.exp(log_loss)), "edge": {}}
    for axis, offset in offsets.items():
        values = (x if axis == "lr" else y)
        origin = s.origin[0 if axis == "lr" else 1]
        lo, hi, at = values.min(), values.max(), origin + offset
        if not lo - (hi - lo) <= at <= hi + (hi - lo):
            return (f"the {axis} parabola's minimum lies more than the grid's width outside the "
                    f"{axis} values run (loss almost flat in log {axis})")
        out[axis] = float(10.0**at)
        # the best run at the end of its grid, or a vertex beyond it: only a bound
        out["edge"][axis] = bool(origin in (lo, hi) or not lo < at < hi)
    return out


@dataclass
class Budget:
    """The runs of one model at one compute budget, and the fit of their optimum."""

    n: float
    c: float
    rows: np.ndarray  # into the sweep's table
    fits: list[Surface] | str  # the surfaces, or why there are none


def budgets(table: pd.DataFrame, window: float) -> list[Budget]:
    """Group runs by (N, C) (C within SAME_C_DECADES) and choose each group's surfaces."""
    out = []
    for n in np.unique(table["N"].to_numpy(dtype=float)):
        idx = np.flatnonzero(table["N"].to_numpy(dtype=float) == n)
        c = table["C"].to_numpy(dtype=float)[idx]
        ids = log_clusters(c, SAME_C_DECADES)
        for gid in np.unique(ids):
            rows = idx[ids == gid]
            x, y, z = _coordinates(table.iloc[rows])
            out.append(Budget(float(n), float(np.median(c[ids == gid])), rows,
                              surfaces(x, y, z, window)))
    return sorted(out, key=lambda b: (b.c, b.n))


def _coordinates(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.log10(rows["lr"].to_numpy(dtype=float)),
            np.log10(rows["batch"].to_numpy(dtype=float)),
            np.log(rows["loss"].to_numpy(dtype=float)))


def _optimum(budget: Budget, x: np.ndarray, y: np.ndarray, z: np.ndarray
             ) -> dict[str, Any] | str:
    """A budget's optimum: the 2-D surface's vertex, or where it has none (or cannot be fitted)
    whatever the parabolas along each axis locate; `unlocated` names an axis none could."""
    if isinstance(budget.fits, str):
        return budget.fits
    reasons = []
    for s in budget.fits:
        if s.form != "2d":
            continue
        found = locate(s, x, y, z)
        if not isinstance(found, str):
            return {**found, "form": ["2d"]}
        reasons.append(found)
    merged: dict[str, Any] = {"edge": {}, "form": [], "unlocated": {}}
    for s in budget.fits:
        if s.form == "2d":
            continue
        found = locate(s, x, y, z)
        if isinstance(found, str):
            merged["unlocated"][s.form] = found
            continue
        merged["form"].append(s.form)
        merged["edge"].update(found.pop("edge"))
        merged["loss"] = min(found.pop("loss"), merged.get("loss", np.inf))
        merged.update(found)
    if not merged["form"]:
        return "; ".join(dict.fromkeys(reasons + list(merged["unlocated"].values())))
    if not merged["unlocated"]:
        del merged["unlocated"]
    else:
        # one axis has no minimum: the other's optimum is taken along one value of it, which
        # may be far from the joint optimum (the report warns)
        for s in budget.fits:
            if s.form in merged["form"]:
                other = "batch" if s.form == "lr" else "lr"
                held = s.origin[1] if s.form == "lr" else s.origin[0]
                merged.setdefault("conditional", {})[s.form] = {other: float(10.0**held)}
    return merged


def _law(c: np.ndarray, value: np.ndarray) -> dict[str, float] | None:
    if len(np.unique(c)) < 2:
        return None
    fit = loglog_fit(c, value)
    return {"coefficient": float(np.exp(fit["intercept"])), "exponent": fit["slope"]}


def _used(found: dict[str, Any], axis: str, include_edge: bool) -> bool:
    return axis in found and (include_edge or not found["edge"][axis])


def near_optimal_laws(table: pd.DataFrame, groups: list[Budget], tolerance: float
                      ) -> dict[str, Any]:
    """DeepSeek's own estimate: per budget, every run within `tolerance` (relative) of its lowest
    loss is near-optimal, and one log-log line through all of them per axis."""
    keep = np.zeros(len(table), dtype=bool)
    loss = table["loss"].to_numpy(dtype=float)
    for b in groups:
        keep[b.rows] = loss[b.rows] <= loss[b.rows].min() * (1.0 + tolerance)
    c = np.empty(len(table))
    for b in groups:
        c[b.rows] = b.c
    out: dict[str, Any] = {"tolerance": tolerance, "runs": int(keep.sum())}
    for axis in AXES:
        if not varied(table, groups, axis):
            continue  # the band would trace the design (say, each budget's one batch)
        law = _law(c[keep], table[axis].to_numpy(dtype=float)[keep])
        if law is not None and np.unique(table[axis].to_numpy(dtype=float)[keep]).size > 1:
            out[axis] = law
    return out


def varied(table: pd.DataFrame, groups: list[Budget], axis: str) -> bool:
    """Whether any budget's runs try more than one value of `axis`."""
    return any(table[axis].iloc[b.rows].nunique() > 1 for b in groups)


def fit_optimum(table: pd.DataFrame, options: OptimumOptions) -> dict[str, Any]:
    """The report's sections: per-budget optima, the laws eta_opt(C) and B_opt(C) with 95 %
    intervals, DeepSeek's near-optimal band, and what was skipped and why.

    `table` has float columns N, C (the compute the hparams rules see), lr, batch (tokens) and
    loss, one row per run.
    """
    groups = budgets(table, options.window_decades)
    x, y, z = _coordinates(table)
    rows, optima = [], []
    for b in groups:
        found = _optimum(b, x[b.rows], y[b.rows], z[b.rows])
        best = int(b.rows[np.argmin(z[b.rows])])
        row: dict[str, Any] = {
            "N": b.n, "C": b.c, "runs": len(b.rows),
            "best_run": {"lr": float(table["lr"].iloc[best]),
                         "batch": float(table["batch"].iloc[best]),
                         "loss": float(table["loss"].iloc[best])}}
        if isinstance(found, str):
            row["skipped"] = found
        else:
            row.update(found)
            row["used"] = {axis: _used(found, axis, options.include_edge) for axis in AXES
                           if axis in found}
        rows.append(row)
        optima.append(found)
    laws, skipped = _fit_laws(table, groups, rows)
    warnings = _warnings(rows, laws)
    intervals, why = _bootstrap(table, groups, optima, laws, options)
    for axis, ci in intervals.items():
        laws[axis]["ci95"] = ci
    notes = {axis: reason for axis, reason in why.items() if axis in laws}
    return {"budgets": rows, "laws": laws, "skipped": skipped, "no_ci": notes,
            "warnings": warnings,
            "near_optimal": near_optimal_laws(table, groups, options.near_optimal)}


def _fit_laws(table: pd.DataFrame, groups: list[Budget], rows: list[dict[str, Any]]
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """(each axis's law over the budgets whose optimum it may use, why an axis has none)."""
    laws: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for axis in AXES:
        pts = [(r["C"], r[axis]) for r in rows if r.get("used", {}).get(axis)]
        law = _law(np.array([p[0] for p in pts]), np.array([p[1] for p in pts])) if pts else None
        if law is None and not varied(table, groups, axis):
            skipped[axis] = (f"no budget's runs vary the {axis} (one value a budget): grid "
                             f"{'train.lr' if axis == 'lr' else 'train.batch_tokens'} too to "
                             "fit its law")
            continue
        if law is None and len({p[0] for p in pts}) == 1 and len(pts) > 1:
            skipped[axis] = (f"the {len(pts)} budgets with a usable {axis} optimum all sit at C "
                             f"= {pts[0][0]:.3g}: a law in C needs budgets at 2 or more C")
            continue
        if law is None:
            fitted = sum(axis in r for r in rows)
            edge = sum(1 for r in rows if axis in r and r["edge"][axis])
            skipped[axis] = (f"{len(pts)} budgets with a usable {axis} optimum ({fitted} fitted, "
                             f"{edge} at the grid edge); a law in C needs 2 or more at distinct "
                             f"C: vary the {axis} at more budgets, widen the grid around the "
                             "best runs, or pass --include-edge")
            continue
        # the value at the middle of the budgets is far better determined than the coefficient
        pivot = float(np.exp(np.mean(np.log([p[0] for p in pts]))))
        laws[axis] = {**law, "budgets": len(pts), "pivot_C": pivot,
                      "at_pivot": law["coefficient"] * pivot ** law["exponent"]}
    return laws, skipped


def _warnings(rows: list[dict[str, Any]], laws: dict[str, Any]) -> list[str]:
    """What a law's user should know before training with it."""
    warnings = [f"the {axis} law {'rises' if law['exponent'] > 0 else 'falls'} with C "
                f"(exponent {law['exponent']:.3g}), against every published fit (DeepSeek: "
                f"{'-0.125' if axis == 'lr' else '+0.327'}): tiny or few budgets, or grids that "
                "barely bracket the optima, can do that; check the per-budget fits before "
                "training with it" for axis, law in laws.items()
                if (law["exponent"] > 0) == (axis == "lr")]
    warnings += [f"the {axis} law passes through its 2 budgets exactly: add budgets to test "
                 "the power law itself" for axis, law in laws.items() if law["budgets"] == 2]
    for axis in laws:
        held = [r for r in rows if r.get("used", {}).get(axis) and axis in r.get("conditional",
                                                                                  {})]
        if held:
            other = "batch" if axis == "lr" else "lr"
            warnings.append(
                f"{len(held)} of the {axis} law's {laws[axis]['budgets']} budgets place their "
                f"{axis} optimum at one {other} (the best run's), where the {other} has no "
                f"minimum in the grid: the law holds at those {other} values, not at a joint "
                f"optimum; extend the {other} grid to locate it")
    return warnings


def _bootstrap(table: pd.DataFrame, groups: list[Budget], optima: list[dict[str, Any] | str],
               laws: dict[str, Any], options: OptimumOptions
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """95 % intervals of each law's exponent and of its value at the budgets' middle C.

    As approach 2's: every budget keeps its runs, and their log loss is redrawn as the surfaces
    that located its optimum (`optima`, the fit's) plus residuals pooled over the budgets (eval
    noise is alike at every budget), scaled up for the coefficients each surface fitted. A
    draw refits the law over the budgets the fit used, no others; one in which such a budget's
    optimum cannot be located is dropped (counted). Returns (intervals, reasons for none)."""
    if not laws or options.bootstrap == 0:
        return {}, {axis: "--bootstrap 0" for axis in laws} if laws else {}
    x, y, z = _coordinates(table)
    chosen = {axis: [i for i, found in enumerate(optima) if not isinstance(found, str)
                     and _used(found, axis, options.include_edge)] for axis in laws}
    smooth, pooled = z.copy(), []
    for i in sorted(set().union(*chosen.values())):
        b, found = groups[i], optima[i]
        assert not isinstance(b.fits, str) and not isinstance(found, str)
        for s in (s for s in b.fits if s.form in found["form"]):
            coef = _coefficients(s, x[b.rows], y[b.rows], z[b.rows])
            if coef is None:
                continue
            rows = b.rows[s.rows]
            smooth[rows] = _design(s.form, x[rows] - s.origin[0], y[rows] - s.origin[1]) @ coef
            free = len(rows) - len(coef)
            if free > 0:
                pooled.append((z[rows] - smooth[rows]) * np.sqrt(len(rows) / free))
    residuals = np.concatenate(pooled) if pooled else np.empty(0)
    if residuals.size == 0 or not np.any(residuals):
        reason = ("every surface fits its runs exactly (as many runs as coefficients), so there "
                  "are no residuals to resample: add LR or batch values per budget")
        return {}, {axis: reason for axis in laws}
    rng = np.random.default_rng(options.seed)
    draws: dict[str, list[tuple[float, float]]] = {axis: [] for axis in laws}
    for _ in range(options.bootstrap):
        zs = smooth + rng.choice(residuals, len(z))
        redrawn: dict[int, dict[str, Any] | str] = {}
        for axis, budgets_used in chosen.items():
            pts = []
            for i in budgets_used:
                b = groups[i]
                if i not in redrawn:
                    redrawn[i] = _optimum(b, x[b.rows], y[b.rows], zs[b.rows])
                found = redrawn[i]
                if isinstance(found, str) or axis not in found:
                    break
                pts.append((b.c, found[axis]))
            else:
                law = _law(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
                assert law is not None  # the fit's budgets, at 2 or more distinct C
                pivot = laws[axis]["pivot_C"]
                draws[axis].append((law["exponent"],
                                    law["coefficient"] * pivot ** law["exponent"]))
    intervals, reasons = {}, {}
    for axis, samples in draws.items():
        if len(samples) < options.bootstrap / 2:
            reasons[axis] = (f"in only {len(samples)} of {options.bootstrap} redrawn sweeps do "
                             f"the fitted budgets all place a {axis} optimum: the grids barely "
                             "bracket them")
            continue
        arr = np.array(samples)
        intervals[axis] = {"exponent": percentile_ci(arr[:, 0]),
                           "at_pivot": percentile_ci(arr[:, 1]), "draws": len(samples)}
    return intervals, reasons
