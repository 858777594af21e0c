"""Kaplan et al.'s (2020) joint law, eq. 1.5: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D.

No irreducible term, unlike approach 3's E + A/N^alpha + B/D^beta: fitting both to one set of runs
compares the two papers' forms. Fitted like approach 3 (summed Huber on log loss, multi-start
L-BFGS, bootstrap over runs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweep.fit.kaplan import POOR_FIT_RMS
from sweep.fit.lbfgs import BatchObjective
from sweep.fit.optimize import (
    HUBER_DELTA,
    bootstrap_weights,
    distinct_optima,
    identifiable_draws,
    multistart,
    percentile_ci,
    refit_batch,
    unconverged_warning,
)

# Kaplan's overfitting threshold (sec. 4.2): D large enough that L(N, D) is within 2 % of L(N).
PENALTY = 0.02
# Starts for theta = (u, v, p, q), log L = q * LSE(u - p log N, v - log D): ln N_c and ln D_c from
# 10 to 60 (N_c, D_c ~ 2e4 to 1e26; Kaplan's are ~1e13), p = alpha_N / alpha_D, q = alpha_D.
_LOG_XC = np.arange(10.0, 60.0 + 1e-9, 10.0)
_P = np.array([0.25, 0.5, 1.0, 2.0])
_Q = np.array([0.05, 0.1, 0.2, 0.4])
# Bootstrap refits start from the main fit's best distinct optima (as approach 3's do).
REFIT_STARTS = 8
# A misfit beyond approach 3's larger than approach 3's own residuals, and than this (in log
# loss), is a poor fit: the form, not noise, is what misses the runs.
MIN_EXCESS = 0.005
# A term is idle when dropping it raises the rms residual by less than this factor: two more
# parameters fitted to noise alone lower it by a few percent on ~30 runs, a real term by far more.
IDLE_GAIN = 1.1
PARAMS = ("N_c", "D_c", "alpha_N", "alpha_D", "a", "b", "data_exponent", "data_coefficient")


def start_grid() -> np.ndarray:
    """Rows of (u, v, p, q) with u = p ln N_c: 6 x 6 x 4 x 4 = 576 starts."""
    return np.array([(p * ln_nc, ln_dc, p, q)
                     for ln_nc, ln_dc, p, q in itertools.product(_LOG_XC, _LOG_XC, _P, _Q)])


def objective(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, weights: np.ndarray,
              delta: float = HUBER_DELTA) -> BatchObjective:
    """Summed Huber loss of q * LSE(u - p log N, v - log D) - log L, with its exact gradient.

    `weights` has a row per data set (ones for the fit, resample counts for bootstrap draws).
    """

    def fun(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, v, p, q = (x[:, k, None] for k in range(4))
        # A line search may try wild points; they come out non-finite and are rejected there.
        with np.errstate(over="ignore", invalid="ignore"):
            z_n = u - p * log_n
            z_d = v - log_d
            top = np.maximum(z_n, z_d)
            e_n, e_d = np.exp(z_n - top), np.exp(z_d - top)
            total = e_n + e_d
            lse = top + np.log(total)
            residual = q * lse - log_loss
            abs_r = np.abs(residual)
            inner = np.minimum(abs_r, delta)
            weight = weights[rows]
            slope = weight * np.clip(residual, -delta, delta)
            w_n, w_d = q * e_n / total, q * e_d / total
            grad = np.stack([(slope * w_n).sum(1), (slope * w_d).sum(1),
                             -(slope * w_n * log_n).sum(1), (slope * lse).sum(1)], axis=1)
            return (weight * inner * (abs_r - 0.5 * inner)).sum(axis=1), grad

    return fun


@dataclass(frozen=True)
class KaplanLaw:
    """L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D."""

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> KaplanLaw:
        u, v, p, q = (float(t) for t in theta)
        with np.errstate(all="ignore"):  # p = 0 or a run-off term: inf/nan, flagged by warning()
            return cls(N_c=float(np.exp(np.float64(u) / p)) if p else math.inf,
                       D_c=float(np.exp(np.float64(v))), alpha_N=p * q, alpha_D=q)

    # numpy division: a fit at alpha_D = 0 or alpha_N = -alpha_D gives inf/nan, which
    # warning() flags, instead of a ZeroDivisionError that would sink the whole report
    @property
    def ratio(self) -> float:
        """alpha_N / alpha_D: the exponent of N in both the compute split and the data need."""
        with np.errstate(all="ignore"):
            return float(np.float64(self.alpha_N) / self.alpha_D)

    @property
    def a(self) -> float:
        """Exponent of N_opt in C under C = 6 N D: alpha_D / (alpha_N + alpha_D)."""
        with np.errstate(all="ignore"):
            return float(1.0 / (1.0 + np.float64(self.ratio)))

    @property
    def b(self) -> float:
        """Exponent of D_opt in C."""
        with np.errstate(all="ignore"):
            return float(np.float64(self.ratio) / (1.0 + self.ratio))

    def loss(self, n: Any, d: Any) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        with np.errstate(all="ignore"):  # a run-off law: inf/nan, left out of any interval
            return ((self.N_c / n) ** self.ratio + self.D_c / d) ** self.alpha_D

    def data_coefficient(self, penalty: float = PENALTY) -> float:
        """k in D = k N^(alpha_N / alpha_D): the tokens at which L(N, D) = (1 + penalty) L(N),
        Kaplan's eq. 4.4 (their fit gives about 5e3 N^0.74)."""
        with np.errstate(all="ignore"):
            scale = np.expm1(np.log1p(penalty) / np.float64(self.alpha_D))
            return float(self.D_c * np.float64(self.N_c) ** -self.ratio / scale)

    def values(self) -> dict[str, float]:
        return {"N_c": self.N_c, "D_c": self.D_c, "alpha_N": self.alpha_N,
                "alpha_D": self.alpha_D, "a": self.a, "b": self.b,
                "data_exponent": self.ratio, "data_coefficient": self.data_coefficient()}

    def warning(self) -> str | None:
        """Why the fit should not be read as Kaplan's law: a non-positive or run-off exponent."""
        values = self.values()
        if not all(math.isfinite(v) for v in values.values()) or max(self.alpha_N,
                                                                       self.alpha_D) > 3:
            return ("degenerate fit: a term ran off (exponent > 3 or infinite N_c, D_c); the runs "
                    "do not span enough N and D to identify the law, or the loss does not "
                    "depend on one of them")
        flat = [f"{name}={value:.3g} (the loss does not fall with {axis})"
                for name, value, axis in (("alpha_N", self.alpha_N, "N"),
                                          ("alpha_D", self.alpha_D, "D")) if value <= 0]
        if flat:
            return (f"non-physical fit: {' and '.join(flat)}; the runs are too far from "
                    "convergence, or span too little N and D, to identify the law (or the loss "
                    "does not depend on it)")
        return None


