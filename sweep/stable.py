"""Shared stable phases: WSD runs that differ only in their budget are one run until a cooldown.

With schedule.share_stable, a run saves its state where its cooldown begins, under
<runs_dir>/.stable/<stable hash>/, and a run that starts afresh continues from the newest such state
at or before its own cooldown: a sweep of budgets costs its longest run plus the shorter cooldowns
(Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sweep.checkpoint import checkpoint_path, checkpoint_step, list_checkpoints

if TYPE_CHECKING:
    from sweep.plan import RunPlan

# Hidden, so sweep.status and sweep.collect never take it for an experiment or a run.
STABLE_DIR = ".stable"


def stable_dir(plan: RunPlan) -> Path | None:
    """Where the run's trajectory keeps its stable-phase states, or None when it shares none."""
    if plan.stable_hash is None:
        return None
    return Path(plan.config["paths"]["runs_dir"]) / STABLE_DIR / plan.stable_hash[:16]


def branch_step(plan: RunPlan) -> int | None:
    """The step after which the run's cooldown begins (where it saves its stable state)."""
    return plan.schedule.cooldown_start if plan.stable_hash is not None else None


def find_stable_state(plan: RunPlan) -> Path | None:
    """The newest saved state of the run's trajectory at or before its own cooldown, if any.

    A state at its cooldown step itself is the run's own (an earlier attempt's) and is taken too:
    the cooldown then starts at once. States of later steps are past this run's cooldown.
    """
    folder, last = stable_dir(plan), branch_step(plan)
    if folder is None or last is None:
        return None
    usable = [p for p in list_checkpoints(folder) if 0 < checkpoint_step(p) <= last]
    return usable[-1] if usable else None


def needs_stable_save(plan: RunPlan, step: int) -> bool:
    """Whether the run should save its stable state after `step` (not already saved there)."""
    folder = stable_dir(plan)
    return (
        folder is not None
        and step == branch_step(plan)
        and not checkpoint_path(folder, step).exists()
    )
