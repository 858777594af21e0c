"""Fault-injection proofs of the README's guarantees: kills anywhere, divergence in a sweep, and
out-of-memory back-off. Faults come from tests/faults.py (or monkeypatching, in process).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sweep.fit.__main__ as fit_main
import sweep.fit.table as fit_table
import sweep.loop as loop_module
import sweep.start as start_module
import sweep.step as step_module
from sweep.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from sweep.collect import collect_runs
from sweep.errors import OutOfMemory
from sweep.lock import is_locked
from sweep.plan import plan_run
from sweep.step import smaller_micro_batch
from tests.conftest import PYTHON, SMALL_RUN, compose_train
from tests.helpers import linked_root
from tests.test_sweep_collect import make_run

REPO = Path(__file__).resolve().parent.parent
FAULTS = REPO / "tests" / "faults.py"
# Many places for a fault to land; with two ranks, 4 of the 8 sequences a step each.
RUN = SMALL_RUN
# Everything in a metrics row but the wall-clock throughput, which no two processes share.
EXACT_KEYS = ("step", "tokens", "flops_6nd", "flops_6nd_total", "flops_exact", "train_loss",
              "val_loss", "val_bpb", "lr")


def _train(root: Path, *faults: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """python -m sweep.train on RUN under root, with tests/faults.py FAULTs installed."""
    prefix = [str(FAULTS), *faults, "--"] if faults else ["-m"]
    return subprocess.run(
        [PYTHON, *prefix, "sweep.train", f"paths.root_dir={root}", *RUN, *extra],
        cwd=root, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True,
        text=True, timeout=300,
    )


def _run_dir(root: Path) -> Path:
    (run_dir,) = (root / "runs" / "default").iterdir()
    return run_dir


def _exact(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: row[k] for k in EXACT_KEYS} for row in rows]


def _final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in ("status", "steps", "tokens", "train_loss", "val_loss",
                                    "val_bpb", "flops_exact")}


def _temps(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if ".tmp-" in p.name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """The run trained once, never interrupted."""
    root = linked_root(tmp_path_factory.mktemp("reference"), synthetic_root, "root")
    result = _train(root)
    assert result.returncode == 0, result.stderr
    return _run_dir(root)


def test_a_run_killed_anywhere_and_relaunched_ends_bit_for_bit_as_an_uninterrupted_one(
    tmp_path, synthetic_root, reference
):
    """SIGKILL during an eval, a step, a metrics append, a checkpoint write and the summary
    write, relaunching after each: the losses of every eval and the summary equal the
    reference's exactly (CPU float32 is deterministic), and no temp file survives."""
    root = linked_root(tmp_path, synthetic_root, "killed")

    def killed(*faults: str) -> Path:
        result = _train(root, *faults)
        assert result.returncode == -signal.SIGKILL, (faults, result.stdout, result.stderr)
        run_dir = _run_dir(root)
        assert not (run_dir / "summary.json").exists()
        return run_dir

    # Mid-eval at step 0, before any checkpoint: the relaunch starts afresh.
    run_dir = killed("kill@eval=1")
    assert list_checkpoints(run_dir) == []
    # Mid-step 5: the checkpoint after step 4 is the newest.
    killed("kill@step=5")
    assert latest_checkpoint(run_dir).name == "checkpoint-00000004.pt"
    # Halfway through the first metrics line after resuming (step 7's eval): a torn line.
    killed("kill@metrics=1")
    assert not (run_dir / "metrics.jsonl").read_text().endswith("\n")
    # Between the temp file and the rename of the second checkpoint after resuming from step 6
    # (step 7's, then step 8's): step 8 exists only as a hidden temp, step 7 is whole.
    killed("kill@checkpoint=2")
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-00000007.pt"]
    temps = _temps(run_dir)
    assert len(temps) == 1 and temps[0].startswith(".checkpoint-00000008.pt.tmp-"), temps
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 7
    # Between summary.json's temp file and its rename, after the final checkpoint.
    killed("kill@summary=1")
    assert latest_checkpoint(run_dir).name == "checkpoint-00000019.pt"
    assert [n.split(".tmp-")[0] for n in _temps(run_dir)] == ["summary.json"]

    result = _train(root)
    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoint-00000019.pt (resume 4)" in result.stdout
    assert _exact(run_dir) == _exact(reference)
    assert _final(run_dir) == _final(reference)
    assert json.loads((run_dir / "summary.json").read_text())["resumes"] == 4
    assert _temps(run_dir) == []


