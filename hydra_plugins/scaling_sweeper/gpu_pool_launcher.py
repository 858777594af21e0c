"""The `gpu_pool` launcher: submitit's local launcher with one job per GPU slot, the rest queued.

submitit_local starts every job at once on the same CUDA_VISIBLE_DEVICES; this pins each to one GPU.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses look up string annotations, so @dataclass would fail on them.
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

# Imported as modules, not names: Hydra's plugin scan registers every Launcher class it finds in a
# module's namespace, and the parent classes are already registered from their own module.
from hydra_plugins.hydra_submitit_launcher import config as submitit_config
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

# Keys of GpuPoolConf that the pool consumes itself; all others go to submitit as the parent's do.
POOL_KEYS = ("gpus", "runs_per_gpu", "cpu_slots", "poll_s", "max_num_timeout")


@dataclass
class GpuPoolConf(submitit_config.BaseQueueConf):
    """hydra/launcher=gpu_pool: BaseQueueConf (timeout_min, cpus_per_task, ...) plus the pool."""

    _target_: str = "hydra_plugins.scaling_sweeper.gpu_pool_launcher.GpuPoolLauncher"
    # CUDA device indices to run on (as CUDA_VISIBLE_DEVICES takes them); null: every GPU this
    # process can see. No GPU at all makes a CPU pool of cpu_slots. gpus_per_node is ignored:
    # the pool sets it per job (1 on a GPU slot, 0 on a CPU slot).
    gpus: list[int] | None = None
    # Concurrent runs on one GPU; >1 only pays off for models too small to fill a GPU.
    runs_per_gpu: int = 1
    # Concurrent runs when the pool has no GPU.
    cpu_slots: int = 1
    # Seconds between checks for finished jobs; a run takes minutes, so 1 s loses nothing.
    poll_s: float = 1.0
    # Times a job that hits timeout_min is restarted in its slot (runs resume from checkpoints);
    # 3 is submitit's own default for local jobs, which the parent launcher keeps implicitly.
    max_num_timeout: int = 3


ConfigStore.instance().store(
    group="hydra/launcher", name="gpu_pool", node=GpuPoolConf, provider="scaling_sweeper"
)


def visible_gpus(gpus: Sequence[int] | None) -> list[int]:
    """The pool's GPUs: `gpus` as given, or every GPU this process sees (CUDA indices)."""
    if gpus is not None:
        return [int(g) for g in gpus]
    import torch  # here, not at the top: Hydra imports this module on every start

    count = torch.cuda.device_count()
    restricted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if restricted is None:
        return list(range(count))
    # torch numbers the visible devices 0..count-1, but a job's CUDA_VISIBLE_DEVICES replaces the
    # parent's, so the pool must hand out the parent's own entries, not torch's renumbering.
    entries = [e.strip() for e in restricted.split(",") if e.strip()][:count]
    if not all(e.isdigit() for e in entries):
        raise ValueError(
            f"CUDA_VISIBLE_DEVICES={restricted!r} names GPUs by UUID; set "
            "hydra.launcher.gpus to their indices instead"
        )
    return [int(e) for e in entries]


def _whole(pool: dict[str, Any], key: str, default: int, least: int) -> int:
    value = pool.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"hydra.launcher.{key}={value!r} must be a whole number >= {least}")
    return value


