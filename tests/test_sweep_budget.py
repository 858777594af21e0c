"""Tests for sweep.budget: D from tokens, tokens per parameter or FLOPs, in whole steps."""

import pytest

from sweep.budget import resolve_budget
from sweep.errors import ConfigError

KW = {"non_embedding_params": 1_000_000, "flops_per_token": 9_000_000, "batch_tokens": 2048}


def budget(**given):
    return {"tokens": None, "tokens_per_param": None, "flops": None, **given}


def test_tokens_round_down_to_whole_steps():
    b = resolve_budget(budget(tokens=2e5), **KW)
    assert (b.kind, b.steps, b.tokens) == ("tokens", 97, 97 * 2048)
    assert b.tokens <= 2e5


def test_tokens_per_param_uses_non_embedding_params():
    b = resolve_budget(budget(tokens_per_param=20), **KW)
    assert b.steps == 20_000_000 // 2048
    assert b.tokens == 9765 * 2048


def test_flops_divides_by_exact_flops_per_token():
    b = resolve_budget(budget(flops=9e12), **KW)
    assert b.steps == 1_000_000 // 2048 == 488


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ({}, "set exactly one of"),
        ({"tokens": 1e5, "flops": 1e12}, "budget.tokens, budget.flops"),
        ({"tokens": -5}, "budget.tokens=-5 must be a positive"),
        ({"tokens": float("nan")}, "must be a positive, finite"),
        ({"tokens": "lots"}, "is not a number"),
        ({"tokens": 100}, "less than one optimizer step of train.batch_tokens=2048"),
    ],
)
def test_bad_budgets_are_one_line_errors(given, needle):
    with pytest.raises(ConfigError) as err:
        resolve_budget(budget(**given), **KW)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