def _prediction(law: KaplanLaw, laws: list[KaplanLaw], n: float, d: float) -> dict[str, Any]:
    """The law's loss at (N, D) and the 95 % interval of the bootstrap laws' losses there."""
    row: dict[str, Any] = {"N": n, "D": d, "loss": float(law.loss(n, d))}
    if laws:
        with np.errstate(all="ignore"):  # a run-off refit gives inf/nan, which the CI leaves out
            row["ci95"] = {"loss": percentile_ci(np.array([float(s.loss(n, d)) for s in laws]))}
    return row


def _idle_term(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, rms: float
               ) -> str | None:
    """The variable whose term the runs do not need: a power law in the other alone (a line in
    log-log) fits them within IDLE_GAIN of the full law's rms. Its exponent, the split and the
    data need then describe noise."""
    for name, other in (("D", log_n), ("N", log_d)):
        slope, intercept = np.polyfit(other, log_loss, 1)
        alone = float(np.sqrt(np.mean((log_loss - intercept - slope * other) ** 2)))
        if alone <= IDLE_GAIN * max(rms, 1e-12):
            return name
    return None


def _quality_warning(section: dict[str, Any], approach3_rms: float | None) -> str | None:
    """A poor fit: a misfit beyond approach 3's on the same runs that noise cannot explain, or
    (without approach 3) residuals above POOR_FIT_RMS."""
    rms = section["rms_log_residual"]
    if approach3_rms is not None:
        # This form's misfit beyond approach 3's, taking approach 3's rms as the runs' noise
        # (they add in quadrature): poor when it exceeds that noise, and 0.5 % in log loss
        excess = math.sqrt(max(rms**2 - approach3_rms**2, 0.0))
        if excess > max(approach3_rms, MIN_EXCESS):
            return (f"poor fit next to approach 3's (rms log residual {rms:.3g} against "
                    f"{approach3_rms:.3g} on the same runs): approach 3's form, with the "
                    "irreducible loss E this one lacks, describes these runs better, and this "
                    "form's exponents, split and data need are biased")
        return None
    if rms > POOR_FIT_RMS:
        return (f"poor fit (rms log residual {rms:.3f}): the runs do not follow this form; an "
                "irreducible loss E, which this form lacks, is the usual reason")
    return None


