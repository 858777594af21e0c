"""End-to-end tests of `python -m sweep.fit`: a fitted report on a synthetic sweep, and clean exits.

Two full fits run at once in one module fixture (each takes tens of seconds: approach 3 and the
extrapolation check each search the 4500-start grid); every other test reads their results.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sweep.fit.__main__ import _summary, main
from sweep.fit.analysis import FitOptions
from sweep.fit.synthetic import EPOCH_LAW, isoflop_table
from tests.conftest import PYTHON
from tests.test_sweep_collect import make_run

REPO = Path(__file__).resolve().parent.parent
# One BLAS thread per process: the two fits below run side by side.
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PLOTS = {"isoflop.png", "loss_vs_compute.png", "optimal_allocation.png",
         "approach3_contours.png", "extrapolation.png", "residuals.png"}
SECTIONS = ("approach1", "approach2", "approach3", "kaplan", "kaplan_nd", "extrapolation")
# The fitter with every training-side dependency made unimportable.
TORCH_FREE = """
import runpy, sys
for name in ("torch", "hydra", "omegaconf", "datasets", "tokenizers", "wandb"):
    sys.modules[name] = None
sys.argv = ["sweep.fit", *sys.argv[1:]]
runpy.run_module("sweep.fit", run_name="__main__", alter_sys=True)
"""
FIT_TIMEOUT_S = 600
# The curves fit's --predict: a run near the data's compute-optimal frontier (N 0.55x, D 1.1x the
# largest run's) and one 10x larger in C than any run, overtrained at 100 tokens per parameter.
PREDICT = ("1e8,2e9", "1e9,1e11")


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"report.json holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def fit_cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "sweep.fit", *map(str, args)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


@dataclass
class Fit:
    rc: int
    stdout: str
    stderr: str
    out: Path
    source: Path

    def report(self) -> dict[str, Any]:
        return strict_json((self.out / "report.json").read_text())


@dataclass
class Fits:
    curves: Fit  # the curves table, bootstrap 30, budgets from the budget column
    final: Fit  # its final points only, torch-free, into a directory holding a stale report
    stale_mtime: float


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> Fits:
    root = tmp_path_factory.mktemp("fit")
    table = isoflop_table(budgets=(1e16, 1e17, 1e18, 1e19), sizes_per_budget=7, curve_points=4,
                          noise=0.005, seed=1)
    curves_csv = root / "curves.csv"
    table.to_csv(curves_csv, index=False)
    final_csv = root / "final.csv"
    table.loc[table.groupby("run_id")["C"].idxmax()].to_csv(final_csv, index=False)

    # An earlier report in the second fit's --out: it must be replaced as a whole.
    out_final = root / "again" / "report"
    out_final.mkdir(parents=True)
    (out_final / "report.json").write_text('{"stale": true}\n')
    (out_final / "report.md").write_text("# stale\n")
    (out_final / "stale.png").write_bytes(b"not a plot")
    stale_mtime = time.time() - 3600
    os.utime(out_final / "report.json", (stale_mtime, stale_mtime))

    out_curves = root / "report"
    jobs = {
        "curves": (subprocess.Popen(
            [PYTHON, "-m", "sweep.fit", str(curves_csv), "--out", str(out_curves),
             "--bootstrap", "30", "--budget-col", "budget", "--predict", *PREDICT],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            out_curves, curves_csv),
        "final": (subprocess.Popen(
            [sys.executable, "-c", TORCH_FREE, str(final_csv), "--out", str(out_final),
             "--bootstrap", "5", "--budget-col", "budget"],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            out_final, final_csv),
    }
    done = {}
    for name, (proc, out, source) in jobs.items():
        try:
            stdout, stderr = proc.communicate(timeout=FIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other, _, _ in jobs.values():
                other.kill()
            raise
        done[name] = Fit(proc.returncode, stdout, stderr, out, source)
    return Fits(curves=done["curves"], final=done["final"], stale_mtime=stale_mtime)


def ci95_entries(tree: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every entry of every ci95 dict anywhere in the report."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "ci95":
                assert isinstance(value, dict), path
                found += [(f"{path}.ci95.{k}", v) for k, v in value.items()]
            else:
                found += ci95_entries(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += ci95_entries(value, f"{path}[{i}]")
    return found


# --- the full fit on a curves table ------------------------------------------------------------


def test_curves_fit_writes_the_whole_report(fits: Fits) -> None:
    fit = fits.curves
    assert fit.rc == 0, fit.stderr
    assert {p.name for p in fit.out.iterdir()} == PLOTS | {"report.json", "report.md"}
    for name in PLOTS:
        assert (fit.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    markdown = (fit.out / "report.md").read_text()
    for name in PLOTS:
        assert f"![{name}]({name})" in markdown
    assert "## Approach 3" in markdown and "## Extrapolation check" in markdown
    # Kaplan's form has no irreducible loss, which these runs (drawn with one) need
    assert "## Kaplan L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D" in markdown
    assert "**Warning: poor fit next to approach 3's (rms log residual" in markdown
    assert "Kaplan L(N, D): alpha_N=" in fit.stdout
    assert "Kaplan L(N, D) warning: poor fit" in fit.stdout
    assert "## Skipped" not in markdown


def test_curves_fit_report_json_is_strict_and_complete(fits: Fits) -> None:
    report = fits.curves.report()
    for key in (*SECTIONS, "skipped"):
        assert key in report, key
    assert report["skipped"] == {}
    assert report["n_runs"] == 28 and report["n_curve_points"] == 112
    assert report["source"] == str(fits.curves.source)
    assert report["options"]["bootstrap"] == 30
    assert report["columns"]["budget"] == "budget"


def test_curves_fit_recovers_the_true_law(fits: Fits) -> None:
    report = fits.curves.report()
    a3 = report["approach3"]
    assert abs(a3["alpha"] - EPOCH_LAW.alpha) < 0.05
    assert abs(a3["beta"] - EPOCH_LAW.beta) < 0.05
    assert abs(a3["a"] - EPOCH_LAW.a) < 0.03 and abs(a3["b"] - EPOCH_LAW.b) < 0.03
    assert abs(a3["E"] - EPOCH_LAW.E) < 0.1
    assert a3["n_points"] == 28 and a3["bootstrap"] == 30 and a3["converged"]
    assert abs(report["approach2"]["a"] - EPOCH_LAW.a) < 0.05
    assert report["approach2"]["budgets_from"] == "column 'budget' (--budget-col)"
    assert abs(report["approach1"]["a"] - EPOCH_LAW.a) < 0.1
    # Both forms' residuals, side by side: the law the runs came from fits them ~10x closer
    rms = report["kaplan_nd"]["approach3_rms_log_residual"]
    assert rms == report["approach3"]["rms_log_residual"] < 0.01
    assert report["kaplan_nd"]["rms_log_residual"] > 5 * rms
    # Fitted on the budgets up to 1e18, the seven runs at 1e19 are predicted to within 2 %.
    extrapolation = report["extrapolation"]
    assert (extrapolation["n_fit"], extrapolation["n_held_out"]) == (21, 7)
    assert extrapolation["mean_abs_rel_error"] < 0.02


def test_curves_fit_every_ci95_is_an_ordered_pair(fits: Fits) -> None:
    report = fits.curves.report()
    entries = ci95_entries(report)
    names = {path for path, _ in entries}
    for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
        assert f".approach3.ci95.{key}" in names
    assert ".approach2.ci95.a" in names and ".approach1.ci95.a" in names
    assert len(entries) > 30
    for path, value in entries:
        assert isinstance(value, list) and len(value) == 2, (path, value)
        lo, hi = value
        assert isinstance(lo, float | int) and isinstance(hi, float | int), (path, value)
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi, (path, value)
    lo, hi = report["approach3"]["ci95"]["a"]
    assert lo <= report["approach3"]["a"] <= hi


def test_curves_fit_predicts_the_requested_runs(fits: Fits) -> None:
    rows = fits.curves.report()["approach3"]["predictions"]
    assert [(r["N"], r["D"]) for r in rows] == [(1e8, 2e9), (1e9, 1e11)]
    markdown = (fits.curves.out / "report.md").read_text()
    table = pd.read_csv(fits.curves.source)
    for row in rows:
        truth = float(EPOCH_LAW.loss(row["N"], row["D"]))
        assert row["loss"] == pytest.approx(truth, rel=0.02)
        lo, hi = row["ci95"]["loss"]
        assert lo < row["loss"] < hi
        assert row["C"] == 6 * row["N"] * row["D"]
        assert f"| {row['N']:.4g} | {row['D']:.4g} |" in markdown
        # How far out each lies, against the largest run's N and D (its final point's).
        assert row["N"] / row["N_over_largest"] == pytest.approx(table.N.max())
        assert row["D"] / row["D_over_largest"] == pytest.approx(table.D.max())
    assert "Predicted loss at the requested runs" in markdown
    printed = [line for line in fits.curves.stdout.splitlines() if line.startswith("predicted")]
    assert len(printed) == 4  # approach 3's two, then Kaplan's form's two
    assert printed[1].startswith(f"predicted loss at N=1e+09, D=1e+11: {rows[1]['loss']:.4g} [")
    kaplan = fits.curves.report()["kaplan_nd"]["predictions"]
    assert printed[3] == (f"predicted loss at N=1e+09, D=1e+11: {kaplan[1]['loss']:.4g} "
                          f"[{kaplan[1]['ci95']['loss'][0]:.4g}, "
                          f"{kaplan[1]['ci95']['loss'][1]:.4g}] (Kaplan L(N, D))")
    for mine, theirs in zip(kaplan, rows, strict=True):
        assert mine["approach3_loss"] == pytest.approx(theirs["loss"], rel=1e-12)
        # A law with a floor, fitted without one, predicts too low far out
        assert mine["loss"] < theirs["loss"]
    assert "| loss (Kaplan L(N, D)) | loss (approach 3) |" in markdown


def test_curves_fit_prints_a_summary(fits: Fits) -> None:
    lines = fits.curves.stdout.splitlines()
    assert lines[0].startswith("approach 3: E=")
    assert any(line.startswith("approach 2: a=") for line in lines)
    assert any(line.startswith("approach 1: a=") for line in lines)
    assert any(line.startswith("extrapolation: 7 held-out runs") for line in lines)
    assert lines[-1].startswith(f"report: {fits.curves.out / 'report.md'} (")
    assert not any(line.startswith(("skipped", "approach 3 warning")) for line in lines)


def test_the_summary_repeats_approach3s_warning() -> None:
    """A fit the report warns about is flagged on the console too, right under its line."""
    law = {"E": 0.0, "A": 0.0049, "B": 51.56, "alpha": -0.2099, "beta": 0.1964, "a": -14.6,
           "b": 15.6, "warning": "non-physical fit: alpha=-0.21 (...)"}
    lines = _summary({"approach3": law, "skipped": {}})
    assert lines == ["approach 3: E=0 A=0.0049 B=51.56 alpha=-0.2099 beta=0.1964 -> a=-14.600 "
                     "b=15.600", "approach 3 warning: non-physical fit: alpha=-0.21 (...)"]


def test_the_summary_gives_kaplans_three_laws_and_their_warnings() -> None:
    line_fit = {"N_c": 8.8e13, "alpha_N": 0.076}
    kaplan = {
        "L_N": {"without_offset": line_fit, "with_offset": {"E": 1.69, **line_fit}},
        "L_D": {"without_offset": {"D_c": 5.4e13, "alpha_D": 0.095, "warning": "poor fit (...)"},
                "with_offset": {"skipped": "needs 4 distinct D values, has 3"}},
        "L_C": {"without_offset": {"C_c": 3.1e8, "alpha_C": 0.05},
                "with_offset": {"E": 1.7, "C_c": 2e19, "alpha_C": 0.2, "warning": "degenerate"}},
    }
    assert _summary({"kaplan": kaplan, "skipped": {}}) == [
        "Kaplan L(N): alpha_N=0.076 N_c=8.8e+13; with offset E=1.69 alpha_N=0.076 N_c=8.8e+13",
        "Kaplan L(D): alpha_D=0.095 D_c=5.4e+13; with offset skipped: needs 4 distinct D "
        "values, has 3",
        "Kaplan L(D) warning: poor fit (...)",
        "Kaplan L(C): alpha_C=0.05 C_c=3.1e+08; with offset E=1.7 alpha_C=0.2 C_c=2e+19",
        "Kaplan L(C) with offset warning: degenerate",
    ]


# --- final points only, torch-free, over an earlier report -------------------------------------


def test_fit_runs_without_torch_or_hydra(fits: Fits) -> None:
    assert fits.final.rc == 0, fits.final.stderr
    assert "approach 3: E=" in fits.final.stdout


def test_table_without_curves_skips_approach1_and_says_why(fits: Fits) -> None:
    assert fits.final.rc == 0, fits.final.stderr
    report = fits.final.report()
    assert "approach1" not in report
    assert list(report["skipped"]) == ["approach1"]
    assert "needs per-eval-point curves" in report["skipped"]["approach1"]
    for key in ("approach2", "approach3", "kaplan", "kaplan_nd", "extrapolation"):
        assert key in report, key
    assert report["n_runs"] == 28 and report["n_curve_points"] == 0
    assert "skipped approach1: needs per-eval-point curves" in fits.final.stdout
    assert "## Skipped" in (fits.final.out / "report.md").read_text()


def test_rerun_replaces_the_earlier_report_whole(fits: Fits) -> None:
    out = fits.final.out
    assert fits.final.rc == 0, fits.final.stderr
    assert {p.name for p in out.iterdir()} == PLOTS | {"report.json", "report.md"}
    assert "stale" not in fits.final.report()
    assert (out / "report.md").read_text() != "# stale\n"
    assert (out / "report.json").stat().st_mtime > fits.stale_mtime + 1800
    assert [p.name for p in out.parent.iterdir()] == ["report"]  # no .tmp- or .old- left


# --- bad input: exit 2, one line, nothing written ----------------------------------------------


@pytest.fixture(scope="module")
def good_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "runs.csv"
    isoflop_table(budgets=(1e17, 1e18, 1e19), sizes_per_budget=5).to_csv(path, index=False)
    return path


def refused(args: list[object], out: Path) -> str:
    """The one error line of a refused fit. Run in this process (a CLI process would spend a
    second starting per case); the missing-source test runs the real command."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = main([*map(str, args), "--out", str(out)])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    assert code == 2, (code, stderr.getvalue())
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr.getvalue()
    assert stdout.getvalue() == ""
    return lines[0]


