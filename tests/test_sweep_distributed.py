"""Data-parallel training on the CPU (gloo): two ranks under torchrun or a two-task submitit job
train the same trajectory as one process with the same global batch, and resume after a kill.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sweep.checkpoint import latest_checkpoint, resume_training_state
from sweep.distributed import SINGLE, Distributed, check_batch
from sweep.errors import ConfigError
from tests.conftest import PYTHON, SMALL_RUN
from tests.helpers import linked_root, needs_cpu_fp8

REPO = Path(__file__).resolve().parent.parent
FAULTS = REPO / "tests" / "faults.py"
# Many places for a fault to land; with two ranks, 4 of the 8 sequences a step each.
RUN = SMALL_RUN
# Float32 sums taken in another order (per rank, then all-reduced) differ in the last bits.
RTOL = 1e-6


def _run(root: Path, *prefix: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`sweep.train [extra] RUN` rooted at root, after `prefix` (python -m, torchrun, ...)."""
    return subprocess.run(
        [*prefix, "sweep.train", *extra, f"paths.root_dir={root}", *RUN],
        cwd=root, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True,
        timeout=300,
    )


def _torchrun(*script: str) -> tuple[str, ...]:
    # --standalone: a rendezvous on a free local port, so tests never collide on one.
    return (PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", *script)


def _record(root: Path, experiment: str = "default") -> tuple[Path, list[dict], dict]:
    (run_dir,) = [p.parent for p in (root / "runs" / experiment).glob("*/summary.json")]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, rows, json.loads((run_dir / "summary.json").read_text())


def _losses(rows: list[dict]) -> list[tuple[int, float | None, float]]:
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in rows]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> tuple:
    root = linked_root(tmp_path_factory.mktemp("single"), synthetic_root, "root")
    result = _run(root, PYTHON, "-m")
    assert result.returncode == 0, result.stderr
    return _record(root)


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_ranks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path
) -> tuple:
    """A run trained by two gloo ranks, replicated (DDP) or sharded (FSDP2)."""
    root = linked_root(tmp_path_factory.mktemp(request.param), synthetic_root, "root")
    result = _run(root, *_torchrun("-m"), extra=(f"train.data_parallel={request.param}",))
    assert result.returncode == 0, result.stderr
    # Only rank 0 speaks: one report, not two.
    assert result.stdout.count("finished after 19,456 tokens") == 1, result.stdout
    return (*_record(root), request.param)


def test_two_ranks_train_the_single_process_trajectory(single, two_ranks):
    """Same global batch of 8 sequences, split 4 + 4 over two gloo ranks (DDP or FSDP): the
    same steps, tokens and FLOPs, and every logged loss equal to one process's within 1e-6."""
    _, rows1, summary1 = single
    run_dir, rows2, summary2, strategy = two_ranks
    assert run_dir.name == single[0].name  # the rank count is not part of the run's identity
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == [0, 1, 3, 7, 19]
    for key in ("tokens", "flops_6nd", "flops_exact"):
        assert [r[key] for r in rows2] == [r[key] for r in rows1]  # counted once, globally
    for (_, train1, val1), (_, train2, val2) in zip(_losses(rows1), _losses(rows2), strict=True):
        assert val2 == pytest.approx(val1, rel=RTOL)
        assert train2 == (None if train1 is None else pytest.approx(train1, rel=RTOL))
    assert (summary2["world_size"], summary1["world_size"]) == (2, 1)
    assert (summary2["data_parallel"], summary1["data_parallel"]) == (strategy, None)
    assert (summary2["steps"], summary2["tokens"], summary2["batch_tokens"]) == (
        summary1["steps"], summary1["tokens"], summary1["batch_tokens"])
    assert summary2["val_loss"] == pytest.approx(summary1["val_loss"], rel=RTOL)
    assert summary2["micro_batch_size"] == 4  # each rank's micro-batch is its half of the batch
    assert [p.name for p in run_dir.glob("checkpoint-*.pt")] == ["checkpoint-00000019.pt"]


# 16 s each, and CI's 10 minutes are nearly spent: FSDP and the fused losses each have CI tests
@pytest.mark.slow
@pytest.mark.parametrize("fused", ["train.loss_chunk_tokens=300", "train.loss_attention=true"])
def test_sharded_ranks_train_with_a_fused_loss(tmp_path, synthetic_root, single, fused):
    """FSDP2 gathers the output head's weight for the fused head + loss (models/loss.py,
    models/attention_loss.py) and shards its gradient: the same trajectory as one process's plain
    loss, to float32 rounding."""
    root = linked_root(tmp_path, synthetic_root, "root")
    result = _run(root, *_torchrun("-m"), extra=("train.data_parallel=fsdp", fused))
    assert result.returncode == 0, result.stderr
    run_dir, rows, summary = _record(root)
    assert run_dir.name == single[0].name and summary["data_parallel"] == "fsdp"
    for (_, train1, val1), (_, train2, val2) in zip(_losses(single[1]), _losses(rows),
                                                    strict=True):
        assert val2 == pytest.approx(val1, rel=1e-5)
        assert train2 == (None if train1 is None else pytest.approx(train1, rel=1e-5))


