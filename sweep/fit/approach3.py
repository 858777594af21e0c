"""Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted as in Hoffmann et al. 2022.

log L = LSE(a - alpha log N, b - beta log D, e); summed Huber loss (delta 1e-3) of log-loss
residuals; L-BFGS-B from the paper's grid of starts; bootstrap by resampling runs.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sweep.fit.optimize import (
    HUBER_DELTA,
    Optimum,
    bootstrap_weights,
    distinct_optima,
    identifiable_draws,
    lse_objective,
    multistart,
    percentile_ci,
    refit_batch,
    unconverged_warning,
)

PARAMS = ("E", "A", "B", "alpha", "beta")
# Bootstrap refits start from this many distinct optima of the full fit rather than the whole
# grid: a resample moves the optimum within its basin, and the runners-up cover basin switches.
REFIT_STARTS = 8


def start_grid() -> np.ndarray:
    """Hoffmann et al.'s starts, as rows of (a, b, e, alpha, beta): 6 x 6 x 5 x 5 x 5 = 4500."""
    ab = np.arange(0.0, 25.0 + 1e-9, 5.0)
    e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
    exponents = np.arange(0.0, 2.0 + 1e-9, 0.5)
    return np.array(list(itertools.product(ab, ab, e, exponents, exponents)))


