"""Kaplan et al. (2020) power laws: L(x) = E + (x_c / x)^alpha for x = N, D or C.

Fitted with and without the irreducible offset E, reported side by side, each with bootstrap CIs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweep.fit.optimize import (
    distinct_optima,
    lse_objective,
    multistart,
    percentile_ci,
    refit_batch,
)

# Starts for (e, c, alpha) in log L = LSE(e, c - alpha log x): c = alpha log x_c spans the
# range real laws take (x_c from ~1e3 to ~1e30 at exponents 0.05-1).
_E = np.arange(-1.0, 1.0 + 1e-9, 0.5)
_C = np.arange(0.0, 30.0 + 1e-9, 2.5)
_ALPHA = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
OFFSET_STARTS = np.array(list(itertools.product(_E, _C, _ALPHA)))
# Fewest points per fit: the line needs 3 to say anything, the offset law one more than its 3.
MIN_POINTS = {False: 3, True: 4}
# Bootstrap refits start from the main fit's best distinct optima, not the whole grid.
REFIT_STARTS = 8
# Bootstrap refits that agree to this relative spread are the fit itself (float noise only):
# their percentile interval has zero width and means nothing.
ZERO_WIDTH = 1e-6
# Above this rms log residual (~5 % in loss) the points are not one power law: say so.
POOR_FIT_RMS = 0.05


@dataclass(frozen=True)
class PowerLaw:
    """L(x) = E + (x_c / x)^alpha; E = 0 for the fit without offset."""

    E: float
    x_c: float
    alpha: float

    def loss(self, x: Any) -> np.ndarray:
        return self.E + (self.x_c / np.asarray(x, dtype=float)) ** self.alpha


def _design(x: np.ndarray) -> np.ndarray:
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    return np.stack([np.stack([ones, zeros, zeros], 1), np.stack([zeros, ones, -np.log(x)], 1)])


def fit_offset(x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray,
               starts: np.ndarray = OFFSET_STARTS) -> tuple[np.ndarray, np.ndarray]:
    """(e, c, alpha) per weight row: multi-start L-BFGS on the Huber log-loss objective; and per
    row, whether its best start converged."""
    fun = lse_objective(_design(x), log_loss, weights)
    return refit_batch(fun, starts, len(weights))


def offset_refit_starts(x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray
                        ) -> tuple[np.ndarray, bool]:
    """The distinct optima of the full-grid fit, best first: the starts for its bootstrap refits;
    and whether the best converged (multistart puts a converged one first if any is)."""
    fun = lse_objective(_design(x), log_loss, weights[None, :])
    optima = distinct_optima(multistart(fun, OFFSET_STARTS), REFIT_STARTS)
    return np.array([o.theta for o in optima]), bool(optima[0].converged)


def fit_line(x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(0, c, alpha) per weight row: weighted least squares of log L on log x."""
    lx = np.log(x)
    w = weights / weights.sum(axis=1, keepdims=True)
    y = log_loss
    mx = (w * lx).sum(axis=1)
    my = (w * y).sum(axis=1)
    slope = (w * (lx - mx[:, None]) * (y - my[:, None])).sum(axis=1) / (
        w * (lx - mx[:, None]) ** 2).sum(axis=1)
    return np.column_stack([np.full(len(w), -np.inf), my - slope * mx, -slope])


def _to_law(theta: np.ndarray) -> PowerLaw:
    e, c, alpha = (float(v) for v in theta)
    with np.errstate(over="ignore"):  # alpha ~ 0 (a bootstrap draw of flat points): x_c = inf,
        # which the percentile intervals leave out, rather than a RuntimeWarning on the console
        return PowerLaw(E=float(np.exp(e)), x_c=float(np.exp(c / alpha)), alpha=alpha)


