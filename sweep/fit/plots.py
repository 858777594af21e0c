"""PNG plots for the fitter's report: IsoFLOP parabolas, loss vs compute, optimal allocation,
approach 3 contours, the extrapolation check and the laws' residuals (matplotlib Figure + Agg).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

DPI = 130
N_LABEL = "N (parameters)"
D_LABEL, C_LABEL = "D (tokens)", "C (FLOPs)"
METHOD_COLORS = {"approach1": "tab:blue", "approach2": "tab:orange", "approach3": "tab:green"}
LAW_KEYS = ("E", "A", "B", "alpha", "beta")


def _num(value: Any) -> float | None:
    """A finite float, or None for anything missing or unusable (a partial report never crashes)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _rows(value: Any) -> list[dict]:
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def _pairs(rows: list[dict], x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) of the rows where both are positive finite numbers (log axes)."""
    pairs = [(_num(r.get(x)), _num(r.get(y))) for r in rows]
    return [(a, b) for a, b in pairs if a and b and a > 0 and b > 0]


def _interval(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    lo, hi = _num(value[0]), _num(value[1])
    return (lo, hi) if lo is not None and hi is not None else None


def _law(section: Any) -> dict[str, float] | None:
    values = {k: _num(_get(section, k)) for k in LAW_KEYS}
    if values["E"] is None or not all((values[k] or 0) > 0 for k in LAW_KEYS[1:]):
        return None
    return values  # type: ignore[return-value]


def _law_optimal(law: dict[str, float], c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = law["alpha"] + law["beta"]
    g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1.0 / total)
    return g * (c / 6.0) ** (law["beta"] / total), (c / 6.0) ** (law["alpha"] / total) / g


def _log_span(values: Any, margin: float = 1.0) -> tuple[float, float] | None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return None
    return float(v.min()) / margin, float(v.max()) * margin


def _log_norm(values: Any) -> LogNorm | None:
    span = _log_span(values)
    if span is None:
        return None
    return LogNorm(span[0], span[1] if span[1] > span[0] else span[0] * 10.0)


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    # Written under a temporary name and renamed, so a failed save never leaves a half PNG.
    tmp = out_dir / f".{name}.tmp"
    try:
        FigureCanvasAgg(fig)
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, out_dir / name)
    finally:
        tmp.unlink(missing_ok=True)
        fig.clear()
    return name


def _loss_label(report: dict) -> str:
    """The loss axis: nats per token for the loss column (a run's val_loss), else the column
    mapped with --loss-col by its name (val_bpb is bits per byte, say)."""
    column = report.get("columns", {}).get("loss", "loss")
    return "loss (nats/token)" if column == "loss" else column


def _isoflop(report: dict, runs: pd.DataFrame) -> Figure:
    budgets = _rows(_get(report, "approach2", "budgets"))
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    known = [_num(b.get("C")) or 0.0 for b in budgets]

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
    norm = _log_norm(known + [float(b) for b, _ in groups])
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
        c, p, window = _num(b.get("C")), b.get("parabola"), _interval(b.get("window"))
        edge = bool(b.get("edge"))
        color = "grey" if edge or norm is None or not c else cmap(norm(c))
        if isinstance(p, list | tuple) and len(p) == 3 and window and window[0] > 0:
            coef = [_num(v) for v in p]
            if None not in coef:
                x = np.linspace(math.log(window[0]), math.log(window[1]), 100)
                ax.plot(np.exp(x), coef[0] + coef[1] * x + coef[2] * x**2, color=color,
                        lw=1.2, ls="--" if edge else "-")
        n_opt, l_min = _num(b.get("N_opt")), _num(b.get("L_min"))
        if n_opt and l_min is not None:
            ax.scatter([n_opt], [l_min], marker="*", s=140, zorder=3, edgecolors="black",
                       facecolors="none" if edge else color, linewidths=0.8)
    ax.scatter([], [], marker="*", s=100, color="black", label="parabola minimum")
    ax.set(xscale="log", xlabel=N_LABEL, ylabel=_loss_label(report),
           title="Approach 2: IsoFLOP profiles (hollow/grey: minimum at grid edge)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _loss_vs_compute(report: dict, runs: pd.DataFrame, curves: pd.DataFrame | None) -> Figure:
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    data = curves if curves is not None and len(curves) else runs
    norm = _log_norm(data["N"]) if len(data) else None
    if data is curves:
        for _, run in curves.sort_values("C").groupby("run"):
            color = cmap(norm(run["N"].iloc[0])) if norm else "grey"
            ax.plot(run["C"], run["loss"], lw=0.7, alpha=0.8, color=color)
    elif len(runs):
        ax.scatter(runs["C"], runs["loss"], s=12, c=runs["N"], cmap=cmap, norm=norm,
                   label="runs (final)")
    if norm is not None:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=N_LABEL)
    l_c = _get(report, "kaplan", "L_C")
    points = _pairs(_rows(_get(l_c, "points")), "C", "loss")
    span = _log_span((list(data["C"]) if len(data) else []) + [p for p, _ in points])
    if span is not None:
        c = np.geomspace(*span, 200)
        for key, style in (("with_offset", "-"), ("without_offset", "--")):
            fit = _get(l_c, key)
            c_c, alpha = _num(_get(fit, "C_c")), _num(_get(fit, "alpha_C"))
            e = _num(_get(fit, "E")) if key == "with_offset" else 0.0
            if c_c and alpha is not None and e is not None:
                label = (f"{e:.3g} + " if e else "") + f"(C_c/C)^{alpha:.3f}"
                ax.plot(c, e + (c_c / c) ** alpha, ls=style, color="crimson", lw=1.5,
                        label=f"L(C) = {label} ({key.replace('_', ' ')})")
    if points:
        ax.scatter(*zip(*points, strict=True), s=16, color="black", zorder=3,
                   label="compute frontier")
    ax.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel=_loss_label(report),
           title="Loss vs compute" + (" (lines: eval curves)" if data is curves else ""))
    # Losses span about a decade: label the minor ticks too, as plain numbers.
    for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        set_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _label(report: dict, method: str, exponent: str) -> str:
    value = _num(_get(report, method, exponent))
    text = f"approach {method[-1]}"
    if value is None:
        return text
    text += f": {exponent} = {value:.2f}"
    ci = _interval(_get(report, method, "ci95", exponent))
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _allocation(report: dict, runs: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    a2 = _rows(_get(report, "approach2", "budgets"))
    a1 = _rows(_get(report, "approach1", "points"))
    a3 = _rows(_get(report, "approach3", "allocation"))
    cs = [r.get("C") for r in a1 + a2 + a3] + (list(runs["C"]) if len(runs) else [])
    span = _log_span([_num(c) for c in cs if _num(c)], margin=1.5) or (1e15, 1e20)
    grid = np.geomspace(*span, 100)
    law = _law(report.get("approach3"))
    for ax, key, exponent, ylabel in ((axes[0], "N_opt", "a", "N_opt (parameters)"),
                                      (axes[1], "D_opt", "b", "D_opt (tokens)")):
        fit_key = "N_fit" if key == "N_opt" else "D_fit"
        for method in ("approach1", "approach2"):
            slope = _num(_get(report, method, fit_key, "slope"))
            intercept = _num(_get(report, method, fit_key, "intercept"))
            if slope is not None and intercept is not None:
                ax.plot(grid, math.exp(intercept) * grid**slope, color=METHOD_COLORS[method],
                        lw=1.4, label=_label(report, method, exponent))
        if pts := _pairs(a1, "C", key):
            ax.scatter(*zip(*pts, strict=True), s=8, alpha=0.35, color=METHOD_COLORS["approach1"],
                       label="approach 1 envelope")
        for edge in (False, True):
            if pts := _pairs([b for b in a2 if bool(b.get("edge")) == edge], "C", key):
                ax.scatter(*zip(*pts, strict=True), s=30, color=METHOD_COLORS["approach2"],
                           facecolors="none" if edge else METHOD_COLORS["approach2"],
                           label="approach 2 budgets" + (" (edge)" if edge else ""))
        if law is not None:
            ax.plot(grid, _law_optimal(law, grid)[0 if key == "N_opt" else 1], lw=1.4,
                    color=METHOD_COLORS["approach3"], label=_label(report, "approach3", exponent))
        exact = _get(report, "approach3", "allocation_exact") or {}
        if pts := _pairs(_rows(exact.get("optima")), "C", key):
            # approach 2's budget.flops budgets count exact FLOPs: this is its counterpart
            ax.plot(*zip(*pts, strict=True), lw=1.4, ls="--", color=METHOD_COLORS["approach3"],
                    label=f"approach 3, C in exact FLOPs: {exponent} = {exact[exponent]:.2f}")
        for row in a3:
            c, v = _num(row.get("C")), _num(row.get(key))
            if not c or not v:
                continue
            ci = _interval(_get(row, "ci95", key))
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
    law = _law(report.get("approach3"))
    # --predict's runs, drawn where they lie beside the trained ones (the axes take them in).
    predicted = _pairs(_rows(_get(report, "approach3", "predictions")), "N", "D")
    n_span = _log_span([*(runs["N"] if len(runs) else []), *(n for n, _ in predicted)],
                       margin=3.0) or (1e6, 1e10)
    d_span = _log_span([*(runs["D"] if len(runs) else []), *(d for _, d in predicted)],
                       margin=3.0) or (1e8, 1e12)
    n = np.geomspace(*n_span, 200)
    d = np.geomspace(*d_span, 200)
    if law is not None:
        nn, dd = np.meshgrid(n, d)
        reducible = law["A"] / nn ** law["alpha"] + law["B"] / dd ** law["beta"]
        # Log-spaced levels of the reducible loss keep contours apart near the floor E.
        levels = law["E"] + np.geomspace(reducible.min(), reducible.max(), 16)
        filled = ax.contourf(nn, dd, law["E"] + reducible, levels=levels, cmap="viridis",
                             alpha=0.85)
        fig.colorbar(filled, ax=ax, label=f"fitted {_loss_label(report)}", format="%.3g")
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
        n_opt, d_opt = _law_optimal(law, c)
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
    runs = _rows(_get(section, "runs"))
    for held, style in ((False, {"color": "grey", "s": 12, "label": "fit runs"}),
                        (True, {"color": "crimson", "s": 36, "marker": "D", "label": "held out"})):
        if pts := _pairs([r for r in runs if bool(r.get("held_out")) == held], "loss", "predicted"):
            ax.scatter(*zip(*pts, strict=True), zorder=3, **style)
    if values := [v for pair in _pairs(runs, "loss", "predicted") for v in pair]:
        lo, hi = min(values), max(values)
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8, label="y = x")
        ax.legend(fontsize=8)
    mean = _num(_get(section, "mean_abs_rel_error"))
    title = "Extrapolation: predicted vs actual"
    ax.set(xlabel=f"actual {_loss_label(report)}", ylabel=f"predicted {_loss_label(report)}",
           title=title + (f" (mean |rel. error| {100 * mean:.2f}%)" if mean is not None else ""))
    return fig


Law = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _fitted_laws(report: dict) -> list[tuple[str, str, str, Law]]:
    """(label, color, marker, L(N, D)) of each joint law the report fitted, non-physical ones
    included: their residuals still show how well they describe the runs."""
    laws: list[tuple[str, str, str, Law]] = []
    e, a, b, alpha, beta = (_num(_get(report, "approach3", k)) for k in LAW_KEYS)
    if None not in (e, a, b, alpha, beta):
        laws.append(("approach 3: E + A/N^alpha + B/D^beta", "tab:green", "o",
                     lambda n, d: e + a / n**alpha + b / d**beta))
    n_c, d_c, alpha_n, alpha_d = (_num(_get(report, "kaplan_nd", k))
                                  for k in ("N_c", "D_c", "alpha_N", "alpha_D"))
    if None not in (n_c, d_c, alpha_n, alpha_d) and n_c > 0 and d_c > 0 and alpha_d != 0:
        laws.append(("Kaplan L(N, D): [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
                     "tab:purple", "^",
                     lambda n, d: ((n_c / n) ** (alpha_n / alpha_d) + d_c / d) ** alpha_d))
    return laws


def _residuals(report: dict, runs: pd.DataFrame) -> Figure:
    """Each run's log(law / loss) against C under approach 3 and Kaplan's L(N, D): a form that
    misses the data shows a trend in C, or a spread well beyond the runs' noise."""
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    n, d, c, loss = (runs[k].to_numpy(dtype=float) for k in ("N", "D", "C", "loss"))
    for label, color, marker, law in _fitted_laws(report) if len(runs) else []:
        with np.errstate(all="ignore"):  # a run-off law: its non-finite points are not drawn
            residual = np.log(law(n, d) / loss)
        if not np.isfinite(residual).any():
            continue
        rms = float(np.sqrt(np.nanmean(np.where(np.isfinite(residual), residual, np.nan)**2)))
        ax.scatter(c, 100 * residual, s=14, color=color, marker=marker, alpha=0.8,
                   label=f"{label} (rms {100 * rms:.2f}%)")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(xscale="log", xlabel=C_LABEL, ylabel="log(law / loss), %",
           title="Fit residuals per run")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
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
         lambda: _residuals(report, runs)),
    ]
    return [_save(build(), out_dir, name) for name, wanted, build in plots if wanted]
