"""Concurrency: runs of one sweep writing at once, two trainers of one run, two sweeps of one grid.

Every case runs the real CLIs on the CPU with the tiny synthetic dataset and checks files on disk.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.core.utils import JobStatus

from data.dataset import VERIFIED_CACHE
from sweep import status as sweep_status
from sweep.checkpoint import latest_checkpoint
from sweep.lock import RunLock, is_locked
from tests.conftest import FIXED_HPARAMS, PYTHON

# One torch thread a process: the runs share the machine's cores instead of fighting for them.
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
# A ~50k-parameter model: a step takes milliseconds, so a run is mostly evals and checkpoints.
# checkpoint.interval_s=0 writes a checkpoint at every logging.interval, i.e. every other step.
TINY_RUN = (
    "logging.wandb.mode=disabled", "logging.progress=false", *FIXED_HPARAMS,
    "model=base", "model.n_layer=1", "model.d_model=64", "train.device=cpu",
    "eval.tokens=2048", "eval.points=3", "checkpoint.interval_s=0", "checkpoint.keep=1",
    "logging.interval=2",
)
CLI_TIMEOUT_S = 120
POLL_S = 0.02
# (b)'s run: long enough that it is still mid-run when the test catches its first checkpoint.
STEPS = 60


@pytest.fixture
def root(tmp_path: Path, synthetic_root: Path) -> Path:
    """A paths.root_dir of this test's own whose data_cache is the session's synthetic dataset."""
    (tmp_path / "data_cache").symlink_to(synthetic_root / "data_cache")
    return tmp_path


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts (each in its own session); any left running are killed after it."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            # The whole group: a submitit sweep's job processes are the sweep's children.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def train_cmd(root: Path, experiment: str, *overrides: str, multirun: bool = False,
              python: str = PYTHON) -> list[str]:
    """`python -m sweep.train` of tiny CPU runs in `root`; `overrides` come last and win."""
    return [python, "-m", "sweep.train", *(["-m"] if multirun else []),
            f"paths.root_dir={root}", f"experiment_name={experiment}", *TINY_RUN, *overrides]


def start(started: list[subprocess.Popen], cmd: list[str], cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    started.append(proc)
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Wait (bounded) for proc; its exit code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{proc.args} ran over {CLI_TIMEOUT_S} s:\n{out[-2000:]}\n{err[-2000:]}")
    return proc.returncode, out, err


def wait_until(condition: Callable[[], Any], what: str, proc: subprocess.Popen) -> Any:
    """Poll condition() until it is truthy; fail if proc ends first or it takes too long."""
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if proc.poll() is not None:
            _, out, err = finish(proc)
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(POLL_S)
    pytest.fail(f"timed out waiting for {what}")


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def temp_files(top: Path) -> list[Path]:
    """Every half-written temporary (`<name>.tmp-<pid>`, hidden or not) under top."""
    return [Path(d) / name for d, dirs, files in os.walk(top) for name in dirs + files
            if ".tmp-" in name]


def metric_steps(run_dir: Path) -> list[int]:
    """The step of every metrics.jsonl row; each line must be a whole JSON object."""
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.endswith("\n"), f"{run_dir}: torn last metrics line"
    return [json.loads(line)["step"] for line in text.splitlines()]


def file_stats(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Every file in run_dir by name: (inode, size, mtime_ns); a rewrite or append changes it."""
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in run_dir.iterdir()}


