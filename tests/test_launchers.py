"""Launchers: the gpu_pool scheduler against fake submitit jobs, the launcher configs, real sweeps.

The end-to-end sweeps run `python -m sweep.train -m` on the CPU with the synthetic dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.scaling_sweeper import gpu_pool_launcher
from hydra_plugins.scaling_sweeper.gpu_pool_launcher import GpuPoolLauncher, visible_gpus
from tests.conftest import CONFIGS, FIXED_HPARAMS, PYTHON

FIRST_JOB = 10  # launch()'s initial_job_idx: the sweeper numbers jobs across batches


class FakeJob:
    """A submitit job that runs from its submission tick until `duration` ticks later."""

    def __init__(self, clock: SimpleNamespace, num: int, overrides: list[str],
                 params: dict[str, Any], duration: int, dies: bool) -> None:
        self.clock, self.num, self.overrides, self.dies = clock, num, overrides, dies
        self.gpus = tuple(params["visible_gpus"][: params["gpus_per_node"]])
        self.gpus_per_node = params["gpus_per_node"]
        self.start, self.end = clock.now, clock.now + duration
        self.cancelled = False

    def done(self) -> bool:
        return self.clock.now >= self.end

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True

    def results(self) -> list[JobReturn]:
        if self.dies:
            raise RuntimeError("job process was killed")
        return [JobReturn(overrides=self.overrides, status=JobStatus.COMPLETED,
                          _return_value=self.num)]


class FakeExecutor:
    """Records every submission with the GPU parameters in force when it was made."""

    def __init__(self, clock: SimpleNamespace, durations: Sequence[int],
                 dies: Collection[int]) -> None:
        self.clock, self.durations, self.dies = clock, durations, dies
        self.parameters: dict[str, Any] = {}
        self.jobs: list[FakeJob] = []

    def update_parameters(self, **params: Any) -> None:
        self.parameters.update(params)

    def submit(self, fn: Any, overrides: list[str], dir_key: str, num: int, job_id: str,
               state: Any) -> FakeJob:
        position = num - FIRST_JOB
        job = FakeJob(self.clock, num, overrides, self.parameters, self.durations[position],
                      position in self.dies)
        self.jobs.append(job)
        return job


def pool_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: FakeExecutor,
                  sleep: Callable[[], None], **pool: Any) -> GpuPoolLauncher:
    """A GpuPoolLauncher that submits to `executor` and calls `sleep` where it would sleep."""
    launcher = GpuPoolLauncher(submitit_folder=str(tmp_path / ".submitit/%j"), timeout_min=60,
                               poll_s=0.0, **pool)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    monkeypatch.setattr(launcher, "make_executor", lambda: executor)
    monkeypatch.setattr(gpu_pool_launcher, "time", SimpleNamespace(sleep=lambda s: sleep()))
    return launcher


def run_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durations: Sequence[int],
             dies: Collection[int] = (), after: Sequence[int | None] | None = None,
             released_by: Sequence[str | None] | None = None,
             saves: Mapping[int, Path] | None = None,
             **pool: Any) -> tuple[list, list[FakeJob], list]:
    """Launches len(durations) fake jobs through the pool (with launch_after where `after` is
    given, and `released_by` its release files); time passes one tick per sleep. `saves`
    {tick: file}: the file appears at that tick (a run saving its stable state)."""
    clock = SimpleNamespace(now=0)
    executor = FakeExecutor(clock, durations, dies)
    saves = dict(saves or {})

    def tick() -> None:
        clock.now += 1
        if clock.now in saves:
            saves[clock.now].write_bytes(b"state")

    launcher = pool_launcher(tmp_path, monkeypatch, executor, tick, **pool)
    overrides = [[f"budget.tokens={1000 + i}"] for i in range(len(durations))]
    returns = list(launcher.launch(overrides, initial_job_idx=FIRST_JOB) if after is None else
                   launcher.launch_after(overrides, initial_job_idx=FIRST_JOB, after=after,
                                         released_by=released_by))
    return returns, executor.jobs, overrides


def busiest(jobs: list[FakeJob], gpu: int | None = None) -> int:
    """Most jobs running at one tick, on `gpu` (its slot's GPU tuple) or on all slots."""
    horizon = max(job.end for job in jobs)
    return max(
        sum(job.start <= t < job.end and (gpu is None or job.gpus == (gpu,)) for job in jobs)
        for t in range(horizon)
    )


def test_jobs_run_at_once_on_distinct_gpus_and_the_next_takes_the_freed_one(
    tmp_path, monkeypatch, capsys
):
    returns, jobs, overrides = run_pool(tmp_path, monkeypatch, [3, 1, 2, 2, 1], gpus=[0, 1])
    first, second, third = jobs[0], jobs[1], jobs[2]
    assert first.start == second.start == 0 and {first.gpus, second.gpus} == {(0,), (1,)}
    # The second job ends first: the third starts on its GPU at once, not on the busy one.
    assert third.gpus == second.gpus and third.start == second.end
    assert all(job.gpus_per_node == 1 and len(job.gpus) == 1 for job in jobs)
    assert busiest(jobs, 0) == busiest(jobs, 1) == 1
    assert [job.num for job in jobs] == [FIRST_JOB + i for i in range(5)]
    assert [r.overrides for r in returns] == overrides
    assert [r.return_value for r in returns] == [FIRST_JOB + i for i in range(5)]
    lines = [line for line in capsys.readouterr().out.splitlines() if " -> " in line]
    assert len(lines) == 5
    assert lines[0] == f"gpu_pool: #{FIRST_JOB} -> GPU 0 (slot 0): budget.tokens=1000"


def test_runs_per_gpu_caps_each_gpu_and_spreads_the_first_jobs(tmp_path, monkeypatch):
    returns, jobs, overrides = run_pool(tmp_path, monkeypatch, [4, 2, 3, 1, 2, 5, 1, 3],
                                        gpus=[3, 5], runs_per_gpu=2)
    assert busiest(jobs, 3) == busiest(jobs, 5) == 2 and busiest(jobs) == 4
    assert {jobs[0].gpus, jobs[1].gpus} == {(3,), (5,)}  # one per GPU before doubling up
    assert {job.gpus for job in jobs} == {(3,), (5,)}
    assert [r.overrides for r in returns] == overrides


def test_without_gpus_the_pool_runs_cpu_slots_jobs_with_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    returns, jobs, overrides = run_pool(tmp_path, monkeypatch, [2, 1, 3, 1, 1], cpu_slots=2)
    assert all(job.gpus == () and job.gpus_per_node == 0 for job in jobs)
    assert busiest(jobs) == 2
    assert [r.overrides for r in returns] == overrides


def test_a_job_whose_process_died_returns_failed_in_its_place(tmp_path, monkeypatch):
    returns, jobs, overrides = run_pool(tmp_path, monkeypatch, [1, 2, 1], dies={1}, gpus=[0])
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.FAILED,
                                           JobStatus.COMPLETED]
    assert returns[1].overrides == overrides[1]
    assert "killed" in str(returns[1]._return_value)
    assert busiest(jobs) == 1


