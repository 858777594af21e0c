"""Tests for sweep.plan: a composed config becomes a checked run plan, or one clear error."""

import pytest

from models import GPT
from sweep.errors import ConfigError
from sweep.plan import plan_run
from tests.conftest import compose_train


def test_plan_resolves_shape_budget_and_identity(synthetic_root):
    plan = plan_run(compose_train(synthetic_root, "model=gpt_3m", "budget.tokens_per_param=0.01"))
    assert (plan.model.n_layer, plan.model.d_model, plan.model.n_head) == (4, 256, 4)
    assert plan.model.vocab_size == 512  # taken from the dataset's manifest
    assert plan.params.total == sum(p.numel() for p in GPT(plan.model).parameters())
    assert plan.budget.steps == int(0.01 * plan.params.non_embedding // 1024)
    assert plan.grad_accum == 1
    assert plan.run_dir == synthetic_root / "runs" / "default" / plan.run_id
    assert plan.run_id.startswith("gpt_3m-")
    assert not plan.run_dir.exists()  # planning writes nothing


def test_identity_ignores_how_a_run_is_executed(synthetic_root):
    base = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    same = plan_run(compose_train(synthetic_root, "budget.tokens=20000", "train.micro_batch_size=4",
                                  "logging.interval=3", "experiment_name=other"))
    other = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", "seed=1"))
    assert base.config_hash == same.config_hash
    assert base.config_hash != other.config_hash
    assert same.grad_accum == 2


def test_window_order_is_part_of_the_identity_and_the_default_keeps_old_ids(synthetic_root):
    default = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    random = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", "train.windows=random"))
    sequential = plan_run(compose_train(synthetic_root, "budget.tokens=2e4",
                                        "train.windows=sequential"))
    assert default.config["train"]["windows"] == "random"
    assert sequential.config["train"]["windows"] == "sequential"  # written to config.yaml
    assert default.run_id == random.run_id != sequential.run_id
    # The id this config had before train.windows existed: relaunched sweeps find their runs.
    assert default.run_id == "gpt_1m-8d043b87d8"


def test_target_params_picks_the_rule_shape(synthetic_root):
    plan = plan_run(compose_train(synthetic_root, "model.target_params=5e6", "budget.tokens=2e4"))
    assert (plan.model.n_layer, plan.model.d_model, plan.model.n_head) == (5, 320, 5)
    assert plan.run_id.startswith("target5e06-")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model=gpt_3m", "model.n_head=3"], "n_head=3 does not divide d_model=256"),
        (["budget.tokens=-1"], "budget.tokens=-1 must be a positive"),
        ([], "set exactly one of budget.tokens"),
        (["budget.tokens=2e4", "train.seq_len=2048"], "train.seq_len=2048 exceeds"),
        (["budget.tokens=2e4", "train.batch_tokens=1000"], "not a multiple of"),
        (["budget.tokens=2e4", "model.vocab_size=1000"], "model.vocab_size=1000 does not match"),
        (["budget.tokens=2e4", "data.name=nope"], "not prepared"),
        (["budget.tokens=2e4", "experiment_name=a/b"], "experiment_name='a/b'"),
        (["budget.tokens=2e4", "schedule.kind=step"], "schedule.kind='step'"),
        (["budget.tokens=2e4", "train.lr=-1"], "train.lr=-1"),
        (["budget.tokens=2e4", "seed=-1"], "seed=-1 must be a non-negative integer"),
        (["budget.tokens=2e4", "logging.wandb.mode=maybe"], "logging.wandb.mode='maybe'"),
        (["budget.tokens=2e4", "train.windows=shuffled"],
         "train.windows='shuffled' is unknown: use one of random, sequential"),
    ],
)
def test_bad_configs_fail_in_one_line(synthetic_root, overrides, needle):
    with pytest.raises(ValueError) as err:
        plan_run(compose_train(synthetic_root, *overrides))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_target_params_refuses_pinned_shape_keys(synthetic_root):
    cfg = compose_train(synthetic_root, "model.target_params=5e6", "budget.tokens=2e4")
    with pytest.raises(ConfigError, match="model.n_layer=4 was also given"):
        plan_run(cfg, overrides=["model.target_params=5e6", "model.n_layer=4"])
