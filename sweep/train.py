"""Train one run and record it: `python -m sweep.train model=gpt_1m budget.tokens=2e5`.

The CLI: joins the ranks, plans and checks the run, hands it to sweep.start, and turns what
went wrong into one line and an exit code.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

from omegaconf import DictConfig

from data import DataError
from data.hydra_guard import run_hydra, unknown_choice
from sweep.distributed import SINGLE, check_batch, init_distributed, leave, rank_device
from sweep.errors import (
    ConfigError,
    OutOfMemory,
    RankLost,
    RunFailed,
    RunHeld,
    first_line,
)
from sweep.grid import check_launch_flags, decide_run, format_plan, grid_point
from sweep.lock import RunLocked, Terminated
from sweep.plan import RunPlan, plan_run


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under Hydra (e.g. a test composing the config itself)
        return []


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not running under Hydra
        return False


def main(cfg: DictConfig) -> float | None:
    """Hydra task: plan, then train and record; returns the final val_loss.

    A bad config or data exits 2 with one line, a failed or diverged run exits 1; inside a
    multirun both raise RunFailed instead, so that the sweep goes on with its other runs.
    """
    multirun = _multirun()

    def stop(message: str, code: int, cause: BaseException | None = None) -> NoReturn:
        if multirun:
            failed = RunHeld if isinstance(cause, RunLocked) else RunFailed
            raise failed(message) from cause
        if dist.is_main:  # one rank speaks for the run
            print(f"error: {message}", file=sys.stderr)
        if dist.enabled:
            # Exit at once: tearing the process group down after an error, by hand or in the
            # interpreter's exit, involves ranks that may be gone or exiting too, and gloo then
            # aborts the process (std::terminate) instead of exiting with this code. The run's
            # records are on disk already; the lock goes with the process. The other ranks exit
            # 0: rank 0 stops too (the same config and losses, or its own error, which it shares)
            # or is gone, and its exit code is the job's. Theirs non-zero, a launcher that ends a
            # job once one process fails (torchrun within 0.1 s) could kill rank 0 before it has
            # written its summary and said why ("error: interrupted (SIGTERM)").
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if dist.is_main else 0)
        raise SystemExit(code)

    plan: RunPlan | None = None
    dist = SINGLE
    try:
        # torchrun, or a submitit job of several tasks, makes this process one rank of many.
        dist = init_distributed(str(cfg.train.device), str(cfg.train.data_parallel))
        cfg.train.device = rank_device(str(cfg.train.device), dist)
        check_launch_flags(cfg.launch)
        rerun_failed = cfg.launch.rerun_failed
        plan = plan_run(cfg, _task_overrides())
        check_batch(plan.batch_tokens // plan.seq_len, dist)
        from sweep.step import check_cuda_graphs  # torch: plan_run has loaded it by now

        check_cuda_graphs(plan.hardware, plan.batch_tokens // plan.seq_len // dist.world_size,
                          plan.micro_batch_size)
        # run() builds the data loaders (which check the split against seq_len) before it
        # writes anything, so their errors too leave no run directory behind.
        if cfg.launch.dry_run and not multirun:  # a sweep's dry run is the sweeper's
            point = grid_point(0, [], plan, *decide_run(plan, rerun_failed))
            print(format_plan(plan.experiment, [point]), flush=True)
            print("dry run: nothing trained", flush=True)
            return None
        # Only a run that goes ahead loads torch (~2 s): a config error above is reported
        # as soon as Hydra has composed the config.
        from sweep.start import run

        summary = run(plan, rerun_failed=rerun_failed, dist=dist)
    except (ConfigError, DataError) as err:
        stop(str(err), 2, err)
    except RankLost as err:
        # No failed summary: a relaunch resumes the run. Rank 0 says it, or, when rank 0 is the
        # one that stopped, it has said why.
        stop(f"{f'run {plan.run_id}' if plan else 'the run'} interrupted: {err}", 1, err)
    except KeyboardInterrupt as err:
        # Ends the whole sweep too (SystemExit passes Hydra's launcher): the user or the
        # scheduler wants this process gone. The run resumes from its last checkpoint.
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        print(f"error: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except Exception as err:
        if _is_machine_failure(err):
            # The machine, not the code: a full or read-only disk, memory. run() has recorded
            # the failure in summary.json where the disk let it.
            stop(_machine_failure(plan, cfg, err), 1, err)
        if not multirun:
            raise  # the traceback; run() has recorded the failure in summary.json
        stop(f"run failed: {type(err).__name__}: {err}", 1, err)
    finally:
        leave(dist)
    if summary["status"] != "finished":
        stop(f"run {plan.run_id} {summary['status']}: {summary.get('error')}", 1)
    return summary["val_loss"]


def _torch_out_of_memory(err: BaseException) -> bool:
    # Only torch raises its OutOfMemoryError, so where torch was never imported it cannot be one
    # (and the error path does not load torch to find out). Where it was, the one classifier the
    # step, eval and bench use, which also knows the OOMs torch.compile and cuBLAS wrap.
    if "torch" not in sys.modules:
        return False
    from sweep.hardware import out_of_memory

    return out_of_memory(err)


def _is_machine_failure(err: BaseException) -> bool:
    """A full or read-only disk, or memory: the machine stopped the run, not the code."""
    return isinstance(err, OSError | OutOfMemory) or _torch_out_of_memory(err)


def _machine_failure(plan: RunPlan | None, cfg: DictConfig, err: BaseException) -> str:
    """One line for a run stopped by its machine: what ran out, where, and how to go on."""
    run = f"run {plan.run_id}" if plan else "the run"
    relaunch = "relaunch with launch.rerun_failed=true to resume it from its last checkpoint"
    if isinstance(err, OutOfMemory):
        return f"{run} failed: {err}"
    if _torch_out_of_memory(err):
        # The step, the optimizer and evaluation raise OutOfMemory with their own advice
        return (
            f"{run} ran out of device memory ({first_line(err)}): free the GPU of other processes "
            f"or use one with more memory, then {relaunch}"
        )
    assert isinstance(err, OSError)
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"{run} failed: {err.strerror or err}{where}: free space or fix permissions under "
        f"paths.runs_dir={cfg.paths.runs_dir}, then {relaunch}"
    )


def cli() -> None:
    """Entry point: reject unknown presets in one line, then hand the command line to Hydra."""
    problem = unknown_choice(sys.argv[1:], {
        "model": "model preset", "data": "dataset", "experiment": "experiment",
        "hparams": "hyperparameter rules", "paths": "paths preset"})
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    run_hydra(main, "train", "python -m sweep.train")


if __name__ == "__main__":
    cli()