def fit_kaplan_joint(n: np.ndarray, d: np.ndarray, loss: np.ndarray, *, bootstrap: int,
                     rng: np.random.Generator, predict: Sequence[tuple[float, float]] = (),
                     approach3_rms: float | None = None) -> dict[str, Any]:
    """The law from every start, then `bootstrap` refits on resampled runs; the report section,
    with the loss at each (N, D) of `predict`, judged against approach 3's rms residual when
    given."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    optima = multistart(objective(log_n, log_d, log_loss, np.ones((1, len(n)))), start_grid())
    if not optima:
        raise FloatingPointError(
            f"Kaplan L(N, D): no start gave a finite objective on {len(loss)} runs: check the "
            "loss column (positive, finite) and that N and D are positive and finite")
    best = optima[0].theta
    law = KaplanLaw.from_theta(best)
    starts = np.array([o.theta for o in distinct_optima(optima, REFIT_STARTS)])
    weights = bootstrap_weights(len(n), bootstrap, rng)
    weights = weights[identifiable_draws(n, d, weights)]
    theta, converged = refit_batch(objective(log_n, log_d, log_loss, weights), starts,
                                   len(weights))
    laws = [KaplanLaw.from_theta(t) for t in theta]
    samples = [refit.values() for refit in laws]
    ci = ({k: percentile_ci(np.array([s[k] for s in samples])) for k in PARAMS}
          if samples else {})
    # From theta, as the fit saw it: finite even where N_c or D_c overflow a float
    residual = best[3] * np.logaddexp(best[0] - best[2] * log_n, best[1] - log_d) - log_loss
    section: dict[str, Any] = {
        **law.values(), "ci95": ci, "n_points": len(n), "objective": optima[0].objective,
        "converged": optima[0].converged, "starts": len(start_grid()),
        "bootstrap": len(samples), "bootstrap_converged": int(converged.sum()),
        "huber_delta": HUBER_DELTA, "penalty": PENALTY,
        "rms_log_residual": float(np.sqrt(np.mean(residual**2))),
        **({"approach3_rms_log_residual": approach3_rms} if approach3_rms is not None else {}),
    }
    if predict:
        section["predictions"] = [_prediction(law, laws, float(a), float(b)) for a, b in predict]
    warning = law.warning()
    if warning is None and not optima[0].converged:  # converged optima sort first
        warning = unconverged_warning(section["starts"])
    idle = _idle_term(log_n, log_d, log_loss, section["rms_log_residual"])
    if warning is None and idle is not None:
        warning = (f"the {idle} term is not needed: a power law in the other variable alone fits "
                   f"these runs about as well, so alpha_{idle}, the split a, b and the data need "
                   "describe noise, not a dependence")
    if warning is None:
        warning = _quality_warning(section, approach3_rms)
    if warning is not None:
        section["warning"] = warning
    return section
