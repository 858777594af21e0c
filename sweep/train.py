"""Train one run and record it: `python -m sweep.train model=gpt_1m budget.tokens=2e5`.

The loop follows the plan (steps, schedule, evals), checkpoints, and resumes bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data import DataError, eval_windows
from data.hydra_guard import run_hydra, unknown_choice
from data.loader import TrainWindows, train_windows
from models import GPT
from sweep.checkpoint import (
    CheckpointPolicy,
    LoopState,
    checkpoint_policy,
    checkpoint_step,
    latest_checkpoint,
    remove_stale_temps,
    resume_training_state,
    save_training_state,
)
from sweep.distributed import (
    SINGLE,
    Distributed,
    check_batch,
    full_states,
    init_distributed,
    leave,
    load_full_states,
    no_sync,
    rank_device,
)
from sweep.errors import ConfigError, RunFailed
from sweep.evaluate import evaluate
from sweep.lock import RunLock, Terminated, sigterm_interrupts
from sweep.logger import RunLogger
from sweep.plan import RunPlan, plan_run
from sweep.records import RunRecord, build_summary
from sweep.step import OutOfMemory, accumulate_with_backoff, build_optimizer


def eval_steps(total_steps: int, points: int) -> list[int]:
    """Step 0, `points` log-spaced steps in [1, total_steps], and the final step, deduplicated."""
    spaced = np.geomspace(1, total_steps, num=int(points))
    return sorted({0, total_steps, *(int(round(s)) for s in spaced)})


def _silent(*_: Any) -> None:
    """print for the ranks of a data-parallel run but 0."""


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
    say = print if dist.is_main else _silent
    # Every rank reads the same summary here, before any of them writes.
    if _skip(plan, previous := record.read_summary(), rerun_failed, say):
        return previous

    cfg = plan.config
    hw = plan.hardware
    torch.manual_seed(cfg["seed"])
    model = GPT(plan.model).to(hw.device)
    step_model = dist.wrap(model, hw.device)
    if hw.compile:
        step_model = torch.compile(step_model)
    optimizer = build_optimizer(
        model, plan, OmegaConf.create(cfg["train"]), sharded=dist.sharded
    )
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
            say(f"{plan.run_id}: resuming from {newest.name} (resume {loop.resumes})")
        return _train(
            plan, policy, record, model, step_model, optimizer, batches, val, loop, dist
        )


def _train(
    plan: RunPlan,
    policy: CheckpointPolicy,
    record: RunRecord,
    model: GPT,
    step_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: TrainWindows,
    val: list[tuple[torch.Tensor, torch.Tensor]],
    loop: LoopState,
    dist: Distributed,
) -> dict[str, Any]:
    cfg = plan.config
    hw = plan.hardware
    token_bytes = None
    if plan.dataset.token_bytes is not None:
        token_bytes = torch.as_tensor(plan.dataset.token_bytes, dtype=torch.int64, device=hw.device)
    total_steps = plan.budget.steps
    batch_tokens = plan.batch_tokens
    evals_at = set(eval_steps(total_steps, cfg["eval"]["points"]))
    interval = max(1, int(cfg["logging"]["interval"]))
    sequences = batch_tokens // plan.seq_len // dist.world_size  # per optimizer step and rank
    micro = min(loop.micro_batch_size or plan.micro_batch_size, sequences)
    while sequences % micro:  # a rank's share of the batch must split into whole micro-batches
        micro -= 1
    # Ranks back off alone, and one retrying a step while the rest wait in its all-reduce would
    # misalign their collectives: under data parallelism an OOM fails the run instead.
    min_micro = micro if dist.enabled else plan.min_micro_batch_size
    sync_once = no_sync(step_model)
    logger: RunLogger | None = None
    wall_start = time.perf_counter()
    last = loop.last

    def log_eval(step: int, lr: float, tokens_per_s: float | None) -> None:
        result = evaluate(model, val, hw, token_bytes, reduce=None if dist.sharded else dist.sum_)
        # Per device: MFU compares one device's share of the FLOPs with its peak.
        flops_per_s = (
            plan.flops.flops_exact * tokens_per_s / dist.world_size if tokens_per_s else None
        )
        row = {
            "step": step,
            "tokens": step * batch_tokens,
            "flops_6nd": plan.flops.flops_6nd * step * batch_tokens,
            "flops_6nd_total": plan.flops.flops_6nd_total * step * batch_tokens,
            "flops_exact": plan.flops.flops_exact * step * batch_tokens,
            "train_loss": last["train_loss"],
            "val_loss": result.loss,
            "val_bpb": result.bpb,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "mfu": hw.mfu(flops_per_s) if flops_per_s else None,
        }
        last["val_loss"], last["val_bpb"] = result.loss, result.bpb
        if dist.is_main:
            record.append_metrics(row)
        logger.metrics(row)

    def checkpoint() -> None:
        # The ranks hold identical loader states, and weights and optimizer states too (DDP) or
        # shards of them that every rank gathers onto rank 0 (FSDP): rank 0's checkpoint
        # resumes every rank.
        states = full_states(model, optimizer) if dist.sharded else None
        if not dist.is_main:
            return
        save_training_state(
            plan.run_dir,
            policy.keep,
            run_id=plan.run_id,
            config_hash=plan.config_hash,
            model=model,
            optimizer=optimizer,
            loader=batches,
            loop=loop,
            wall_time_s=loop.wall_before_s + time.perf_counter() - wall_start,
            states=states,
        )

    def finish(status: str, error: str | None) -> dict[str, Any]:
        tokens = loop.step * batch_tokens
        summary = build_summary(
            plan,
            status,
            tokens=tokens,
            steps=loop.step,
            **last,
            error=error,
            resumes=loop.resumes,
            micro_batch_size=micro,
            oom_retries=loop.oom_retries,
            world_size=dist.world_size,
            data_parallel=dist.strategy if dist.enabled else None,
            wall_time_s=loop.wall_before_s + time.perf_counter() - wall_start,
            train_time_s=loop.train_time_s,
            tokens_per_s=(tokens / loop.train_time_s) if loop.train_time_s else None,
            started_at=loop.started_at,
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if dist.is_main:
            record.write_summary(summary)
        if logger is not None:
            logger.close(summary)
        return summary

    status, error = "finished", None
    try:
        logger = RunLogger(
            cfg["logging"],
            run_dir=plan.run_dir,
            run_id=plan.run_id,
            total_steps=total_steps,
            config=cfg,
            quiet=not dist.is_main,
        )
        if loop.step == 0:
            log_eval(0, 0.0, None)
        saved_at_train_s = loop.train_time_s
        # mark: where unaccounted training time starts; window: where the throughput window does.
        mark = window_start = time.perf_counter()
        window_steps = 0
        for step in range(loop.step + 1, total_steps + 1):
            lr = plan.lr * plan.schedule.multiplier(step - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            xs, ys = next(batches)
            xs, ys = dist.share(xs), dist.share(ys)
            step_loss, micro_used = accumulate_with_backoff(
                step_model, optimizer, xs, ys, micro, min_micro, hw,
                on_retry=lambda smaller, step=step: logger.print(
                    f"{plan.run_id}: out of memory in step {step}; retrying it with "
                    f"micro_batch_size {smaller} x {sequences // smaller} accumulation steps"
                ),
                no_sync=sync_once,
            )
            if micro_used != micro:
                loop.oom_retries += 1
                micro = loop.micro_batch_size = micro_used
            loop.loss_sum += step_loss
            if cfg["train"]["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train"]["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loop.step = step
            loop.loss_steps += 1
            window_steps += 1
            at_eval = step in evals_at
            if not (at_eval or step % interval == 0):
                continue
            # Reading the loss syncs the GPU, so it happens only every `interval` steps.
            hw.synchronize()
            now = time.perf_counter()
            loop.train_time_s += now - mark
            mark = now
            tokens_per_s = window_steps * batch_tokens / (now - window_start)
            # Every rank then holds the global mean, so all reach the same verdicts below and a
            # checkpoint (rank 0's) holds the whole batch's loss.
            dist.mean_(loop.loss_sum)
            train_loss = loop.loss_sum.item() / loop.loss_steps
            logger.step(step, train_loss, tokens_per_s)
            if not math.isfinite(train_loss):
                last["train_loss"] = train_loss
                status, error = "diverged", f"non-finite training loss by step {step}"
                break
            paused = False
            if at_eval:
                last["train_loss"] = train_loss
                loop.loss_sum.zero_()
                loop.loss_steps = 0
                log_eval(step, lr, tokens_per_s)
                if not math.isfinite(last["val_loss"]):
                    # Stopped before the checkpoint below: the newest one stays a finite model.
                    status, error = "diverged", f"non-finite validation loss at step {step}"
                    break
                paused = True
            # Rank 0's clock decides, so that all ranks checkpoint (and so pause) together.
            if dist.from_main(
                step == total_steps or policy.due(loop.train_time_s, saved_at_train_s)
            ):
                checkpoint()
                saved_at_train_s = loop.train_time_s
                paused = True
            if paused:
                # Evaluations and checkpoint writes are not training time: the throughput
                # window restarts after them.
                mark = window_start = time.perf_counter()
                window_steps = 0
        if status == "finished" and not math.isfinite(last["val_loss"]):
            status, error = "diverged", f"non-finite validation loss at step {loop.step}"
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: no summary, so the run stays resumable from its last checkpoint.
        newest = latest_checkpoint(plan.run_dir)
        say = print if dist.is_main else _silent
        say(
            f"{plan.run_id}: interrupted after step {loop.step}; "
            + (
                f"rerun to resume from step {checkpoint_step(newest)}"
                if newest
                else "no checkpoint yet, a rerun starts it afresh"
            )
        )
        if logger is not None:
            logger.close({"status": "interrupted"})
        raise
    except Exception as exc:
        # Record why the run stopped (its checkpoints stay), then let the error surface.
        finish("failed", f"{type(exc).__name__}: {exc}")
        raise

    summary = finish(status, error)
    _report(plan, summary, logger)
    return summary


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.4f}"


def _report(plan: RunPlan, summary: dict[str, Any], logger: RunLogger) -> None:
    bpb = summary["val_bpb"]
    parts = [
        f"{plan.run_id}: {summary['status']} after {summary['tokens']:,} tokens "
        f"({summary['wall_time_s']:.1f} s)",
        f"val_loss {_fmt(summary['val_loss'])} nats/token"
        + (f", {bpb:.4f} bits/byte" if bpb is not None else ""),
    ]
    truth = plan.dataset.manifest.get("synthetic")
    if truth:
        parts.append(
            f"synthetic corpus: entropy rate {truth['entropy_rate_nats']:.4f} nats/token, "
            f"unigram entropy {truth['unigram_entropy_nats']:.4f}"
        )
    parts.append(f"record: {plan.run_dir}")
    for line in parts:
        logger.print(line)


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