def _design(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    # Coefficients of theta = (a, b, e, alpha, beta) in each of the three log-sum-exp terms.
    ones, zeros = np.ones_like(n, dtype=float), np.zeros_like(n, dtype=float)
    term_n = np.stack([ones, zeros, zeros, -np.log(n), zeros], axis=1)
    term_d = np.stack([zeros, ones, zeros, zeros, -np.log(d)], axis=1)
    term_e = np.stack([zeros, zeros, ones, zeros, zeros], axis=1)
    return np.stack([term_n, term_d, term_e])


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta and the compute-optimal split it implies."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> ChinchillaLaw:
        a, b, e, alpha, beta = (float(v) for v in theta)
        with np.errstate(over="ignore"):  # a switched-off term has A = inf; the report flags it
            return cls(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)

    @property
    def a(self) -> float:
        """Exponent of N_opt in C."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C."""
        return self.alpha / (self.alpha + self.beta)

    def loss(self, n: Any, d: Any) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        # A steep law far out (an optimum at N ~ 1e300) overflows N^alpha: its term is then 0
        with np.errstate(over="ignore"):
            return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal(self, compute: Any) -> tuple[np.ndarray, np.ndarray]:
        """N_opt, D_opt minimising L under C = 6 N D (Hoffmann et al. eq. 4)."""
        c = np.asarray(compute, dtype=float) / 6.0
        # A fit with a non-positive exponent (runs far from convergence, e.g. the CPU smoke sweep)
        # has no finite optimum: the allocation is nan/inf, reported as null (and warning() says
        # why).
        with np.errstate(all="ignore"):
            # numpy's power: a negative base gives nan, where Python floats would give a complex
            ratio = np.float64(self.alpha) * self.A / (self.beta * self.B)
            g = np.power(ratio, 1.0 / (self.alpha + self.beta))
            return g * c**self.a, c**self.b / g

    def values(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
                "a": self.a, "b": self.b}


def sample_losses(samples: np.ndarray, n: Any, d: Any) -> np.ndarray:
    """L(N, D) under each bootstrap law, rows of (E, A, B, alpha, beta); n and d are one value
    each or one per law (e.g. each law's own optimum)."""
    e, a, b, alpha, beta = samples.T
    with np.errstate(all="ignore"):  # a run-off law gives inf/nan, which the CI leaves out
        return e + a / np.asarray(n, dtype=float) ** alpha + b / np.asarray(d, dtype=float) ** beta


def fit_law(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, starts: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
) -> tuple[ChinchillaLaw, list[Optimum]]:
    """Best converged fit over the starts (default: the full grid) and every optimum found."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    fun = lse_objective(_design(n, d), np.log(loss), np.ones((1, len(n))), delta)
    optima = multistart(fun, start_grid() if starts is None else starts)
    if not optima:
        raise FloatingPointError(
            f"approach 3: no start gave a finite objective on {len(loss)} runs: check the loss "
            "column (positive, finite, not all equal) and that N and D are positive and finite")
    return ChinchillaLaw.from_theta(optima[0].theta), optima


def bootstrap_laws(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, starts: np.ndarray, draws: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """Refit on `draws` resamples of the runs: rows of (E, A, B, alpha, beta), one per draw, and
    how many of those refits converged (the others stopped at the iteration cap).

    A draw holding a single N or a single D cannot identify the law and is dropped (the report
    gives the number of draws kept).
    """
    weights = bootstrap_weights(len(n), draws, rng)
    weights = weights[identifiable_draws(n, d, weights)]
    fun = lse_objective(_design(n, d), np.log(loss), weights)
    theta, converged = refit_batch(fun, starts, len(weights))
    with np.errstate(over="ignore"):
        samples = np.column_stack([np.exp(theta[:, 2]), np.exp(theta[:, 0]),
                                   np.exp(theta[:, 1]), theta[:, 3], theta[:, 4]])
    return samples, int(converged.sum())


@dataclass
class Approach3:
    """The fit, its provenance and its bootstrap distribution."""

    law: ChinchillaLaw
    objective: float
    converged: bool
    n_points: int
    n_starts: int
    n_converged: int
    compute: list[float]
    samples: np.ndarray = field(repr=False)  # (bootstrap, 5): E, A, B, alpha, beta per refit
    predict: list[tuple[float, float]] = field(default_factory=list)  # (N, D) to predict L at
    largest: tuple[float, float] = (math.nan, math.nan)  # the fitted runs' largest N and D
    rms_log_residual: float = math.nan  # over the fitted runs: comparable with Kaplan's L(N, D)
    bootstrap_converged: int = 0  # refits that converged (the rest hit the iteration cap)
    n_stalled: int = 0  # starts dropped far above the best optimum (lbfgs' stall rule)
    # Seconds spent on the start grid and on the bootstrap refits (sweep.fit.bench prints them)
    timings_s: dict[str, float] = field(default_factory=dict)

    def ci95(self) -> dict[str, list[float]]:
        if len(self.samples) == 0:
            return {}
        cols = dict(zip(PARAMS, self.samples.T, strict=True))
        cols["a"] = cols["beta"] / (cols["alpha"] + cols["beta"])
        cols["b"] = cols["alpha"] / (cols["alpha"] + cols["beta"])
        return {name: percentile_ci(values) for name, values in cols.items()}

    def allocation(self) -> list[dict[str, Any]]:
        """Compute-optimal N, D, tokens per parameter and loss at each C, with bootstrap CIs."""
        laws = [ChinchillaLaw(*row) for row in self.samples]
        rows = []
        for c in self.compute:
            n_opt, d_opt = (float(v) for v in self.law.optimal(c))
            row: dict[str, Any] = {"C": c, "N_opt": n_opt, "D_opt": d_opt,
                                   "tokens_per_param": d_opt / n_opt,
                                   "L_opt": float(self.law.loss(n_opt, d_opt))}
            if laws:
                opts = np.array([law.optimal(c) for law in laws])
                row["ci95"] = {"N_opt": percentile_ci(opts[:, 0]),
                               "D_opt": percentile_ci(opts[:, 1]),
                               "tokens_per_param": percentile_ci(opts[:, 1] / opts[:, 0]),
                               "L_opt": percentile_ci(sample_losses(self.samples, opts[:, 0],
                                                                    opts[:, 1]))}
            rows.append(row)
        return rows

    def predictions(self) -> list[dict[str, Any]]:
        """The law's loss at each requested (N, D), with the 95 % bootstrap interval of the law
        (not of one run's noise) and how far each lies past the largest fitted N and D."""
        rows = []
        for n, d in self.predict:
            row: dict[str, Any] = {"N": n, "D": d, "C": 6.0 * n * d, "tokens_per_param": d / n,
                                   "loss": float(self.law.loss(n, d)),
                                   "N_over_largest": n / self.largest[0],
                                   "D_over_largest": d / self.largest[1]}
            if len(self.samples):
                row["ci95"] = {"loss": percentile_ci(sample_losses(self.samples, n, d))}
            rows.append(row)
        return rows

    def warning(self) -> str | None:
        """Why the fit should not be trusted: a term ran off to an extreme, an exponent is not
        positive (the loss would not fall with N or D, and no compute optimum exists), or no
        start converged."""
        values = self.law.values()
        if not all(np.isfinite(v) for v in values.values()) or max(self.law.alpha,
                                                                      self.law.beta) > 3:
            return ("degenerate fit: a term ran off (exponent > 3 or infinite coefficient); "
                    "the runs do not span enough N and D to identify the law")
        flat = [f"{name}={value:.3g} (the loss does not fall with {axis})"
                for name, value, axis in (("alpha", self.law.alpha, "N"),
                                          ("beta", self.law.beta, "D")) if value <= 0]
        if flat:
            return (f"non-physical fit: {' and '.join(flat)}, so there is no compute-optimal "
                    "allocation; the runs are too far from convergence, or span too little N and "
                    "D, to identify the law")
        # multistart puts a converged optimum first whenever there is one
        return None if self.converged else unconverged_warning(self.n_starts)

    def to_json(self) -> dict[str, Any]:
        warning = self.warning()
        return {**self.law.values(), **({"warning": warning} if warning else {}),
                "ci95": self.ci95(), "n_points": self.n_points,
                "objective": self.objective, "converged": self.converged,
                "rms_log_residual": self.rms_log_residual,
                "starts": self.n_starts, "starts_converged": self.n_converged,
                "starts_stalled": self.n_stalled,
                "bootstrap": len(self.samples), "bootstrap_converged": self.bootstrap_converged,
                "huber_delta": HUBER_DELTA,
                "allocation": self.allocation(),
                **({"predictions": self.predictions()} if self.predict else {})}


def _rms_log_residual(theta: np.ndarray, n: np.ndarray, d: np.ndarray, loss: np.ndarray
                      ) -> float:
    # From theta, as the fit saw it: finite even where a run-off term overflows A or B
    fitted = np.logaddexp.reduce(_design(n, d) @ theta, axis=0)
    return float(np.sqrt(np.mean((fitted - np.log(loss)) ** 2)))


def fit_approach3(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, *, bootstrap: int, seed: int,
    compute: list[float], predict: Sequence[tuple[float, float]] = (),
) -> Approach3:
    """Fit on all runs from the full start grid, then `bootstrap` refits on resampled runs;
    the report gives the loss at each (N, D) of `predict`."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    t0 = time.perf_counter()
    law, optima = fit_law(n, d, loss)
    t1 = time.perf_counter()
    starts = np.array([o.theta for o in distinct_optima(optima, REFIT_STARTS)])
    samples, converged = bootstrap_laws(n, d, loss, starts, bootstrap,
                                        np.random.default_rng(seed))
    timings = {"grid": t1 - t0, "bootstrap": time.perf_counter() - t1}
    best = optima[0]
    return Approach3(
        law=law, objective=best.objective, converged=best.converged, n_points=len(n),
        n_starts=len(start_grid()), n_converged=sum(o.converged for o in optima),
        compute=list(compute), samples=samples, predict=list(predict),
        largest=(float(n.max()), float(d.max())),
        rms_log_residual=_rms_log_residual(best.theta, n, d, loss),
        bootstrap_converged=converged, timings_s=timings,
        n_stalled=sum(o.stalled for o in optima),
    )
