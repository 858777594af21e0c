"""Tests for sweep.plan: a composed config becomes a checked run plan, or one clear error.

The run id hashes what the run resolved to (shape, data, tokens, hyperparameters), nothing cosmetic.
"""

import dataclasses
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

import models.attention_loss
from data import TokenDataset, prepare
from models import GPT, GPTConfig
from sweep.checks import check_epochs
from sweep.errors import ConfigError
from sweep.plan import plan_run
from tests.conftest import CONFIGS, RULE_HPARAMS, TINY_DATA, compose_train

RULES = RULE_HPARAMS


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


def test_window_order_is_part_of_the_identity_and_shuffled_is_the_default(synthetic_root):
    default = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    shuffled = plan_run(compose_train(synthetic_root, "budget.tokens=2e4",
                                      "train.windows=shuffled"))
    random = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", "train.windows=random"))
    sequential = plan_run(compose_train(synthetic_root, "budget.tokens=2e4",
                                        "train.windows=sequential"))
    assert default.config["train"]["windows"] == "shuffled"
    assert sequential.config["train"]["windows"] == "sequential"  # written to config.yaml
    assert len({default.run_id, random.run_id, sequential.run_id}) == 3
    assert default.run_id == shuffled.run_id
    # Pinned: a change to the identity orphans every finished run of a relaunched sweep, so it
    # must be deliberate. Last changed (from gpt_1m-868978a7db, still the id with
    # train.windows=random, whose runs predate the option) when shuffled became the default.
    assert random.run_id == "gpt_1m-868978a7db"
    assert default.run_id == "gpt_1m-496ff8c1b6"


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
        (["budget.tokens=2e4", "train.windows=shuffle"],
         "train.windows='shuffle' is unknown: use one of random, sequential, shuffled"),
        # NaN passes every range check and inf most: each would end in a traceback or a run
        # recorded as diverged, with a run directory left behind
        (["budget.tokens=2e4", "train.lr=nan"], "train.lr=nan is out of range"),
        (["budget.tokens=2e4", "train.lr=inf"], "train.lr=inf is out of range"),
        (["budget.tokens=2e4", "train.grad_clip=nan"], "train.grad_clip=nan must be a positive"),
        (["budget.tokens=2e4", "train.weight_decay=nan"], "train.weight_decay=nan must be"),
        (["budget.tokens=2e4", "train.beta2=1.0"], "train.beta2=1.0 must be a number in [0, 1)"),
        (["budget.tokens=2e4", "train.peak_flops=inf"], "train.peak_flops=inf must be a positive"),
        (["budget.tokens=2e4", "eval.points=nan"], "eval.points=nan must be a positive whole"),
        (["budget.tokens=2e4", "eval.tokens=inf"], "eval.tokens=inf must be a positive whole"),
        (["budget.tokens=2e4", "eval.tokens=1000.5"], "eval.tokens=1000.5 must be a positive"),
        (["budget.tokens=2e4", "eval.batch_size=0"], "eval.batch_size=0 must be a positive"),
        (["budget.tokens=2e4", "logging.interval=nan"], "logging.interval=nan must be a"),
        (["budget.tokens=2e4", "logging.interval=abc"], "logging.interval='abc' must be a"),
        (["budget.tokens=2e4", "model.target_params=true"], "model.target_params=True must be"),
        (["budget.tokens=2e4", "budget.max_epochs=0"], "budget.max_epochs=0 must be a positive"),
        (["budget.tokens=2e4", "budget.max_epochs=nan"], "budget.max_epochs=nan must be a"),
        (["budget.tokens=2e4", "budget.max_epochs=null"], "budget.max_epochs=None must be a"),
    ],
)
def test_bad_configs_fail_in_one_line(synthetic_root, overrides, needle):
    with pytest.raises(ValueError) as err:
        plan_run(compose_train(synthetic_root, *overrides))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_a_data_override_the_dataset_contradicts_is_refused(synthetic_root):
    # Ignored before (the run trains on the shards as built) yet written to config.yaml: a sweep
    # over data.zipf_exponent trained one run under one id for every point
    overrides = ["budget.tokens=2e4", "data.zipf_exponent=1.5"]
    with pytest.raises(ConfigError, match=r"^data.zipf_exponent=1.5, but dataset 'synthetic' at "
                       r".* was built with data.zipf_exponent=1.0, and a run trains on the shards"):
        plan_run(compose_train(synthetic_root, *overrides), overrides)
    # An override that agrees, and keys left at the preset's values, are fine; config.yaml
    # records the data as built, not the preset's train_tokens
    agrees = ["budget.tokens=2e4", "data.train_tokens=3e5"]
    plan = plan_run(compose_train(synthetic_root, *agrees), agrees)
    assert plan.config["data"]["train_tokens"] == 300_000
    assert plan.config["data"] == plan.dataset.manifest["source"] | {
        k: v for k, v in plan.config["data"].items() if k not in plan.dataset.manifest["source"]}
    assert plan_run(compose_train(synthetic_root, "budget.tokens=2e4")).run_id == plan.run_id


