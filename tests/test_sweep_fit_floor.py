"""Fitted irreducible losses E against the loss floor: above a loss the runs reach (warned about,
with both numbers), and beside the data's floor where the table gives it (the window floor of the
runs' seq_len, else the entropy rate)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sweep.fit.__main__ import _summary, main
from sweep.fit.floor import (
    ENTROPY_RATE_COLUMN,
    SEQ_LEN_COLUMN,
    WINDOW_FLOOR_COLUMN,
    below_floor_warning,
    describe_floor,
    describe_law,
    entropy_rate,
    floor_check,
    floor_warning,
    several_window_floors,
    window_floor,
)

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


def test_each_fitted_e_is_set_beside_the_entropy_rate_with_its_interval() -> None:
    report = {"approach3": {"E": 0.62, "ci95": {"E": [0.60, 0.65]}},
              "kaplan": {"L_N": {"with_offset": {"E": 0.55, "ci95": {"E": [0.50, 0.58]}}},
                         "L_D": {"with_offset": {"E": 0.59, "ci95": {}}},  # no interval
                         "L_C": {"with_offset": {"skipped": "needs 4 distinct C values"}}}}
    check = floor_check(report, 0.5909, None)
    assert check is not None and check["entropy_rate"] == 0.5909
    assert (check["floor"], check["floor_kind"]) == (0.5909, "entropy rate")
    a3, l_n, l_d = check["laws"]
    assert (a3["law"], a3["covers"], a3["ci95"]) == ("approach 3", False, [0.60, 0.65])
    assert a3["relative"] == pytest.approx(0.62 / 0.5909 - 1)
    assert (l_n["law"], l_n["covers"]) == ("Kaplan L(N)", False)
    assert l_d["law"] == "Kaplan L(D)" and "covers" not in l_d and "ci95" not in l_d
    assert describe_law(a3) == "approach 3 E = 0.62 [0.6, 0.65], +4.9 %, interval excludes it"
    assert describe_law(l_d) == "Kaplan L(D) E = 0.59, -0.2 %"
    # Kaplan L(N)'s whole interval is below the rate, and L(D)'s E itself: a floor no model
    # reaches; approach 3's interval above it is no warning (windows pay a little more)
    assert below_floor_warning(check) == (
        "fitted irreducible loss below the data's entropy rate 0.5909 nats/token (Kaplan L(N) "
        "E = 0.55 [0.5, 0.58]; Kaplan L(D) E = 0.59): no model can reach that floor, so the law "
        "predicts too low a loss beyond the data; the runs are too far from the floor to place "
        "it")
    assert below_floor_warning(floor_check({"approach3": {"E": 0.6}}, 0.5909, None)) is None
    assert floor_check({"kaplan": {}}, 0.5909, None) is None  # no E fitted at all
    assert floor_check(report, None, None) is None  # no floor given


def test_the_window_floor_is_the_floor_e_is_set_against_where_the_table_gives_it() -> None:
    report = {"approach3": {"E": 0.62, "ci95": {"E": [0.60, 0.625]}},
              "kaplan": {"L_C": {"with_offset": {"E": 0.60, "ci95": {"E": [0.59, 0.61]}}}}}
    check = floor_check(report, 0.5909, 0.6213)
    assert check is not None
    assert (check["floor"], check["floor_kind"], check["window_floor"]) == (
        0.6213, "window floor", 0.6213)
    a3, l_c = check["laws"]
    assert a3["relative"] == pytest.approx(0.62 / 0.6213 - 1) and a3["covers"]
    assert l_c["relative"] == pytest.approx(0.60 / 0.6213 - 1) and not l_c["covers"]
    assert describe_floor(check) == ("the lowest loss a model reading the runs' windows can "
                                     "reach is 0.6213 nats/token (the entropy rate is 0.5909)")
    # L(C)'s interval holds the entropy rate but lies below what a model with these windows
    # can reach: warned about, naming the window floor
    assert below_floor_warning(check) == (
        "fitted irreducible loss below the data's window floor 0.6213 nats/token (Kaplan L(C) "
        "E = 0.6 [0.59, 0.61]): no model can reach that floor, so the law predicts too low a "
        "loss beyond the data; the runs are too far from the floor to place it")
    # A table of your own may give the window floor alone
    alone = floor_check(report, None, 0.6213)
    assert alone is not None and describe_floor(alone) == (
        "the lowest loss a model reading the runs' windows can reach is 0.6213 nats/token")


def test_the_entropy_rate_and_window_floor_come_from_sweep_collects_columns() -> None:
    assert entropy_rate(pd.DataFrame({"loss": [1.0, 2.0]})) is None
    assert entropy_rate(pd.DataFrame({ENTROPY_RATE_COLUMN: [None, None]})) is None  # text data
    assert entropy_rate(pd.DataFrame({ENTROPY_RATE_COLUMN: [0.59, 0.59, None]})) == 0.59
    assert window_floor(pd.DataFrame({WINDOW_FLOOR_COLUMN: [0.62, 0.62]})) == 0.62
    # Runs at two seq_lens have two floors: none is the table's
    assert window_floor(pd.DataFrame({WINDOW_FLOOR_COLUMN: [0.62, 0.69]})) is None


def test_runs_at_several_seq_lens_are_told_why_their_floors_meet_the_entropy_rate() -> None:
    two = pd.DataFrame({WINDOW_FLOOR_COLUMN: [0.6921, 0.6213, 0.6213, None],
                        SEQ_LEN_COLUMN: [16, 128, 128, 128]})
    assert several_window_floors(two) == (
        "the runs were trained at seq_lens 16, 128, whose window floors differ (0.6213, 0.6921 "
        "nats/token): one law's irreducible loss cannot sit at each, so the fitted floors are "
        "checked against the entropy rate; fit each seq_len alone, e.g. --where "
        "'shape_seq_len == 16'")
    # A table of your own without the seq_len column still gets the line
    alone = several_window_floors(two.drop(columns=SEQ_LEN_COLUMN))
    assert alone.startswith("the runs were trained at several seq_lens, whose window floors differ")
    assert alone.endswith("fit each seq_len alone, with --where on the table's seq_len column")
    assert several_window_floors(two.iloc[1:]) is None  # one floor
    assert several_window_floors(two.drop(columns=WINDOW_FLOOR_COLUMN)) is None


def test_cli_sets_the_fitted_floors_beside_the_tables_entropy_rate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Exact losses from L = 2 + (5e3/N)^0.5 + (1e4/D)^0.5, whose floor is 2, at two D (which
    # leaves approach 3 out): L(N) on the best run per N (D = 8e4) fits E = 2 + (1e4/8e4)^0.5
    rows = [{"run_id": f"n{i}-d{d}", "N": n, "D": d, ENTROPY_RATE_COLUMN: 2.0,
             "loss": 2.0 + (5e3 / n) ** 0.5 + (1e4 / d) ** 0.5}
            for i, n in enumerate((1e3, 2e3, 4e3, 8e3, 1.6e4, 3.2e4)) for d in (20_000, 80_000)]
    source = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    out = tmp_path / "report"
    assert main([str(source), "--out", str(out), "--bootstrap", "20"]) == 0
    report = json.loads((out / "report.json").read_text())
    check = report["loss_floor"]
    assert check["entropy_rate"] == 2.0
    l_n = next(law for law in check["laws"] if law["law"] == "Kaplan L(N)")
    assert l_n["E"] == pytest.approx(2 + 0.125**0.5, rel=1e-4)
    assert l_n["relative"] == pytest.approx(0.125**0.5 / 2, rel=1e-3)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("loss floor"))
    assert line.startswith("loss floor: the data's entropy rate is 2 nats/token; ")
    assert describe_law(l_n) in line
    text = (out / "report.md").read_text()
    assert "## The fitted floors against the data's loss floor" in text
    assert "The data's entropy rate is 2 nats/token: no model's loss" in text
    assert "| Kaplan L(N) | 2.354 |" in text
    # With the window floor too, E is set against it, and both are named
    pd.DataFrame([{**row, WINDOW_FLOOR_COLUMN: 2.2} for row in rows]).to_csv(source, index=False)
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    check = json.loads((out / "report.json").read_text())["loss_floor"]
    assert (check["floor"], check["entropy_rate"], check["window_floor"]) == (2.2, 2.0, 2.2)
    l_n = next(law for law in check["laws"] if law["law"] == "Kaplan L(N)")
    assert l_n["relative"] == pytest.approx((2 + 0.125**0.5) / 2.2 - 1, rel=1e-3)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("loss floor"))
    assert line.startswith("loss floor: the lowest loss a model reading the runs' windows can "
                           "reach is 2.2 nats/token (the entropy rate is 2); ")
    assert ("The lowest loss a model reading the runs' windows can reach is 2.2 nats/token (the "
            "entropy rate is 2): a model reading windows" in (out / "report.md").read_text())
    # Runs at two seq_lens: set against the entropy rate, and the warning says why
    pd.DataFrame([{**row, WINDOW_FLOOR_COLUMN: 2.2 + (i % 2) / 10, SEQ_LEN_COLUMN: 64 * (1 + i % 2)}
                  for i, row in enumerate(rows)]).to_csv(source, index=False)
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["loss_floor"]["floor"], report["loss_floor"]["window_floor"]) == (2.0, None)
    assert [w for w in report["warnings"] if "window floors differ (2.2, 2.3 nats/token)" in w]
    # Without the column there is no such section
    pd.DataFrame(rows).drop(columns=ENTROPY_RATE_COLUMN).to_csv(source, index=False)
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    assert "loss_floor" not in json.loads((out / "report.json").read_text())
