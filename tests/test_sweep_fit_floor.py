"""A fitted irreducible loss E above a loss the runs reach: warned about, with both numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sweep.fit.__main__ import _summary, main
from sweep.fit.analysis import floor_warning

# The reviewer's case: approach 3's E 2.266 and Kaplan L(D)'s 2.147 against a run at 1.946.
REVIEW = {"approach3": {"E": 2.266},
          "kaplan": {"L_N": {"with_offset": {"skipped": "needs 4 distinct N values, has 3"}},
                     "L_D": {"with_offset": {"E": 2.147}},
                     "L_C": {"with_offset": {"E": 1.2}}}}
REVIEW_RUNS = pd.DataFrame({"run": ["exA/a", "exK/target4e05-d5f29b72d7", "exA/b"],
                            "loss": [2.406, 1.946, 3.1]})


def test_e_above_the_lowest_loss_names_both_numbers_and_what_it_means() -> None:
    assert floor_warning(REVIEW, REVIEW_RUNS) == (
        "fitted irreducible loss above the lowest loss in the table (approach 3 E = 2.266; "
        "Kaplan L(D) E = 2.147; run exK/target4e05-d5f29b72d7 reached 1.946): the law cannot go "
        "below E, so these runs are too far from the loss floor to pin it and its predictions "
        "beyond the data are unreliable; train longer or larger runs to reach closer to the "
        "floor")


def test_e_below_every_loss_gives_no_warning() -> None:
    report = {"approach3": {"E": 1.94}, "kaplan": {"L_D": {"with_offset": {"E": 1.9}}}}
    assert floor_warning(report, REVIEW_RUNS) is None
    assert floor_warning({"kaplan": {}}, REVIEW_RUNS) is None  # no E fitted at all
    # Within 1 % of the lowest loss is noise around a well-placed floor, not a misfit
    assert floor_warning({"approach3": {"E": 1.946 * 1.009}}, REVIEW_RUNS) is None
    assert floor_warning({"approach3": {"E": 1.946 * 1.011}}, REVIEW_RUNS) is not None


def test_the_console_summary_ends_with_the_warnings() -> None:
    lines = _summary({"skipped": {"approach1": "needs curves"}, "warnings": ["E is 2.3"]})
    assert lines == ["skipped approach1: needs curves", "warning: E is 2.3"]


def test_cli_warns_when_a_run_goes_below_the_fitted_e(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Six sizes at two D on L = 2 + (5e3/N)^0.5 + (1e4/D)^0.5, the largest run far below it
    # (1.5): the robust Huber fit of L(C) keeps to the other runs, so its E lands above 1.5.
    # Two D values leave approach 3 out, which keeps this test to seconds.
    rows = [{"run_id": f"n{i}-d{d}", "N": n, "D": d,
             "loss": 2.0 + (5e3 / n) ** 0.5 + (1e4 / d) ** 0.5}
            for i, n in enumerate((1e3, 2e3, 4e3, 8e3, 1.6e4, 3.2e4)) for d in (20_000, 80_000)]
    rows[-1]["loss"] = 1.5
    source = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    out = tmp_path / "report"
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    e = report["kaplan"]["L_C"]["with_offset"]["E"]
    assert e > 2.4  # the law of the other runs: 2 + the terms at the largest C
    (warning,) = report["warnings"]
    assert warning.startswith(f"fitted irreducible loss above the lowest loss in the table "
                              f"(Kaplan L(C) E = {e:.4g}; run n5-d80000 reached 1.5): the law "
                              "cannot go below E")
    assert f"warning: {warning}" in capsys.readouterr().out.splitlines()
    assert f"**Warning: {warning}.**" in (out / "report.md").read_text()