def test_target_params_refuses_pinned_shape_keys(synthetic_root):
    cfg = compose_train(synthetic_root, "model.target_params=5e6", "budget.tokens=2e4")
    with pytest.raises(ConfigError, match="model.n_layer=4 was also given"):
        plan_run(cfg, overrides=["model.target_params=5e6", "model.n_layer=4"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.loss_attention=yes"], "train.loss_attention='yes' must be auto, true or false"),
    (["train.loss_attention=true", "train.loss_chunk_tokens=512"],
     "train.loss_chunk_tokens=512 and train.loss_attention=true are different ways to fuse the "
     "head and loss: set loss_chunk_tokens=null or loss_attention=false"),
    (["train.loss_kernel=triton"],
     "train.loss_kernel='triton' is unknown: use one of plain, fused"),
    (["train.loss_kernel=fused", "train.loss_chunk_tokens=512"],
     "train.loss_chunk_tokens=512 and train.loss_kernel=fused are different ways to fuse the "
     "head and loss: set loss_chunk_tokens=null or loss_kernel=plain"),
    (["train.loss_kernel=fused", "train.loss_attention=true"],
     "train.loss_attention=true and train.loss_kernel=fused are different ways to fuse the head "
     "and loss: set loss_attention=false or loss_kernel=plain"),
    (["train.loss_kernel=fused", "train.loss_attention=true", "train.loss_chunk_tokens=512"],
     "train.loss_chunk_tokens=512 and train.loss_attention=true and train.loss_kernel=fused are "
     "different ways to fuse the head and loss: keep one and set the others off "
     "(loss_chunk_tokens=null, loss_attention=false, loss_kernel=plain)"),
    (["train.loss_attention=true", "model.bias=true"],
     "train.loss_attention=true needs an output head without bias: set model.bias=false or "
     "train.loss_attention=false"),
])
def test_attention_loss_settings_no_run_can_use_are_refused(synthetic_root, overrides, message):
    cfg = compose_train(synthetic_root, "budget.tokens=2e4", *overrides)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        plan_run(cfg, overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto may choose it on this GPU")
def test_loss_attention_auto_resolves_on_the_device_and_config_yaml_says_how(
    synthetic_root, monkeypatch
):
    plan = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    assert plan.config["train"]["loss_attention"] == "auto"  # the default
    assert plan.loss_attention is False and plan.config["resolved"]["loss_attention"] is False
    # Where it is the faster loss, auto takes it, and the run stays the same run
    monkeypatch.setattr(models.attention_loss, "pays", lambda device, dtype, d_model: True)
    faster = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    assert faster.loss_attention is True and faster.config["resolved"]["loss_attention"] is True
    assert faster.run_id == plan.run_id
    # A model or setting that rules it out keeps the plain or chunked loss without an error
    for override in ("model.bias=true", "train.loss_chunk_tokens=512"):
        cfg = compose_train(synthetic_root, "budget.tokens=2e4", override)
        assert plan_run(cfg, [override]).loss_attention is False


def test_inductor_switches_in_the_environment_go_into_config_yaml_not_the_run_id(
    synthetic_root, monkeypatch
):
    for key in [k for k in os.environ if k.startswith("TORCHINDUCTOR_")]:
        monkeypatch.delenv(key)  # whatever the shell running the tests set
    default = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", "train.compile=true"))
    assert default.config["resolved"]["inductor_env"] == {}
    monkeypatch.setenv("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING", "1")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/elsewhere")  # where, not which kernels
    tuned = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", "train.compile=true"))
    assert tuned.config["resolved"]["inductor_env"] == {
        "TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"}
    assert tuned.run_id == default.run_id
    # Without torch.compile they change nothing, so none is recorded
    plain = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", "train.compile=false"))
    assert plain.config["resolved"]["inductor_env"] == {}


def test_rules_choose_lr_batch_and_warmup_and_the_record_says_so(synthetic_root):
    plan = plan_run(compose_train(synthetic_root, *RULES, "budget.tokens=1e5"))
    # gpt_1m: N = 1,328,448, C = 6 N 1e5 = 7.97e11. LR 0.3118 C^-0.125 = 1.01e-2, clamped to 3e-3;
    # batch 0.292 C^0.3271 = 2282 tokens = 17.8 seqs -> 16; warmup N / 2048 = 649 steps, capped
    # at floor(10% of 48) = 4.
    assert plan.lr == 3e-3
    assert (plan.batch_tokens, plan.micro_batch_size, plan.grad_accum) == (2048, 8, 2)
    assert (plan.budget.steps, plan.schedule.warmup_steps) == (48, 4)
    resolved = plan.config["resolved"]["hparams"]
    assert {k: resolved[k] for k in ("lr", "batch_tokens", "warmup_steps", "grad_accum")} == {
        "lr": 3e-3, "batch_tokens": 2048, "warmup_steps": 4, "grad_accum": 2}
    assert resolved["from_rule"] == {"lr": True, "batch_tokens": True, "warmup_steps": True}
    # config.yaml holds the numbers used, so a rerun from it is the same run.
    assert (plan.config["train"]["lr"], plan.config["train"]["batch_tokens"]) == (3e-3, 2048)
    pinned = plan_run(compose_train(synthetic_root, "budget.tokens=1e5"))
    assert pinned.config["resolved"]["hparams"]["from_rule"] == {
        "lr": False, "batch_tokens": False, "warmup_steps": False}


def test_a_rule_and_a_pin_that_agree_are_the_same_run(synthetic_root):
    ruled = plan_run(compose_train(synthetic_root, *RULES, "budget.tokens=1e5"))
    pinned = plan_run(compose_train(
        synthetic_root, "budget.tokens=1e5", f"train.lr={ruled.lr}",
        f"train.batch_tokens={ruled.batch_tokens}", "schedule.warmup_fraction=0.08"))  # 3.84 -> 4
    assert pinned.schedule == ruled.schedule
    assert pinned.run_id == ruled.run_id
    # Rule constants are not the identity; the values they give are.
    same = plan_run(compose_train(synthetic_root, *RULES, "budget.tokens=1e5",
                                  "hparams.warmup.max_fraction=0.09"))  # floor(4.32) = 4 still
    other = plan_run(compose_train(synthetic_root, *RULES, "budget.tokens=1e5",
                                   "hparams.lr.max=2e-2"))  # unclamps the LR to 1.01e-2
    assert same.run_id == ruled.run_id != other.run_id


def reordered(node):
    if isinstance(node, dict):
        return {key: reordered(node[key]) for key in reversed(list(node))}
    return node


def test_identity_is_stable_across_key_order(synthetic_root):
    cfg = compose_train(synthetic_root, *RULES, "budget.tokens=2e4")
    flipped = OmegaConf.create(reordered(OmegaConf.to_container(cfg)))
    assert list(flipped.keys()) == list(reversed(list(cfg.keys())))
    assert plan_run(flipped).run_id == plan_run(cfg).run_id


SHAPE_CHANGES = {
    "n_layer": "model.n_layer=2", "d_model": "model.d_model=128", "n_head": "model.n_head=6",
    "max_seq_len": "model.max_seq_len=512", "positions": "model.positions=learned",
    "tie_embeddings": "model.tie_embeddings=true", "bias": "model.bias=true",
    "mlp_ratio": "model.mlp_ratio=2", "dropout": "model.dropout=0.1",
    "init_std": "model.init_std=0.01",
}
RUN_CHANGES = [
    "budget.tokens=3e4", "seed=1", "train.lr=1e-3", "train.batch_tokens=2048",
    "train.weight_decay=0.0", "train.beta1=0.8", "train.beta2=0.99", "train.eps=1e-6",
    "train.grad_clip=0.5", "train.grad_clip=null", "train.windows=sequential",
    "train.windows=random", "train.seq_len=64",
    "schedule.kind=constant", "schedule.min_lr_ratio=0.2", "schedule.warmup_fraction=0.2",
    "eval.tokens=16384", "eval.points=4", "eval.batch_size=16",
]
COSMETIC = [
    "train.micro_batch_size=4", "train.loss_chunk_tokens=256", "train.loss_attention=true",
    "train.loss_kernel=fused", "train.device=cpu",
    "train.precision=fp32", "train.compile=false",
    "train.precision=bf16 train.residual_dtype=bf16",
    "train.compile=true train.compile_scope=blocks",
    "train.compile=true train.compile_mode=max-autotune",  # a mode needs compile on
    "train.peak_flops=1e12", "logging.interval=3", "logging.progress=true",
    "logging.wandb.mode=offline", "checkpoint.interval_s=60", "checkpoint.keep=3",
    "launch.rerun_failed=true", "launch.dry_run=true", "paths.runs_dir=/elsewhere",
    "experiment_name=other", "hparams.lr.coefficient=1.0",  # a rule constant, unused when pinned
    "budget.max_epochs=2",  # a check on the data, not what the run trains
]


def test_every_shape_field_is_covered():
    fields = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}  # the data's
    assert set(SHAPE_CHANGES) == fields