def check_finished_run(run_dir: Path, resumes: int) -> dict[str, Any]:
    """The run in run_dir ended once and whole: its summary, metrics, checkpoint, no temps."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["run_id"] == run_dir.name
    assert summary["resumes"] == resumes
    steps = metric_steps(run_dir)
    # Strictly increasing: no eval point lost, none written twice.
    assert steps[0] == 0 and steps[-1] == summary["steps"] and steps == sorted(set(steps)), steps
    checkpoints = list(run_dir.glob("checkpoint-*.pt"))
    assert len(checkpoints) == 1, checkpoints
    payload = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert payload["step"] == summary["steps"] and payload["run_id"] == run_dir.name
    assert temp_files(run_dir) == []
    return summary


@pytest.mark.slow  # 17 s; CI keeps the two-sweeps-at-once and pool-launcher tests
def test_four_runs_of_one_submitit_sweep_write_at_once_and_corrupt_nothing(
    tmp_path: Path, synthetic_root: Path, started: list[subprocess.Popen],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """(a) submitit_local starts all four jobs at once; every file they share or write survives."""
    root = tmp_path
    # A copy, not a link, and without its checksum cache: the copy's new inodes make all four
    # runs hash the shards and write the dataset's .verified.json at the same moment too.
    data = root / "data_cache" / "synthetic"
    shutil.copytree(synthetic_root / "data_cache" / "synthetic", data,
                    ignore=shutil.ignore_patterns(VERIFIED_CACHE))
    sweep_dir = root / "runs" / "parallel"
    budgets = "81920,83968,86016,88064"  # 80-86 steps of 1024 tokens, a checkpoint every other
    sweep = start(started, train_cmd(root, "parallel", "hydra/launcher=submitit_local",
                                     "hydra.launcher.timeout_min=10",
                                     f"budget.tokens={budgets}", multirun=True), cwd=root)
    # Live evidence of overlap: how many run locks are held at once while the sweep runs.
    most_locked = 0
    while sweep.poll() is None:
        if sweep_dir.is_dir():
            most_locked = max(most_locked, sum(map(is_locked, run_dirs(sweep_dir))))
        time.sleep(POLL_S)
    rc, out, err = finish(sweep)
    assert rc == 0, err[-3000:]
    assert "4 of 4 launched runs ended" in out

    dirs = run_dirs(sweep_dir)
    assert len(dirs) == 4
    summaries = [check_finished_run(d, resumes=0) for d in dirs]
    assert sorted(s["tokens"] for s in summaries) == [int(b) for b in budgets.split(",")]
    assert temp_files(root) == []
    verified = json.loads((data / VERIFIED_CACHE).read_text())
    assert sorted(verified["files"]) == ["train_00000.bin", "val_00000.bin"]

    # Overlap from the files: config.yaml is written as a run takes its lock, summary.json as it
    # ends. At least three runs train at one instant (all four on an idle machine; a loaded one
    # may start the last job late), which the live lock count confirms.
    starts = [(d / "config.yaml").stat().st_mtime for d in dirs]
    ends = [(d / "summary.json").stat().st_mtime for d in dirs]
    together = max(sum(s <= t < e for s, e in zip(starts, ends, strict=True)) for t in starts)
    assert together >= 3, (starts, ends)
    assert most_locked >= 3

    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert sorted(p["run_id"] for p in manifest["points"]) == [d.name for d in dirs]
    assert all(p["action"] == "train" for p in manifest["points"])
    for path in sweep_dir.rglob("multirun.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict)
    # One submitit folder a job: its result unpickles as a completed run, its logs are whole text.
    jobs = [p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 4
    trained = []
    for job in jobs:
        (result,) = job.glob("*_result.pkl")
        with result.open("rb") as handle:
            outcome, job_return = pickle.load(handle)
        assert outcome == "success" and job_return.status == JobStatus.COMPLETED
        (log_out,) = job.glob("*_log.out")
        (log_err,) = job.glob("*_log.err")
        assert "Traceback" not in log_err.read_text(encoding="utf-8")
        trained += [line.split(":")[0] for line in log_out.read_text(encoding="utf-8").splitlines()
                    if ": finished after" in line]
    assert sorted(trained) == [d.name for d in dirs]

    table = root / "table.csv"
    collect = subprocess.run([sys.executable, "-m", "sweep.collect", str(sweep_dir), "--out",
                              str(table)], cwd=root, env=ENV, capture_output=True, text=True,
                             timeout=CLI_TIMEOUT_S)
    assert collect.returncode == 0, collect.stderr
    rows = table.read_text().splitlines()[1:]
    assert len(rows) == 4 and sorted(r.split(",")[0] for r in rows) == [d.name for d in dirs]
    # The CLI's main() in this process: a subprocess would only add a torch import (seconds).
    capsys.readouterr()
    assert sweep_status.main([str(sweep_dir), "--json"]) == 0
    states = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(s["run_id"] for s in states) == [d.name for d in dirs]
    assert {s["state"] for s in states} == {"finished"}


def test_a_second_trainer_is_refused_and_a_killed_holder_is_taken_over(
    root: Path, started: list[subprocess.Popen]
) -> None:
    """(b) One run id, two processes: the second exits 2 touching nothing; SIGKILL frees the run."""
    # A plain interpreter: the test stops the process it started and reads its pid in the lock
    # (tests/preload.py's would be a stand-in of another pid).
    cmd = train_cmd(root, "one", f"budget.tokens={STEPS * 1024}", python=sys.executable)
    sweep_dir = root / "runs" / "one"
    first = start(started, cmd, cwd=root)
    run_dir = wait_until(lambda: sweep_dir.is_dir() and run_dirs(sweep_dir)
                         and run_dirs(sweep_dir)[0], "the run directory", first)
    wait_until(lambda: is_locked(run_dir) and list(run_dir.glob("checkpoint-*.pt")),
               "the first trainer's lock and first checkpoint", first)
    # Stopped mid-run, the holder is alive and holds the lock for as long as the second process
    # needs to start, however slow the machine; and its files hold still, so any write shows.
    os.kill(first.pid, signal.SIGSTOP)
    before = file_stats(run_dir)
    assert "summary.json" not in before

    second = start(started, cmd, cwd=root)
    rc, out, err = finish(second)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"is being trained by pid {first.pid} on {socket.gethostname()}" in lines[0]
    assert "wait for it to end or stop it" in lines[0] and "then rerun" in lines[0]
    assert file_stats(run_dir) == before  # nothing written, truncated, replaced or added
    assert (run_dir / ".lock").read_text() == f"{socket.gethostname()} {first.pid}\n"
    steps_before_kill = metric_steps(run_dir)
    assert steps_before_kill[0] == 0 and steps_before_kill == sorted(set(steps_before_kill))

    # SIGKILL runs no cleanup at all; the kernel drops the flock with the process.
    # The newest: a save stopped between its rename and the old file's unlink leaves two.
    checkpoint = latest_checkpoint(run_dir)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert not is_locked(run_dir)
    taker = start(started, cmd, cwd=root)
    rc, out, err = finish(taker)
    assert rc == 0, err[-3000:]
    assert f"resuming from {checkpoint.name} (resume 1)" in out
    summary = check_finished_run(run_dir, resumes=1)
    assert summary["steps"] == STEPS
    assert metric_steps(run_dir)[: len(steps_before_kill)] == steps_before_kill


def test_two_sweeps_of_one_grid_at_once_train_each_run_exactly_once(
    root: Path, started: list[subprocess.Popen]
) -> None:
    """(c) Two basic-launcher sweeps race over three runs: each run trains once, whole."""
    cmd = train_cmd(root, "race", "hydra/launcher=basic", "budget.tokens=20480,24576,28672",
                    multirun=True)
    sweep_dir = root / "runs" / "race"
    sweeps = [start(started, cmd, cwd=root) for _ in range(2)]
    results = [finish(proc) for proc in sweeps]
    trained: list[str] = []
    for rc, out, err in results:
        assert rc in (0, 1), err[-3000:]
        assert "Traceback" not in err
        if rc == 1:
            # One line: the runs this sweep found in the other's hands.
            (line,) = err.strip().splitlines()
            assert line.startswith("error: ") and "is being trained by pid" in line, line
            assert "were left to another process training them" in line, line
        else:
            assert err.strip() == ""
        trained += [line.split(":")[0] for line in out.splitlines() if ": finished after" in line]

    dirs = run_dirs(sweep_dir)
    assert len(dirs) == 3
    assert Counter(trained) == Counter(d.name for d in dirs)  # each trained by one sweep, once
    for d in dirs:
        check_finished_run(d, resumes=0)
    assert temp_files(root / "runs") == []
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert sorted(p["run_id"] for p in manifest["points"]) == [d.name for d in dirs]

    summaries = {d.name: file_stats(d) for d in dirs}
    rc, out, err = finish(start(started, cmd, cwd=root))
    assert rc == 0, err[-3000:]
    plan_rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(plan_rows) == 3 and all("skip (finished" in row for row in plan_rows), out
    assert "nothing to train" in out and "finished after" not in out
    assert {d.name: file_stats(d) for d in dirs} == summaries


def test_a_lock_that_cannot_record_its_holder_is_not_left_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed acquire (a full disk as the holder's pid is written) leaves the run unlocked."""

    def disk_full(fd: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("sweep.lock.os.ftruncate", disk_full)
        with pytest.raises(OSError, match="No space left"):
            RunLock(tmp_path).acquire()
    # Before the fix the flock stayed held by a leaked descriptor until the process exited: a
    # basic-launcher sweep showed the run as `running` and the next sweep skipped it.
    assert not is_locked(tmp_path)
    with RunLock(tmp_path):
        assert is_locked(tmp_path)
