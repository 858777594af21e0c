"""Tests for `python -m sweep.fit.bench`: a small run recovers the law its table was drawn from,
and bad flags exit 2 with one line naming the value and the fix, before any fitting.
"""

from __future__ import annotations

import re

import pytest

import sweep.fit.approach3
import sweep.fit.bench
from sweep.fit.bench import main
from sweep.fit.synthetic import EPOCH_LAW

FULL_GRID = sweep.fit.approach3.start_grid()


@pytest.fixture
def small_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 45th of Hoffmann's 4500 starts: the full grid takes ~20 s a fit on a small CPU."""
    monkeypatch.setattr(sweep.fit.approach3, "start_grid", lambda: FULL_GRID[::45])
    monkeypatch.setattr(sweep.fit.bench, "start_grid", lambda: FULL_GRID[::45])


def estimates(out: str) -> dict[str, tuple[float, float, float]]:
    """name -> (value, CI low, CI high) from the bench's per-parameter lines."""
    found = re.findall(r"^ +(\w+) = +(\S+)  95% CI \[(\S+), (\S+)\]  truth", out, re.MULTILINE)
    return {name: (float(v), float(lo), float(hi)) for name, v, lo, hi in found}


def test_a_noiseless_table_is_recovered_with_its_timings(small_grid: None,
                                                          capsys: pytest.CaptureFixture) -> None:
    main(["--runs", "35", "--bootstrap", "2", "--noise", "0"])
    out = capsys.readouterr().out
    # 35 runs round down to 10 budgets x 3 sizes
    assert "; 30 runs, 100 starts, 2 bootstrap refits" in out.splitlines()[0]
    # Each stage is timed on its own, so no figure is a difference that could come out below 0
    timing = re.search(r"^full start grid: ([\d.]+) s; grid \+ 2 refits: ([\d.]+) s \(([\d.]+) "
                       r"ms per refit\)$", out, re.MULTILINE)
    assert timing is not None, out
    grid_s, total_s, per_refit_ms = (float(v) for v in timing.groups())
    assert total_s >= grid_s and total_s - grid_s == pytest.approx(2 * per_refit_ms / 1000,
                                                                   abs=0.11)
    counts = re.search(r"^converged: (\d+) of 100 starts \((\d+) dropped as stalled\), "
                       r"2 of 2 refits$", out, re.MULTILINE)
    assert counts is not None, out
    assert int(counts[1]) > 0 and int(counts[1]) + int(counts[2]) <= 100
    found = estimates(out)
    assert set(found) == set(EPOCH_LAW.values())
    for name, truth in EPOCH_LAW.values().items():
        value, lo, hi = found[name]
        # Noiseless data: the fit and every resample land on the law (to the 4 digits printed)
        assert value == pytest.approx(truth, rel=2e-3), name
        assert lo == pytest.approx(truth, rel=2e-3) and hi == pytest.approx(truth, rel=2e-3), name


@pytest.mark.parametrize(("argv", "message"), [
    (["--bootstrap", "-3"], "--bootstrap -3 is negative: give 0 (no refits) or more "
                            "(the fitter uses 1000)"),
    (["--runs", "-5"], "--runs -5 is below the smallest table (10 budgets x 3 sizes): give "
                       "--runs 30 or more"),
    (["--runs", "29"], "--runs 29 is below the smallest table"),
    (["--noise", "nan"], "--noise nan must be a finite number >= 0: give e.g. --noise 0.01"),
    (["--noise", "inf"], "--noise inf must be a finite number >= 0"),
    (["--noise", "-0.1"], "--noise -0.1 must be a finite number >= 0"),
    (["--runs", "many"], "argument --runs: invalid int value: 'many'"),
])
def test_bad_flags_are_one_line_and_exit_2(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("fitted despite a bad flag")

    monkeypatch.setattr(sweep.fit.bench, "fit_approach3", no_fit)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {message}")
    assert captured.err.endswith("; see python -m sweep.fit.bench --help\n")
    assert captured.err.count("\n") == 1