@pytest.mark.parametrize("change", [*SHAPE_CHANGES.values(), *RUN_CHANGES])
def test_training_relevant_fields_change_the_identity(synthetic_root, change):
    base = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    changed = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", change))
    assert changed.run_id != base.run_id
    # ... and the replicate hash, unless the seed alone changed: then the runs are replicates
    assert (changed.replicate_hash == base.replicate_hash) == (change.startswith("seed="))


def test_seed_replicates_share_the_replicate_hash_and_the_record_carries_it(synthetic_root):
    plans = [plan_run(compose_train(synthetic_root, "budget.tokens=2e4", f"seed={seed}"))
             for seed in (0, 1, 7)]
    assert len({p.config_hash for p in plans}) == 3
    assert len({p.replicate_hash for p in plans}) == 1 and len(plans[0].replicate_hash) >= 16
    assert plans[1].config["resolved"]["replicate_hash"] == plans[0].replicate_hash


def test_wsd_cooldown_changes_the_identity(synthetic_root):
    wsd = ("budget.tokens=2e4", "schedule.kind=wsd")
    base = plan_run(compose_train(synthetic_root, *wsd))
    longer = plan_run(compose_train(synthetic_root, *wsd, "schedule.cooldown_fraction=0.5"))
    assert base.run_id != longer.run_id


