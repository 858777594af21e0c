"""Tests for sweep.collect: fake run directories in the record format, collected into tables.

No training: each run is written by `make_run` with the fields sweep.train's summary holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sweep.collect import CollectError, UnreadableRun, collect_runs, write_table
from tests.conftest import PYTHON

REPO = Path(__file__).resolve().parent.parent
STEPS = (0, 1, 2, 4, 8)  # eval steps written to metrics.jsonl; step 0 has tokens 0


def make_run(root: Path, n: int, tokens: int, val_loss: float | None, status: str = "finished",
             experiment: str = "exp", run_id: str | None = None, summary: bool = True,
             finished_at: str = "2026-01-01T00:00:00+00:00", where: str | None = None) -> Path:
    """Write config.yaml, metrics.jsonl and (if summary) summary.json for one fake run."""
    run_id = run_id or f"n{n}-d{tokens}"
    run_dir = root / (where or experiment) / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"experiment: {experiment}\nseed: 0\n")
    total, per_token = n + 2 * 512 * 64, 6 * n
    lines = []
    for step in STEPS:
        seen = tokens * step // STEPS[-1]
        loss = None if val_loss is None else val_loss + 1.0 / (1 + step)
        lines.append(json.dumps({
            "step": step, "tokens": seen, "flops_6nd": per_token * seen,
            "flops_6nd_total": 6 * total * seen, "flops_exact": 7 * total * seen,
            "train_loss": None if step == 0 else 2.0 + loss if loss else None, "val_loss": loss,
            "val_bpb": None, "lr": 1e-3, "tokens_per_s": None if step == 0 else 1e4, "mfu": None,
        }))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary:
        record = {
            "schema_version": 1, "status": status, "run_id": run_id, "experiment": experiment,
            "model_name": run_id.split("-")[0],
            "shape": {"n_layer": 2, "d_model": 64, "n_head": 4, "vocab_size": 512,
                      "positions": "rope", "tie_embeddings": False},
            "params": {"total": total, "embedding": 512 * 64, "position": 0, "head": 512 * 64,
                       "non_embedding": n},
            "tokens": tokens, "steps": STEPS[-1], "batch_tokens": tokens // STEPS[-1],
            "budget": {"kind": "tokens", "value": float(tokens), "tokens": tokens},
            "flops_per_token": {"6nd": per_token, "6nd_total": 6 * total, "exact": 7 * total},
            "flops_6nd": per_token * tokens, "flops_6nd_total": 6 * total * tokens,
            "flops_exact": 7 * total * tokens, "train_loss": 3.0, "val_loss": val_loss,
            "val_bpb": None, "error": None if status == "finished" else "boom",
            "wall_time_s": 12.5, "train_time_s": 10.0, "tokens_per_s": 1e4,
            "started_at": "2026-01-01T00:00:00+00:00", "finished_at": finished_at,
            "dataset": {"name": "synthetic", "config_hash": "ab", "tokenizer_hash": "cd"},
            "device": "cpu", "precision": "fp32", "seed": 0, "config_hash": "ef",
        }
        (run_dir / "summary.json").write_text(json.dumps(record, indent=2))
    return run_dir


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "sweep.collect", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_one_row_per_finished_run_with_summary_numbers(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, 2000, 40_000, 2.5), make_run(tmp_path, 1000, 80_000, 2.9),
            make_run(tmp_path, 1000, 20_000, 3.4),
            make_run(tmp_path, 500, 10_000, 3.9, experiment="base", where="nested/deeper")]
    got = collect_runs(tmp_path)
    table = got.table
    assert list(table.columns[:7]) == ["run_id", "experiment", "N", "N_total", "D", "C", "loss"]
    assert (got.finished, got.unfinished, got.diverged, got.failed) == (4, 0, 0, 0)
    assert list(zip(table.experiment, table.N, table.D, strict=True)) == [
        ("base", 500, 10_000), ("exp", 1000, 20_000), ("exp", 1000, 80_000),
        ("exp", 2000, 40_000)]
    for run_dir in runs:
        s = summary_of(run_dir)
        row = table.set_index("run_id").loc[s["run_id"]]
        want = {
            "experiment": s["experiment"], "N": s["params"]["non_embedding"],
            "N_total": s["params"]["total"], "D": s["tokens"], "C": s["flops_6nd"],
            "loss": s["val_loss"], "flops_per_token_6nd": s["flops_per_token"]["6nd"],
            "flops_6nd_total": s["flops_6nd_total"], "params_total": s["params"]["total"],
            "shape_n_layer": 2, "budget_kind": "tokens", "budget_value": s["tokens"],
            "dataset_name": "synthetic", "wall_time_s": 12.5, "status": "finished",
            "run_dir": run_dir.relative_to(tmp_path).as_posix(),
        }
        assert {key: row[key] for key in want} == want
    assert got.describe() == "4 runs collected; left out: 0 unfinished, 0 diverged, 0 failed"


def test_unfinished_diverged_failed_and_null_loss_are_left_out(tmp_path: Path) -> None:
    make_run(tmp_path, 1000, 20_000, 3.0)
    make_run(tmp_path, 1000, 40_000, 2.8, summary=False)  # killed: metrics but no summary
    make_run(tmp_path, 2000, 20_000, None, status="diverged")
    make_run(tmp_path, 2000, 40_000, None)  # 'finished' but the loss is null
    make_run(tmp_path, 4000, 20_000, 2.0, status="failed")
    got = collect_runs(tmp_path)
    assert (got.finished, got.unfinished, got.diverged, got.failed) == (1, 1, 2, 1)
    assert list(got.table.run_id) == ["n1000-d20000"]
    assert got.describe() == "1 runs collected; left out: 1 unfinished, 2 diverged, 1 failed"


def test_duplicate_run_keeps_latest_and_bad_json_is_reported(tmp_path: Path) -> None:
    make_run(tmp_path, 1000, 20_000, 3.0, run_id="dup", where="a/exp",
             finished_at="2026-01-02T00:00:00+00:00")
    make_run(tmp_path, 1000, 20_000, 2.7, run_id="dup", where="b/exp",
             finished_at="2026-01-03T00:00:00+00:00")
    make_run(tmp_path, 1000, 20_000, 3.3, run_id="dup", where="c/exp",
             finished_at="2026-01-01T00:00:00+00:00")
    bad = make_run(tmp_path, 2000, 20_000, 2.0) / "summary.json"
    bad.write_text('{"status": "finished", "run_id": ')
    make_run(tmp_path / ".trash", 9, 9, 1.0)  # hidden and temporary folders are never runs
    make_run(tmp_path, 9, 9, 1.0, run_id="x.tmp-123")
    # By default the torn summary is refused: a fit on silently fewer runs would mislead.
    with pytest.raises(UnreadableRun) as info:
        collect_runs(tmp_path)
    assert str(info.value) == (
        f"{bad} is unreadable (not valid JSON: Expecting value, line 1 column 34): delete that "
        "run directory to retrain it, or pass --skip-unreadable to collect without it")
    got = collect_runs(tmp_path, skip_unreadable=True)
    assert got.duplicates == 2 and got.finished == 1
    assert got.table.loss.tolist() == [2.7] and got.table.run_dir.tolist() == ["b/exp/dup"]
    assert got.unreadable == [str(bad)]
    assert got.describe().endswith("0 failed, 1 unreadable, 2 duplicates")


@pytest.mark.parametrize(("content", "reason"), [
    (b"[1, 2]", "(JSON an array, not an object)"),
    (b"\xff\xfe{}", "(not UTF-8 text)"),
    (b'{"status": "finished", "run_id": "x"}', "(no field 'tokens')"),
    (b'{"run_id": "x"}', "(no field 'status')"),
    (b'{"status": "finished", "run_id": "x", "experiment": "e", "params": 5, "tokens": 1, '
     b'"flops_6nd": 6, "val_loss": 2.0}', "(malformed: 'int' object is not subscriptable)"),
], ids=["array", "binary", "no-tokens", "no-status", "params-not-a-dict"])
def test_malformed_summary_is_refused_with_the_reason(tmp_path: Path, content: bytes,
                                                      reason: str) -> None:
    make_run(tmp_path, 1000, 20_000, 3.0)
    bad = make_run(tmp_path, 2000, 20_000, 2.0) / "summary.json"
    bad.write_bytes(content)
    with pytest.raises(UnreadableRun, match="--skip-unreadable") as info:
        collect_runs(tmp_path)
    assert str(info.value).startswith(f"{bad} is unreadable {reason}")
    assert collect_runs(tmp_path, skip_unreadable=True).unreadable == [str(bad)]


def test_several_unreadable_runs_are_counted_in_one_line(tmp_path: Path) -> None:
    make_run(tmp_path, 1000, 20_000, 3.0)
    bad = [make_run(tmp_path, n, 20_000, 2.0) / "summary.json" for n in (2000, 3000, 4000)]
    for path in bad:
        path.write_text("")
    with pytest.raises(UnreadableRun) as info:
        collect_runs(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{bad[0]} is unreadable (not valid JSON: ")
    assert "; 2 more run files are unreadable)" in message and "\n" not in message


def test_curves_one_row_per_eval_point_and_torn_line_skipped(tmp_path: Path) -> None:
    small = make_run(tmp_path, 1000, 20_000, 3.0)
    big = make_run(tmp_path, 2000, 40_000, 2.5)
    make_run(tmp_path, 3000, 40_000, None, status="diverged")
    with (big / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 9, "tokens": 45')  # damaged after the run (resume drops torn lines)
    # By default a finished run's damaged metrics.jsonl is refused, naming the line ...
    with pytest.raises(UnreadableRun) as info:
        collect_runs(tmp_path, curves=True)
    assert str(info.value) == (
        f"{big / 'metrics.jsonl'} is unreadable (line {len(STEPS) + 1} is not a metrics row): "
        "delete that run directory to retrain it, or pass --skip-unreadable to collect its "
        "readable lines only")
    collect_runs(tmp_path)  # ... which the per-run table does not read
    # ... and skip_unreadable keeps the readable lines.
    got = collect_runs(tmp_path, curves=True, skip_unreadable=True)
    table = got.table
    assert len(table) == 2 * (len(STEPS) - 1) and (table.D > 0).all()
    assert got.unreadable == [str(big / "metrics.jsonl")]
    extra = ["step", "train_loss", "val_bpb", "lr", "flops_6nd_total", "flops_exact",
             "tokens_per_s", "mfu", "final_loss", "model_name", "budget_kind", "budget_value",
             "dataset_name", "dataset_config_hash", "dataset_entropy_rate_nats",
             "dataset_window_floor_nats", "seed", "config_hash", "replicate_hash",
             "stable_hash", "code_version", "run_dir"]
    assert list(table.columns) == ["run_id", "experiment", "N", "N_total", "D", "C", "loss", *extra]
    assert table.run_id.tolist() == ["n1000-d20000"] * 4 + ["n2000-d40000"] * 4
    assert table.step.tolist() == [1, 2, 4, 8] * 2
    lines = [json.loads(x) for x in (small / "metrics.jsonl").read_text().splitlines()][1:]
    first = table[table.run_id == "n1000-d20000"]
    assert first.D.tolist() == [x["tokens"] for x in lines]
    assert first.C.tolist() == [x["flops_6nd"] for x in lines]
    assert first.loss.tolist() == [x["val_loss"] for x in lines]
    assert (first.final_loss == 3.0).all() and (first.budget_value == 20_000).all()
    # The dataset rides along, so the fitter can refuse a curves table that mixes corpora
    assert (first.dataset_name == "synthetic").all() and (first.dataset_config_hash == "ab").all()


def test_the_datas_floors_ride_along_in_both_tables(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, 1000, 20_000, 3.0)
    summary = summary_of(run_dir)
    summary["dataset"].update(entropy_rate_nats=0.5909, window_floor_nats=0.6213,
                              window_floor_stderr=0.0002)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for curves in (False, True):
        table = collect_runs(tmp_path, curves=curves).table
        assert (table.dataset_entropy_rate_nats == 0.5909).all()
        assert (table.dataset_window_floor_nats == 0.6213).all()


def test_flop_counts_past_int64_become_floats(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, 286_697_088, 5_733_941_760, 2.1)
    summary = summary_of(run_dir)
    summary["flops_exact"] = 2_201_200_000 * 5_733_941_760  # > 2**63
    (run_dir / "summary.json").write_text(json.dumps(summary))
    table = collect_runs(tmp_path).table
    assert table.flops_exact.dtype == "float64" and table.C.dtype == "float64"
    assert table.flops_exact[0] == pytest.approx(2_201_200_000 * 5_733_941_760)
    write_table(table, tmp_path / "t.parquet")


@pytest.mark.parametrize("name", ["table.csv", "table.parquet"])
@pytest.mark.parametrize("curves", [False, True])
def test_write_table_round_trips(tmp_path: Path, name: str, curves: bool) -> None:
    pytest.importorskip("pyarrow")
    for n in (1000, 2000):
        make_run(tmp_path / "runs", n, 20 * n, 4.0 - n / 1000)
    table = collect_runs(tmp_path / "runs", curves=curves).table
    out = tmp_path / "new" / name
    out.parent.mkdir()
    write_table(table, out)
    back = pd.read_csv(out) if out.suffix == ".csv" else pd.read_parquet(out)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert [p.name for p in out.parent.iterdir()] == [name]


def test_cli_refuses_unreadable_or_skips_it_with_a_warning(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", 1000, 20_000, 3.0)
    make_run(tmp_path / "runs", 2000, 20_000, 2.0, summary=False)
    with (tmp_path / "runs/exp/n1000-d20000/metrics.jsonl").open("a") as handle:
        handle.write("{torn")
    out = tmp_path / "out" / "curves.csv"
    out.parent.mkdir()
    metrics = tmp_path / "runs/exp/n1000-d20000/metrics.jsonl"
    refused = cli(tmp_path / "runs", "--out", out, "--curves")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (
        f"error: {metrics} is unreadable (line {len(STEPS) + 1} is not a metrics row): delete "
        "that run directory to retrain it, or pass --skip-unreadable to collect its readable "
        "lines only\n")
    assert not out.exists()
    done = cli(tmp_path / "runs", "--out", out, "--curves", "--skip-unreadable")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"1 runs collected; left out: 1 unfinished, 0 diverged, 0 failed, 1 unreadable -> {out}")
    assert done.stderr.strip() == (
        f"warning: skipped unreadable {tmp_path / 'runs/exp/n1000-d20000/metrics.jsonl'}")
    assert len(pd.read_csv(out)) == len(STEPS) - 1


@pytest.mark.parametrize("case, expect", [
    ("missing", "does not exist"), ("file", "is not a directory"),
    ("unfinished", "no finished runs"), ("suffix", "must end in .csv or .parquet"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path, case: str,
                                                   expect: str) -> None:
    runs = tmp_path / "runs"
    make_run(runs, 1000, 20_000, 3.0, summary=case != "unfinished")
    out = tmp_path / "out" / ("t.xlsx" if case == "suffix" else "t.csv")
    out.parent.mkdir()
    target = {"missing": tmp_path / "nope", "file": runs / "exp/n1000-d20000/config.yaml"}
    done = cli(target.get(case, runs), "--out", out)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")
    assert expect in done.stderr
    if case == "unfinished":
        assert "1 unfinished" in done.stderr and "sweep.train" in done.stderr
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("curves", [False, True])
def test_where_keeps_the_runs_it_selects_as_the_fitters_do(tmp_path: Path, curves: bool) -> None:
    runs = tmp_path / "runs"
    for n, tokens, loss in ((1000, 20_000, 3.0), (2000, 40_000, 2.5), (4000, 80_000, 2.2)):
        make_run(runs, n, tokens, loss)
    out = tmp_path / "t.csv"
    # Judged on a run's final row: each curve's last point has loss == final_loss == 2.5 here
    done = cli(runs, "--out", out, "--where", "N >= 2000 and loss > 2.4",
               *(["--curves"] if curves else []))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"3 runs collected; left out: 0 unfinished, 0 diverged, "
                                   f"0 failed; --where 'N >= 2000 and loss > 2.4' kept 1 of 3 "
                                   f"-> {out}")
    table = pd.read_csv(out)
    assert set(table.run_id) == {"n2000-d40000"}
    assert len(table) == (len(STEPS) - 1 if curves else 1)


@pytest.mark.parametrize("where, expect", [
    ("N > 1e12", "--where 'N > 1e12' keeps none of the 1 runs under"),
    ("N = 3", "--where 'N = 3' assigns (a single =): compare with =="),
    ("nope > 1", "--where 'nope > 1' cannot be evaluated on the runs under"),
])
def test_a_bad_where_is_one_line_and_writes_nothing(tmp_path: Path, where: str,
                                                    expect: str) -> None:
    runs = tmp_path / "runs"
    make_run(runs, 1000, 20_000, 3.0)
    out = tmp_path / "out" / "t.csv"
    out.parent.mkdir()
    done = cli(runs, "--out", out, "--where", where)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {expect}") and len(done.stderr.splitlines()) == 1
    assert list(out.parent.iterdir()) == []


def test_out_in_a_missing_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", 1000, 20_000, 3.0)
    out = tmp_path / "nowhere" / "deeper" / "runs.csv"
    # Refused before reading runs: a runs folder that does not exist is not what it reports
    for runs in (tmp_path / "runs", tmp_path / "no-runs"):
        done = cli(runs, "--out", out)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == (f"error: --out {out}: the folder {out.parent} does not exist: "
                               "create it or point --out into an existing folder\n")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(CollectError, match="does not exist"):
        write_table(collect_runs(tmp_path / "runs").table, out)
    assert not (tmp_path / "nowhere").exists()
    folder = tmp_path / "t.csv"
    folder.mkdir()
    done = cli(tmp_path / "runs", "--out", folder)
    assert done.returncode == 2 and f"--out {folder} is a folder" in done.stderr


def _on_stdlib(run_dir: Path, config_hash: str = "0123456789") -> Path:
    summary = summary_of(run_dir)
    summary["dataset"] = {"name": "stdlib", "config_hash": config_hash, "tokenizer_hash": "x"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_dataset_filter_keeps_one_datasets_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for n in (1000, 2000):
        make_run(runs, n, 20 * n, 3.0)
    _on_stdlib(make_run(runs, 3000, 60_000, 2.0, experiment="lib"))
    _on_stdlib(make_run(runs, 4000, 80_000, None, status="diverged", experiment="lib"))
    got = collect_runs(runs, dataset="synthetic")
    assert got.table.N.tolist() == [1000, 2000] and set(got.table.dataset_name) == {"synthetic"}
    assert got.describe() == ("2 runs collected; left out: 0 unfinished, 0 diverged, 0 failed, "
                              "2 on other datasets")
    # A prefix of the config hash selects too, with curves as well
    got = collect_runs(runs, dataset="0123", curves=True)
    assert set(got.table.run_id) == {"n3000-d60000"} and got.diverged == 1
    with pytest.raises(CollectError) as info:
        collect_runs(runs, dataset="fineweb")
    assert str(info.value) == (
        f"--dataset fineweb matches no finished run under {runs} (datasets there: "
        "stdlib (01234567), synthetic (ab)): pass one of those names or hash prefixes")
    # One name, two builds (another tokenizer): the name cannot pick one, a hash prefix can
    _on_stdlib(make_run(runs, 5000, 99_000, 1.9, experiment="lib2"), "fedcba9876")
    with pytest.raises(CollectError, match=r"^--dataset stdlib matches 2 datasets under .* "
                       r"\(stdlib \(01234567\), stdlib \(fedcba98\)\): pass a config-hash "
                       r"prefix instead, e.g. --dataset 01234567$"):
        collect_runs(runs, dataset="stdlib")
    assert len(collect_runs(runs, dataset="fedc").table) == 1
    out = tmp_path / "synthetic.csv"
    done = cli(runs, "--dataset", "synthetic", "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"3 on other datasets -> {out}")
    assert pd.read_csv(out).N.tolist() == [1000, 2000]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", 1000, 20_000, 3.0)
    out = tmp_path / "t.parquet"
    code = ("import sys; sys.modules['pyarrow'] = None; from sweep.collect import main; "
            f"sys.exit(main([{str(tmp_path / 'runs')!r}, '--out', {str(out)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "pip install pyarrow" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and not out.exists()


def test_no_finished_runs_raises(tmp_path: Path) -> None:
    make_run(tmp_path, 1000, 20_000, None, status="diverged")
    with pytest.raises(CollectError, match="0 unfinished, 1 diverged, 0 failed"):
        collect_runs(tmp_path)


def test_import_needs_no_torch() -> None:
    code = ("import sys\nfor name in ('torch', 'hydra', 'omegaconf', 'datasets', 'tokenizers'):\n"
            "    sys.modules[name] = None\nimport sweep.collect\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
