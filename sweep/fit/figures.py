"""Shared pieces of the fitter's figures: axis labels, tolerant reads of a report section (a
partial report never crashes a plot), log-axis spans and the atomic PNG save.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

# A finite float, or None for anything missing or unusable (a partial report never crashes)
from sweep.errors import finite_or_none as num

DPI = 130
N_LABEL = "N (parameters)"
D_LABEL, C_LABEL = "D (tokens)", "C (FLOPs)"
METHOD_COLORS = {"approach1": "tab:blue", "approach2": "tab:orange", "approach3": "tab:green"}
LAW_KEYS = ("E", "A", "B", "alpha", "beta")


def get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def rows(value: Any) -> list[dict]:
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def pairs(rows: list[dict], x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) of the rows where both are positive finite numbers (log axes)."""
    pairs = [(num(r.get(x)), num(r.get(y))) for r in rows]
    return [(a, b) for a, b in pairs if a and b and a > 0 and b > 0]


def interval(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    lo, hi = num(value[0]), num(value[1])
    return (lo, hi) if lo is not None and hi is not None else None


def law_values(section: Any) -> dict[str, float] | None:
    values = {k: num(get(section, k)) for k in LAW_KEYS}
    if values["E"] is None or not all((values[k] or 0) > 0 for k in LAW_KEYS[1:]):
        return None
    return values  # type: ignore[return-value]


def law_optimal(law: dict[str, float], c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = law["alpha"] + law["beta"]
    g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1.0 / total)
    return g * (c / 6.0) ** (law["beta"] / total), (c / 6.0) ** (law["alpha"] / total) / g


def log_span(values: Any, margin: float = 1.0) -> tuple[float, float] | None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return None
    return float(v.min()) / margin, float(v.max()) * margin


def log_norm(values: Any) -> LogNorm | None:
    span = log_span(values)
    if span is None:
        return None
    return LogNorm(span[0], span[1] if span[1] > span[0] else span[0] * 10.0)


def save(fig: Figure, out_dir: Path, name: str) -> str:
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


def loss_label(report: dict) -> str:
    """The loss axis: nats per token for the loss column (a run's val_loss), else the column
    mapped with --loss-col by its name (val_bpb is bits per byte, say)."""
    column = report.get("columns", {}).get("loss", "loss")
    return "loss (nats/token)" if column == "loss" else column
