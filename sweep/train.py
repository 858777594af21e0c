"""Train one run and record it: `python -m sweep.train model=gpt_1m budget.tokens=2e5`.

The loop follows the plan exactly (steps, schedule, evals) and writes DESIGN.md's run record.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data import DataError, eval_windows
from data.hydra_guard import unknown_choice
from data.loader import train_windows
from models import GPT
from sweep.errors import ConfigError
from sweep.evaluate import evaluate
from sweep.logger import RunLogger
from sweep.plan import RunPlan, plan_run
from sweep.records import RunRecord, code_version


def eval_steps(total_steps: int, points: int) -> list[int]:
    """Step 0, `points` log-spaced steps in [1, total_steps], and the final step, deduplicated."""
    spaced = np.geomspace(1, total_steps, num=int(points))
    return sorted({0, total_steps, *(int(round(s)) for s in spaced)})


def build_optimizer(
    model: torch.nn.Module, plan: RunPlan, train_cfg: DictConfig
) -> torch.optim.AdamW:
    """AdamW with decay on matrices (linear and embedding weights) only, fused on CUDA."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": train_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=train_cfg.lr,
        betas=(train_cfg.beta1, train_cfg.beta2),
        eps=train_cfg.eps,
        fused=plan.hardware.device.type == "cuda",
    )


def _summary(plan: RunPlan, status: str, **fields: Any) -> dict[str, Any]:
    m = plan.model
    tokens = fields.pop("tokens")
    return {
        "status": status,
        "run_id": plan.run_id,
        "experiment": plan.experiment,
        "model_name": plan.model_name,
        "shape": {
            "n_layer": m.n_layer,
            "d_model": m.d_model,
            "n_head": m.n_head,
            "head_dim": m.head_dim,
            "vocab_size": m.vocab_size,
            "seq_len": plan.seq_len,
            "max_seq_len": m.max_seq_len,
            "positions": m.positions,
            "tie_embeddings": m.tie_embeddings,
            "bias": m.bias,
            "mlp_ratio": m.mlp_ratio,
        },
        "params": {
            "total": plan.params.total,
            "embedding": plan.params.embedding,
            "position": plan.params.position,
            "head": plan.params.head,
            "non_embedding": plan.params.non_embedding,
        },
        "tokens": tokens,
        "steps": fields.pop("steps"),
        "batch_tokens": plan.batch_tokens,
        "budget": {
            "kind": plan.budget.kind,
            "value": plan.budget.value,
            "tokens": plan.budget.tokens,
        },
        "flops_per_token": {
            "6nd": plan.flops.flops_6nd,
            "6nd_total": plan.flops.flops_6nd_total,
            "exact": plan.flops.flops_exact,
        },
        "flops_6nd": plan.flops.flops_6nd * tokens,
        "flops_6nd_total": plan.flops.flops_6nd_total * tokens,
        "flops_exact": plan.flops.flops_exact * tokens,
        **fields,
        "dataset": {
            "name": plan.dataset.name,
            "config_hash": plan.dataset.manifest.get("config_hash"),
            "tokenizer_hash": plan.dataset.manifest.get("tokenizer", {}).get("hash"),
        },
        "device": plan.hardware.device_name,
        "precision": plan.hardware.precision,
        "seed": plan.config["seed"],
        "config_hash": plan.config_hash,
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def run(plan: RunPlan) -> dict[str, Any]:
    """Train the planned run to the end of its budget, writing its record; returns the summary."""
    record = RunRecord(plan.run_dir)
    previous = record.read_summary()
    if previous and previous.get("status") == "finished":
        print(f"{plan.run_id}: already finished (val_loss={previous.get('val_loss')}), skipping")
        return previous

    cfg = plan.config
    hw = plan.hardware
    torch.manual_seed(cfg["seed"])
    model = GPT(plan.model).to(hw.device)
    step_model = torch.compile(model) if hw.compile else model
    optimizer = build_optimizer(model, plan, OmegaConf.create(cfg["train"]))
    base_lr = plan.lr
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
    token_bytes = None
    if plan.dataset.token_bytes is not None:
        token_bytes = torch.as_tensor(plan.dataset.token_bytes, dtype=torch.int64, device=hw.device)

    total_steps = plan.budget.steps
    batch_tokens = plan.batch_tokens
    evals_at = set(eval_steps(total_steps, cfg["eval"]["points"]))
    interval = max(1, int(cfg["logging"]["interval"]))

    record.start(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    logger: RunLogger | None = None
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    wall_start = time.perf_counter()
    train_time_s = 0.0
    loss_sum = torch.zeros((), device=hw.device)  # summed on device: no host sync per step
    loss_steps = 0
    done_steps = 0  # optimizer steps completed
    last = {"train_loss": None, "val_loss": None, "val_bpb": None}

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

    def finish(status: str, error: str | None) -> dict[str, Any]:
        summary = _summary(
            plan,
            status,
            tokens=done_steps * batch_tokens,
            steps=done_steps,
            **last,
            error=error,
            wall_time_s=time.perf_counter() - wall_start,
            train_time_s=train_time_s,
            tokens_per_s=(done_steps * batch_tokens / train_time_s) if train_time_s else None,
            started_at=started_at,
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
        log_eval(0, 0.0, None)
        window_start, window_steps = time.perf_counter(), 0
        for step in range(1, total_steps + 1):
            lr = base_lr * plan.schedule.multiplier(step - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            xs, ys = next(batches)
            for x, y in zip(xs.chunk(plan.grad_accum), ys.chunk(plan.grad_accum), strict=True):
                with hw.autocast():
                    loss = step_model(x, y) / plan.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            if cfg["train"]["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train"]["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done_steps = step
            loss_steps += 1
            window_steps += 1
            at_eval = step in evals_at
            if not (at_eval or step % interval == 0):
                continue
            # Reading the loss syncs the GPU, so it happens only every `interval` steps.
            hw.synchronize()
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * batch_tokens / elapsed
            train_loss = loss_sum.item() / loss_steps
            logger.step(step, train_loss, tokens_per_s)
            if not math.isfinite(train_loss):
                last["train_loss"] = train_loss
                status, error = "diverged", f"non-finite training loss by step {step}"
                break
            if at_eval:
                train_time_s += elapsed
                last["train_loss"] = train_loss
                loss_sum.zero_()
                loss_steps = 0
                log_eval(step, lr, tokens_per_s)
                # Evaluation time is not training time: the throughput window restarts after it.
                window_start, window_steps = time.perf_counter(), 0
        if status == "finished" and not math.isfinite(last["val_loss"]):
            status, error = "diverged", "non-finite validation loss"
    except (KeyboardInterrupt, Exception) as exc:
        # Record why the run stopped, then let the error surface with its traceback.
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


def main(cfg: DictConfig) -> float | None:
    """Hydra task: plan (exit 2 with one line on a bad config), then train and record."""
    try:
        plan = plan_run(cfg, _task_overrides())
        # run() builds the data loaders (which check the split against seq_len) before it
        # writes anything, so their errors too leave no run directory behind.
        summary = run(plan)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if summary["status"] != "finished":
        print(
            f"error: run {plan.run_id} {summary['status']}: {summary.get('error')}", file=sys.stderr
        )
        raise SystemExit(1)
    return summary["val_loss"]


def cli() -> None:
    """Entry point: reject unknown presets in one line, then hand the command line to Hydra."""
    import hydra

    problem = unknown_choice(sys.argv[1:], {"model": "model preset", "data": "dataset"})
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    hydra.main(version_base="1.3", config_path="../configs", config_name="train")(main)()


if __name__ == "__main__":
    cli()
