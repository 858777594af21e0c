"""Start one planned run: build its model and data, take its lock, decide from its files whether
to skip it, start it afresh or resume it, and hand it to sweep.loop.

sweep.train (the CLI) imports this only once the plan has passed: this is where torch loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from data import eval_windows
from data.loader import train_windows
from models import GPT
from sweep.checkpoint import (
    LoopState,
    branch_training_state,
    checkpoint_policy,
    latest_checkpoint,
    remove_stale_temps,
    resume_training_state,
)
from sweep.distributed import SINGLE, Distributed, load_full_states
from sweep.errors import ConfigError
from sweep.lock import RunLock, sigterm_interrupts
from sweep.loop import eval_steps, train_loop
from sweep.plan import RunPlan
from sweep.records import RunRecord, code_version
from sweep.stable import find_stable_state
from sweep.step import build_optimizer


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
    if dist.enabled and plan.hardware.compile_scope != "model":
        # DDP's hooks and FSDP's sharding around compiled regions are untested here
        raise ConfigError(
            f"train.compile_scope={plan.hardware.compile_scope} compiles a single process's "
            f"model, and this run has {dist.world_size} ranks: use train.compile_scope=model"
        )
    record = RunRecord(plan.run_dir)
    # Every rank reads the same summary here, before any of them writes.
    if _skip(plan, previous := record.read_summary(), rerun_failed, dist.say):
        return previous

    cfg = plan.config
    hw = plan.hardware
    torch.manual_seed(cfg["seed"])
    model = hw.place(GPT(plan.model, loss_chunk_tokens=cfg["train"]["loss_chunk_tokens"],
                         loss_attention=plan.loss_attention,
                         loss_kernel=cfg["train"]["loss_kernel"],
                         residual_dtype=hw.residual_torch_dtype))
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
                    stable = None if newest else find_stable_state(plan, dist.sharded)
                    decision = (
                        ("resume", str(newest)) if newest
                        else ("branch", str(stable)) if stable
                        else ("fresh", None)
                    )
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
        eval_now = False
        load_states = (
            (lambda m, o: load_full_states(model, optimizer, m, o)) if dist.sharded else None
        )
        if kind == "fresh":
            if dist.is_main:
                remove_stale_temps(plan.run_dir)
                record.start(config_yaml)
            loop = LoopState.fresh(hw.device)
        elif kind == "branch":
            assert plan.stable_hash is not None
            loop, rows = branch_training_state(
                Path(value), run_id=plan.run_id, stable_hash=plan.stable_hash, model=model,
                optimizer=optimizer, loader=batches, device=hw.device, load_states=load_states,
            )
            if dist.is_main:
                remove_stale_temps(plan.run_dir)
                record.start(config_yaml, rows)
            # One of the run's own eval steps that the other run did not evaluate
            eval_now = loop.step in eval_steps(plan.budget.steps, cfg["eval"]["points"]) and all(
                row.get("step") != loop.step for row in rows)
            donor = loop.branched_from or {}
            if loop.resumes:  # its own state: an earlier attempt stopped before its checkpoint
                dist.say(f"{plan.run_id}: resuming from its stable-phase state at step "
                         f"{loop.step} (resume {loop.resumes})")
            else:
                dist.say(
                    f"{plan.run_id}: continuing the stable phase of {donor.get('run_id')} after "
                    f"step {loop.step} of {plan.budget.steps} ({donor.get('tokens'):,} tokens not "
                    "retrained)"
                )
                _note_other_code(plan.run_id, donor.get("code_version"), Path(value), dist)
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
                load_states=load_states,
            )
            if dist.is_main:
                record.resume(config_yaml, loop.step)
            dist.say(f"{plan.run_id}: resuming from {newest.name} (resume {loop.resumes})")
        return train_loop(
            plan, policy, record, model, step_model, optimizer, batches, val, loop, dist,
            eval_now=eval_now,
        )


def _note_other_code(run_id: str, trained_by: str | None, state: Path, dist: Distributed) -> None:
    """Say so when a stable state was saved by other code than this: states outlive code
    changes, and the continued run is then not the run this code would train alone."""
    here = code_version()
    if trained_by not in (None, "unknown", here) and here != "unknown":
        dist.say(f"{run_id}: note: its shared steps were trained by code {trained_by}, this is "
                 f"{here}; delete {state.parent} to retrain them with this code")
