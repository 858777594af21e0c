"""The token budget D of one run: given directly, per parameter, or from a FLOP budget C.

D is rounded down to whole optimizer steps, so a run never trains past its budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweep.errors import ConfigError

BUDGET_KINDS = ("tokens", "tokens_per_param", "flops")


@dataclass(frozen=True)
class Budget:
    """A resolved budget: what the user asked for and the whole steps it becomes."""

    kind: str
    value: float
    tokens: int
    steps: int


def resolve_budget(
    budget: Mapping[str, Any],
    *,
    non_embedding_params: int,
    flops_per_token: int,
    batch_tokens: int,
) -> Budget:
    """Turn `budget.{tokens,tokens_per_param,flops}` (exactly one set) into steps and tokens."""
    given = {kind: budget.get(kind) for kind in BUDGET_KINDS if budget.get(kind) is not None}
    if len(given) != 1:
        names = ", ".join(f"budget.{k}" for k in given) or "none of them"
        raise ConfigError(
            f"set exactly one of budget.tokens, budget.tokens_per_param, budget.flops "
            f"(got {names}); e.g. budget.tokens=2e5, and the others null"
        )
    kind, raw = next(iter(given.items()))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"budget.{kind}={raw!r} is not a number; e.g. budget.{kind}=2e5"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"budget.{kind}={raw} must be a positive, finite number")

    if kind == "tokens":
        target = value
    elif kind == "tokens_per_param":
        target = value * non_embedding_params
    else:
        target = value / flops_per_token
    steps = int(target // batch_tokens)
    if steps < 1:
        raise ConfigError(
            f"budget.{kind}={raw} gives {target:.4g} tokens, less than one optimizer step of "
            f"train.batch_tokens={batch_tokens}: raise the budget or lower train.batch_tokens"
        )
    return Budget(kind=kind, value=value, tokens=steps * batch_tokens, steps=steps)
