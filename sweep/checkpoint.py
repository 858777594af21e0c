"""Checkpoints: atomic run_dir/checkpoint-{step:08d}.pt files a run continues from bit for bit.

torch is imported lazily, so listing checkpoints by name (sweep.status) needs no torch.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.shards import atomic_write
from sweep.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from data.loader import TrainWindows

FORMAT = "sweep-checkpoint"
VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
# Temp files start with a dot so no glob for checkpoints can ever match a half-written one.
TEMP_GLOB = ".checkpoint-*.pt.tmp-*"


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to write checkpoints (seconds of training between them) and how many to keep."""

    interval_s: float
    keep: int

    def due(self, train_time_s: float, saved_at_train_time_s: float) -> bool:
        """Whether interval_s of training has passed since the last checkpoint."""
        return train_time_s - saved_at_train_time_s >= self.interval_s


def checkpoint_policy(cfg: Mapping[str, Any] | None) -> CheckpointPolicy:
    """Validate the `checkpoint` config section; ConfigError in one line naming value and fix."""
    if cfg is None:
        raise ConfigError(
            "the config has no checkpoint section: add checkpoint.interval_s and checkpoint.keep "
            "(see configs/train.yaml)"
        )
    interval, keep = cfg.get("interval_s"), cfg.get("keep")
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or math.isnan(interval)
        or interval < 0
    ):
        raise ConfigError(
            f"checkpoint.interval_s={interval!r} must be a number of seconds >= 0: set e.g. "
            "checkpoint.interval_s=300 (0: at every logging.interval; inf: only at the end)"
        )
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(
            f"checkpoint.keep={keep!r} must be an integer >= 1: set e.g. checkpoint.keep=1"
        )
    return CheckpointPolicy(interval_s=float(interval), keep=keep)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint after `step` optimizer steps lives."""
    return Path(run_dir) / f"checkpoint-{step:08d}.pt"


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint file holds, read from its name (ValueError if not one)."""
    match = _NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not named checkpoint-<step>.pt")
    return int(match.group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """run_dir's checkpoints, oldest step first (empty when the directory does not exist)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint in run_dir, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temp files a killed writer left behind (the run lock makes this process the only
    writer, so none of them is in progress); returns what was removed."""
    stale = sorted(Path(run_dir).glob(TEMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(
    run_dir: Path, step: int, payload: Mapping[str, Any], keep: int | None
) -> Path:
    """torch.save payload as run_dir's checkpoint for `step`, atomically, keeping the newest `keep`.

    A crash at any point leaves the previous checkpoint intact and never a partial file under a
    checkpoint name: the bytes go to a temp file, are fsynced, renamed, and the rename fsynced.
    keep=None keeps every checkpoint and leaves others' temp files alone: a folder several runs
    write into (the stable phases of sweep.stable), where a temp file may be another's in progress.
    """
    import torch

    run_dir = Path(run_dir)
    if keep is not None:
        remove_stale_temps(run_dir)
    final = checkpoint_path(run_dir, step)
    # A hidden temp name: never listed as a checkpoint, and removed by remove_stale_temps.
    tmp = run_dir / f".{final.name}.tmp-{os.getpid()}"
    # Streamed into the file: no second copy of the state in memory.
    atomic_write(final, lambda handle: torch.save(dict(payload), handle), tmp=tmp)
    for old in list_checkpoints(run_dir)[:-keep] if keep is not None else []:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; ConfigError in one line when it is not a readable one."""
    import torch

    try:
        # weights_only: a checkpoint is data, never code to run (a plain pickle could be).
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise ConfigError(
            f"checkpoint {path} is unreadable ({type(err).__name__}): delete it to resume from "
            "an older checkpoint or retrain the run"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a sweep checkpoint: delete it to retrain the run")
    if payload.get("version") != VERSION:
        raise ConfigError(
            f"checkpoint {path} has version {payload.get('version')!r}, this code reads "
            f"{VERSION}: delete it to retrain the run"
        )
    return payload


def rng_state() -> dict[str, Any]:
    """Every RNG training may draw from: torch CPU, each CUDA device in use, numpy, python."""
    import numpy as np
    import torch

    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        # Only when CUDA is already in use: reading the state would otherwise create a context.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        # Lists, not arrays, so that torch.load(weights_only=True) reads them back.
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()},
        },
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() returned (CUDA states only for devices this machine has)."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    np_state = state["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {**np_state["state"], "key": key}})
    random.setstate(state["python"])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class LoopState:
    """The training loop's bookkeeping: what a resumed run needs besides model and optimizer."""

    loss_sum: torch.Tensor  # summed train loss since the last eval, on the training device
    step: int = 0  # optimizer steps completed
    loss_steps: int = 0  # steps in loss_sum
    last: dict[str, float | None] = field(
        default_factory=lambda: {"train_loss": None, "val_loss": None, "val_bpb": None}
    )
    train_time_s: float = 0.0  # all attempts, up to `step`
    wall_before_s: float = 0.0  # wall time of earlier attempts, up to their last checkpoint
    resumes: int = 0
    started_at: str = field(default_factory=_now)
    micro_batch_size: int | None = None  # set once an out-of-memory error has lowered the plan's
    oom_retries: int = 0  # training steps retried with a smaller micro-batch after running out
    # A run that continued another's stable phase (sweep.stable): that run's id, its step and
    # tokens there, and the code version that trained them
    branched_from: dict[str, Any] | None = None

    @classmethod
    def fresh(cls, device: torch.device) -> LoopState:
        """The state before the first step."""
        import torch

        return cls(loss_sum=torch.zeros((), device=device))


def save_training_state(
    run_dir: Path,
    keep: int | None,
    *,
    run_id: str,
    config_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: TrainWindows,
    loop: LoopState,
    wall_time_s: float,
    states: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Checkpoint the run after loop.step optimizer steps; `model` is the uncompiled module.

    `states`: the model's and optimizer's full state dicts where the module's own are sharded
    (FSDP, gathered by sweep.distributed.full_states; the optimizer's keyed by parameter name).
    `extra`: more keys for the payload (a stable phase's hash and metrics rows).
    """
    model_state, optim_state = states or (model.state_dict(), optimizer.state_dict())
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": run_id,
        "config_hash": config_hash,
        "step": loop.step,
        # How the optimizer state is keyed: by parameter index (one process, DDP) or by name.
        "layout": "sharded" if states else "replicated",
        "model": model_state,
        "optimizer": optim_state,
        "loader": loader.state_dict(),
        "rng": rng_state(),
        "loop": {
            "loss_sum": loop.loss_sum.detach().cpu(),
            "loss_steps": loop.loss_steps,
            "last": dict(loop.last),
            "train_time_s": loop.train_time_s,
            "wall_time_s": wall_time_s,
            "resumes": loop.resumes,
            "started_at": loop.started_at,
            "micro_batch_size": loop.micro_batch_size,
            "oom_retries": loop.oom_retries,
            "branched_from": loop.branched_from,
        },
        "saved_at": _now(),
        **(extra or {}),
    }
    return save_checkpoint(run_dir, loop.step, payload, keep)


def resume_training_state(
    path: Path,
    *,
    run_id: str,
    config_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: TrainWindows,
    device: torch.device,
    load_states: Callable[[Mapping[str, Any], Mapping[str, Any]], None] | None = None,
) -> LoopState:
    """Load checkpoint `path` into model, optimizer, loader and the RNGs; returns the loop state
    (resumes counted up by one). ConfigError when the checkpoint is another run's."""
    remove_stale_temps(Path(path).parent)
    payload = load_checkpoint(path)
    if (payload.get("run_id"), payload.get("config_hash")) != (run_id, config_hash):
        raise ConfigError(
            f"checkpoint {path} belongs to run {payload.get('run_id')} (config_hash "
            f"{str(payload.get('config_hash'))[:10]}), not {run_id}: delete it to retrain this run"
        )
    _restore(payload, path, model, optimizer, loader, load_states)
    return _resumed_loop(payload, device)


def _resumed_loop(payload: Mapping[str, Any], device: torch.device) -> LoopState:
    """The loop state of a run continuing its own checkpoint: one more resume."""
    loop = payload["loop"]
    return LoopState(
        loss_sum=loop["loss_sum"].to(device),
        step=payload["step"],
        loss_steps=loop["loss_steps"],
        last=dict(loop["last"]),
        train_time_s=loop["train_time_s"],
        wall_before_s=loop["wall_time_s"],
        resumes=loop["resumes"] + 1,
        started_at=loop["started_at"],
        # A run resumed on a smaller GPU may run out again; on a bigger one it keeps the lowered
        # micro-batch, which changes speed but not the trajectory's hyperparameters.
        micro_batch_size=loop.get("micro_batch_size"),
        oom_retries=loop.get("oom_retries", 0),
        branched_from=loop.get("branched_from"),
    )


def branch_training_state(
    path: Path,
    *,
    run_id: str,
    stable_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: TrainWindows,
    device: torch.device,
    load_states: Callable[[Mapping[str, Any], Mapping[str, Any]], None] | None = None,
) -> tuple[LoopState, list[dict[str, Any]]]:
    """Load another run's stable-phase state (sweep.stable) as this run's start: model, optimizer,
    loader and RNGs as that run had them after the step, and its metrics rows up to it.

    The loop's bookkeeping goes on from that run's (its training time covers the shared steps, so
    tokens/s stays the trajectory's), as a fresh attempt: no resumes, started now. A state this
    run saved itself (an attempt that stopped before its next checkpoint) resumes it instead.
    """
    try:
        payload = load_checkpoint(path)
    except ConfigError:
        # Short: a sweep's failure line keeps 200 characters, and the path is long
        raise ConfigError(
            f"stable state {path} is unreadable: delete it (runs then continue an older one)"
        ) from None
    if payload.get("stable_hash") != stable_hash:
        raise ConfigError(
            f"stable state {path} is of another trajectory (stable_hash "
            f"{str(payload.get('stable_hash'))[:10]}): delete it"
        )
    _restore(payload, path, model, optimizer, loader, load_states)
    loop = payload["loop"]
    step = payload["step"]
    if payload["run_id"] == run_id:
        return _resumed_loop(payload, device), list(payload.get("rows", []))
    state = LoopState(
        loss_sum=loop["loss_sum"].to(device),
        step=step,
        loss_steps=loop["loss_steps"],
        last=dict(loop["last"]),
        train_time_s=loop["train_time_s"],
        wall_before_s=loop["wall_time_s"],
        branched_from={"run_id": payload["run_id"], "step": step,
                       "tokens": payload["loader"]["batch_size"] * payload["loader"]["seq_len"]
                       * step,
                       # the code that trained the shared steps: a state outlives code changes
                       "code_version": payload.get("code_version")},
    )
    return state, list(payload.get("rows", []))


def _restore(
    payload: Mapping[str, Any],
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: TrainWindows,
    load_states: Callable[[Mapping[str, Any], Mapping[str, Any]], None] | None,
) -> None:
    """Load a checked checkpoint's model, optimizer, loader and RNG states."""
    step = payload["step"]
    if payload["loader"].get("step") != step:
        raise ConfigError(
            f"checkpoint {path} is inconsistent (loader at step {payload['loader'].get('step')}, "
            f"optimizer at step {step}): delete it to retrain the run"
        )
    layout = payload.get("layout", "replicated")
    if layout != ("sharded" if load_states else "replicated"):
        raise ConfigError(
            f"checkpoint {path} was written by a {layout} run: resume it "
            + ("on several ranks (torchrun or SLURM tasks) with train.data_parallel=fsdp"
               if layout == "sharded" else "with train.data_parallel=ddp or in one process")
        )
    if load_states:
        load_states(payload["model"], payload["optimizer"])
    else:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
    loader.load_state_dict(payload["loader"])
    set_rng_state(payload["rng"])
