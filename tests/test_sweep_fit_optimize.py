"""Tests for sweep.fit.optimize: the Huber log-sum-exp objective every law shares.

Its fast form (no max shift, one exp per problem for a constant term) against the textbook one.
"""

from __future__ import annotations

import numpy as np
import pytest

from sweep.fit import approach3, kaplan
from sweep.fit.optimize import HUBER_DELTA, lse_objective
from sweep.fit.synthetic import EPOCH_LAW

N = np.geomspace(1e6, 1e9, 12)
D = np.geomspace(2e7, 4e10, 12)[::-1].copy()


def _textbook(features, log_loss, weights, x, rows):
    # logsumexp with the max shift, Huber on the residual, its gradient through the softmax
    terms, points, dim = features.shape
    z = (x @ features.reshape(-1, dim).T).reshape(len(x), terms, points)
    top = z.max(axis=1, keepdims=True)
    w = np.exp(z - top)
    residual = top[:, 0] + np.log(w.sum(axis=1)) - (log_loss if log_loss.ndim == 1
                                                    else log_loss[rows])
    inner = np.minimum(np.abs(residual), HUBER_DELTA)
    weight = weights[rows]
    value = (weight * inner * (np.abs(residual) - 0.5 * inner)).sum(axis=1)
    slope = weight * np.clip(residual, -HUBER_DELTA, HUBER_DELTA) / w.sum(axis=1)
    return value, (slope[:, None, :] * w).reshape(len(x), -1) @ features.reshape(-1, dim)


def _at_level(features: np.ndarray, level: np.ndarray) -> np.ndarray:
    # Parameters whose every term is `level` at every point: the intercepts at level, the
    # exponents 0 (an intercept is the parameter a term's features hold a 1 for)
    intercepts = (features == 1.0).all(axis=1)  # (terms, params)
    return level[:, None] * intercepts.any(axis=0)[None, :]


@pytest.mark.parametrize("law", ["approach3", "kaplan"])
def test_the_fast_form_is_the_textbook_one_at_ordinary_and_wild_points(law: str) -> None:
    rng = np.random.default_rng(0)
    # approach 3: a - alpha log N, b - beta log D and the constant e; Kaplan: e and c - alpha log x
    features = approach3._design(N, D) if law == "approach3" else kaplan._design(N)
    dim = features.shape[2]
    log_loss = np.log(EPOCH_LAW.loss(N, D))
    weights = rng.integers(0, 3, size=(3, len(N))).astype(float)  # bootstrap-like sets
    fun = lse_objective(features, log_loss, weights)
    # Scales from a near-fit to a line search's wild trials: terms that overflow, that all
    # underflow, or whose sum is subnormal (where an unshifted log would lose digits)
    x = rng.normal(size=(4000, dim)) * rng.choice([0.3, 3.0, 30.0, 300.0], size=(4000, 1))
    # ... and every term's log at -720 (a subnormal sum), -800 (all underflow) or +800
    level = np.repeat([-720.0, -800.0, 800.0], 10)
    x = np.vstack([x, _at_level(features, level)])
    rows = rng.integers(0, 3, size=len(x))
    value, grad = fun(x, rows)
    want_value, want_grad = _textbook(features, log_loss, weights, x, rows)
    finite = np.isfinite(want_value)
    assert finite.mean() > 0.9 and (np.isfinite(value) == finite).all()
    np.testing.assert_allclose(value[finite], want_value[finite], rtol=1e-12, atol=0)
    scale = np.abs(want_grad).max(axis=1, keepdims=True)
    ok = finite & np.isfinite(scale[:, 0])
    assert (np.abs(grad[ok] - want_grad[ok]) <= 1e-12 * scale[ok] + 1e-300).all()


def test_the_gradient_is_the_objectives_slope() -> None:
    features = approach3._design(N, D)
    log_loss = np.log(EPOCH_LAW.loss(N, D)) + np.linspace(-0.01, 0.01, len(N))  # some past delta
    fun = lse_objective(features, np.vstack([log_loss, log_loss[::-1]]), np.ones((2, len(N))))
    theta = np.array([[6.0, 7.0, 0.5, 0.35, 0.3]])
    for row in (0, 1):
        rows = np.array([row])
        _, grad = fun(theta, rows)
        step = 1e-6
        numeric = [(fun(theta + step * e, rows)[0] - fun(theta - step * e, rows)[0])[0]
                   / (2 * step) for e in np.eye(5)]
        np.testing.assert_allclose(grad[0], numeric, rtol=1e-5, atol=1e-9)
