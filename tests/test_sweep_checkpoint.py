"""Tests for sweep.checkpoint: atomic files, pruning, names, config checks, and resuming a run
bit for bit (model, optimizer, loader, RNGs, loop bookkeeping, metrics) after an interruption.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sweep.start as start_module
from data.loader import TrainWindows, train_windows
from models import GPT
from sweep.checkpoint import (
    FORMAT,
    VERSION,
    LoopState,
    checkpoint_policy,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resume_training_state,
    save_checkpoint,
    save_training_state,
)
from sweep.errors import ConfigError
from sweep.plan import plan_run
from tests.conftest import compose_train

REPO = Path(__file__).resolve().parent.parent
# A one-layer model and 12 steps of 1024 tokens: evals at 0, 1, 3, 12; loss syncs every 2 steps.
TINY = ("model=base", "model.n_layer=1", "model.d_model=64", "model.n_head=2",
        "budget.tokens=12288", "eval.tokens=4096", "eval.points=3", "logging.interval=2",
        "checkpoint.interval_s=0")
TIMING = ("tokens_per_s", "mfu")


def tiny_plan(root: Path, experiment: str, *overrides: str):
    return plan_run(compose_train(root, *TINY, f"experiment_name={experiment}", *overrides))


def raise_at_loader_step(monkeypatch: pytest.MonkeyPatch, step: int, exc: BaseException) -> None:
    """Make the training loader raise `exc` when asked for batch `step` (0-based)."""
    original = TrainWindows.__next__

    def next_or_raise(self):
        if self.step == step:
            raise exc
        return original(self)

    monkeypatch.setattr(TrainWindows, "__next__", next_or_raise)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def payload(**extra) -> dict:
    return {"format": FORMAT, "version": VERSION, **extra}


def test_checkpoint_names_parse_without_torch(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("checkpoint-00000003.pt", "checkpoint-00000020.pt", "checkpoint-123456789.pt",
                 ".checkpoint-999999999.pt.tmp-42", "checkpoint-x.pt", "checkpoint-00000007.pt~"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-00000003.pt", "checkpoint-00000020.pt", "checkpoint-123456789.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-123456789.pt"
    assert checkpoint_step(tmp_path / "checkpoint-00000020.pt") == 20
    with pytest.raises(ValueError, match="not named checkpoint"):
        checkpoint_step(Path("model.pt"))
    # sweep.status reads run directories on machines without torch.
    probe = "import sys, sweep.checkpoint, sweep.lock; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_keep_prunes_older_checkpoints(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, payload(step=step), keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000006.pt"]
    for step in (8, 10):
        save_checkpoint(tmp_path, step, payload(step=step), keep=2)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [8, 10]
    assert load_checkpoint(tmp_path / "checkpoint-00000010.pt")["step"] == 10


def test_failed_rename_keeps_the_old_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 5, payload(weights=torch.ones(3)), keep=1)
    old = (tmp_path / "checkpoint-00000005.pt").read_bytes()

    def boom(*_args):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(tmp_path, 6, payload(weights=torch.zeros(3)), keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000005.pt"]
    assert (tmp_path / "checkpoint-00000005.pt").read_bytes() == old


def test_writer_killed_before_the_rename_leaves_the_old_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 5, payload(weights=torch.ones(3)), keep=1)
    # A real crash: the process dies between writing the temp file and renaming it.
    script = (
        "import os, signal, sys, torch\n"
        "from sweep.checkpoint import save_checkpoint, FORMAT, VERSION\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "save_checkpoint(sys.argv[1], 6, {'format': FORMAT, 'version': VERSION,\n"
        "                                 'weights': torch.zeros(3)}, keep=1)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO)
    assert result.returncode == -signal.SIGKILL
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith(".checkpoint-00000006.pt.tmp-") and names[1:] == [
        "checkpoint-00000005.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000005.pt"
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["weights"], torch.ones(3))
    # The next save clears the dead writer's temp file.
    save_checkpoint(tmp_path, 7, payload(), keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000007.pt"]


def test_unreadable_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoint-00000001.pt").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"unreadable .*delete it") as err:
        load_checkpoint(tmp_path / "checkpoint-00000001.pt")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"interval_s": -1, "keep": 1}, "checkpoint.interval_s=-1 must be a number"),
        ({"interval_s": "5m", "keep": 1}, "checkpoint.interval_s='5m' must be a number"),
        ({"interval_s": True, "keep": 1}, "checkpoint.interval_s=True must be a number"),
        ({"interval_s": 10, "keep": 0}, "checkpoint.keep=0 must be an integer >= 1"),
        ({"interval_s": 10, "keep": 1.5}, "checkpoint.keep=1.5 must be an integer >= 1"),
        (None, "no checkpoint section"),
    ],
)
def test_bad_checkpoint_config_is_one_line(section, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        checkpoint_policy(section)
    assert "\n" not in str(err.value)


def test_bad_checkpoint_config_writes_nothing(synthetic_root):
    plan = tiny_plan(synthetic_root, "badckpt", "checkpoint.keep=0")
    with pytest.raises(ConfigError, match="checkpoint.keep=0"):
        start_module.run(plan)
    assert not plan.run_dir.exists()
    policy = checkpoint_policy({"interval_s": 0, "keep": 2})
    assert policy.due(0.0, 0.0) and policy.keep == 2


def test_training_state_restores_model_optimizer_loader_and_rngs(synthetic_root, tmp_path):
    plan = tiny_plan(synthetic_root, "state")
    cpu = torch.device("cpu")

    def build():
        model = GPT(plan.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loader = train_windows("random", plan.dataset, "train", 4, 32, seed=3)
        return model, optimizer, loader

    torch.manual_seed(0)
    model, optimizer, loader = build()
    for _ in range(2):
        x, y = next(loader)
        model(x, y).backward()
        optimizer.step()
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    loop = LoopState(loss_sum=torch.tensor(2.5), step=2, loss_steps=2, train_time_s=1.5,
                     last={"train_loss": 3.0, "val_loss": 3.5, "val_bpb": None})
    path = save_training_state(tmp_path, 1, run_id="r", config_hash="h", model=model,
                               optimizer=optimizer, loader=loader, loop=loop, wall_time_s=4.0)
    assert path.name == "checkpoint-00000002.pt"
    draws = (torch.rand(3), np.random.rand(3), random.random())
    batch = next(loader)

    torch.manual_seed(1), np.random.seed(1), random.seed(1)  # everything different
    model2, optimizer2, loader2 = build()
    with pytest.raises(ConfigError, match="belongs to run r"):
        resume_training_state(path, run_id="other", config_hash="h", model=model2,
                              optimizer=optimizer2, loader=loader2, device=cpu)
    loop2 = resume_training_state(path, run_id="r", config_hash="h", model=model2,
                                  optimizer=optimizer2, loader=loader2, device=cpu)
    assert torch.equal(draws[0], torch.rand(3))
    assert np.array_equal(draws[1], np.random.rand(3)) and draws[2] == random.random()
    assert loader2.step == 2
    assert all(torch.equal(a, b) for a, b in zip(batch, next(loader2), strict=True))
    for (name, p), p2 in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, p2), name
        assert torch.equal(optimizer.state[p]["exp_avg_sq"], optimizer2.state[p2]["exp_avg_sq"])
    assert (loop2.step, loop2.loss_steps, loop2.train_time_s) == (2, 2, 1.5)
    assert loop2.loss_sum.item() == 2.5 and loop2.last == loop.last
    assert (loop2.resumes, loop2.wall_before_s, loop2.started_at) == (1, 4.0, loop.started_at)


def test_resumed_run_matches_an_uninterrupted_one_bit_for_bit(synthetic_root, monkeypatch):
    # Dropout draws from the torch RNG every step, so the RNG state must come back too.
    whole = start_module.run(tiny_plan(synthetic_root, "whole", "model.dropout=0.1"))
    plan = tiny_plan(synthetic_root, "resumed", "model.dropout=0.1")
    with monkeypatch.context() as m:
        raise_at_loader_step(m, 7, KeyboardInterrupt())  # during step 8
        with pytest.raises(KeyboardInterrupt):
            start_module.run(plan)
    # Checkpoints at every loss sync (steps 2, 4, 6): step 6 is no eval, so the train-loss sum
    # since step 3 is carried over too.
    assert [p.name for p in list_checkpoints(plan.run_dir)] == ["checkpoint-00000006.pt"]
    assert not (plan.run_dir / "summary.json").exists()
    assert [r["step"] for r in rows(plan.run_dir)] == [0, 1, 3]
    # A crash mid-append leaves a torn last line; resuming drops it.
    with (plan.run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 8, "tokens": 81')

    resumed = start_module.run(plan)
    assert resumed["status"] == "finished" and resumed["resumes"] == 1 and whole["resumes"] == 0
    whole_dir = plan.run_dir.parent.parent / "whole" / plan.run_id
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in rows(plan.run_dir)]
    expected = [{k: v for k, v in r.items() if k not in TIMING} for r in rows(whole_dir)]
    assert [r["step"] for r in strip] == [0, 1, 3, 12]
    assert strip == expected
    for key in ("steps", "tokens", "train_loss", "val_loss", "val_bpb", "flops_exact"):
        assert resumed[key] == whole[key], key
    assert resumed["started_at"] <= resumed["finished_at"]
    assert resumed["train_time_s"] < resumed["wall_time_s"]
    assert resumed["tokens_per_s"] == pytest.approx(resumed["tokens"] / resumed["train_time_s"])
    # The end of the run is always checkpointed; keep=1 leaves only that one.
    assert [p.name for p in list_checkpoints(plan.run_dir)] == ["checkpoint-00000012.pt"]
    assert [p.name for p in list_checkpoints(whole_dir)] == ["checkpoint-00000012.pt"]