@pytest.mark.slow
@needs_cpu_fp8()
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ranks_train_in_fp8(tmp_path, synthetic_root, single, strategy):
    """train.precision=fp8 under DDP and FSDP2 (which gathers each FP8 layer's weight before its
    matmul): the run finishes and follows one float32 process's within FP8's rounding (each
    rank scales its own half of the batch, so not to float32 rounding)."""
    root = linked_root(tmp_path, synthetic_root, "root")
    result = _run(root, *_torchrun("-m"), extra=(f"train.data_parallel={strategy}",
                                                 "train.precision=fp8"))
    assert result.returncode == 0, result.stderr
    run_dir, rows, summary = _record(root)
    assert summary["status"] == "finished" and summary["precision"] == "fp8"
    for (_, _, val1), (_, _, val2) in zip(_losses(single[1]), _losses(rows), strict=True):
        assert val2 == pytest.approx(val1, rel=5e-3)


# DDP's variant is slow-only (13 s; CI's 10 minutes are nearly spent): FSDP's takes the same path
# through the kill and the resume, with the gathered state on top.
@pytest.mark.parametrize("two_ranks", ["fsdp", pytest.param("ddp", marks=pytest.mark.slow)],
                         indirect=True)
def test_two_ranks_killed_mid_checkpoint_resume_to_the_same_end(
    tmp_path, synthetic_root, two_ranks
):
    """Rank 0 is SIGKILLed between its second checkpoint's temp file and the rename, torchrun
    stops rank 1; a relaunch on two ranks resumes and ends bit for bit as the unbroken run."""
    strategy = (f"train.data_parallel={two_ranks[3]}",)
    root = linked_root(tmp_path, synthetic_root, "killed")
    killed = _run(root, *_torchrun(str(FAULTS), "kill@checkpoint=2", "--"), extra=strategy)
    assert killed.returncode != 0
    run_dir = next((root / "runs" / "default").iterdir())
    assert latest_checkpoint(run_dir).name == "checkpoint-00000001.pt"
    assert not (run_dir / "summary.json").exists()

    result = _run(root, *_torchrun("-m"), extra=strategy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("resuming from checkpoint-00000001.pt (resume 1)") == 1
    _, rows, summary = _record(root)
    assert _losses(rows) == _losses(two_ranks[1])
    assert summary["val_loss"] == two_ranks[2]["val_loss"] and summary["resumes"] == 1
    assert sorted(p.name for p in run_dir.iterdir() if ".tmp-" in p.name) == []


def test_a_lost_rank_interrupts_the_run_and_a_relaunch_resumes_it(tmp_path, synthetic_root,
                                                                   single):
    """Rank 1 SIGKILLed at step 6: rank 0's next collective fails; the run is interrupted, not
    failed (which a relaunch would skip), and resumes to the single-process end."""
    root = linked_root(tmp_path, synthetic_root, "lost")
    lost = _run(root, *_torchrun(str(FAULTS), "kill1@step=6", "--"))
    assert lost.returncode != 0
    errors = [line for line in lost.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and " interrupted: a rank was lost after step 6 (" in errors[0]
    run_dir = next((root / "runs" / "default").iterdir())
    assert not (run_dir / "summary.json").exists()
    result = _run(root, *_torchrun("-m"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("resuming from checkpoint-") == 1
    _, rows, summary = _record(root)
    assert summary["status"] == "finished" and summary["resumes"] == 1
    np.testing.assert_allclose([r["val_loss"] for r in rows],
                               [r["val_loss"] for r in single[1]], rtol=RTOL)


def test_a_rank_0_that_fails_alone_stops_the_others_without_a_traceback(tmp_path,
                                                                          synthetic_root):
    """Rank 0 alone cannot write its 2nd checkpoint (disk full): rank 1 learns it at once
    (under NCCL it would wait in its next collective until the timeout) and exits quietly, with
    code 0, while rank 0 records the failure and says it. Its summary written half a second late
    (as on a loaded machine): had rank 1 exited non-zero, torchrun would have killed rank 0
    within 0.1 s, before either ("error: interrupted (SIGTERM)", no summary)."""
    root = linked_root(tmp_path, synthetic_root, "enospc")
    result = _run(root, *_torchrun(str(FAULTS), "enospc@checkpoint=2", "slow@summary=500", "--"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "failed: No space left on device" in errors[0]
    assert f'File "{REPO / "sweep"}' not in result.stderr  # no traceback of ours (torchrun's own)
    run_dir = next((root / "runs" / "default").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_a_diverging_run_under_torchrun_is_recorded_before_the_ranks_exit(tmp_path,
                                                                          synthetic_root):
    """Every rank sees the NaN loss (it is all-reduced) and stops; rank 0 writes the diverged
    summary half a second late, yet it is written and said: the other rank exits 0, so torchrun
    does not kill rank 0 first."""
    root = linked_root(tmp_path, synthetic_root, "diverged")
    result = _run(root, *_torchrun(str(FAULTS), "nan@d_model=64", "slow@summary=500", "--"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "diverged: non-finite training loss by step 3" in errors[0]
    run_dir = next((root / "runs" / "default").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


def test_a_two_task_submitit_job_is_two_ranks_without_torchrun(tmp_path, synthetic_root, single):
    """hydra/launcher=submitit_local with tasks_per_node=2 runs the SLURM code path: each task
    joins the process group from submitit's environment."""
    root = linked_root(tmp_path, synthetic_root, "submitit")
    result = _run(root, PYTHON, "-m", extra=(
        "--multirun", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.timeout_min=5"))
    assert result.returncode == 0, result.stderr
    _, rows, summary = _record(root)
    assert summary["world_size"] == 2 and summary["status"] == "finished"
    assert [r["val_loss"] for r in rows] == pytest.approx(
        [r["val_loss"] for r in single[1]], rel=RTOL)


def test_a_batch_that_does_not_split_over_the_ranks_is_one_line():
    check_batch(8, Distributed(rank=0, world_size=2))
    check_batch(7, SINGLE)
    with pytest.raises(ConfigError, match=r"batch of 6 sequences does not split over 4 ranks"):
        check_batch(6, Distributed(rank=1, world_size=4))


def test_each_rank_reads_its_own_contiguous_share():
    batch = torch.arange(8)
    shares = [Distributed(rank=r, world_size=4).share(batch).tolist() for r in range(4)]
    assert shares == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert SINGLE.share(batch) is batch



def test_when_rank_0_cannot_start_the_run_every_rank_stops(tmp_path, synthetic_root):
    """Two ranks started as SLURM starts them (each its own process, RANK and WORLD_SIZE in the
    environment, no torchrun to end the others): rank 0 cannot create the run directory and
    tells rank 1, which would otherwise wait for it forever. Rank 0 exits 2 with one error line,
    rank 1 quietly with 0 (rank 0's code is the job's: srun reports the largest)."""
    root = linked_root(tmp_path, synthetic_root, "readonly")
    (root / "runs").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [
        subprocess.Popen(
            [PYTHON, str(FAULTS), f"erofs={root}/runs", "--", "sweep.train",
             f"paths.root_dir={root}", *RUN],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "WANDB_MODE": "disabled", "RANK": str(rank), "LOCAL_RANK": str(rank),
                 "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for rank in (0, 1)
    ]
    try:
        outcomes = [(proc.wait(timeout=120), proc.stderr.read()) for proc in ranks]
    finally:
        for proc in ranks:
            proc.kill()
    assert [code for code, _ in outcomes] == [2, 0], outcomes
    lines = outcomes[0][1].strip().splitlines()
    assert len(lines) == 1 and "cannot write the run directory" in lines[0], outcomes
    # Rank 1 stops quietly: no second error line, no traceback (gloo may log a warning).
    assert "error:" not in outcomes[1][1] and "Traceback" not in outcomes[1][1], outcomes
    assert list((root / "runs").iterdir()) == []


def test_a_sharded_checkpoint_resumes_only_a_sharded_run(tmp_path):
    """FSDP checkpoints key the optimizer state by parameter name: resuming one replicated is
    refused in one line naming the setting (and the other way round)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    loader = None  # never read: the layout is checked first
    for layout, load_states, needle in [
        ("sharded", None, "on several ranks (torchrun or SLURM tasks) with "
                          "train.data_parallel=fsdp"),
        ("replicated", lambda m, o: None, "with train.data_parallel=ddp or in one process"),
    ]:
        path = tmp_path / layout / "checkpoint-00000003.pt"
        path.parent.mkdir()
        torch.save({"format": "sweep-checkpoint", "version": 1, "run_id": "r", "config_hash": "h",
                    "step": 3, "layout": layout, "model": {}, "optimizer": {},
                    "loader": {"step": 3}}, path)
        with pytest.raises(ConfigError, match=f"written by a {layout} run: resume it "
                           + re.escape(needle)):
            resume_training_state(path, run_id="r", config_hash="h", model=model,
                                  optimizer=optimizer, loader=loader,
                                  device=torch.device("cpu"), load_states=load_states)