class GpuPoolLauncher(submitit_launcher.LocalLauncher):
    """LocalLauncher running one job per slot at a time, each slot pinned to a GPU (or the CPU)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # What is left in self.params after this is exactly what the parent hands to submitit.
        pool = {key: self.params.pop(key) for key in POOL_KEYS if key in self.params}
        self.gpus: list[int] | None = pool.get("gpus")
        self.runs_per_gpu = _whole(pool, "runs_per_gpu", 1, least=1)
        self.cpu_slots = _whole(pool, "cpu_slots", 1, least=1)
        self.max_num_timeout = _whole(pool, "max_num_timeout", 3, least=0)
        self.poll_s = pool.get("poll_s", 1.0)
        if isinstance(self.poll_s, bool) or not isinstance(self.poll_s, int | float) or not (
            0 <= self.poll_s < float("inf")
        ):
            raise ValueError(f"hydra.launcher.poll_s={self.poll_s!r} must be a number of seconds "
                             ">= 0")
        if self.gpus is not None and (
            isinstance(self.gpus, str | int)
            or any(isinstance(g, bool) or not isinstance(g, int) for g in self.gpus)
            or len(set(self.gpus)) != len(self.gpus) or any(g < 0 for g in self.gpus)
        ):
            raise ValueError(
                f"hydra.launcher.gpus={self.gpus}: list each GPU index once "
                "(more runs per GPU: hydra.launcher.runs_per_gpu)"
            )

    def slots(self) -> list[int | None]:
        """One entry per slot: its GPU index, or None for a CPU slot (when the pool has no GPU)."""
        gpus = visible_gpus(self.gpus)
        if not gpus:
            return [None] * self.cpu_slots
        return [gpu for _ in range(self.runs_per_gpu) for gpu in gpus]

    def make_executor(self) -> Any:
        """A submitit LocalExecutor with the queue parameters (not the per-slot GPU) applied."""
        import submitit  # here, not at the top: Hydra imports this module on every start

        executor = submitit.LocalExecutor(
            folder=self.params["submitit_folder"], max_num_timeout=self.max_num_timeout
        )
        # LocalExecutor, not AutoExecutor as in the parent: only it accepts visible_gpus. Nones are
        # dropped as AutoExecutor does: LocalExecutor would read gpus_per_node=None as a count.
        executor.update_parameters(
            **{k: v for k, v in self.params.items() if k != "submitit_folder" and v is not None}
        )
        threads = self.params.get("cpus_per_task")
        if threads:
            # LocalExecutor ignores cpus_per_task and pins no cores, so without this each of the
            # parallel runs would start one torch thread per core of the machine.
            executor.update_parameters(setup=[f"export OMP_NUM_THREADS={int(threads)}"])
        return executor

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launch_after(job_overrides, initial_job_idx, [None] * len(job_overrides))

    def launch_after(
        self,
        job_overrides: Sequence[Sequence[str]],
        initial_job_idx: int,
        after: Sequence[int | None],
        released_by: Sequence[str | None] | None = None,
    ) -> Sequence[JobReturn]:
        """launch(), where job i starts only once job after[i] (a position in job_overrides,
        earlier than i) has ended, or once the file released_by[i] exists if one is named: the
        sweeper chains a shared stable phase's runs so, each starting as soon as the state it
        continues is saved (at its predecessor's cooldown start, while that run cools down) and
        not when a whole wave of runs has ended. A predecessor that ended without saving it
        still releases its successor, which then continues an earlier state or starts afresh.
        A free slot takes the first job in order that is released."""
        assert self.config is not None
        assert len(job_overrides) > 0 and len(after) == len(job_overrides)
        assert all(a is None or 0 <= a < i for i, a in enumerate(after))
        released_by = released_by or [None] * len(job_overrides)
        assert len(released_by) == len(job_overrides)
        slots = self.slots()
        executor = self.make_executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        where = f"GPUs {sorted(set(slots))}" if slots[0] is not None else "the CPU"
        print(
            f"gpu_pool: {len(job_overrides)} jobs, {len(slots)} at a time on {where}; "
            f"logs in {sweep_dir / '.submitit'}",
            flush=True,
        )

        pending = list(range(len(job_overrides)))
        running: dict[int, tuple[int, Any]] = {}  # slot -> (input position, submitit job)
        jobs: list[Any] = [None] * len(job_overrides)
        done = [False] * len(job_overrides)
        try:
            while pending or running:
                while (position := self._ready(pending, after, done, released_by)) is not None and (
                    slot := self._free_slot(slots, running)
                ) is not None:
                    pending.remove(position)
                    jobs[position] = self._submit(executor, slots, slot, position,
                                                  initial_job_idx, job_overrides[position])
                    running[slot] = (position, jobs[position])
                ended = [slot for slot, (_, job) in running.items() if job.done()]
                for slot in ended:
                    done[running.pop(slot)[0]] = True
                if not ended:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            # Queued jobs would never start, so stop the running ones too rather than orphan them;
            # they resume from their checkpoints when the sweep is launched again.
            for _, job in running.values():
                job.cancel(check=False)
            raise
        return [self._result(job, list(o)) for job, o in zip(jobs, job_overrides, strict=True)]

    @staticmethod
    def _ready(pending: list[int], after: Sequence[int | None], done: list[bool],
               released_by: Sequence[str | None]) -> int | None:
        """The first pending job whose predecessor (if any) has ended or has written the job's
        release file, or None."""
        def released(i: int) -> bool:
            a, file = after[i], released_by[i]
            return a is None or done[a] or (file is not None and Path(file).exists())

        return next((i for i in pending if released(i)), None)

    @staticmethod
    def _free_slot(slots: list[int | None], running: dict[int, tuple[int, Any]]) -> int | None:
        """The free slot on the least busy GPU (lowest slot first), or None when all are busy."""
        free = [s for s in range(len(slots)) if s not in running]
        if not free:
            return None
        busy = [slots[s] for s in running]
        return min(free, key=lambda s: (busy.count(slots[s]), s))

    def _submit(
        self,
        executor: Any,
        slots: list[int | None],
        slot: int,
        position: int,
        initial_job_idx: int,
        overrides: Sequence[str],
    ) -> Any:
        """Submits one job pinned to `slot`'s GPU and prints which job went where."""
        gpu = slots[slot]
        if gpu is None:
            # gpus_per_node=0 sets an empty CUDA_VISIBLE_DEVICES: a CPU slot never touches a GPU.
            executor.update_parameters(visible_gpus=(), gpus_per_node=0)
        else:
            executor.update_parameters(visible_gpus=(gpu,), gpus_per_node=1)
        idx = initial_job_idx + position
        job = executor.submit(
            self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
            Singleton.get_state(),
        )
        device = f"CPU slot {slot}" if gpu is None else f"GPU {gpu} (slot {slot})"
        print(f"gpu_pool: #{idx} -> {device}: {' '.join(filter_overrides(overrides))}", flush=True)
        return job

    @staticmethod
    def _result(job: Any, overrides: list[str]) -> JobReturn:
        """The job's JobReturn; a job whose process died becomes a FAILED one, not an exception,
        so one crashed run does not hide the results of the runs that finished beside it."""
        try:
            return job.results()[0]
        except Exception as err:  # submitit's UncompletedJobError, FailedJobError, ...
            failed = JobReturn(overrides=overrides, status=JobStatus.FAILED)
            failed.return_value = err
            return failed
