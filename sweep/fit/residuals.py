"""The residuals figure: each run's log(law / loss) under approach 3 and Kaplan's L(N, D), against
C and against N, so a form that misses the runs shows a trend rather than noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sweep.fit.figures import C_LABEL, LAW_KEYS, N_LABEL, get, log_span, num

Law = Callable[[np.ndarray, np.ndarray], np.ndarray]


def fitted_laws(report: dict) -> list[tuple[str, str, str, Law | None]]:
    """(label, color, marker, L(N, D)) of each joint law the report fitted; non-physical ones are
    included (their residuals still show how they describe the runs), and a law whose parameters
    are missing or not finite comes with None."""
    laws: list[tuple[str, str, str, Law | None]] = []
    if "approach3" in report:
        e, a, b, alpha, beta = (num(get(report, "approach3", k)) for k in LAW_KEYS)
        usable = None not in (e, a, b, alpha, beta)
        laws.append(("approach 3: E + A/N^alpha + B/D^beta", "tab:green", "o",
                     (lambda n, d: e + a / n**alpha + b / d**beta) if usable else None))
    if "kaplan_nd" in report:
        n_c, d_c, alpha_n, alpha_d = (num(get(report, "kaplan_nd", k))
                                      for k in ("N_c", "D_c", "alpha_N", "alpha_D"))
        usable = (None not in (n_c, d_c, alpha_n, alpha_d) and n_c > 0 and d_c > 0
                  and alpha_d != 0)
        laws.append(("Kaplan L(N, D): [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
                     "tab:purple", "^",
                     (lambda n, d: ((n_c / n) ** (alpha_n / alpha_d) + d_c / d) ** alpha_d)
                     if usable else None))
    return laws


def residuals_figure(report: dict, runs: pd.DataFrame) -> Figure:
    """Two panels, against C and against N (on an IsoFLOP grid a form's misfit shows along N
    within each budget); a law left off (parameters not finite) is named in the legend."""
    fig = Figure(figsize=(11.0, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    n, d, c, loss = (runs[k].to_numpy(dtype=float) for k in ("N", "D", "C", "loss"))
    for label, color, marker, law in fitted_laws(report) if len(runs) else []:
        residual = np.full(len(runs), np.nan)
        if law is not None:
            with np.errstate(all="ignore"):  # a run-off law: its non-finite points are not drawn
                residual = np.log(law(n, d) / loss)
        drawn = np.isfinite(residual)
        if not drawn.any():
            axes[0].plot([], [], ls="", marker=marker, color=color,
                         label=f"{label} (not drawn: its parameters or losses are not finite)")
            continue
        rms = float(np.sqrt(np.mean(residual[drawn] ** 2)))
        for ax, x in zip(axes, (c, n), strict=True):
            ax.scatter(x[drawn], 100 * residual[drawn], s=14, color=color, marker=marker,
                       alpha=0.8, label=f"{label} (rms {100 * rms:.2f}%)")
    for ax, x, xlabel in zip(axes, (c, n), (C_LABEL, N_LABEL), strict=True):
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set(xscale="log", xlabel=xlabel)
        # One C (a single budget) or one N: a log axis needs a span around it
        span = log_span(x, margin=1.5)
        if span is not None:
            ax.set_xlim(*span)
    axes[0].set(ylabel="log(law / loss), %", title="Fit residuals per run, against C")
    axes[1].set(title="... and against N")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    return fig