def test_a_chained_job_starts_once_the_one_it_continues_has_ended(tmp_path, monkeypatch):
    # Two trajectories in wave order: a small size's three budgets (1 tick each) and a large
    # size's two (5 ticks each): [a1, b1, a2, b2, a3], each continuing the one before on its own
    returns, jobs, overrides = run_pool(tmp_path, monkeypatch, [1, 5, 1, 5, 1],
                                        after=[None, None, 0, 1, 2], gpus=[0, 1])
    started = {job.num - FIRST_JOB: job for job in jobs}
    a1, b1, a2, b2, a3 = (started[i] for i in range(5))
    # a's chain runs on while b1 is still going (waves would hold a2 until b1 ends at tick 5)
    assert (a1.start, a2.start, a3.start) == (0, 1, 2) and a3.end == 3
    assert (b1.start, b2.start) == (0, 5) and max(job.end for job in jobs) == 10
    assert [r.overrides for r in returns] == overrides
    assert busiest(jobs) == 2
    # A job that died still ends its chain's wait: the next run starts (and finds no state)
    returns, jobs, _ = run_pool(tmp_path, monkeypatch, [2, 1], dies={0}, after=[None, 0],
                                gpus=[0, 1])
    assert jobs[1].start == jobs[0].end == 2
    assert [r.status for r in returns] == [JobStatus.FAILED, JobStatus.COMPLETED]