@pytest.mark.parametrize(
    "spelling",
    ["train.grad_clip=1", "train.weight_decay=1e-1", "train.eps=0.00000001", "eval.tokens=3.2768e4",
     "eval.points=8.0", "eval.batch_size=32.0", "model.dropout=0", "train.beta1=0.90"],
)
def test_how_a_number_is_spelled_leaves_the_identity(synthetic_root, spelling):
    # A relaunch with grad_clip=1 for the default 1.0 must find the finished runs, not retrain
    base = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    spelled = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", spelling))
    assert spelled.run_id == base.run_id == "gpt_1m-496ff8c1b6"  # the default's pinned id
    key, _ = spelling.split("=")
    section, name = key.split(".")
    if section != "model":  # config.yaml holds the canonical number, as the identity does
        assert spelled.config[section][name] == base.config[section][name]


@pytest.mark.parametrize("change", COSMETIC)
def test_cosmetic_fields_leave_the_identity(synthetic_root, change):
    base = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    changed = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", *change.split()))
    assert changed.run_id == base.run_id


def test_the_dataset_is_part_of_the_identity_but_not_where_it_lives(synthetic_root, tmp_path):
    synthetic = OmegaConf.to_container(OmegaConf.load(CONFIGS / "data" / "synthetic.yaml"))
    prepare({**synthetic, **TINY_DATA}, tmp_path / "data_cache")  # the same dataset, elsewhere
    prepare({**synthetic, **TINY_DATA, "seed": 1}, tmp_path / "other" / "data_cache")
    base = plan_run(compose_train(synthetic_root, "budget.tokens=2e4"))
    moved = plan_run(compose_train(tmp_path, "budget.tokens=2e4"))
    reseeded = plan_run(compose_train(tmp_path / "other", "budget.tokens=2e4", "data.seed=1"))
    assert moved.run_id == base.run_id != reseeded.run_id


