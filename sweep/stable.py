"""Shared stable phases: WSD runs that differ only in their budget are one run until a cooldown.

With schedule.share_stable, a run saves its state where its cooldown begins, under
<runs_dir>/.stable/<stable hash>/, and a run that starts afresh continues from the newest such state
at or before its own cooldown: a sweep of budgets costs its longest run plus the shorter cooldowns
(Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations").
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.checkpoint import TEMP_GLOB, checkpoint_path, checkpoint_step, list_checkpoints

if TYPE_CHECKING:
    from sweep.plan import RunPlan

# Hidden, so sweep.status and sweep.collect never take it for an experiment or a run.
STABLE_DIR = ".stable"
# A temp file no writer has touched for this long was left by a killed one (a writer streams a
# state of GBs in well under a minute, touching the file as it goes): removed before a save.
ABANDONED_TEMP_S = 600.0


def stable_dir(plan: RunPlan, sharded: bool = False) -> Path | None:
    """Where the run's trajectory keeps its stable-phase states, or None when it shares none.

    States of sharded runs (FSDP: the optimizer state keyed by parameter name) and of replicated
    ones (one process or DDP) live apart: each kind continues only its own.
    """
    if plan.stable_hash is None:
        return None
    return _folder(Path(plan.config["paths"]["runs_dir"]), plan.stable_hash, sharded)


def _folder(runs_dir: Path, stable_hash: str, sharded: bool) -> Path:
    return runs_dir / STABLE_DIR / stable_hash[:16] / ("sharded" if sharded else "replicated")


def branch_step(plan: RunPlan) -> int | None:
    """The step after which the run's cooldown begins (where it saves its stable state)."""
    return plan.schedule.cooldown_start if plan.stable_hash is not None else None


def find_stable_state(plan: RunPlan, sharded: bool = False) -> Path | None:
    """The newest saved state of the run's trajectory at or before its own cooldown, if any.

    A state at its cooldown step itself may be the run's own (an earlier attempt's) and is taken
    too: the cooldown then starts at once. States of later steps are past this run's cooldown.
    """
    folder, last = stable_dir(plan, sharded), branch_step(plan)
    if folder is None or last is None:
        return None
    return newest_state(folder, last)


def newest_state(folder: Path, last_step: int) -> Path | None:
    """The newest state in a stable folder at a step in [1, last_step], if any."""
    usable = [p for p in list_checkpoints(folder) if 0 < checkpoint_step(p) <= last_step]
    return usable[-1] if usable else None


def state_for(run_dir: Path, resolved: dict[str, Any]) -> Path | None:
    """The stable state a run would continue from when started afresh, from its config.yaml's
    resolved section (sweep.status: it has no plan); its runs folder is two levels up."""
    stable, schedule = resolved.get("stable_hash"), resolved.get("schedule")
    try:
        last = int(schedule["total_steps"]) - int(schedule["cooldown_steps"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(stable, str):
        return None
    return newest_state(_folder(run_dir.parent.parent, stable, sharded=False), last)


def needs_stable_save(plan: RunPlan, step: int, sharded: bool = False) -> bool:
    """Whether the run should save its stable state after `step` (not already saved there)."""
    folder = stable_dir(plan, sharded)
    return (
        folder is not None
        and step == branch_step(plan)
        and not checkpoint_path(folder, step).exists()
    )


def remove_abandoned_temps(folder: Path, now: float | None = None) -> list[Path]:
    """Delete the temp files of killed writers in a stable folder (untouched for ABANDONED_TEMP_S;
    a younger one may be another run's save in progress); returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for path in sorted(folder.glob(TEMP_GLOB)):
        with contextlib.suppress(FileNotFoundError):  # its writer renamed or removed it meanwhile
            if now - path.stat().st_mtime > ABANDONED_TEMP_S:
                path.unlink()
                removed.append(path)
    return removed