def test_a_chained_job_starts_once_its_predecessor_saved_the_state_it_continues(
    tmp_path, monkeypatch
):
    # The predecessor trains 6 ticks and saves its stable state at tick 4, where its cooldown
    # begins: the next run continues that state from tick 4, beside the cooldown
    state = tmp_path / "checkpoint-00000040.pt"
    returns, jobs, overrides = run_pool(tmp_path, monkeypatch, [6, 3], after=[None, 0],
                                        released_by=[None, str(state)], saves={4: state},
                                        gpus=[0, 1])
    first, second = jobs
    assert (first.start, first.end) == (0, 6)
    assert second.start == 4 and busiest(jobs) == 2
    assert [r.overrides for r in returns] == overrides
    # With one slot it still waits for the slot, not the save
    state.unlink()
    _, jobs, _ = run_pool(tmp_path, monkeypatch, [6, 3], after=[None, 0],
                          released_by=[None, str(state)], saves={4: state}, gpus=[0])
    assert jobs[1].start == jobs[0].end == 6


def test_ctrl_c_cancels_the_running_jobs(tmp_path, monkeypatch):
    def interrupt() -> None:
        raise KeyboardInterrupt

    executor = FakeExecutor(SimpleNamespace(now=0), [5, 5, 5], dies=())
    launcher = pool_launcher(tmp_path, monkeypatch, executor, interrupt, gpus=[0, 1])
    with pytest.raises(KeyboardInterrupt):
        launcher.launch([["a=1"], ["a=2"], ["a=3"]], initial_job_idx=FIRST_JOB)
    # Two had started and are stopped rather than orphaned; the third never started.
    assert len(executor.jobs) == 2 and all(job.cancelled for job in executor.jobs)


@pytest.mark.parametrize(
    ("env", "count", "expected"),
    [(None, 3, [0, 1, 2]), ("4,6", 2, [4, 6]), ("4,6,7", 1, [4]), ("", 0, []), (None, 0, [])],
)
def test_null_gpus_means_every_visible_gpu_by_its_real_index(monkeypatch, env, count, expected):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    monkeypatch.setattr("torch.cuda.device_count", lambda: count)
    assert visible_gpus(None) == expected
    assert visible_gpus([2, 0]) == [2, 0]  # an explicit list wins over what is visible


