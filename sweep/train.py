"""Train one run and record it: `python -m sweep.train model=gpt_1m budget.tokens=2e5`.

The loop follows the plan (steps, schedule, evals), checkpoints, and resumes bit for bit.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from datetime import UTC, datetime
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


def _skip(plan: RunPlan, previous: dict[str, Any] | None, rerun_failed: bool) -> bool:
    """Whether an earlier attempt's summary settles the run (printing why it is not retrained)."""
    status = (previous or {}).get("status")
    if status == "finished":
        print(f"{plan.run_id}: already finished (val_loss={previous.get('val_loss')}), skipping")
    elif status == "diverged":
        print(
            f"{plan.run_id}: diverged before ({previous.get('error')}); kept and skipped, since "
            f"rerunning gives the same non-finite loss: delete {plan.run_dir} to retrain it"
        )
    elif status == "failed" and not rerun_failed:
        print(
            f"{plan.run_id}: failed before ({previous.get('error')}); skipped: "
            "launch.rerun_failed=true retrains it from its last checkpoint"
        )
    else:
        return False
    return True


def run(plan: RunPlan, rerun_failed: bool = False) -> dict[str, Any]:
    """Train the planned run to the end of its budget, writing its record; returns the summary.

    A finished or diverged run is skipped, a failed one too unless `rerun_failed`; otherwise the
    run continues from its newest checkpoint when it has one.
    """
    policy = checkpoint_policy(plan.config.get("checkpoint"))
    record = RunRecord(plan.run_dir)
    if _skip(plan, previous := record.read_summary(), rerun_failed):
        return previous

    cfg = plan.config
    hw = plan.hardware
    torch.manual_seed(cfg["seed"])
    model = GPT(plan.model).to(hw.device)
    step_model = torch.compile(model) if hw.compile else model
    optimizer = build_optimizer(model, plan, OmegaConf.create(cfg["train"]))
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
    # Everything above only reads, so a config or data error leaves no run directory behind.
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        runs_dir = plan.config["paths"]["runs_dir"]
        raise ConfigError(
            f"cannot write the run directory {plan.run_dir} ({err.strerror or err}): make "
            f"paths.runs_dir={runs_dir} writable or point paths.runs_dir at writable storage"
        ) from None
    with sigterm_interrupts(), RunLock(plan.run_dir):
        # Another process may have ended the run while this one was building.
        if _skip(plan, previous := record.read_summary(), rerun_failed):
            return previous
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(cfg))
        newest = latest_checkpoint(plan.run_dir)
        if newest is None:
            remove_stale_temps(plan.run_dir)
            record.start(config_yaml)
            loop = LoopState.fresh(hw.device)
        else:
            loop = resume_training_state(
                newest,
                run_id=plan.run_id,
                config_hash=plan.config_hash,
                model=model,
                optimizer=optimizer,
                loader=batches,
                device=hw.device,
            )
            record.resume(config_yaml, loop.step)
            print(f"{plan.run_id}: resuming from {newest.name} (resume {loop.resumes})")
        return _train(plan, policy, record, model, step_model, optimizer, batches, val, loop)


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
    micro = loop.micro_batch_size or plan.micro_batch_size
    sequences = batch_tokens // plan.seq_len  # per optimizer step
    logger: RunLogger | None = None
    wall_start = time.perf_counter()
    last = loop.last

    def log_eval(step: int, lr: float, tokens_per_s: float | None) -> None:
        result = evaluate(model, val, hw, token_bytes)
        flops_per_s = plan.flops.flops_exact * tokens_per_s if tokens_per_s else None
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
        record.append_metrics(row)
        logger.metrics(row)

    def checkpoint() -> None:
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
            wall_time_s=loop.wall_before_s + time.perf_counter() - wall_start,
            train_time_s=loop.train_time_s,
            tokens_per_s=(tokens / loop.train_time_s) if loop.train_time_s else None,
            started_at=loop.started_at,
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
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
            step_loss, micro_used = accumulate_with_backoff(
                step_model, optimizer, xs, ys, micro, plan.min_micro_batch_size, hw,
                on_retry=lambda smaller, step=step: logger.print(
                    f"{plan.run_id}: out of memory in step {step}; retrying it with "
                    f"micro_batch_size {smaller} x {sequences // smaller} accumulation steps"
                ),
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
            if step == total_steps or policy.due(loop.train_time_s, saved_at_train_s):
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
        print(
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
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(code)

    plan: RunPlan | None = None
    try:
        plan = plan_run(cfg, _task_overrides())
        # run() builds the data loaders (which check the split against seq_len) before it
        # writes anything, so their errors too leave no run directory behind.
        rerun_failed = cfg.launch.rerun_failed
        if not isinstance(rerun_failed, bool):
            raise ConfigError(f"launch.rerun_failed={rerun_failed!r} must be true or false")
        summary = run(plan, rerun_failed=rerun_failed)
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
