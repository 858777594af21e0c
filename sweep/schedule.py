"""Learning-rate schedules matched to a run's exact number of optimizer steps.

Linear warmup, then cosine decay, a constant rate, or warmup-stable-decay (WSD, linear cooldown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweep.errors import ConfigError

SCHEDULE_KINDS = ("cosine", "constant", "wsd")


@dataclass(frozen=True)
class Schedule:
    """LR multiplier as a function of the optimizer step (0-based) over `total_steps`."""

    kind: str
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    cooldown_steps: int

    @property
    def cooldown_start(self) -> int:
        """Optimizer steps done at the peak LR (or in its warmup) before the decay begins (wsd);
        for cosine the decay begins right after the warmup."""
        if self.kind == "wsd":
            return self.total_steps - self.cooldown_steps
        return self.total_steps if self.kind == "constant" else self.warmup_steps

    def multiplier(self, step: int) -> float:
        """Fraction of the peak LR to use for optimizer step `step`."""
        if step < self.warmup_steps:
            # (step + 1) so the first update is not wasted at LR 0.
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            # Step total_steps - 1 ends at min_lr_ratio, even when it is the one step after the
            # warmup (span 0)
            span = self.total_steps - 1 - self.warmup_steps
            progress = min((step - self.warmup_steps) / span, 1.0) if span > 0 else 1.0
            cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
        # wsd: hold the peak, then decay linearly to min_lr_ratio over the last cooldown_steps.
        cooldown_start = self.total_steps - self.cooldown_steps
        if step < cooldown_start:
            return 1.0
        progress = (step - cooldown_start + 1) / self.cooldown_steps
        return 1.0 - (1.0 - self.min_lr_ratio) * progress


def build_schedule(
    cfg: Mapping[str, Any], total_steps: int, *, warmup_steps: int | None = None
) -> Schedule:
    """Validate the `schedule` config group and size it to the run.

    `schedule.warmup_fraction` null means the warmup comes from a rule (sweep.hparams): the caller
    passes that rule's `warmup_steps`; a number fixes the warmup as that fraction of the steps.
    """
    kind = cfg["kind"]
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(
            f"schedule.kind={kind!r} is unknown: use one of {', '.join(SCHEDULE_KINDS)}"
        )
    fraction = cfg["warmup_fraction"]
    for key in ("warmup_fraction", "min_lr_ratio", "cooldown_fraction"):
        value = cfg[key]
        if key == "warmup_fraction" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"schedule.{key}={value!r} must be a number between 0 and 1")
    if fraction is not None:
        warmup_steps = max(1, round(fraction * total_steps))
    elif warmup_steps is None:
        raise ConfigError(
            "schedule.warmup_fraction=null takes the warmup from the hparams rule, but none was "
            "applied: set schedule.warmup_fraction (e.g. 0.05)"
        )
    elif isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ConfigError(f"warmup_steps={warmup_steps!r} must be a positive integer")
    if kind == "cosine" and fraction is not None and 1 < total_steps <= warmup_steps:
        raise ConfigError(
            f"schedule.warmup_fraction={fraction} leaves none of the run's {total_steps} steps "
            "to the cosine decay: lower it (e.g. 0.05) or use schedule.kind=constant"
        )
    cooldown_steps = max(1, round(cfg["cooldown_fraction"] * total_steps)) if kind == "wsd" else 0
    if warmup_steps + cooldown_steps > total_steps:
        lower = (
            "schedule.warmup_fraction/cooldown_fraction" if fraction is not None
            # The rule's warmup is capped by a fraction of the steps of its own D, which is the
            # horizon's (hparams.horizon.tokens_per_param), not this run's, when one is set
            else "hparams.warmup.tokens_per_param or hparams.warmup.max_fraction (the warmup "
            "rule's; with hparams.horizon.tokens_per_param its cap counts the horizon's steps), "
            "schedule.cooldown_fraction"
        )
        raise ConfigError(
            f"schedule: warmup ({warmup_steps}) plus cooldown ({cooldown_steps}) steps exceed the "
            f"run's {total_steps} steps: lower {lower} or raise the budget"
        )
    return Schedule(
        kind=kind,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        min_lr_ratio=float(cfg["min_lr_ratio"]),
        cooldown_steps=cooldown_steps,
    )
