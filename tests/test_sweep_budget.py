"""Tests for sweep.budget: D from tokens, tokens per parameter or FLOPs, in whole steps.

The target tokens come first (the batch rule needs them), then whole steps of the batch.
"""

import pytest

from sweep.budget import budget_target, resolve_budget, whole_steps
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


def test_target_is_known_before_the_batch():
    # The batch rule needs D (through C = 6 N D) before whole steps of the batch exist.
    target = budget_target(budget(tokens_per_param=2.5), non_embedding_params=1_000_000,
                           flops_per_token=9_000_000)
    assert (target.kind, target.value, target.tokens) == ("tokens_per_param", 2.5, 2.5e6)
    b = whole_steps(target, 4096)
    assert (b.steps, b.tokens) == (610, 610 * 4096)  # floor(2.5e6 / 4096)


def test_too_small_for_one_step_names_where_the_batch_came_from():
    target = budget_target(budget(tokens=500), non_embedding_params=1, flops_per_token=1)
    with pytest.raises(ConfigError) as err:
        whole_steps(target, 1024, batch_name="hparams.batch.min_sequences x train.seq_len")
    assert str(err.value) == (
        "budget.tokens=500 gives 500 tokens, less than one optimizer step of "
        "hparams.batch.min_sequences x train.seq_len=1024: raise the budget or lower "
        "hparams.batch.min_sequences x train.seq_len"
    )
