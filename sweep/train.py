"""Train one run and record it: `python -m sweep.train model=gpt_1m budget.tokens=2e5`.

Sets the run up (ranks, model, data, lock, start or resume) and hands it to sweep.loop.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

from data import DataError, eval_windows
from data.hydra_guard import run_hydra, unknown_choice
from data.loader import train_windows
from models import GPT
from sweep.checkpoint import (
    LoopState,
    checkpoint_policy,
    latest_checkpoint,
    remove_stale_temps,
    resume_training_state,
)
from sweep.distributed import (
    SINGLE,
    Distributed,
    check_batch,
    init_distributed,
    leave,
    load_full_states,
    rank_device,
)
from sweep.errors import ConfigError, RunFailed
from sweep.lock import RunLock, Terminated, sigterm_interrupts
from sweep.loop import train_loop
from sweep.plan import RunPlan, plan_run
from sweep.records import RunRecord
from sweep.step import OutOfMemory, build_optimizer


def _skip(
    plan: RunPlan,
    previous: dict[str, Any] | None,
    rerun_failed: bool,
    say: Callable[[str], None] = print,
) -> bool:
    """Whether an earlier attempt's summary settles the run (saying why it is not retrained)."""
    status = (previous or {}).get("status")
    if status == "finished":
        say(f"{plan.run_id}: already finished (val_loss={previous.get('val_loss')}), skipping")
    elif status == "diverged":
        say(
            f"{plan.run_id}: diverged before ({previous.get('error')}); kept and skipped, since "
            f"rerunning gives the same non-finite loss: delete {plan.run_dir} to retrain it"
        )
    elif status == "failed" and not rerun_failed:
        say(
            f"{plan.run_id}: failed before ({previous.get('error')}); skipped: "
            "launch.rerun_failed=true retrains it from its last checkpoint"
        )
    else:
        return False
    return True


def _make_run_dir(plan: RunPlan) -> None:
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        runs_dir = plan.config["paths"]["runs_dir"]
        raise ConfigError(
            f"cannot write the run directory {plan.run_dir} ({err.strerror or err}): make "
            f"paths.runs_dir={runs_dir} writable or point paths.runs_dir at writable storage"
        ) from None


