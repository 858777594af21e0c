"""Compute-optimal allocation of a fitted L(N, D) when C counts exact FLOPs, not C = 6 N D.

At small scale the output head and attention make a model's FLOPs per token f(N) far from 6 N and
not a power of N (Porian et al. 2024), so the optimum at fixed C = f(N) D moves: it is what
approach 2 measures on budget.flops IsoFLOP profiles, and a + b is no longer 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sweep.fit.optimize import percentile_ci

# N_opt is searched on this many log-spaced sizes, this far beyond the fitted sizes each side;
# an optimum on the search's edge has no minimum inside it and is reported as missing.
SEARCH_POINTS = 4001
SEARCH_DECADES = 2.0


@dataclass(frozen=True)
class FlopsPerToken:
    """f(N): exact FLOPs per token, linear in log-log between the fitted sizes and along the end
    segments beyond them."""

    log_n: np.ndarray
    log_f: np.ndarray

    def __call__(self, n: np.ndarray) -> np.ndarray:
        x = np.log(np.asarray(n, dtype=float))
        lo = (self.log_f[1] - self.log_f[0]) / (self.log_n[1] - self.log_n[0])
        hi = (self.log_f[-1] - self.log_f[-2]) / (self.log_n[-1] - self.log_n[-2])
        y = np.interp(x, self.log_n, self.log_f)
        y = np.where(x < self.log_n[0], self.log_f[0] + lo * (x - self.log_n[0]), y)
        y = np.where(x > self.log_n[-1], self.log_f[-1] + hi * (x - self.log_n[-1]), y)
        return np.exp(y)


def flops_per_token_curve(n: Any, flops_per_token: Any) -> FlopsPerToken | None:
    """f(N) from the runs' sizes and exact FLOPs per token; None without two sizes that have
    one (a table from elsewhere may have no exact FLOPs)."""
    n, f = np.asarray(n, dtype=float), np.asarray(flops_per_token, dtype=float)
    ok = np.isfinite(f) & (f > 0)
    sizes = np.unique(n[ok])
    if len(sizes) < 2:
        return None
    # One shape per N: its runs share f (a geometric mean absorbs any rounding).
    log_f = np.array([np.log(f[ok & (n == s)]).mean() for s in sizes])
    return FlopsPerToken(log_n=np.log(sizes), log_f=log_f)


def optimum_under(laws: np.ndarray, compute: float, f: FlopsPerToken, n_range: tuple[float, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """N_opt and D_opt = C / f(N_opt) of each law (rows of E, A, B, alpha, beta) at C; nan where
    the minimum lies on the search's edge (no optimum within it)."""
    lo, hi = np.log(n_range[0]), np.log(n_range[1])
    pad = SEARCH_DECADES * np.log(10.0)
    n = np.exp(np.linspace(lo - pad, hi + pad, SEARCH_POINTS))
    d = compute / f(n)
    e, a, b, alpha, beta = (laws[:, [k]] for k in range(5))
    with np.errstate(all="ignore"):  # a run-off law gives inf/nan: no optimum, reported as such
        loss = e + a / n**alpha + b / d**beta
    loss = np.where(np.isfinite(loss), loss, np.inf)
    best = np.argmin(loss, axis=1)
    inside = (best > 0) & (best < SEARCH_POINTS - 1) & np.isfinite(loss.min(axis=1))
    return np.where(inside, n[best], np.nan), np.where(inside, d[best], np.nan)


def _slopes(log_c: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    # Least-squares slope of each row of log_y against log_c; nan where a row has a nan.
    x = log_c - log_c.mean()
    return ((log_y - log_y.mean(axis=1, keepdims=True)) * x).sum(axis=1) / (x * x).sum()


def exact_allocation(law: np.ndarray, samples: np.ndarray, compute: list[float],
                     f: FlopsPerToken, n_range: tuple[float, float]) -> dict[str, Any]:
    """a and b of N_opt ~ C^a, D_opt ~ C^b over `compute` (exact FLOPs), for the fitted law and
    each bootstrap law (rows of E, A, B, alpha, beta), with the optima at each C.

    f(N) is not a power of N, so these are the mean slopes over the C range, not constants.
    """
    laws = np.vstack([np.asarray(law, dtype=float)[None, :], samples])
    optima = [optimum_under(laws, c, f, n_range) for c in compute]
    n_opt = np.column_stack([o[0] for o in optima])
    d_opt = np.column_stack([o[1] for o in optima])
    log_c = np.log(np.asarray(compute, dtype=float))
    with np.errstate(invalid="ignore"):
        a, b = _slopes(log_c, np.log(n_opt)), _slopes(log_c, np.log(d_opt))
    rows = [{"C": float(c), "N_opt": float(n), "D_opt": float(d),
             "tokens_per_param": float(d / n)}
            for c, n, d in zip(compute, n_opt[0], d_opt[0], strict=True)]
    return {"a": float(a[0]), "b": float(b[0]),
            "ci95": ({"a": percentile_ci(a[1:]), "b": percentile_ci(b[1:])}
                     if len(samples) else {}),
            "C_range": [float(min(compute)), float(max(compute))], "optima": rows}
