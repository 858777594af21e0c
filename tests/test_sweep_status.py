"""sweep.status: every run of a sweep by state (from run directories and the sweep's plan), with
N, D, C, loss and progress, and one-line errors for a bad directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from sweep.grid import MANIFEST
from sweep.status import main, sweep_status


def _run(sweep: Path, run_id: str, *, summary: dict | None = None, evals: int = 0,
         checkpoint: int | None = None, steps: int = 100) -> Path:
    run_dir = sweep / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"resolved:\n  budget:\n    steps: {steps}\n")
    rows = [{"step": 10 * i, "val_loss": 5.0 - i} for i in range(evals)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if checkpoint is not None:
        (run_dir / f"checkpoint-{checkpoint:08d}.pt").write_bytes(b"x")
    return run_dir


def _finished(n: int, d: int, loss: float, status: str = "finished", error: str | None = None):
    return {"status": status, "params": {"non_embedding": n}, "tokens": d,
            "flops_6nd": 6 * n * d, "val_loss": loss, "steps": 100, "error": error}


def test_status_rows_by_state(tmp_path):
    sweep = tmp_path / "runs" / "exp"
    _run(sweep, "a-done", summary=_finished(1000, 20_000, 3.5))
    _run(sweep, "b-nan", summary=_finished(2000, 20_000, float("nan"), "diverged",
                                            "non-finite training loss by step 9"))
    _run(sweep, "c-killed", evals=3, checkpoint=25)
    _run(sweep, "d-early", evals=1)
    (sweep / ".submitit").mkdir()  # launcher logs are not runs
    planned = [
        {"run_id": "c-killed", "N": 4000, "D": 8000, "C": 1.92e8, "action": "train"},
        {"run_id": "e-pending", "N": 8000, "D": 16000, "C": 7.68e8, "action": "train"},
        {"run_id": "f-far", "N": 16000, "D": 1e7, "C": 9.6e11, "action": "skip",
         "reason": "D/N=625 is above launch.tokens_per_param.max=250"},
    ]
    (sweep / MANIFEST).write_text(json.dumps({"points": planned}))

    rows = {r.run_id: r for r in sweep_status(sweep)}
    assert [r.state for r in sweep_status(sweep)] == [
        "diverged", "interrupted", "interrupted", "new", "finished", "skipped"]
    assert (rows["a-done"].N, rows["a-done"].D, rows["a-done"].C) == (1000, 20_000, 1.2e8)
    assert rows["a-done"].loss == 3.5 and rows["b-nan"].loss is None
    assert rows["b-nan"].note == "non-finite training loss by step 9"
    # An interrupted run: its latest eval's loss, the newer of eval and checkpoint steps.
    killed = rows["c-killed"]
    assert (killed.N, killed.loss, killed.step, killed.steps) == (4000, 3.0, 25, 100)
    # whose loss is older than its progress: the note says so (a step-1 loss looked diverging)
    assert killed.note == "resumes from step 25; loss of the eval at step 20"
    assert rows["d-early"].note == "no checkpoint: restarts"
    assert rows["e-pending"].note == "not started"
    assert rows["f-far"].note.startswith("D/N=625")


def test_a_run_planned_twice_shows_as_the_point_that_trains_it(tmp_path):
    # Two budgets that round to the same steps are one run: the second point is a skip
    sweep = tmp_path / "runs" / "exp"
    sweep.mkdir(parents=True)
    planned = [
        {"run_id": "a-same", "N": 1000, "D": 19456, "C": 1.2e8, "action": "train"},
        {"run_id": "a-same", "N": 1000, "D": 19456, "C": 1.2e8, "action": "skip",
         "reason": "same run as grid point #0"},
    ]
    (sweep / MANIFEST).write_text(json.dumps({"points": planned}))
    [row] = sweep_status(sweep)
    assert (row.state, row.note) == ("new", "not started")


def test_a_point_skipped_for_a_run_since_deleted_is_new_again(tmp_path):
    # Planned as a skip because its run had finished; the run's directory was deleted since, so
    # the next launch trains it: status must not call it skipped (nor finished)
    sweep = tmp_path / "runs" / "exp"
    sweep.mkdir(parents=True)
    planned = [
        {"run_id": "a-gone", "N": 1000, "D": 20_000, "C": 1.2e8, "action": "skip",
         "reason": "finished, val_loss 3.5000", "run_state": "finished"},
        {"run_id": "b-far", "N": 2000, "D": 1e7, "C": 1.2e11, "action": "skip",
         "reason": "D/N=5e+03 is above launch.tokens_per_param.max=250", "run_state": None},
    ]
    (sweep / MANIFEST).write_text(json.dumps({"points": planned}))
    rows = {r.run_id: r for r in sweep_status(sweep)}
    assert (rows["a-gone"].state, rows["a-gone"].note) == (
        "new", "not started: its finished run's directory is gone")
    assert rows["b-far"].state == "skipped"


def test_cli_table_and_json(tmp_path, capsys):
    sweep = tmp_path / "exp"
    _run(sweep, "a-done", summary=_finished(1000, 20_000, 3.5))
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["state", "run", "N", "D", "C", "loss", "steps", "note"]
    assert out[1].split() == ["finished", "a-done", "1,000", "20,000", "1.200e+08", "3.5000",
                              "100/100"]
    assert out[-1] == f"{sweep}: 1 runs: 1 finished"
    assert main([str(sweep), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["state"] == "finished" and row["C"] == 1.2e8


def test_missing_directory_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "runs/smoke" in err[0]


def test_an_unfinished_run_without_a_plan_takes_n_d_c_from_its_config(tmp_path):
    # A run launched alone has no sweep.json: config.yaml's resolved shape and budget say N, D, C
    run_dir = _run(tmp_path / "runs" / "default", "gpt_1m-abc", evals=2, checkpoint=10, steps=19)
    (run_dir / "config.yaml").write_text(
        "resolved:\n  model: {n_layer: 3, d_model: 192, n_head: 4, mlp_ratio: 4, bias: false}\n"
        "  budget: {kind: tokens, value: 20000.0, tokens: 19456, steps: 19}\n")
    [row] = sweep_status(run_dir.parent)
    # 3 x (2 LayerNorms of 192 + 4 x 192^2 + 2 x 192 x 768) + the final LayerNorm
    assert (row.state, row.N, row.D, row.C) == ("interrupted", 1_328_448, 19_456,
                                                6 * 1_328_448 * 19_456)
    assert (row.step, row.steps) == (10, 19)


def test_runs_folder_shows_every_experiment(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs / "smoke", "a-done", summary=_finished(1000, 20_000, 3.5))
    _run(runs / "smoke", "b-done", summary=_finished(2000, 20_000, 3.2))
    _run(runs / "isoflop", "c-killed", evals=2, checkpoint=10)
    (runs / ".trash" / "x").mkdir(parents=True)  # hidden folders are not experiments
    (runs / "isoflop" / ".submitit").mkdir()
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    blocks = out.split("\n\n")
    assert [b.splitlines()[-1] for b in blocks] == [
        f"{runs / 'isoflop'}: 1 runs: 1 interrupted",
        f"{runs / 'smoke'}: 2 runs: 2 finished",
        f"{runs}: 2 experiments, 3 runs: 1 interrupted, 2 finished"]
    assert "c-killed" in blocks[0] and "a-done" in blocks[1] and "b-done" in blocks[1]
    assert main([str(runs), "--json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["experiment"], r["run_id"]) for r in got] == [
        ("isoflop", "c-killed"), ("smoke", "a-done"), ("smoke", "b-done")]


def test_a_run_directory_shows_that_run_and_names_its_sweep(tmp_path, capsys):
    sweep = tmp_path / "runs" / "smoke"
    _run(sweep, "a-done", summary=_finished(1000, 20_000, 3.5))
    run_dir = _run(sweep, "b-killed", evals=3, checkpoint=25)
    (sweep / MANIFEST).write_text(json.dumps({"points": [
        {"run_id": "b-killed", "N": 4000, "D": 8000, "C": 1.92e8, "action": "train"}]}))
    assert main([str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:4] == ["interrupted", "b-killed", "4,000", "8,000"]
    assert len(out) == 4 and out[2] == f"{run_dir}: 1 runs: 1 interrupted"
    assert out[3] == f"a run of {sweep}: python -m sweep.status {sweep} lists the whole sweep"
    assert main([str(run_dir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["experiment"], row["run_id"], row["step"]) == ("smoke", "b-killed", 25)


def test_a_file_or_a_folder_without_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "empty").mkdir()
    _run(tmp_path / "runs" / "smoke", "a-done", summary=_finished(1000, 20_000, 3.5))
    cases = {
        tmp_path / "README.md": f"{tmp_path / 'README.md'} is a file, not a directory",
        tmp_path / "empty": f"{tmp_path / 'empty'} holds no runs, no sweep plan (sweep.json) "
                            "and no experiment folders",
        tmp_path: f"{tmp_path} holds no runs itself: pass its runs folder, {tmp_path / 'runs'}",
    }
    for target, message in cases.items():
        assert main([str(target)]) == 2
        captured = capsys.readouterr()
        err = captured.err.splitlines()
        assert captured.out == "" and len(err) == 1 and err[0].startswith(f"error: {message}")