def power_law_report(
    x: np.ndarray, loss: np.ndarray, *, name: str, weights: np.ndarray,
    draw_weights: np.ndarray, draw_loss: np.ndarray | None = None,
) -> dict[str, Any]:
    """Both fits on the points with weight > 0, and their bootstrap CIs from the draws.

    `draw_weights` (draws, points) is each bootstrap draw's weight per point; with `draw_loss`
    each draw also has its own losses (an envelope recomputed per draw). Keys are named for x:
    `{name}_c` and `alpha_{name}`, as in Kaplan et al.
    """
    used = weights > 0
    out: dict[str, Any] = {"points": [{name: float(a), "loss": float(b)}
                                      for a, b in zip(x[used], loss[used], strict=True)]}
    log_loss = np.log(loss)
    draws_y = log_loss if draw_loss is None else np.where(draw_weights > 0, np.log(
        np.where(draw_weights > 0, draw_loss, 1.0)), 0.0)
    distinct = len(np.unique(x[used]))
    for offset, key in ((False, "without_offset"), (True, "with_offset")):
        need = MIN_POINTS[offset]
        if distinct < need:
            out[key] = {"skipped": f"needs {need} distinct {name} values, has {distinct}"}
            continue
        weight = weights.astype(float)
        fit_converged = True  # the line is least squares in closed form
        if offset:
            starts, fit_converged = offset_refit_starts(x, log_loss, weight)
            law = _to_law(starts[0])
        else:
            law = _to_law(fit_line(x, log_loss, weight[None, :])[0])
        enough = np.array([len(np.unique(x[w > 0])) >= need for w in draw_weights], dtype=bool)
        samples, converged = [], 0
        if enough.any():
            rows_y = draws_y if draws_y.ndim == 1 else draws_y[enough]
            if offset:
                refits, flags = fit_offset(x, rows_y, draw_weights[enough], starts)
                converged = int(flags.sum())
            else:  # least squares in closed form: nothing to converge
                refits = fit_line(x, rows_y, draw_weights[enough])
                converged = len(refits)
            samples = [_to_law(t) for t in refits]
        entry = {f"{name}_c": law.x_c, f"alpha_{name}": law.alpha}
        ci = {f"{name}_c": percentile_ci(np.array([s.x_c for s in samples])),
              f"alpha_{name}": percentile_ci(np.array([s.alpha for s in samples]))}
        if offset:
            entry = {"E": law.E, **entry}
            ci["E"] = percentile_ci(np.array([s.E for s in samples]))
        residual = np.log(law.loss(x[used])) - log_loss[used]
        rms = float(np.sqrt(np.mean(residual**2)))
        no_ci = _no_interval(samples, law, int(used.sum()), distinct, need, name, len(draw_weights))
        out[key] = {**entry, "ci95": ci if samples and not no_ci else {},
                    "converged": fit_converged, "bootstrap": len(samples),
                    "bootstrap_converged": converged, "rms_log_residual": rms}
        if no_ci:
            out[key]["no_ci"] = no_ci
        if rms > POOR_FIT_RMS:
            out[key]["warning"] = (f"poor fit (rms log residual {rms:.3f}): these points do not "
                                   f"follow one power law in {name}; L({name}) needs runs not "
                                   "limited by the other resource")
    return out


def _no_interval(samples: list[PowerLaw], law: PowerLaw, points: int, distinct: int, need: int,
                 name: str, draws: int) -> str | None:
    """Why the bootstrap gives no interval, or None when it gives a real one.

    With exactly as many points as the fit needs, a usable draw must hold every point once: it
    is the data itself, every refit is the fit, and the "interval" has zero width, which would
    read as an exact result.
    """
    if draws == 0:
        return None  # --bootstrap 0 asked for no intervals: nothing to explain
    if not samples:
        return (f"no CI: {points} points, and no bootstrap draw holds the {need} distinct "
                f"{name} values a refit needs")
    # Relative spread; the floor keeps float noise around E = 0 (the line) from counting.
    spread = max(float(np.ptp([getattr(s, k) for s in samples]))
                 / max(abs(getattr(law, k)), 1e-3) for k in ("E", "x_c", "alpha"))
    if spread > ZERO_WIDTH:
        return None
    if distinct == need:
        return (f"no CI: {points} points (a bootstrap draw needs all {need} distinct {name} "
                "values, so every usable draw is the fit itself)")
    return f"no CI: all {len(samples)} usable bootstrap refits equal the fit ({points} points)"