def test_a_budget_beyond_max_epochs_of_the_train_split_is_refused(synthetic_root):
    # 299,925 train tokens: 292 steps of 1024 (299,008 tokens) fit, 302 steps do not.
    assert plan_run(compose_train(synthetic_root, "budget.tokens=3e5")).budget.tokens == 299_008
    with pytest.raises(ConfigError) as err:
        plan_run(compose_train(synthetic_root, "budget.tokens=3.1e5"))
    run_id = plan_run(compose_train(synthetic_root, "budget.tokens=3.1e5"), epochs_checked=False
                      ).run_id
    assert str(err.value) == (
        f"run {run_id} reads D=309,248 tokens, 1.03 epochs of the 299,925 train tokens of "
        "dataset 'synthetic' (budget.max_epochs=1), so it would repeat data: prepare more data "
        f"(python -m data.prepare data=synthetic paths.data_dir={synthetic_root / 'data_cache'} "
        "force=true data.train_tokens=309342), or raise "
        "budget.max_epochs to 1.04 to repeat it on purpose")
    repeated = plan_run(compose_train(synthetic_root, "budget.tokens=3.1e5",
                                      "budget.max_epochs=1.04"))
    assert repeated.run_id == run_id and repeated.budget.tokens == 309_248


def test_a_text_corpus_too_small_names_the_documents_to_prepare(synthetic_root):
    # fineweb_edu as prepared before: 2M documents, 2e9 train tokens. gpt_85m at 80 tokens per
    # parameter reads 6.796e9 tokens: 6.796e9 / 2e9 x 2M documents read = 6.796M, rounded up
    # to two significant digits
    plan = plan_run(compose_train(synthetic_root, "model=gpt_85m", "budget.tokens_per_param=80"),
                    epochs_checked=False)
    manifest = {
        "name": "fineweb_edu", "vocab_size": 8192, "eot_id": 0,
        "source": {"source": "hub", "max_documents": 2_000_000},
        "splits": {"train": {"tokens": 2_000_000_000, "documents": 1_998_000},
                   "val": {"tokens": 2_000_000, "documents": 2_000}},
    }
    small = TokenDataset(synthetic_root / "fineweb_edu", manifest, None)
    with pytest.raises(ConfigError, match=(
            r"reads D=6,796,308,480 tokens, 3.4 epochs of the 2,000,000,000 train tokens of "
            r"dataset 'fineweb_edu' \(budget.max_epochs=1\), so it would repeat data: prepare "
            r"more data \(python -m data.prepare data=fineweb_edu paths.data_dir=\S+ force=true "
            r"data.max_documents=6800000\), or raise budget.max_epochs to 3.4 to")):
        check_epochs(plan.run_id, plan.budget.tokens, small, plan.max_epochs)
    # All of the source prepared already: only a larger corpus helps
    manifest["source"]["max_documents"] = None
    with pytest.raises(ConfigError, match=r"repeat data: prepare a larger corpus \(dataset "
                                          r"'fineweb_edu' holds all of its source\), or raise"):
        check_epochs(plan.run_id, plan.budget.tokens, small, plan.max_epochs)
    # Every document went to val: no max_epochs helps
    manifest["splits"]["train"]["tokens"] = 0
    with pytest.raises(ConfigError, match=r"reads D=6,796,308,480 tokens, but dataset "
                                          r"'fineweb_edu' at .* has no train tokens: prepare it "
                                          r"from a larger corpus \(python -m data.prepare "
                                          r"data=fineweb_edu paths.data_dir=\S+ force=true\)$"):
        check_epochs(plan.run_id, plan.budget.tokens, small, plan.max_epochs)
