"""PNG plots for the fitter's report: IsoFLOP parabolas, loss vs compute, optimal allocation,
approach 3 contours, the extrapolation check and the laws' residuals (matplotlib Figure + Agg).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from sweep.fit.figures import (
    C_LABEL,
    D_LABEL,
    METHOD_COLORS,
    N_LABEL,
    get,
    interval,
    law_optimal,
    law_values,
    log_norm,
    log_span,
    loss_label,
    num,
    pairs,
    rows,
    save,
)
from sweep.fit.residuals import residuals_figure


def _isoflop(report: dict, runs: pd.DataFrame) -> Figure:
    budgets = rows(get(report, "approach2", "budgets"))
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    known = [num(b.get("C")) or 0.0 for b in budgets]

    def nearest(c: float) -> int | None:
        # The report's budget C may differ from a run's budget or C by rounding: match in log space.
        close = [(abs(math.log(x / c)), i) for i, x in enumerate(known)
                 if x > 0 and c > 0 and abs(math.log(x / c)) < math.log(1.5)]
        return min(close)[1] if close else None

    if len(runs) and runs["budget"].isna().any():  # budgets binned by the fitter, not given
        found = [nearest(c) for c in runs["C"]]
        runs = runs.assign(budget=runs["budget"].fillna(
            pd.Series([known[i] if i is not None else np.nan for i in found], index=runs.index)))
    groups = runs.dropna(subset=["budget"]).groupby("budget") if len(runs) else []
    norm = log_norm(known + [float(b) for b, _ in groups])
    cmap = matplotlib.colormaps["viridis"]
    for budget, group in groups:
        match = nearest(float(budget))
        match = budgets[match] if match is not None else None
        edge = bool(match and match.get("edge"))
        color = "grey" if edge or norm is None else cmap(norm(budget))
        ax.scatter(group["N"], group["loss"], s=18, edgecolors=color,
                   facecolors="none" if edge else color,
                   label=f"C = {budget:.1e}" + (" (edge)" if edge else ""))
    loose = runs[runs["budget"].isna()] if len(runs) else runs
    if len(loose):
        ax.scatter(loose["N"], loose["loss"], s=10, color="lightgrey", label="no budget")
    for b in budgets:
        c, p, window = num(b.get("C")), b.get("parabola"), interval(b.get("window"))
        edge = bool(b.get("edge"))
        color = "grey" if edge or norm is None or not c else cmap(norm(c))
        if isinstance(p, list | tuple) and len(p) == 3 and window and window[0] > 0:
            coef = [num(v) for v in p]
            if None not in coef:
                x = np.linspace(math.log(window[0]), math.log(window[1]), 100)
                ax.plot(np.exp(x), coef[0] + coef[1] * x + coef[2] * x**2, color=color,
                        lw=1.2, ls="--" if edge else "-")
        n_opt, l_min = num(b.get("N_opt")), num(b.get("L_min"))
        if n_opt and l_min is not None:
            ax.scatter([n_opt], [l_min], marker="*", s=140, zorder=3, edgecolors="black",
                       facecolors="none" if edge else color, linewidths=0.8)
    ax.scatter([], [], marker="*", s=100, color="black", label="parabola minimum")
    ax.set(xscale="log", xlabel=N_LABEL, ylabel=loss_label(report),
           title="Approach 2: IsoFLOP profiles (hollow/grey: minimum at grid edge)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _loss_vs_compute(report: dict, runs: pd.DataFrame, curves: pd.DataFrame | None) -> Figure:
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    data = curves if curves is not None and len(curves) else runs
    norm = log_norm(data["N"]) if len(data) else None
    if data is curves:
        for _, run in curves.sort_values("C").groupby("run"):
            color = cmap(norm(run["N"].iloc[0])) if norm else "grey"
            ax.plot(run["C"], run["loss"], lw=0.7, alpha=0.8, color=color)
    elif len(runs):
        ax.scatter(runs["C"], runs["loss"], s=12, c=runs["N"], cmap=cmap, norm=norm,
                   label="runs (final)")
    if norm is not None:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=N_LABEL)
    l_c = get(report, "kaplan", "L_C")
    points = pairs(rows(get(l_c, "points")), "C", "loss")
    span = log_span((list(data["C"]) if len(data) else []) + [p for p, _ in points])
    if span is not None:
        c = np.geomspace(*span, 200)
        for key, style in (("with_offset", "-"), ("without_offset", "--")):
            fit = get(l_c, key)
            c_c, alpha = num(get(fit, "C_c")), num(get(fit, "alpha_C"))
            e = num(get(fit, "E")) if key == "with_offset" else 0.0
            if c_c and alpha is not None and e is not None:
                label = (f"{e:.3g} + " if e else "") + f"(C_c/C)^{alpha:.3f}"
                ax.plot(c, e + (c_c / c) ** alpha, ls=style, color="crimson", lw=1.5,
                        label=f"L(C) = {label} ({key.replace('_', ' ')})")
    if points:
        ax.scatter(*zip(*points, strict=True), s=16, color="black", zorder=3,
                   label="compute frontier")
    # The data's floor where the table gives it (the synthetic corpus): where L(C)'s E belongs
    floor = num(get(report, "loss_floor", "floor"))
    if floor is not None and floor > 0:
        ax.axhline(floor, ls=":", color="grey", lw=1.2,
                   label=f"{get(report, 'loss_floor', 'floor_kind') or 'floor'} {floor:.4g}")
    ax.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel=loss_label(report),
           title="Loss vs compute" + (" (lines: eval curves)" if data is curves else ""))
    # Losses span about a decade: label the minor ticks too, as plain numbers.
    for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        set_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _label(report: dict, method: str, exponent: str) -> str:
    value = num(get(report, method, exponent))
    text = f"approach {method[-1]}"
    if value is None:
        return text
    text += f": {exponent} = {value:.2f}"
    ci = interval(get(report, method, "ci95", exponent))
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _allocation(report: dict, runs: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    a2 = rows(get(report, "approach2", "budgets"))
    a1 = rows(get(report, "approach1", "points"))
    a3 = rows(get(report, "approach3", "allocation"))
    cs = [r.get("C") for r in a1 + a2 + a3] + (list(runs["C"]) if len(runs) else [])
    span = log_span([num(c) for c in cs if num(c)], margin=1.5) or (1e15, 1e20)
    grid = np.geomspace(*span, 100)
    law = law_values(report.get("approach3"))
    for ax, key, exponent, ylabel in ((axes[0], "N_opt", "a", "N_opt (parameters)"),
                                      (axes[1], "D_opt", "b", "D_opt (tokens)")):
        fit_key = "N_fit" if key == "N_opt" else "D_fit"
        for method in ("approach1", "approach2"):
            slope = num(get(report, method, fit_key, "slope"))
            intercept = num(get(report, method, fit_key, "intercept"))
            if slope is not None and intercept is not None:
                ax.plot(grid, math.exp(intercept) * grid**slope, color=METHOD_COLORS[method],
                        lw=1.4, label=_label(report, method, exponent))
        if pts := pairs(a1, "C", key):
            ax.scatter(*zip(*pts, strict=True), s=8, alpha=0.35, color=METHOD_COLORS["approach1"],
                       label="approach 1 envelope")
        for edge in (False, True):
            if pts := pairs([b for b in a2 if bool(b.get("edge")) == edge], "C", key):
                ax.scatter(*zip(*pts, strict=True), s=30, color=METHOD_COLORS["approach2"],
                           facecolors="none" if edge else METHOD_COLORS["approach2"],
                           label="approach 2 budgets" + (" (edge)" if edge else ""))
        if law is not None:
            ax.plot(grid, law_optimal(law, grid)[0 if key == "N_opt" else 1], lw=1.4,
                    color=METHOD_COLORS["approach3"], label=_label(report, "approach3", exponent))
        exact = get(report, "approach3", "allocation_exact") or {}
        if pts := pairs(rows(exact.get("optima")), "C", key):
            # approach 2's budget.flops budgets count exact FLOPs: this is its counterpart
            ax.plot(*zip(*pts, strict=True), lw=1.4, ls="--", color=METHOD_COLORS["approach3"],
                    label=f"approach 3, C in exact FLOPs: {exponent} = {exact[exponent]:.2f}")
        for row in a3:
            c, v = num(row.get("C")), num(row.get(key))
            if not c or not v:
                continue
            ci = interval(get(row, "ci95", key))
            yerr = [[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]] if ci else None
            ax.errorbar([c], [v], yerr=yerr, fmt="s", ms=4, capsize=3,
                        color=METHOD_COLORS["approach3"])
        ax.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel=ylabel,
               title=f"{key} vs compute ({key} ~ C^{exponent})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def _contours(report: dict, runs: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    law = law_values(report.get("approach3"))
    # --predict's runs, drawn where they lie beside the trained ones (the axes take them in).
    predicted = pairs(rows(get(report, "approach3", "predictions")), "N", "D")
    n_span = log_span([*(runs["N"] if len(runs) else []), *(n for n, _ in predicted)],
                       margin=3.0) or (1e6, 1e10)
    d_span = log_span([*(runs["D"] if len(runs) else []), *(d for _, d in predicted)],
                       margin=3.0) or (1e8, 1e12)
    n = np.geomspace(*n_span, 200)
    d = np.geomspace(*d_span, 200)
    if law is not None:
        nn, dd = np.meshgrid(n, d)
        with np.errstate(over="ignore"):  # a run-off term's N^alpha overflows: the term is 0
            reducible = law["A"] / nn ** law["alpha"] + law["B"] / dd ** law["beta"]
        # Log-spaced levels of the reducible loss keep contours apart near the floor E.
        levels = law["E"] + np.geomspace(reducible.min(), reducible.max(), 16)
        filled = ax.contourf(nn, dd, law["E"] + reducible, levels=levels, cmap="viridis",
                             alpha=0.85)
        fig.colorbar(filled, ax=ax, label=f"fitted {loss_label(report)}", format="%.3g")
    budgets = runs["budget"].dropna().unique() if len(runs) else []
    iso = np.asarray(sorted(budgets)) if len(budgets) else 10.0 ** np.arange(
        math.floor(math.log10(6 * n[0] * d[0])), math.ceil(math.log10(6 * n[-1] * d[-1])) + 1)
    for i, c in enumerate(iso):
        ax.plot(n, c / (6.0 * n), color="grey", lw=0.6, alpha=0.8,
                label="C = 6ND (iso-FLOP)" if i == 0 else None)
    if len(runs):
        ax.scatter(runs["N"], runs["D"], s=10, color="white", edgecolors="black",
                   linewidths=0.5, zorder=3, label="runs")
    if law is not None:
        c = np.geomspace(6 * n[0] * d[0], 6 * n[-1] * d[-1], 200)
        n_opt, d_opt = law_optimal(law, c)
        ax.plot(n_opt, d_opt, color="red", lw=1.8, label="efficient frontier")
    if predicted:
        ax.scatter(*zip(*predicted, strict=True), s=90, marker="*", color="orange",
                   edgecolors="black", linewidths=0.6, zorder=4, label="--predict")
    ax.set(xscale="log", yscale="log", xlim=(n[0], n[-1]), ylim=(d[0], d[-1]), xlabel=N_LABEL,
           ylabel=D_LABEL, title="Approach 3: fitted L(N, D)")
    # Lower right (large N, few tokens) is where no sensible run or prediction lies.
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _extrapolation(report: dict) -> Figure:
    section = report.get("extrapolation")
    fig = Figure(figsize=(6.0, 5.5), layout="constrained")
    ax = fig.add_subplot()
    runs = rows(get(section, "runs"))
    for held, style in ((False, {"color": "grey", "s": 12, "label": "fit runs"}),
                        (True, {"color": "crimson", "s": 36, "marker": "D", "label": "held out"})):
        if pts := pairs([r for r in runs if bool(r.get("held_out")) == held], "loss", "predicted"):
            ax.scatter(*zip(*pts, strict=True), zorder=3, **style)
    if values := [v for pair in pairs(runs, "loss", "predicted") for v in pair]:
        lo, hi = min(values), max(values)
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8, label="y = x")
        ax.legend(fontsize=8)
    mean = num(get(section, "mean_abs_rel_error"))
    title = "Extrapolation: predicted vs actual"
    ax.set(xlabel=f"actual {loss_label(report)}", ylabel=f"predicted {loss_label(report)}",
           title=title + (f" (mean |rel. error| {100 * mean:.2f}%)" if mean is not None else ""))
    return fig


def write_plots(
    report: dict, runs: pd.DataFrame, curves: pd.DataFrame | None, out_dir: Path
) -> list[str]:
    """Write the report's PNG plots into out_dir (which exists); returns the file names written.

    Only the plots whose report section is present are drawn; loss_vs_compute.png always is.
    """
    out_dir = Path(out_dir)
    if "budget" not in runs.columns:
        runs = runs.assign(budget=np.nan)
    if curves is not None and not {"run", "C", "loss", "N"}.issubset(curves.columns):
        curves = None
    allocation = any(m in report for m in ("approach1", "approach2", "approach3"))
    plots: list[tuple[str, bool, Callable[[], Figure]]] = [
        ("isoflop.png", "approach2" in report, lambda: _isoflop(report, runs)),
        ("loss_vs_compute.png", True, lambda: _loss_vs_compute(report, runs, curves)),
        ("optimal_allocation.png", allocation, lambda: _allocation(report, runs)),
        ("approach3_contours.png", "approach3" in report, lambda: _contours(report, runs)),
        ("extrapolation.png", "extrapolation" in report, lambda: _extrapolation(report)),
        ("residuals.png", "approach3" in report or "kaplan_nd" in report,
         lambda: residuals_figure(report, runs)),
    ]
    return [save(build(), out_dir, name) for name, wanted, build in plots if wanted]
