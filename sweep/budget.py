"""The token budget D of one run: given directly, per parameter, or from a FLOP budget C.

The target comes first (the batch rules need it); D is then rounded down to whole optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweep.errors import ConfigError

BUDGET_KINDS = ("tokens", "tokens_per_param", "flops")


@dataclass(frozen=True)
class BudgetTarget:
    """What the user asked for, as a (fractional) number of tokens, before any batch is known."""

    kind: str
    value: float
    tokens: float


@dataclass(frozen=True)
class Budget:
    """A resolved budget: what the user asked for and the whole steps it becomes."""

    kind: str
    value: float
    tokens: int
    steps: int


def budget_target(
    budget: Mapping[str, Any], *, non_embedding_params: int, flops_per_token: int
) -> BudgetTarget:
    """Turn `budget.{tokens,tokens_per_param,flops}` (exactly one set) into target tokens."""
    given = {kind: budget.get(kind) for kind in BUDGET_KINDS if budget.get(kind) is not None}
    if len(given) != 1:
        names = ", ".join(f"budget.{k}" for k in given) or "none of them"
        raise ConfigError(
            f"set exactly one of budget.tokens, budget.tokens_per_param, budget.flops "
            f"(got {names}); e.g. budget.tokens=2e5, and the others null"
        )
    kind, raw = next(iter(given.items()))
    example = {"tokens": "2e5", "tokens_per_param": "20", "flops": "1e17"}[kind]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"budget.{kind}={raw!r} is not a number; e.g. budget.{kind}={example}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"budget.{kind}={raw} must be a positive, finite number; e.g. budget.{kind}={example}"
        )

    if kind == "tokens":
        tokens = value
    elif kind == "tokens_per_param":
        tokens = value * non_embedding_params
    else:
        tokens = value / flops_per_token
    return BudgetTarget(kind=kind, value=value, tokens=tokens)


def whole_steps(
    target: BudgetTarget, batch_tokens: int, *, batch_name: str = "train.batch_tokens"
) -> Budget:
    """Round the target down to whole optimizer steps of `batch_tokens` (at least one).

    `batch_name` says where the batch came from, so the error names the knob to turn.
    """
    steps = int(target.tokens // batch_tokens)
    if steps < 1:
        raise ConfigError(
            f"budget.{target.kind}={target.value:g} gives {target.tokens:.4g} tokens, less than "
            f"one optimizer step of {batch_name}={batch_tokens}: raise the budget or lower "
            f"{batch_name}"
        )
    return Budget(kind=target.kind, value=target.value, tokens=steps * batch_tokens, steps=steps)


def resolve_budget(
    budget: Mapping[str, Any],
    *,
    non_embedding_params: int,
    flops_per_token: int,
    batch_tokens: int,
) -> Budget:
    """Target tokens, then whole steps of a fixed `batch_tokens`, in one call."""
    target = budget_target(
        budget, non_embedding_params=non_embedding_params, flops_per_token=flops_per_token
    )
    return whole_steps(target, batch_tokens)
