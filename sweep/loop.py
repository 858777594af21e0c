"""The training loop of one run: steps, evals, checkpoints and the summary, from a start or a
resumed state (sweep.start sets the run up and decides which).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from data.loader import TrainWindows
from data.synthetic_floor import WindowFloor, dataset_window_floor
from models import GPT
from models.attention_loss import DIVERGED_HINT
from sweep.checkpoint import (
    CheckpointPolicy,
    LoopState,
    checkpoint_step,
    latest_checkpoint,
    save_training_state,
)
from sweep.distributed import Distributed, full_states, no_sync
from sweep.errors import OutOfMemory, RankLost, first_line
from sweep.evaluate import evaluate
from sweep.hardware import out_of_memory
from sweep.lock import signals_deferred
from sweep.logger import RunLogger
from sweep.plan import RunPlan
from sweep.records import RunRecord, build_summary, code_version
from sweep.stable import branch_step, needs_stable_save, remove_abandoned_temps, stable_dir
from sweep.step import accumulate_with_backoff, apply_gradients, fitting_micro_batch


def eval_steps(total_steps: int, points: int) -> list[int]:
    """Step 0, `points` log-spaced steps in [1, total_steps], and the final step, deduplicated."""
    spaced = np.geomspace(1, total_steps, num=int(points))
    return sorted({0, total_steps, *(int(round(s)) for s in spaced)})


def train_loop(
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
    eval_now: bool = False,
) -> dict[str, Any]:
    """Train from `loop`'s step to the end of the budget (evaluating first when `eval_now`),
    checkpointing, and write the summary; returns it."""
    cfg = plan.config
    hw = plan.hardware
    token_bytes = None
    if plan.dataset.token_bytes is not None:
        token_bytes = torch.as_tensor(plan.dataset.token_bytes, dtype=torch.int64, device=hw.device)
    total_steps = plan.budget.steps
    batch_tokens = plan.batch_tokens
    evals_at = set(eval_steps(total_steps, cfg["eval"]["points"]))
    branch_at = branch_step(plan)  # None unless schedule.share_stable
    interval = max(1, int(cfg["logging"]["interval"]))
    sequences = batch_tokens // plan.seq_len // dist.world_size  # per optimizer step and rank
    # A rank's share of the batch must split into whole micro-batches.
    micro = fitting_micro_batch(loop.micro_batch_size or plan.micro_batch_size, sequences)
    # Ranks back off alone, and one retrying a step while the rest wait in its all-reduce would
    # misalign their collectives: under data parallelism an OOM fails the run instead. Nor can
    # CUDA graphs back off: a smaller micro-batch means accumulating (check_cuda_graphs).
    no_backoff = dist.enabled or hw.cuda_graphs
    min_micro = micro if no_backoff else plan.min_micro_batch_size
    sync_once = no_sync(step_model)
    logger: RunLogger | None = None
    wall_start = time.perf_counter()
    last = loop.last

    def log_eval(step: int, lr: float, tokens_per_s: float | None) -> None:
        try:
            result = evaluate(model, val, hw, token_bytes,
                              reduce=None if dist.sharded else dist.sum_,
                              split_on_oom=not dist.enabled)
        except Exception as exc:  # out of memory, also when wrapped; the rest re-raise
            if not out_of_memory(exc):
                raise
            raise OutOfMemory(
                f"out of memory evaluating at step {step} ({first_line(exc)}), "
                + ("per rank at eval.batch_size" if dist.enabled else "one window at a time")
                + ": use a GPU with more memory, a shorter train.seq_len or a smaller model"
            ) from None
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

    def checkpoint(stable: bool = False) -> None:
        """The run's own checkpoint, or (stable) its state where its cooldown begins, with its
        metrics rows so far, for the runs that share its stable phase (sweep.stable)."""
        # The ranks hold identical loader states, and weights and optimizer states too (DDP) or
        # shards of them that every rank gathers onto rank 0 (FSDP): rank 0's checkpoint
        # resumes every rank.
        states = full_states(model, optimizer) if dist.sharded else None
        error: Exception | None = None
        if dist.is_main:
            try:
                folder = stable_dir(plan, dist.sharded) if stable else plan.run_dir
                assert folder is not None
                if stable:
                    folder.mkdir(parents=True, exist_ok=True)
                    remove_abandoned_temps(folder)
                with signals_deferred():  # a write stopped midway reads as a failure
                    save_training_state(
                        folder,
                        None if stable else policy.keep,
                        run_id=plan.run_id,
                        config_hash=plan.config_hash,
                        model=model,
                        optimizer=optimizer,
                        loader=batches,
                        loop=loop,
                        wall_time_s=loop.wall_before_s + time.perf_counter() - wall_start,
                        states=states,
                        extra={"stable_hash": plan.stable_hash, "rows": record.read_metrics(),
                               "code_version": code_version()}
                        if stable else None,
                    )
            except Exception as exc:
                error = exc
            if stable and isinstance(error, OSError):
                # Sharing saves compute; this run's own record is unharmed, so it goes on
                logger.print(
                    f"{plan.run_id}: warning: could not save its stable state at step "
                    f"{loop.step} ({first_line(error)}); the run goes on, and runs of longer "
                    "budgets of its trajectory will train this phase themselves"
                )
                error = None
        # Every rank learns whether rank 0 saved: the others would go on into the next
        # collective and wait there for a rank 0 that has stopped (NCCL: until its timeout)
        if not dist.from_main(error is None):
            if error is not None:
                raise error
            raise RankLost(f"rank 0 could not write the checkpoint of step {loop.step}; it "
                           "says why")

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
            branched_from=loop.branched_from,
            world_size=dist.world_size,
            data_parallel=dist.strategy if dist.enabled else None,
            wall_time_s=loop.wall_before_s + time.perf_counter() - wall_start,
            train_time_s=loop.train_time_s,
            tokens_per_s=(tokens / loop.train_time_s) if loop.train_time_s else None,
            started_at=loop.started_at,
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            # last: evaluated after the times above, so computing it is not in wall_time_s
            window_floor=_window_floor(plan, logger) if dist.is_main else None,
        )
        if dist.is_main:
            record.write_summary(summary)
        if logger is not None:
            logger.close(summary)
        return summary

    status, error = "finished", None
    # Outside the try below: a logger that cannot start (wandb) is a ConfigError, not a run that
    # failed, so no failed summary makes a relaunch skip the run.
    logger = RunLogger(
        cfg["logging"],
        run_dir=plan.run_dir,
        run_id=plan.run_id,
        total_steps=total_steps,
        config=cfg,
        quiet=not dist.is_main,
    )
    try:
        if loop.step == 0:
            log_eval(0, 0.0, None)
        elif eval_now:
            # A run continuing a stable phase at one of its own eval steps the other run did not
            # evaluate: the eval it would have made there (the train loss since that run's last)
            last["train_loss"] = loop.loss_sum.item() / max(loop.loss_steps, 1)
            loop.loss_sum.zero_()
            loop.loss_steps = 0
            log_eval(loop.step, plan.lr * plan.schedule.multiplier(loop.step - 1), None)
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
            try:
                step_loss, micro_used = accumulate_with_backoff(
                    step_model, optimizer, xs, ys, micro, min_micro, hw,
                    on_retry=lambda smaller, step=step: logger.print(
                        f"{plan.run_id}: out of memory in step {step}; retrying it with "
                        f"micro_batch_size {smaller} x {sequences // smaller} accumulation steps"
                    ),
                    no_sync=sync_once,
                )
            except OutOfMemory:
                if not no_backoff:
                    raise
                # Its floor is the micro-batch itself here, not train.min_micro_batch_size
                if dist.enabled:
                    raise OutOfMemory(
                        f"out of memory at train.micro_batch_size={micro} per rank (no back-off "
                        "across ranks): lower train.micro_batch_size, shard with "
                        "train.data_parallel=fsdp, or use GPUs with more memory"
                    ) from None
                raise OutOfMemory(
                    f"out of memory at train.micro_batch_size={micro} (no back-off: "
                    f"train.compile_mode={hw.compile_mode} replays CUDA graphs, which cannot "
                    "accumulate gradients): use train.compile_mode=max-autotune-no-cudagraphs, "
                    "a GPU with more memory or a smaller model"
                ) from None
            if micro_used != micro:
                loop.oom_retries += 1
                micro = loop.micro_batch_size = micro_used
            loop.loss_sum += step_loss
            try:
                apply_gradients(model, optimizer, cfg["train"]["grad_clip"])
            except Exception as exc:  # out of memory, also when wrapped; the rest re-raise
                if not out_of_memory(exc):
                    raise
                # Most likely AdamW making its state on the first step: 8 bytes a parameter
                raise OutOfMemory(
                    f"out of memory in the optimizer step at step {step} "
                    f"({first_line(exc)}): the weights, gradients and AdamW state do not fit; "
                    + ("shard them with train.data_parallel=fsdp, " if dist.enabled else "")
                    + "use a GPU with more memory or a smaller model"
                ) from None
            loop.step = step
            loop.loss_steps += 1
            window_steps += 1
            at_eval = step in evals_at
            # Where the cooldown begins the loss is read too: a diverged run shares no state
            at_branch = step == branch_at
            if not (at_eval or at_branch or step % interval == 0):
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
                if plan.loss_attention:
                    error += DIVERGED_HINT  # the loss as attention's own NaN
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
            # Rank 0's view of the folder decides: all ranks gather the states together (FSDP).
            if at_branch and dist.from_main(needs_stable_save(plan, step, dist.sharded)):
                checkpoint(stable=True)
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
        dist.say(
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
        if dist.enabled and (isinstance(exc, RankLost) or _lost_rank(exc)):
            # Another rank is gone, or stopped on its own error (which it reports): the run is
            # interrupted, not failed, and resumes from its last checkpoint when relaunched
            logger.close({"status": "interrupted"})
            if isinstance(exc, RankLost):
                raise
            raise RankLost(f"a rank was lost after step {loop.step} ({first_line(exc)}); "
                           "relaunch to resume from the last checkpoint") from None
        # Record why the run stopped (its checkpoints stay), then let the error surface.
        finish("failed", f"{type(exc).__name__}: {exc}")
        raise

    summary = finish(status, error)
    _report(plan, summary, logger)
    return summary


def _lost_rank(exc: BaseException) -> bool:
    """A collective that failed because another rank is gone: torch's DistError, or gloo's
    RuntimeError about its connection to a peer."""
    import torch.distributed as torch_dist

    text = str(exc)
    return isinstance(exc, torch_dist.DistError) or (
        isinstance(exc, RuntimeError) and "gloo" in text and "peer" in text)


def _window_floor(plan: RunPlan, logger: RunLogger | None) -> WindowFloor | None:
    """The lowest loss at the run's seq_len on the synthetic corpus (None for text). A run's
    record matters more than this number: a failure to compute it is a warning, not a lost run."""
    try:
        return dataset_window_floor(plan.dataset.path, plan.dataset.manifest, plan.seq_len)
    except Exception as exc:  # noqa: BLE001 - any bug here must still let summary.json be written
        if logger is not None:
            logger.print(f"{plan.run_id}: warning: no window floor in the record "
                         f"({type(exc).__name__}: {first_line(exc)})")
        return None


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
        floor = summary["dataset"]["window_floor_nats"]
        parts.append(
            f"synthetic corpus: entropy rate {truth['entropy_rate_nats']:.4f} nats/token, "
            + ("" if floor is None else f"floor at seq_len {plan.seq_len} {floor:.4f}, ")
            + f"unigram entropy {truth['unigram_entropy_nats']:.4f}"
        )
    parts.append(f"record: {plan.run_dir}")
    for line in parts:
        logger.print(line)
