"""Kaplan power laws: exact recovery on clean data, covering intervals on noisy data."""

from __future__ import annotations

import numpy as np
import pytest

from sweep.fit.kaplan import power_law_report
from sweep.fit.optimize import bootstrap_weights


def test_without_offset_is_exact_on_a_pure_power_law():
    n = np.geomspace(1e6, 3e8, 9)
    loss = (8.8e13 / n) ** 0.076
    out = power_law_report(n, loss, name="N", weights=np.ones(9), draw_weights=np.zeros((0, 9)))
    fit = out["without_offset"]
    assert fit["alpha_N"] == pytest.approx(0.076, rel=1e-9)
    assert fit["N_c"] == pytest.approx(8.8e13, rel=1e-6)
    assert fit["rms_log_residual"] < 1e-12


def test_with_offset_recovers_the_law_and_covers_it():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e6, 3e8, 12)
    loss = (1.7 + (5e6 / n) ** 0.5) * np.exp(0.005 * rng.standard_normal(12))
    out = power_law_report(n, loss, name="N", weights=np.ones(12),
                           draw_weights=bootstrap_weights(12, 300, rng))
    fit = out["with_offset"]
    assert fit["E"] == pytest.approx(1.7, rel=0.03)
    assert fit["alpha_N"] == pytest.approx(0.5, rel=0.1)
    for name, truth in (("E", 1.7), ("N_c", 5e6), ("alpha_N", 0.5)):
        lo, hi = fit["ci95"][name]
        assert lo < truth < hi, name
    # Every refit converged (the draws left out hold fewer than the 4 distinct N it needs)
    assert fit["converged"] and 290 < fit["bootstrap"] == fit["bootstrap_converged"] <= 300
    assert out["without_offset"]["bootstrap_converged"] == out["without_offset"]["bootstrap"]
    # Without the offset the same points bend away from a line: a worse, flatter fit.
    assert out["without_offset"]["rms_log_residual"] > 3 * fit["rms_log_residual"]
    assert out["without_offset"]["alpha_N"] < 0.5


def test_too_few_points_are_skipped_with_a_reason():
    n = np.array([1e6, 1e7, 1e8])
    out = power_law_report(n, 2 + 1 / n**0.3, name="N", weights=np.ones(3),
                           draw_weights=np.zeros((0, 3)))
    assert "needs 4 distinct N" in out["with_offset"]["skipped"]
    assert "alpha_N" in out["without_offset"]


def _noisy_law(points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    n = np.geomspace(1e5, 1e7, points)
    return n, (2.0 + (3e4 / n) ** 0.4) * np.exp(0.01 * rng.standard_normal(points)), rng


@pytest.mark.parametrize(("points", "key"), [(3, "without_offset"), (4, "with_offset")])
def test_as_many_points_as_the_fit_needs_give_no_interval_and_say_why(points: int,
                                                                       key: str) -> None:
    # A usable draw must hold every point once: each refit is the fit, a zero-width "interval"
    n, loss, rng = _noisy_law(points, seed=0)
    out = power_law_report(n, loss, name="N", weights=np.ones(points),
                           draw_weights=bootstrap_weights(points, 200, rng))
    fit = out[key]
    assert fit["bootstrap"] > 0  # there were usable draws, all of them the data itself
    assert fit["ci95"] == {}
    assert fit["no_ci"] == (f"no CI: {points} points (a bootstrap draw needs all {points} "
                            "distinct N values, so every usable draw is the fit itself)")


def test_one_point_more_than_the_fit_needs_keeps_a_real_interval() -> None:
    n, loss, rng = _noisy_law(5, seed=0)
    out = power_law_report(n, loss, name="N", weights=np.ones(5),
                           draw_weights=bootstrap_weights(5, 200, rng))
    for key in ("without_offset", "with_offset"):
        fit = out[key]
        assert "no_ci" not in fit, key
        lo, hi = fit["ci95"]["alpha_N"]
        assert lo < fit["alpha_N"] < hi and hi - lo > 0.01, key


def test_no_bootstrap_asked_is_not_explained_as_too_few_points() -> None:
    n, loss, _ = _noisy_law(3, seed=0)
    fit = power_law_report(n, loss, name="N", weights=np.ones(3),
                           draw_weights=np.zeros((0, 3)))["without_offset"]
    assert fit["ci95"] == {} and "no_ci" not in fit


def test_the_report_names_bootstrap_refits_that_did_not_converge() -> None:
    from sweep.fit.report import _kaplan

    fit = {"E": 1.7, "N_c": 5e6, "alpha_N": 0.5, "ci95": {}, "bootstrap": 200,
           "bootstrap_converged": 197, "rms_log_residual": 0.01}
    text = "\n".join(_kaplan({"L_N": {"note": "sizes", "with_offset": fit,
                                     "without_offset": {**fit, "bootstrap_converged": 200}}}))
    assert text.count("did not converge") == 1 and "no start converged" not in text
    assert "; 3 of 200 bootstrap refits did not converge" in text
    text = "\n".join(_kaplan({"L_N": {"note": "sizes", "with_offset": {**fit, "converged": False},
                                     "without_offset": {**fit, "bootstrap_converged": 200}}}))
    assert "; no start converged: the lowest point reached, not an optimum; 3 of 200" in text
