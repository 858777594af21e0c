"""Tests for sweep.fit.table: loading, mapping and refusing tables of runs.

Tables are drawn from sweep.fit.synthetic and written to tmp_path as CSV or Parquet; every bad
table must raise a TableError of one line that names the column or value and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweep.collect import collect_runs
from sweep.fit.synthetic import isoflop_table
from sweep.fit.table import MIN_RUNS, Columns, FitData, TableError, load
from tests.test_sweep_collect import make_run

# Three budgets of five sizes: 15 runs, small enough to read in milliseconds.
BUDGETS = (1e17, 1e18, 1e19)
PF_DAY_FLOPS = 8.64e19


def small_table(**kwargs: object) -> pd.DataFrame:
    return isoflop_table(budgets=BUDGETS, sizes_per_budget=5, seed=3, **kwargs)  # type: ignore[arg-type]


def write(table: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path


def refused_where(path: Path, where: str) -> str:
    """The one-line TableError message load() raises for path filtered by where."""
    with pytest.raises(TableError) as info:
        load(path, Columns(), where=where)
    assert "\n" not in str(info.value)
    return str(info.value)


def refused(path: Path, cols: Columns | None = None) -> str:
    """The TableError message load() raises for path; it must be a single line."""
    with pytest.raises(TableError) as info:
        load(path, cols or Columns())
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- tables that load --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_good_table_loads_float_columns_run_ids_and_no_budget(tmp_path: Path, suffix: str) -> None:
    table = small_table()
    data = load(write(table, tmp_path / f"runs{suffix}"), Columns())
    assert isinstance(data, FitData)
    assert data.curves is None and data.notes == []
    runs = data.runs
    assert len(runs) == 15
    for col in ("N", "D", "C", "loss"):
        assert runs[col].dtype == np.float64, col
        np.testing.assert_allclose(runs[col].to_numpy(), table[col].to_numpy(), rtol=1e-12)
    assert list(runs["run"]) == list(table["run_id"])
    assert runs["budget"].isna().all()
    assert data.source == str(tmp_path / f"runs{suffix}")


def test_budget_column_gives_numbers(tmp_path: Path) -> None:
    table = small_table()
    data = load(write(table, tmp_path / "runs.csv"), Columns(budget="budget"))
    assert data.runs["budget"].dtype == np.float64
    np.testing.assert_array_equal(data.runs["budget"].to_numpy(), table["budget"].to_numpy())
    assert sorted(set(data.runs["budget"])) == list(BUDGETS)


def test_budget_flops_runs_bring_their_own_budget_and_exact_flops_per_token(tmp_path: Path
                                                                           ) -> None:
    # sweep.collect's columns: a budget.flops run's budget is its IsoFLOP budget; a token-budget
    # run has none. No --budget-col needed.
    table = small_table().drop(columns="budget")
    table["budget_kind"] = ["flops"] * 10 + ["tokens"] * 5
    table["budget_value"] = [1e17] * 10 + [2e9] * 5
    table["flops_exact"] = 2.5 * table["C"]
    data = load(write(table, tmp_path / "runs.csv"), Columns())
    np.testing.assert_array_equal(data.runs["budget"].to_numpy()[:10], 1e17)
    assert data.runs["budget"].isna().sum() == 5
    np.testing.assert_allclose(data.runs["flops_per_token"], 2.5 * 6 * data.runs["N"], rtol=1e-12)
    assert data.budget_source.startswith("each run's budget.flops (exact FLOPs")
    assert load(write(small_table(), tmp_path / "plain.csv"), Columns()).budget_source is None


def test_renamed_columns_map_through_columns(tmp_path: Path) -> None:
    table = small_table()
    renamed = table.rename(columns={"N": "params", "D": "tokens", "C": "flops",
                                    "loss": "val_loss", "run_id": "name", "budget": "iso"})
    cols = Columns(N="params", D="tokens", C="flops", loss="val_loss", run="name", budget="iso")
    data = load(write(renamed, tmp_path / "paper.csv"), cols)
    for col in ("N", "D", "C", "loss"):
        np.testing.assert_allclose(data.runs[col].to_numpy(), table[col].to_numpy(), rtol=1e-12)
    assert list(data.runs["run"]) == list(table["run_id"])
    np.testing.assert_array_equal(data.runs["budget"].to_numpy(), table["budget"].to_numpy())
    assert data.columns == cols
    # Without the mapping the same file is refused, naming the flag.
    assert "--n-col" in refused(tmp_path / "paper.csv")


def test_missing_run_column_gives_row_ids(tmp_path: Path) -> None:
    data = load(write(small_table().drop(columns=["run_id"]), tmp_path / "t.csv"), Columns())
    assert list(data.runs["run"]) == [f"row{i}" for i in range(15)]


def test_d_derived_from_c_exactly_with_a_note(tmp_path: Path) -> None:
    table = small_table()
    data = load(write(table.drop(columns=["D"]), tmp_path / "t.csv"), Columns())
    n, c = table["N"].to_numpy(), table["C"].to_numpy()
    np.testing.assert_array_equal(data.runs["D"].to_numpy(), c / (6.0 * n))
    np.testing.assert_array_equal(data.runs["C"].to_numpy(), c)
    assert len(data.notes) == 1 and "D derived as C / (6 N)" in data.notes[0]


def test_c_derived_as_6nd_exactly_with_a_note(tmp_path: Path) -> None:
    table = small_table()
    data = load(write(table.drop(columns=["C"]), tmp_path / "t.csv"), Columns())
    n, d = table["N"].to_numpy(), table["D"].to_numpy()
    np.testing.assert_array_equal(data.runs["C"].to_numpy(), 6.0 * n * d)
    assert len(data.notes) == 1 and "C derived as 6 N D" in data.notes[0]


def test_exact_flops_a_few_times_6nd_are_accepted(tmp_path: Path) -> None:
    # C / 6ND of 1-10 is what flops_exact gives for small models: not a unit mistake.
    table = small_table()
    table["C"] = table["C"] * np.linspace(1.0, 8.0, len(table))
    data = load(write(table, tmp_path / "t.csv"), Columns())
    np.testing.assert_allclose(data.runs["C"].to_numpy(), table["C"].to_numpy(), rtol=1e-12)


def test_curves_table_gives_all_points_and_each_runs_largest_c_row(tmp_path: Path) -> None:
    table = small_table(curve_points=4)
    assert len(table) == 60
    data = load(write(table, tmp_path / "curves.csv"), Columns(budget="budget"))
    assert data.curves is not None
    assert len(data.curves) == 60
    np.testing.assert_allclose(np.sort(data.curves["loss"].to_numpy()),
                               np.sort(table["loss"].to_numpy()), rtol=1e-12)
    runs = data.runs
    assert len(runs) == 15 and runs["run"].is_unique
    final = table.loc[table.groupby("run_id")["C"].idxmax()].set_index("run_id")
    got = runs.set_index("run")
    assert set(got.index) == set(final.index)
    for col in ("N", "D", "C", "loss", "budget"):
        np.testing.assert_allclose(got[col].to_numpy(), final.loc[got.index, col].to_numpy(),
                                   rtol=1e-12, err_msg=col)
    # The final point is not the first or a middle one: its loss is each run's lowest.
    lowest = table.groupby("run_id")["loss"].min()
    np.testing.assert_allclose(got["loss"].to_numpy(), lowest.loc[got.index].to_numpy())
    assert any("15 runs with 60 eval points" in note for note in data.notes)


def test_runs_directory_gives_runs_curves_and_a_note(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    grid = [(1000, 20_000, 3.2), (2000, 20_000, 3.0), (4000, 20_000, 2.9),
            (1000, 80_000, 3.0), (2000, 80_000, 2.7), (4000, 80_000, 2.5)]
    for n, tokens, loss in grid:
        make_run(root, n, tokens, loss)
    make_run(root, 8000, 20_000, None, status="diverged")  # left out, and counted in the note
    data = load(root, Columns())
    assert data.notes[0].startswith("runs directory:")
    assert "6 runs collected" in data.notes[0] and "1 diverged" in data.notes[0]
    runs = data.runs.sort_values(["N", "D"]).reset_index(drop=True)
    want = sorted(grid)
    np.testing.assert_array_equal(runs["N"].to_numpy(), [n for n, _, _ in want])
    np.testing.assert_array_equal(runs["D"].to_numpy(), [t for _, t, _ in want])
    np.testing.assert_array_equal(runs["C"].to_numpy(), [6.0 * n * t for n, t, _ in want])
    np.testing.assert_array_equal(runs["loss"].to_numpy(), [x for _, _, x in want])
    # keyed by experiment and run id, as sweep.collect keys them
    assert list(runs["run"]) == [f"exp/n{n}-d{t}" for n, t, _ in want]
    # make_run writes eval steps 0, 1, 2, 4, 8; step 0 (no tokens yet) is not a point.
    assert data.curves is not None and len(data.curves) == 6 * 4
    assert data.curves.groupby("run").size().eq(4).all()
    np.testing.assert_allclose(data.curves["C"].to_numpy(),
                               6.0 * data.curves["N"] * data.curves["D"], rtol=1e-12)


def test_runs_directory_without_finished_runs_is_refused(tmp_path: Path) -> None:
    make_run(tmp_path, 1000, 20_000, None, status="diverged")
    assert "no finished runs" in refused(tmp_path)


# --- tables that are refused -------------------------------------------------------------------


def test_nan_loss_names_column_and_row(tmp_path: Path) -> None:
    table = small_table()
    table.loc[3, "loss"] = np.nan
    message = refused(write(table, tmp_path / "t.csv"))
    assert "'loss'" in message and "rows 3)" in message and "drop or fix" in message


def test_many_bad_rows_are_counted_and_shown_in_part(tmp_path: Path) -> None:
    table = small_table()
    table.loc[2:9, "loss"] = np.inf
    message = refused(write(table, tmp_path / "t.parquet"))
    assert "8 missing" in message and "rows 2, 3, 4, 5, 6 and 3 more" in message


def test_non_numeric_n_names_column_and_row(tmp_path: Path) -> None:
    table = small_table().astype({"N": object})
    table.loc[2, "N"] = "about 1e6"
    message = refused(write(table, tmp_path / "t.csv"))
    assert "'N'" in message and "non-numeric" in message and "rows 2)" in message


def test_non_positive_d_names_value_and_log_scale(tmp_path: Path) -> None:
    table = small_table().drop(columns=["C"])
    table.loc[4, "D"] = -5.0
    message = refused(write(table, tmp_path / "t.csv"))
    assert "'D'" in message and "non-positive" in message and "rows 4" in message
    assert "e.g. -5" in message and "> 0" in message


def test_zero_loss_is_refused(tmp_path: Path) -> None:
    table = small_table()
    table.loc[0, "loss"] = 0.0
    message = refused(write(table, tmp_path / "t.csv"))
    assert "'loss'" in message and "non-positive" in message and "rows 0" in message


def test_fewer_than_min_runs_is_refused(tmp_path: Path) -> None:
    table = small_table().iloc[: MIN_RUNS - 1]
    message = refused(write(table, tmp_path / "t.csv"))
    assert f"has {MIN_RUNS - 1} runs" in message and f"at least {MIN_RUNS}" in message


def test_exactly_min_runs_loads(tmp_path: Path) -> None:
    table = small_table().iloc[:MIN_RUNS]
    assert len(load(write(table, tmp_path / "t.csv"), Columns()).runs) == MIN_RUNS


def test_curves_table_counts_runs_not_points(tmp_path: Path) -> None:
    # 4 runs of 4 points each: 16 rows but only 4 runs.
    table = small_table(curve_points=4)
    table = table[table["run_id"].isin(table["run_id"].unique()[:4])]
    assert "has 4 runs" in refused(write(table, tmp_path / "t.csv"))


def test_header_only_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("run_id,N,D,C,loss\n")
    assert "has 0 runs" in refused(path)


def test_one_model_size_is_refused(tmp_path: Path) -> None:
    table = small_table()
    table["N"] = 1e6
    table["C"] = 6.0 * table["N"] * table["D"]
    message = refused(write(table, tmp_path / "t.csv"))
    assert "N = 1e+06" in message and "two or more model sizes" in message


@pytest.mark.parametrize(("field", "name", "flag"), [
    ("N", "params", "--n-col"), ("loss", "val_loss", "--loss-col")])
def test_missing_mapped_column_names_it_and_the_flag(tmp_path: Path, field: str, name: str,
                                                     flag: str) -> None:
    message = refused(write(small_table(), tmp_path / "t.csv"), Columns(**{field: name}))
    assert f"column '{name}' (for {field})" in message and flag in message
    assert "it has: run_id, N, D, C, loss, budget" in message


@pytest.mark.parametrize(("field", "name", "other"), [("D", "tokens", "C"), ("C", "flops", "D")])
def test_missing_mapped_d_or_c_is_refused_not_derived(tmp_path: Path, field: str, name: str,
                                                      other: str) -> None:
    # Deriving a column named on the command line hid a typo: with an exact-FLOPs C column, a
    # D derived as C / 6N came out 1.5x too large, silently
    flag = "--d-col" if field == "D" else "--c-col"
    for table in (small_table(), small_table().drop(columns=[other])):
        message = refused(write(table, tmp_path / "t.csv"), Columns(**{field: name}))
        assert message.startswith(f"{flag} '{name}' is not a column of ")
        assert f"leave {flag} out to derive {field} from the others" in message
    # Left at its default, a missing column is derived from the other (and says so)
    data = load(write(small_table().drop(columns=[field]), tmp_path / "t3.csv"), Columns())
    assert data.notes == [f"{field} derived as " + ("C / (6 N)" if field == "D" else "6 N D")
                          + f" (no column '{field}')"]


def test_neither_d_nor_c_is_refused(tmp_path: Path) -> None:
    message = refused(write(small_table().drop(columns=["D", "C"]), tmp_path / "t.csv"))
    assert "neither a D column 'D' nor a C column 'C'" in message
    assert "--d-col or --c-col" in message


def test_n_in_millions_in_half_the_rows_is_mixed_units(tmp_path: Path) -> None:
    table = small_table()
    half = table.index % 2 == 0
    table.loc[half, "N"] = table.loc[half, "N"] / 1e6
    message = refused(write(table, tmp_path / "t.csv"))
    assert "mix units" in message and "'N', 'D', 'C'" in message
    assert "N in parameters, D in tokens and C in FLOPs" in message


def test_c_in_pf_days_is_named(tmp_path: Path) -> None:
    table = small_table()
    table["C"] = table["C"] / PF_DAY_FLOPS
    message = refused(write(table, tmp_path / "t.csv"))
    assert "PF-days" in message and "1.16e-20" in message and "drop 'C'" in message


@pytest.mark.parametrize(("name", "content"), [
    ("empty.csv", b""),
    ("binary.csv", b"\xff\xfe\x00\x01garbage\x00\x9c"),
    ("ragged.csv", b"N,D,C,loss\n1,2,3,4\n1,2,3,4,5,6,7\n"),
    ("text.parquet", b"N,D,C,loss\n1,2,3,4\n"),
    ("empty.parquet", b""),
])
def test_unreadable_file_is_refused(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    message = refused(path)
    assert message.startswith(f"cannot read {path}: ") and len(message) > len(str(path)) + 15


def test_a_read_error_without_a_message_is_named_by_its_class(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader may raise with an empty message (a bare OSError from a file system driver):
    # the report must still be one line, not an IndexError from taking its first line.
    path = write(small_table(), tmp_path / "runs.csv")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError()

    monkeypatch.setattr(pd, "read_csv", fail)
    assert refused(path) == f"cannot read {path}: OSError"

def test_wrong_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    small_table().to_csv(path, index=False)
    message = refused(path)
    assert str(path) in message and "neither a runs directory nor a .csv/.parquet" in message


def test_missing_source_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    message = refused(path)
    assert f"SOURCE {path} does not exist" in message and "runs directory" in message


def test_missing_budget_column_names_it_and_the_flag(tmp_path: Path) -> None:
    message = refused(write(small_table(), tmp_path / "t.csv"), Columns(budget="isoflop"))
    assert "'isoflop' (for budget)" in message and "--budget-col" in message


def test_non_positive_budget_is_refused(tmp_path: Path) -> None:
    table = small_table()
    table.loc[1, "budget"] = 0.0
    message = refused(write(table, tmp_path / "t.csv"), Columns(budget="budget"))
    assert "'budget'" in message and "non-positive" in message and "rows 1" in message


def test_named_run_column_that_is_absent_is_refused(tmp_path: Path) -> None:
    message = refused(write(small_table(curve_points=3), tmp_path / "c.csv"), Columns(run="run"))
    assert "--run-col 'run'" in message


def test_run_id_shared_by_different_sizes_is_refused(tmp_path: Path) -> None:
    table = small_table()
    table["run_id"] = [f"rung{i % 5}" for i in range(len(table))]  # a model name, not a run id
    table["N"] = table["N"] * (1 + np.arange(len(table)) / 100)  # ...on different sizes
    message = refused(write(table, tmp_path / "t.csv"))
    assert "different N" in message and "--run-col" in message


def test_derived_d_below_one_token_names_pf_days(tmp_path: Path) -> None:
    table = small_table().drop(columns=["D"])
    table["C"] = table["C"] / PF_DAY_FLOPS
    assert "PF-day" in refused(write(table, tmp_path / "t.csv"))


def test_runs_directory_with_bad_curves_keeps_the_runs(tmp_path: Path) -> None:
    for i in range(6):
        run_dir = make_run(tmp_path / "runs", 1000 * (i + 1), 20_000 * (1 + i % 2), 4.0 - 0.1 * i)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        # An older record without FLOP counts in its metrics: no usable curve points.
        (run_dir / "metrics.jsonl").write_text("\n".join(
            line.replace('"flops_6nd"', '"flops_old"') for line in lines) + "\n")
    data = load(tmp_path / "runs", Columns())
    assert len(data.runs) == 6 and data.curves is None
    assert any(note.startswith("curves left out:") for note in data.notes)


def test_runs_directory_with_an_unreadable_summary_is_refused_or_skipped(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for i in range(6):
        make_run(root, 1000 * (i + 1), 20_000 * (1 + i % 2), 4.0 - 0.1 * i)
    bad = make_run(root, 9000, 20_000, 2.0) / "summary.json"
    bad.write_text('{"status": "fini')
    message = refused(root)
    assert message.startswith(f"{bad} is unreadable (not valid JSON: ")
    assert "delete that run directory" in message and "--skip-unreadable" in message
    data = load(root, Columns(), skip_unreadable=True)
    assert len(data.runs) == 6 and data.curves is not None
    assert "1 unreadable" in data.notes[0] and f"skipped unreadable {bad}" in data.notes


def test_runs_directory_with_a_damaged_metrics_file_is_refused_or_skipped(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    dirs = [make_run(root, 1000 * (i + 1), 20_000 * (1 + i % 2), 4.0 - 0.1 * i) for i in range(6)]
    metrics = dirs[2] / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write("{torn\n")
    # Not swallowed as "curves left out": the curves would silently lose a run.
    message = refused(root)
    assert message.startswith(f"{metrics} is unreadable (line 6 is not a metrics row)")
    data = load(root, Columns(), skip_unreadable=True)
    assert data.curves is not None and len(data.curves) == 6 * 4
    assert f"skipped unreadable {metrics}" in data.notes


def test_a_constant_loss_or_an_empty_c_only_table_is_one_line(tmp_path: Path) -> None:
    table = small_table()
    table["loss"] = 3.0  # a --loss-col mapped onto a constant column, say
    assert "has loss = 3; nothing to fit" in refused(write(table, tmp_path / "t.csv"))
    empty = small_table().drop(columns=["D"]).iloc[:0]  # a header only
    assert "has 0 runs" in refused(write(empty, tmp_path / "e.csv"))


def test_collected_runs_are_keyed_by_experiment_and_run_id(tmp_path: Path) -> None:
    # sweep.collect keeps one run id in two experiments as two runs; so must the fit
    runs = tmp_path / "runs"
    for n in (1000, 2000, 3000, 4000, 5000):
        make_run(runs, n, 20 * n, 4.0 - n / 5000)
    make_run(runs, 1000, 20_000, 3.9, experiment="other")  # exp's n1000-d20000, elsewhere
    for source in (runs, write(collect_runs(runs).table, tmp_path / "collected.csv")):
        data = load(source, Columns())
        assert len(data.runs) == 6 and sorted(data.runs["run"])[:2] == [
            "exp/n1000-d20000", "exp/n2000-d40000"]
    with pytest.raises(TableError, match="^--run-col 'runid' is not a column of the runs under"):
        load(runs, Columns(run="runid"))


def _two_datasets(runs: Path) -> Path:
    """Five runs on synthetic in exp/, one on stdlib in stdlib/."""
    for n in (1000, 2000, 3000, 4000, 5000):
        make_run(runs, n, 20 * n, 4.0 - n / 5000)
    other = make_run(runs, 1000, 20_000, 3.9, experiment="stdlib")
    summary = json.loads((other / "summary.json").read_text())
    summary["dataset"] = {"name": "stdlib", "config_hash": "0123456789", "tokenizer_hash": "x"}
    (other / "summary.json").write_text(json.dumps(summary))
    return runs


def test_runs_on_two_datasets_are_not_fitted_as_one(tmp_path: Path) -> None:
    # A runs directory holding two experiments on different corpora mixed two laws silently
    runs = _two_datasets(tmp_path / "runs")
    message = refused(runs)
    assert message == (
        f"the runs under {runs} trained on 2 datasets (synthetic (ab), stdlib (01234567)); a law "
        "fits runs on one: pass --where 'dataset_name == \"synthetic\"', or collect one "
        f"dataset's runs with python -m sweep.collect {runs} --dataset synthetic --out "
        "synthetic.csv and fit that table")
    assert len(load(runs / "exp", Columns()).runs) == 5  # one experiment's folder is fine
    # Both pieces of advice work: --where picks the dataset's runs (after it, one dataset) ...
    assert len(load(runs, Columns(), where='dataset_name == "synthetic"').runs) == 5
    assert refused_where(runs, "N > 0").startswith(
        f"the runs under {runs} kept by --where 'N > 0' trained on 2 datasets")
    # ... and the advice works: the filtered table fits
    assert len(load(write(collect_runs(runs, dataset="synthetic").table,
                          tmp_path / "synthetic.csv"), Columns()).runs) == 5


@pytest.mark.parametrize("kind", ["runs.csv", "runs.parquet", "curves.csv"])
def test_a_collected_table_on_two_datasets_is_refused_too(tmp_path: Path, kind: str) -> None:
    # sweep.collect has no dataset check of its own: the table it writes must not fit mixed
    if kind.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    runs = _two_datasets(tmp_path / "runs")
    table = write(collect_runs(runs, curves=kind.startswith("curves")).table, tmp_path / kind)
    assert refused(table) == (
        f"the runs in {table} trained on 2 datasets (synthetic (ab), stdlib (01234567)); a law "
        "fits runs on one: pass --where 'dataset_name == \"synthetic\"', or collect one "
        "dataset's runs with python -m sweep.collect <runs folder> --dataset synthetic --out "
        "synthetic.csv and fit that table")
    assert len(load(table, Columns(), where='dataset_name == "synthetic"').runs) == 5


def test_two_builds_of_one_named_dataset_are_told_apart_by_hash(tmp_path: Path) -> None:
    table = collect_runs(_two_datasets(tmp_path / "runs")).table
    table["dataset_name"] = "stdlib"  # e.g. one corpus tokenized with two vocabularies
    message = refused(write(table, tmp_path / "t.csv"))
    assert "(stdlib (ab), stdlib (01234567))" in message and "--dataset ab --out ab.csv" in message


def test_rows_without_a_dataset_hash_are_not_a_second_dataset(tmp_path: Path) -> None:
    # An outside table may fill the column only where it knows the hash.
    table = small_table().assign(dataset_config_hash="abc123", dataset_name="synthetic")
    table.loc[:4, ["dataset_config_hash", "dataset_name"]] = np.nan
    assert len(load(write(table, tmp_path / "runs.csv"), Columns()).runs) == len(table)


# --- --where: fitting a subset of the runs -------------------------------------------------------


def test_where_keeps_one_experiment_of_a_runs_directory_and_its_curves(tmp_path: Path) -> None:
    for experiment, worse in (("probe", 0.1), ("sweep", 0.0)):
        for n in (1000, 2000, 4000):
            for tokens in (20_000, 40_000, 80_000):
                make_run(tmp_path, n, tokens, 3.0 - n / 1e4 - tokens / 1e6 + worse,
                         experiment=experiment)
    data = load(tmp_path, Columns(), where='experiment == "sweep"')
    assert len(data.runs) == 9 and data.runs["run"].str.startswith("sweep/").all()
    assert data.curves is not None and set(data.curves["run"]) == set(data.runs["run"])
    assert "--where 'experiment == \"sweep\"' kept 9 of 18 runs" in data.notes
    # Without the filter the two experiments' runs sit at the same points, and are warned about
    assert load(tmp_path, Columns()).warnings and not data.warnings


def test_where_on_a_curves_table_reads_each_runs_final_row(tmp_path: Path) -> None:
    table = small_table(curve_points=4)  # 15 runs, each with 4 eval points
    final = table.loc[table.groupby("run_id")["C"].idxmax()]
    cut = float(final["loss"].median())
    data = load(write(table, tmp_path / "curves.csv"), Columns(), where=f"loss < {cut}")
    # Runs whose final loss is under the cut, with every one of their eval points (their early
    # points lie above it: a row-wise filter would have cut their curves short)
    assert set(data.runs["run"]) == set(final.loc[final["loss"] < cut, "run_id"])
    assert data.curves is not None and len(data.curves) == 4 * len(data.runs)


def test_where_on_a_table_of_runs(tmp_path: Path) -> None:
    table = small_table()
    data = load(write(table, tmp_path / "runs.csv"), Columns(), where="N >= 1e8 or budget == 1e19")
    expected = table[(table.N >= 1e8) | (table.budget == 1e19)]
    np.testing.assert_allclose(sorted(data.runs["N"]), sorted(expected["N"]))


def test_where_matches_rows_by_position_whatever_index_a_parquet_file_kept(
        tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    table = small_table(curve_points=3)
    table["seed"] = table.groupby("run_id").ngroup() % 2
    # Sorted and written with its old index: parquet stores and restores it
    shuffled = table.sample(frac=1.0, random_state=0)
    shuffled.to_parquet(tmp_path / "curves.parquet")
    data = load(tmp_path / "curves.parquet", Columns(), where="seed == 0")
    assert set(data.runs["run"]) == set(table.loc[table["seed"] == 0, "run_id"])


def test_where_on_a_nullable_column_treats_missing_as_false(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    table = small_table()
    table["seed"] = pd.array([0] * 12 + [None, 1, 1], dtype="Int64")
    data = load(write(table, tmp_path / "runs.parquet"), Columns(), where="seed == 0")
    assert len(data.runs) == 12


def test_where_keeping_too_few_runs_says_so(tmp_path: Path) -> None:
    path = write(small_table(), tmp_path / "runs.csv")
    assert refused_where(path, "N > 5e8") == (
        f"--where 'N > 5e8' keeps 3 runs in {path}; a fit needs at least 5 (approach 3 has 5 "
        "parameters): loosen it")


@pytest.mark.parametrize(("where", "says"), [
    ("sise > 3", "--where 'sise > 3' cannot be evaluated on the runs in "),
    ("N if seed else D", "--where 'N if seed else D' cannot be evaluated on the runs in "),
    ("N >", "--where 'N >' cannot be evaluated"),
    ("N = 3", "--where 'N = 3' assigns (a single =): compare with ==, e.g. --where 'seed == 0'"),
    ("N * 2", "--where 'N * 2' is not a condition (it gives float64, not true/false per run)"),
    ("N > 1e15", "--where 'N > 1e15' keeps none of the 15 runs in "),
])
def test_a_bad_where_is_one_line(tmp_path: Path, where: str, says: str) -> None:
    path = write(small_table(), tmp_path / "runs.csv")
    with pytest.raises(TableError) as info:
        load(path, Columns(), where=where)
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_the_cli_fits_the_subset_and_says_so(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from sweep.fit.__main__ import main

    path = write(small_table(), tmp_path / "runs.csv")
    assert main([str(path), "--out", str(tmp_path / "report"), "--bootstrap", "0",
                 "--where", "budget >= 1e18"]) == 0
    assert "--where 'budget >= 1e18' kept 10 of 15 runs" in capsys.readouterr().out.splitlines()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_runs"] == 10 and report["options"]["where"] == "budget >= 1e18"