@pytest.mark.slow  # 11 s; the kill-anywhere test above kills in every phase of a step in CI
def test_a_run_killed_at_random_moments_ends_as_an_uninterrupted_one(
    tmp_path, synthetic_root, reference
):
    """Three SIGKILLs at seeded random moments of training (whatever the run was doing then),
    each followed by a relaunch: the finished record equals the reference's."""
    root = linked_root(tmp_path, synthetic_root, "random")
    rng = random.Random(6)
    # Delays in units of the reference's training time on this machine, so that the kills land
    # on a fast machine too: three of at most 0.3 of it each fall before training ends.
    train_s = json.loads((reference / "summary.json").read_text())["train_time_s"]
    cmd = [sys.executable, "-m", "sweep.train", f"paths.root_dir={root}", *RUN]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    run_dir = root / "runs" / "default" / reference.name
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # Training starts once the run's lock is held (and takes about a second here).
        while proc.poll() is None and not is_locked(run_dir):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3) * train_s)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert kills == 3  # the kills did land: not a relaunch that found the run finished
    assert _exact(run_dir) == _exact(reference)
    assert _final(run_dir) == _final(reference)
    assert _temps(run_dir) == []


def test_a_diverging_run_is_kept_as_diverged_and_the_sweep_goes_on(tmp_path, synthetic_root):
    """One size's training loss turns NaN in a two-run sweep: that run ends `diverged` with its
    records, the other finishes, the sweep reports one failure, and collect leaves it out."""
    root = linked_root(tmp_path, synthetic_root, "sweep")
    result = subprocess.run(
        [PYTHON, str(FAULTS), "nan@d_model=64", "--", "sweep.train", "--multirun",
         f"paths.root_dir={root}", *RUN, "model.d_model=64,128"],
        cwd=root, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "diverged" in result.stderr.strip().splitlines()[-1]
    summaries = {
        json.loads(p.read_text())["shape"]["d_model"]: json.loads(p.read_text())
        for p in (root / "runs" / "default").glob("*/summary.json")
    }
    assert summaries[128]["status"] == "finished"
    assert summaries[64]["status"] == "diverged"
    assert summaries[64]["error"] == "non-finite training loss by step 3"
    diverged_dir = root / "runs" / "default" / summaries[64]["run_id"]
    rows = (diverged_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1]  # the finite evals are kept
    collected = collect_runs(root / "runs")
    assert collected.table["run_id"].tolist() == [summaries[128]["run_id"]]
    assert collected.diverged == 1
    assert "1 diverged" in collected.describe()


def test_non_finite_validation_loss_stops_the_run_before_its_checkpoint(
    synthetic_root, monkeypatch
):
    original = loop_module.evaluate
    calls: list[int] = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        result = original(*args, **kwargs)
        return dataclasses.replace(result, loss=float("nan")) if len(calls) == 3 else result

    monkeypatch.setattr(loop_module, "evaluate", evaluate)
    plan = plan_run(compose_train(synthetic_root, *RUN[:9], "experiment_name=valnan"))
    summary = start_module.run(plan)
    assert (summary["status"], summary["error"]) == (
        "diverged", "non-finite validation loss at step 3")
    rows = [json.loads(r) for r in (plan.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_loss"] is None) for r in rows] == [(0, False), (1, False), (3, True)]
    # The checkpoint after step 2 is the newest: no checkpoint of the diverged model was written.
    assert latest_checkpoint(plan.run_dir).name == "checkpoint-00000002.pt"


def test_smaller_micro_batch_halves_and_keeps_dividing_the_batch():
    assert smaller_micro_batch(8, 8) == 4
    assert smaller_micro_batch(4, 8) == 2
    assert smaller_micro_batch(6, 12) == 3
    assert smaller_micro_batch(5, 12) == 2
    assert smaller_micro_batch(3, 9) == 1
    assert smaller_micro_batch(1, 8) is None


def _oom_above(limit: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make a step's micro-batches of more than `limit` sequences raise torch's OOM error, in
    the step's last forward (after earlier backwards have left gradients behind)."""
    seen: list[int] = []
    original = step_module.accumulate_gradients

    def accumulate(model, xs, ys, micro, hardware, *args):
        seen.append(micro)

        def forward(x, y):
            last = forward.calls == xs.shape[0] // micro - 1
            if x.shape[0] > limit and last:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            forward.calls += 1
            return model(x, y)

        forward.calls = 0
        return original(forward, xs, ys, micro, hardware, *args)

    monkeypatch.setattr(step_module, "accumulate_gradients", accumulate)
    return seen


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_trajectory(
    synthetic_root, monkeypatch, capsys
):
    """An OOM at micro-batch 8 and 4 (of 8 sequences a step) backs off to 2 x 4 accumulation:
    the run equals, bit for bit, one planned with micro-batch 2 from the start."""
    planned = plan_run(compose_train(synthetic_root, *RUN[:7], "experiment_name=mb2",
                                     "train.micro_batch_size=2"))
    expected = start_module.run(planned)

    seen = _oom_above(2, monkeypatch)
    plan = plan_run(compose_train(synthetic_root, *RUN[:7], "experiment_name=oom",
                                  "train.micro_batch_size=8"))
    assert (plan.micro_batch_size, plan.grad_accum) == (8, 1)
    assert plan.run_id == planned.run_id  # micro-batching is not part of the run's identity
    summary = start_module.run(plan)
    assert seen[:4] == [8, 4, 2, 2]  # step 1 backs off twice; later steps start at 2
    out = capsys.readouterr().out
    assert "out of memory in step 1; retrying it with micro_batch_size 4 x 2" in out
    assert "retrying it with micro_batch_size 2 x 4" in out
    assert summary["status"] == "finished"
    assert (summary["micro_batch_size"], summary["oom_retries"]) == (2, 1)
    assert summary["batch_tokens"] == expected["batch_tokens"] == 1024
    assert summary["steps"] == expected["steps"]
    assert (summary["train_loss"], summary["val_loss"]) == (
        expected["train_loss"], expected["val_loss"])
    assert _exact(plan.run_dir) == _exact(planned.run_dir)
    # The lowered micro-batch is in the checkpoint, so a resumed run does not run out again.
    assert load_checkpoint(latest_checkpoint(plan.run_dir))["loop"]["micro_batch_size"] == 2


def test_out_of_memory_at_the_floor_fails_the_run_with_the_reason(synthetic_root, monkeypatch):
    _oom_above(0, monkeypatch)  # nothing fits
    plan = plan_run(compose_train(synthetic_root, *RUN[:7], "experiment_name=oomfloor",
                                  "train.micro_batch_size=8", "train.min_micro_batch_size=2"))
    with pytest.raises(OutOfMemory, match=r"micro_batch_size=2 \(floor train.min_micro_batch"):
        start_module.run(plan)
    saved = json.loads((plan.run_dir / "summary.json").read_text())
    assert saved["status"] == "failed"
    assert saved["error"].startswith("OutOfMemory: out of memory at train.micro_batch_size=2")
    assert saved["steps"] == 0 and _temps(plan.run_dir) == []


def test_out_of_memory_at_the_floor_is_one_line_from_the_cli(tmp_path, synthetic_root):
    root = linked_root(tmp_path, synthetic_root, "cli")
    result = _train(root, "oom@micro_batch=0")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run ") and (
        "failed: out of memory at train.micro_batch_size=1 (floor train.min_micro_batch_size=1)"
        in lines[0]), result.stderr
    assert json.loads((_run_dir(root) / "summary.json").read_text())["status"] == "failed"


def test_out_of_memory_in_the_optimizer_or_eval_says_which(synthetic_root, monkeypatch):
    # Both were once told to "lower eval.batch_size", which starts another run
    def step_oom(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    plan = plan_run(compose_train(synthetic_root, *RUN[:7], "experiment_name=optoom"))
    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", step_oom)
        with pytest.raises(OutOfMemory, match=r"^out of memory in the optimizer step at step 1 "
                           r"\(CUDA out of memory.*\): the weights, gradients and AdamW state"):
            start_module.run(plan)
    assert json.loads((plan.run_dir / "summary.json").read_text())["status"] == "failed"

    plan = plan_run(compose_train(synthetic_root, *RUN[:7], "experiment_name=evaloom"))
    with monkeypatch.context() as m:
        m.setattr(loop_module, "evaluate", lambda *a, **k: step_oom())
        with pytest.raises(OutOfMemory, match=r"^out of memory evaluating at step 0 .*one window "
                           "at a time: use a GPU with more memory"):
            start_module.run(plan)


def test_fit_of_a_runs_directory_leaves_diverged_runs_out_and_says_how_many(
    tmp_path, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    for n, tokens in [(1e6, 2e7), (2e6, 4e7), (4e6, 8e7), (1e6, 8e7), (2e6, 2e7), (4e6, 2e7)]:
        make_run(runs, int(n), int(tokens), 3.0 + 1e3 / n**0.3 + 1e3 / tokens**0.3)
    diverged = make_run(runs, 8_000_000, 20_000_000, None, status="diverged")
    data = fit_table.load(runs, fit_table.Columns())
    assert diverged.name not in set(data.runs["run"])
    assert len(data.runs) == 6
    line = "runs directory: 6 runs collected; left out: 0 unfinished, 1 diverged, 0 failed"
    assert line in data.notes  # report.md lists the notes
    # The CLI prints it too (the fitting itself, seconds long, is tested in test_sweep_fit_cli).
    monkeypatch.setattr(fit_main, "fit_report", lambda data, options: {"skipped": {}})
    monkeypatch.setattr(fit_main, "write_report", lambda *args: None)
    assert fit_main.main([str(runs), "--out", str(tmp_path / "report")]) == 0
    assert line in capsys.readouterr().out.splitlines()