def run(plan: RunPlan, rerun_failed: bool = False, dist: Distributed = SINGLE) -> dict[str, Any]:
    """Train the planned run to the end of its budget, writing its record; returns the summary.

    A finished or diverged run is skipped, a failed one too unless `rerun_failed`; otherwise the
    run continues from its newest checkpoint when it has one. Under data parallelism every rank
    calls this; rank 0 alone takes the lock and writes.
    """
    policy = checkpoint_policy(plan.config.get("checkpoint"))
    record = RunRecord(plan.run_dir)
    # Every rank reads the same summary here, before any of them writes.
    if _skip(plan, previous := record.read_summary(), rerun_failed, dist.say):
        return previous

    cfg = plan.config
    hw = plan.hardware
    torch.manual_seed(cfg["seed"])
    model = GPT(plan.model, loss_chunk_tokens=cfg["train"]["loss_chunk_tokens"]).to(hw.device)
    # The loader draws a whole optimizer step's batch, which the loop splits into micro-batches:
    # the windows a step sees depend on the step alone, never on the micro-batch size.
    batches = train_windows(
        cfg["train"]["windows"],
        plan.dataset,
        "train",
        plan.batch_tokens // plan.seq_len,
        plan.seq_len,
        seed=cfg["seed"],
        device=hw.device,
    )
    val = eval_windows(
        plan.dataset,
        "val",
        plan.seq_len,
        int(cfg["eval"]["tokens"]),
        int(cfg["eval"]["batch_size"]),
        device=hw.device,
    )
    if not dist.sharded:
        # Each rank evaluates its share and the sums are reduced. A sharded model needs every
        # rank in every forward, so there each rank evaluates all windows.
        val = val[dist.rank :: dist.world_size]
    with sigterm_interrupts(), contextlib.ExitStack() as stack:
        # Rank 0 takes the lock and decides from the files (another process may have ended the
        # run while this one was building) whether to skip, start afresh or resume, and from
        # which checkpoint; the other ranks follow, or stop with it.
        decision: tuple[str, Any] | None = None
        if dist.is_main:
            try:
                # Everything above only reads: a config or data error leaves no run directory.
                _make_run_dir(plan)
                stack.enter_context(RunLock(plan.run_dir))
                if _skip(plan, previous := record.read_summary(), rerun_failed):
                    decision = ("skip", previous)
                else:
                    newest = latest_checkpoint(plan.run_dir)
                    decision = ("resume", str(newest)) if newest else ("fresh", None)
            except Exception as err:
                # Without this the other ranks would wait for the decision forever (under
                # SLURM nothing ends them as torchrun does).
                dist.from_main(("stop", str(err)))
                raise
        kind, value = dist.from_main(decision)
        if kind == "stop":
            raise ConfigError(f"rank 0 stopped the run: {value}")
        if kind == "skip":
            return value
        # Wrapped only once the run goes ahead: a DDP module left behind by an early stop
        # outlives its process group and aborts the process at exit.
        step_model = hw.compiled(dist.wrap(model, hw.device))
        train_cfg = cfg["train"]
        optimizer = build_optimizer(
            model,
            lr=plan.lr,
            weight_decay=train_cfg["weight_decay"],
            betas=(train_cfg["beta1"], train_cfg["beta2"]),
            eps=train_cfg["eps"],
            fused=hw.device.type == "cuda" and not dist.sharded,
        )
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(cfg))
        if kind == "fresh":
            if dist.is_main:
                remove_stale_temps(plan.run_dir)
                record.start(config_yaml)
            loop = LoopState.fresh(hw.device)
        else:
            newest = Path(value)
            loop = resume_training_state(
                newest,
                run_id=plan.run_id,
                config_hash=plan.config_hash,
                model=model,
                optimizer=optimizer,
                loader=batches,
                device=hw.device,
                load_states=(
                    (lambda m, o: load_full_states(model, optimizer, m, o))
                    if dist.sharded
                    else None
                ),
            )
            if dist.is_main:
                record.resume(config_yaml, loop.step)
            dist.say(f"{plan.run_id}: resuming from {newest.name} (resume {loop.resumes})")
        return train_loop(
            plan, policy, record, model, step_model, optimizer, batches, val, loop, dist
        )


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
            raise RunFailed(message) from cause
        if dist.is_main:  # one rank speaks for the run
            print(f"error: {message}", file=sys.stderr)
        raise SystemExit(code)

    plan: RunPlan | None = None
    dist = SINGLE
    try:
        # torchrun, or a submitit job of several tasks, makes this process one rank of many.
        dist = init_distributed(str(cfg.train.device), str(cfg.train.data_parallel))
        cfg.train.device = rank_device(str(cfg.train.device), dist)
        plan = plan_run(cfg, _task_overrides())
        check_batch(plan.batch_tokens // plan.seq_len, dist)
        # run() builds the data loaders (which check the split against seq_len) before it
        # writes anything, so their errors too leave no run directory behind.
        rerun_failed = cfg.launch.rerun_failed
        if not isinstance(rerun_failed, bool):
            raise ConfigError(f"launch.rerun_failed={rerun_failed!r} must be true or false")
        summary = run(plan, rerun_failed=rerun_failed, dist=dist)
    except (ConfigError, DataError) as err:
        stop(str(err), 2)
    except KeyboardInterrupt as err:
        # Ends the whole sweep too (SystemExit passes Hydra's launcher): the user or the
        # scheduler wants this process gone. The run resumes from its last checkpoint.
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        print(f"error: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except (OSError, OutOfMemory, torch.OutOfMemoryError) as err:
        # The machine, not the code: a full or read-only disk, memory. run() has recorded the
        # failure in summary.json where the disk let it.
        stop(_machine_failure(plan, cfg, err), 1, err)
    except Exception as err:
        if not multirun:
            raise  # the traceback; run() has recorded the failure in summary.json
        stop(f"run failed: {type(err).__name__}: {err}", 1, err)
    finally:
        leave(dist)
    if summary["status"] != "finished":
        stop(f"run {plan.run_id} {summary['status']}: {summary.get('error')}", 1)
    return summary["val_loss"]


def _machine_failure(plan: RunPlan | None, cfg: DictConfig, err: BaseException) -> str:
    """One line for a run stopped by its machine: what ran out, where, and how to go on."""
    run = f"run {plan.run_id}" if plan else "the run"
    relaunch = "relaunch with launch.rerun_failed=true to resume it from its last checkpoint"
    if isinstance(err, OutOfMemory):
        return f"{run} failed: {err}"
    if isinstance(err, torch.OutOfMemoryError):
        first = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
        return (
            f"{run} failed outside its training step ({first[:200]}): lower eval.batch_size, "
            f"then {relaunch}"
        )
    assert isinstance(err, OSError)
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"{run} failed: {err.strerror or err}{where}: free space or fix permissions under "
        f"paths.runs_dir={cfg.paths.runs_dir}, then {relaunch}"
    )


def cli() -> None:
    """Entry point: reject unknown presets in one line, then hand the command line to Hydra."""
    problem = unknown_choice(sys.argv[1:], {"model": "model preset", "data": "dataset"})
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    run_hydra(main, "train", "python -m sweep.train")


if __name__ == "__main__":
    cli()