def test_nan_table_exits_2_and_writes_nothing(tmp_path: Path, good_csv: Path) -> None:
    table = pd.read_csv(good_csv)
    table.loc[6, "loss"] = float("nan")
    source = tmp_path / "nan.csv"
    table.to_csv(source, index=False)
    line = refused([source], tmp_path / "out" / "report")
    assert "'loss'" in line and "rows 6)" in line
    assert not (tmp_path / "out").exists()


def test_header_only_table_exits_2(tmp_path: Path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("run_id,N,D,C,loss\n")
    assert "has 0 runs" in refused([source], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_predict_without_approach3_says_why(tmp_path: Path) -> None:
    # Two sizes cannot identify A / N^alpha: approach 3 is skipped, and with it the predictions.
    source = tmp_path / "two_sizes.csv"
    pd.DataFrame([{"run_id": f"{n:g}-{d:g}", "N": n, "D": d, "C": 6 * n * d,
                   "loss": float(EPOCH_LAW.loss(n, d))}
                  for n in (1e7, 3e7) for d in (1e8, 3e8, 1e9, 3e9)]).to_csv(source, index=False)
    result = fit_cli(source, "--out", tmp_path / "report", "--predict", "1e9,2e10")
    assert result.returncode == 0, result.stderr
    skipped = strict_json((tmp_path / "report" / "report.json").read_text())["skipped"]
    assert skipped["predictions"] == ("--predict needs approach 3, which these runs cannot "
                                      "support (see approach3)")
    assert "2 distinct N" in skipped["approach3"]
    assert "skipped predictions: --predict needs approach 3" in result.stdout
    assert not any(line.startswith("predicted") for line in result.stdout.splitlines())


def test_only_the_methods_asked_for_run_and_the_others_say_so(tmp_path: Path,
                                                              good_csv: Path) -> None:
    out = tmp_path / "report"
    result = fit_cli(good_csv, "--out", out, "--bootstrap", "0", "--methods", "kaplan",
                     "approach2", "kaplan")
    assert result.returncode == 0, result.stderr
    report = strict_json((out / "report.json").read_text())
    assert "kaplan" in report and "approach2" in report
    not_asked = "not asked for (--methods kaplan approach2)"
    assert report["skipped"] == {m: not_asked for m in ("approach3", "approach1", "kaplan_nd",
                                                         "extrapolation")}
    assert report["options"]["methods"] == ["kaplan", "approach2"]
    assert set(report["timings_s"]) == {"kaplan", "approach2"}
    assert f"skipped approach3: {not_asked}" in result.stdout.splitlines()
    assert result.stdout.startswith("approach 2: a=")  # then Kaplan's laws
    assert sum(line.startswith("Kaplan L(") for line in result.stdout.splitlines()) >= 3
    assert f"- extrapolation: {not_asked}" in (out / "report.md").read_text()
    # The extrapolation, contour and residual plots need the methods left out
    assert sorted(p.name for p in out.glob("*.png")) == [
        "isoflop.png", "loss_vs_compute.png", "optimal_allocation.png"]
    assert report["approach2"]["a"] == pytest.approx(EPOCH_LAW.a, abs=0.03)


def test_methods_are_checked_in_the_options_too() -> None:
    for methods in ((), ("approach3", "chinchilla")):
        with pytest.raises(ValueError, match=r"choose one or more of approach3, approach2, "):
            FitOptions(methods=methods)
    with pytest.raises(ValueError, match=r"--predict needs approach3 or kaplan_nd, which "
                                         r"--methods kaplan leaves out"):
        FitOptions(methods=("kaplan",), predict=((1e9, 2e10),))


@pytest.mark.parametrize(("flags", "says"), [
    (["--holdout-factor", "1"], "--holdout-factor 1 must be > 1"),
    (["--bootstrap", "-1"], "--bootstrap -1 is negative"),
    (["--isoflop-window", "0"], "--isoflop-window 0 must be > 0"),
    (["--compute", "1e20", "0"], "--compute 0 must be > 0"),
    (["--predict", "1e9"], "--predict 1e9 is not N,D: give parameters and tokens"),
    (["--predict", "1e9,2e10", "1e9,x"], "--predict 1e9,x is not N,D"),
    (["--predict", "1e9,0"], "--predict 1e9,0: N and D must be positive, finite numbers"),
    (["--predict", "nan,2e10"], "--predict nan,2e10: N and D must be positive"),
    (["--seed", "-1"], "--seed -1 is negative"),
    (["--compute", "nan"], "--compute nan must be > 0 FLOPs (and finite)"),
    (["--holdout-factor", "inf"], "--holdout-factor inf must be > 1"),
    (["--isoflop-window", "inf"], "--isoflop-window inf must be > 0 decades (and finite)"),
    (["--methods", "approach4"], "argument --methods: invalid choice: 'approach4'"),
    (["--methods", "kaplan", "approach2", "--predict", "1e9,2e10"],
     "--predict needs approach3 or kaplan_nd, which --methods kaplan approach2 leaves out"),
])
def test_bad_option_exits_2_and_writes_nothing(tmp_path: Path, good_csv: Path,
                                               flags: list[str], says: str) -> None:
    assert says in refused([good_csv, *flags], tmp_path / "out" / "report")
    assert not (tmp_path / "out").exists()


def test_missing_source_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    result = fit_cli(tmp_path / "nowhere.csv", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "does not exist" in line
    assert not (tmp_path / "out").exists()


def test_out_that_is_not_a_report_is_left_untouched(tmp_path: Path, good_csv: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    line = refused([good_csv], out)
    assert f"--out {out} exists and is not a report directory" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_out_with_a_report_and_other_files_is_left_untouched(tmp_path: Path,
                                                              good_csv: Path) -> None:
    # A report.json among a user's files once made the folder "a report", replaced whole
    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "report.json").write_text("{}\n")
    (out / "notes.txt").write_text("mine\n")
    (out / "data" / "runs.csv").write_text("N,D\n")
    line = refused([good_csv], out)
    assert line.endswith("exists and is not a report directory (it holds data, notes.txt); "
                         "choose a new or empty directory (one holding only an earlier report is "
                         "replaced)")
    assert sorted(p.name for p in out.iterdir()) == ["data", "notes.txt", "report.json"]


def test_out_that_cannot_be_written_is_one_line(tmp_path: Path, good_csv: Path) -> None:
    # Under a file; one quick method is enough to reach the writing
    line = refused([good_csv, "--bootstrap", "0", "--methods", "approach2"], good_csv / "report")
    assert line.startswith(f"error: cannot write the report to {good_csv / 'report'} (")
    assert line.endswith("): choose a writable --out")


def test_out_that_is_a_file_is_left_untouched(tmp_path: Path, good_csv: Path) -> None:
    out = tmp_path / "report"
    out.write_text("a file\n")
    assert "is not a report directory" in refused([good_csv], out)
    assert out.read_text() == "a file\n"


def test_unreadable_run_in_a_runs_directory_exits_2_unless_skipped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for n in (1000, 2000, 3000, 4000):
        make_run(runs, n, 20 * n, 4.0 - n / 4000)
    bad = make_run(runs, 5000, 100_000, 2.5) / "summary.json"
    bad.write_text("{")
    line = refused([runs], tmp_path / "out")
    assert line.startswith(f"error: {bad} is unreadable (not valid JSON: ")
    assert line.endswith("delete that run directory to retrain it, or pass --skip-unreadable to "
                         "collect without it")
    # Skipped, four runs are left: too few to fit, which is the next (and only) error.
    assert "has 4 runs" in refused([runs, "--skip-unreadable"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
