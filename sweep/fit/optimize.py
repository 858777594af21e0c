"""Numerical pieces every law shares: the Huber objective on log loss, multi-start L-BFGS,
log-log regression and percentile intervals. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweep.fit.lbfgs import BatchObjective, minimize_batch

# Hoffmann et al. (2022) fit with delta = 1e-3 on log-loss residuals: small enough that the
# objective is close to L1 on realistic (0.5-2 %) noise, so a few bad runs cannot drag the fit.
HUBER_DELTA = 1e-3
# Below this a sum of exps is subnormal and its log loses digits
TINY = float(np.finfo(float).tiny)


def lse_objective(
    features: np.ndarray, log_loss: np.ndarray, weights: np.ndarray, delta: float = HUBER_DELTA
) -> BatchObjective:
    """Summed Huber loss of log L = logsumexp_k(features[k, i] @ theta) - log_loss[i].

    Every law here is a log-sum-exp of terms linear in its parameters (a - alpha log N, e, ...),
    so one (terms, points, params) array describes it and the gradient is exact. `weights` has a
    row per data set (all ones for the fit itself, resample counts for each bootstrap draw);
    `log_loss` is one row shared by all sets or a row per set (zero-weight entries are ignored).
    """
    terms, points, dim = features.shape
    flat = features.reshape(terms * points, dim)
    # A term equal at every point (the offset e) takes one exp per problem, not one per point:
    # the exps are most of the cost, and approach 3's grid steps 4500 problems at once.
    constant = np.array([bool(np.all(features[k] == features[k, 0])) for k in range(terms)])
    varying = features[~constant].reshape(-1, dim)  # (varying terms x points, params)
    offsets = features[constant, 0]  # (constant terms, params)
    n_varying = int((~constant).sum())

    def huber(log_fit: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Per problem: the weighted Huber sum, and d(sum)/d(log_fit) at every point
        target = log_loss if log_loss.ndim == 1 else log_loss[rows]
        residual = log_fit - target
        abs_r = np.abs(residual)
        inner = np.minimum(abs_r, delta)
        value = inner * (abs_r - 0.5 * inner)  # 0.5 r^2 inside delta, linear outside
        weight = weights[0] if len(weights) == 1 else weights[rows]
        return (weight * value).sum(axis=1), weight * np.clip(residual, -delta, delta)

    def shifted(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The textbook form, exp(z - max z): finite wherever the fast form below is not
        z = (x @ flat.T).reshape(len(x), terms, points)
        top = z.max(axis=1, keepdims=True)
        w = np.exp(z - top)
        total = w.sum(axis=1)
        value, slope = huber(top[:, 0] + np.log(total), rows)
        grad = ((slope / total)[:, None, :] * w).reshape(len(x), terms * points) @ flat
        return value, grad

    def fun(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            w = np.exp(x @ varying.T).reshape(len(x), n_varying, points)
            w_offset = np.exp(x @ offsets.T)  # (problems, constant terms)
            total = w.sum(axis=1) + w_offset.sum(axis=1, keepdims=True)
            value, slope = huber(np.log(total), rows)
            slope = slope / total
            grad = (slope[:, None, :] * w).reshape(len(x), -1) @ varying + (
                slope.sum(axis=1, keepdims=True) * w_offset) @ offsets
            # Unshifted exps overflow (or underflow, losing digits) only at wild points, such as a
            # line search's long trial steps: those problems are redone in the shifted form
            wild = ~(np.isfinite(total) & (total >= TINY)).all(axis=1)
            if wild.any():
                value[wild], grad[wild] = shifted(x[wild], rows[wild])
            return value, grad

    return fun


@dataclass(frozen=True)
class Optimum:
    """One local optimum of a multi-start search."""

    theta: np.ndarray
    objective: float
    converged: bool
    stalled: bool = False  # dropped by minimize_batch's stall rule, far above the best


def multistart(fun: BatchObjective, starts: np.ndarray) -> list[Optimum]:
    """L-BFGS from every start on data set 0; all finite optima, best converged first."""
    result = minimize_batch(fun, starts, np.zeros(len(starts), dtype=int))
    found = [Optimum(x, float(f), bool(c), bool(s))
             for x, f, c, s in zip(result.x, result.f, result.converged, result.stalled,
                                   strict=True)
             if np.isfinite(f) and np.all(np.isfinite(x))]
    found.sort(key=lambda o: (not o.converged, o.objective))
    return found


def unconverged_warning(starts: int) -> str:
    """The warning for a fit whose best start did not converge: none of `starts` did."""
    return (f"unconverged fit: none of the {starts} starts met the optimiser's tolerances, so "
            "these values are the lowest point reached, not an optimum; look for runs far off "
            "the law (a diverged or mislabelled run) in the table")


# Problems stepped together: bounds the (problems x terms x points) work arrays' memory.
CHUNK = 2048


def refit_batch(
    fun: BatchObjective, starts: np.ndarray, sets: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best optimum per data set when each of `sets` data sets starts from every row of starts.

    Returns (sets, params) parameters and a (sets,) flag: did that set's best start converge.
    """
    per_chunk = max(1, CHUNK // len(starts))
    thetas, flags = [], []
    for first in range(0, sets, per_chunk):
        count = min(per_chunk, sets - first)
        rows = np.repeat(np.arange(first, first + count), len(starts))
        result = minimize_batch(fun, np.tile(starts, (count, 1)), rows)
        f = np.where(np.isfinite(result.f), result.f, np.inf).reshape(count, len(starts))
        pick = np.arange(count) * len(starts) + f.argmin(axis=1)
        thetas.append(result.x[pick])
        flags.append(result.converged[pick])
    if not thetas:
        return np.zeros((0, starts.shape[1])), np.zeros(0, dtype=bool)
    return np.concatenate(thetas), np.concatenate(flags)


def distinct_optima(optima: list[Optimum], count: int, decimals: int = 3) -> list[Optimum]:
    """The best `count` optima that differ after rounding (distinct basins, best first)."""
    seen: set[tuple[float, ...]] = set()
    kept = []
    for optimum in optima:
        key = tuple(np.round(optimum.theta, decimals))
        if key not in seen:
            seen.add(key)
            kept.append(optimum)
        if len(kept) == count:
            break
    return kept


def bootstrap_weights(points: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Resample counts: row j says how often each run appears in bootstrap draw j."""
    picks = rng.integers(0, points, size=(draws, points))
    counts = np.zeros((draws, points))
    np.add.at(counts, (np.arange(draws)[:, None], picks), 1.0)
    return counts


def identifiable_draws(n: np.ndarray, d: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Which bootstrap draws (rows of resample counts) hold two or more N and two or more D: a
    draw with one cannot identify an exponent in that variable, so joint laws drop it."""
    return np.array([len(np.unique(n[w > 0])) > 1 and len(np.unique(d[w > 0])) > 1
                     for w in weights], dtype=bool)


def loglog_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least-squares slope and intercept of log y on log x (y = exp(intercept) * x**slope)."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return {"slope": float(slope), "intercept": float(intercept)}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Two-sided percentile interval of bootstrap samples (finite ones only)."""
    samples = np.asarray(samples, dtype=float)
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return [float(lo), float(hi)]