def test_gpus_named_by_uuid_must_be_listed_by_index(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2c1e")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(ValueError, match="hydra.launcher.gpus"):
        visible_gpus(None)


@pytest.mark.parametrize("pool", [
    {"gpus": [0, 0]}, {"gpus": [0, True]}, {"gpus": 1}, {"runs_per_gpu": 0}, {"cpu_slots": 0},
    {"cpu_slots": 1.5}, {"max_num_timeout": -1}, {"poll_s": -1}, {"poll_s": float("nan")},
])
def test_bad_pool_settings_are_refused(pool):
    [(key, value)] = pool.items()
    with pytest.raises(ValueError, match=rf"^hydra.launcher.{key}="):
        GpuPoolLauncher(submitit_folder="x/%j", **pool)


def test_a_bad_pool_setting_is_one_line_from_the_cli(tmp_path, synthetic_root):
    result = subprocess.run(
        [PYTHON, "-m", "sweep.train", "-m", f"paths.root_dir={synthetic_root}",
         "model=gpt_1m", "budget.tokens=2e4", "logging.wandb.mode=disabled",
         "hydra/launcher=workstation", "hydra.launcher.cpu_slots=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 2
    assert result.stderr == "error: hydra.launcher.cpu_slots=0 must be a whole number >= 1\n"


def test_executor_gets_the_queue_settings_and_a_thread_cap(tmp_path):
    launcher = GpuPoolLauncher(submitit_folder=str(tmp_path / "%j"), timeout_min=90,
                               cpus_per_task=2, gpus_per_node=None, gpus=[1], max_num_timeout=5)
    executor = launcher.make_executor()
    assert executor.parameters["timeout_min"] == 90
    assert "gpus_per_node" not in executor.parameters  # None would be read as a GPU count
    assert not {"gpus", "runs_per_gpu", "cpu_slots", "poll_s"} & set(executor.parameters)
    assert executor.parameters["setup"] == ["export OMP_NUM_THREADS=2"]
    assert executor.max_num_timeout == 5


def hydra_launcher_config(choice: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={choice}"], return_hydra_config=True)
    return cfg.hydra.launcher


def test_launcher_configs_compose():
    workstation = hydra_launcher_config("workstation")
    assert workstation._target_.endswith("gpu_pool_launcher.GpuPoolLauncher")
    assert workstation.gpus is None and workstation.runs_per_gpu == 1
    assert workstation.timeout_min >= 24 * 60
    slurm = hydra_launcher_config("slurm")
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.gpus_per_node == 1 and slurm.tasks_per_node == 1
    assert slurm.max_num_timeout > 0 and slurm.partition is None and slurm.account is None


def sweep_cli(root: Path, experiment: str, *overrides: str) -> subprocess.CompletedProcess:
    """A 2-run CPU sweep of `model=base` through the real CLI, rooted (and run) in `root`."""
    # One torch thread per run: two runs share the CI machine's cores instead of fighting for them.
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [PYTHON, "-m", "sweep.train", "-m", *overrides, f"paths.root_dir={root}",
         "logging.wandb.mode=disabled", "logging.progress=false", f"experiment_name={experiment}",
         "model=base", "budget.tokens=8192,16384", "train.device=cpu", "eval.tokens=4096",
         "eval.points=2", *FIXED_HPARAMS],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )


def finished_runs(root: Path, experiment: str) -> list[dict]:
    summaries = sorted((root / "runs" / experiment).glob("*/summary.json"))
    records = [json.loads(path.read_text()) for path in summaries]
    return [r for r in records if r["status"] == "finished"]


def test_pool_sweep_trains_two_runs_side_by_side_on_the_cpu(synthetic_root):
    result = sweep_cli(synthetic_root, "pool", "hydra/launcher=workstation",
                       "hydra.launcher.cpu_slots=2", "hydra.launcher.cpus_per_task=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("-> CPU slot") == 2
    assert sorted(r["tokens"] for r in finished_runs(synthetic_root, "pool")) == [8192, 16384]
    # Side by side: both jobs were submitted before either wrote its result.
    jobs = synthetic_root / "runs" / "pool" / ".submitit"
    submitted = [p.stat().st_mtime for p in jobs.glob("*/*_submitted.pkl")]
    ended = [p.stat().st_mtime for p in jobs.glob("*/*_result.pkl")]
    assert len(submitted) == len(ended) == 2 and max(submitted) < min(ended)


def test_plain_submitit_local_sweep_trains_two_runs(synthetic_root):
    result = sweep_cli(synthetic_root, "plain", "hydra/launcher=submitit_local")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(r["tokens"] for r in finished_runs(synthetic_root, "plain")) == [8192, 16384]
