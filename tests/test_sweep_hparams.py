"""Tests for sweep.hparams: LR, batch and warmup from rules of C, N and D; pinned values win.

Expected numbers are worked by hand from configs/hparams/power_law.yaml's constants.
"""

import copy

import pytest
import yaml

from sweep.errors import ConfigError
from sweep.hparams import (
    ladder,
    ladder_rungs,
    load_rules,
    main,
    micro_batch,
    resolve_hparams,
    rule_batch_sequences,
    rule_lr,
    rule_warmup_steps,
)
from tests.conftest import CONFIGS

GROUP = yaml.safe_load((CONFIGS / "hparams" / "power_law.yaml").read_text())
RULES = load_rules(GROUP)
N = 20_000_000  # the worked example: N = 2e7 on D = 4e8 tokens, C = 6 N D = 4.8e16
SMOKE_RUNGS = ("gpt_1m", "gpt_3m", "gpt_6m", "gpt_11m")


def run_cfg(train=None, schedule=None, budget=None, hparams=GROUP):
    """A composed-config stand-in: every hyperparameter null (from the rules) unless given."""
    cfg = {
        "train": {"seq_len": 128, "micro_batch_size": 8, "lr": None, "batch_tokens": None,
                  **(train or {})},
        "schedule": {"warmup_fraction": None, **(schedule or {})},
        "budget": {"tokens": 4e8, "tokens_per_param": None, "flops": None, **(budget or {})},
    }
    if hparams is not None:
        cfg["hparams"] = hparams
    return cfg


def resolve(cfg):
    return resolve_hparams(cfg, non_embedding_params=N, flops_per_token=9 * N)


def test_the_default_rule_holds_the_papers_constants():
    assert (RULES.lr_coefficient, RULES.lr_exponent) == (0.3118, -0.125)  # DeepSeek LLM eq. 1
    assert (RULES.batch_coefficient, RULES.batch_exponent) == (0.292, 0.3271)
    assert RULES.warmup_tokens_per_param == 1.0  # Porian et al. 2024: warm up over ~N tokens


def test_lr_follows_the_power_law_inside_the_clamp():
    # C = 4.8e16: 0.3118 x 10^(-0.125 x 16.6812) = 0.3118 x 8.2207e-3
    assert rule_lr(RULES, 4.8e16) == pytest.approx(2.5628e-3, rel=1e-4)
    # C = 1e17: 0.3118 x 10^-2.125 = 2.3382e-3; C = 1e19: 0.3118 x 10^-2.375 = 1.3148e-3
    assert rule_lr(RULES, 1e17) == pytest.approx(2.3382e-3, rel=1e-4)
    assert rule_lr(RULES, 1e19) == pytest.approx(1.3148e-3, rel=1e-4)


@pytest.mark.parametrize(("compute", "lr"), [(1e12, 3e-3), (1.2e16, 3e-3), (1e30, 1e-4)])
def test_lr_is_clamped_where_the_fit_would_extrapolate(compute, lr):
    # 1e12 would give 9.8e-3, 1.2e16 3.05e-3 and 1e30 5.5e-5: outside [lr.min, lr.max].
    assert rule_lr(RULES, compute) == lr


@pytest.mark.parametrize(
    ("compute", "seq_len", "sequences"),
    [
        (1e19, 128, 4096),  # 0.292 x 1e19^0.3271 = 478,942 tokens = 3741.7 seqs -> 2^12
        (1e19, 1024, 512),  # 467.7 seqs -> 2^9
        (1e14, 128, 64),  # 86.6 seqs: log2 = 6.44, so down to 2^6 (not up to 128)
        (1.2e14, 128, 128),  # 91.9 seqs: log2 = 6.52, so up to 2^7
        (1e9, 128, 8),  # 2.0 seqs: raised to hparams.batch.min_sequences
        (1e24, 128, 4096),  # 161,649 seqs: capped at hparams.batch.max_sequences
    ],
)
def test_batch_is_the_nearest_power_of_two_of_sequences(compute, seq_len, sequences):
    assert rule_batch_sequences(RULES, compute, seq_len, target_tokens=1e12) == sequences


def test_batch_halves_until_the_run_has_min_steps():
    enough = 64 * 128 * 32  # 64 sequences for exactly 32 steps
    assert rule_batch_sequences(RULES, 1e14, 128, target_tokens=enough) == 64
    assert rule_batch_sequences(RULES, 1e14, 128, target_tokens=enough - 1) == 32  # 31 steps
    # Never below hparams.batch.min_sequences, even when no batch gives 32 steps.
    assert rule_batch_sequences(RULES, 1e14, 128, target_tokens=1000) == 8


@pytest.mark.parametrize(("configured", "batch", "micro"), [(8, 64, 8), (8, 4, 4), (1, 16, 1)])
def test_micro_batch_is_the_configured_one_or_the_whole_batch(configured, batch, micro):
    assert micro_batch(configured, batch) == micro


def test_micro_batch_that_does_not_divide_the_batch_is_one_line():
    with pytest.raises(ConfigError) as err:
        micro_batch(6, 64)
    assert str(err.value) == (
        "train.micro_batch_size=6 does not divide the batch rule's 64 sequences: use a power of "
        "two (e.g. 4) or pin train.batch_tokens"
    )


@pytest.mark.parametrize(
    ("params", "batch_tokens", "steps", "warmup"),
    [
        (1_000_000, 4096, 10_000, 244),  # 1e6 / 4096 = 244.1 steps of N tokens
        (1_000_000, 4096, 100, 10),  # capped at 10% of 100 steps
        (1_000_000, 4096, 5, 1),  # the cap is 0.5 steps: at least one
    ],
)
def test_warmup_is_n_tokens_capped_and_at_least_one_step(params, batch_tokens, steps, warmup):
    assert rule_warmup_steps(RULES, params, batch_tokens, steps) == warmup


def test_resolve_orders_target_batch_steps_lr_warmup():
    hp = resolve(run_cfg())
    assert hp.compute == 4.8e16  # 6 N D of the target, before rounding to steps
    # 0.292 x C^0.3271 = 83,525 tokens = 652.5 seqs of 128: log2 = 9.35, so 512 seqs
    assert (hp.batch_tokens, hp.micro_batch_size, hp.grad_accum) == (512 * 128, 8, 64)
    assert (hp.budget.steps, hp.budget.tokens) == (6103, 6103 * 65536)  # floor(4e8 / 65536)
    assert hp.lr == pytest.approx(2.5628e-3, rel=1e-4)
    assert hp.warmup_steps == 305  # round(2e7 / 65536) = 305, under the cap of 610
    assert hp.from_rule == {"lr": True, "batch_tokens": True, "warmup_steps": True}


def test_a_flop_budget_is_the_c_of_the_rules():
    # D = 1e17 / (9 N) = 5.56e8 tokens, so 6 N D = 6.7e16; the rules see the budget's 1e17:
    # 0.292 x 1e17^0.3271 = 106,200 tokens = 829.7 seqs of 128 -> 1024 (6ND would give 512)
    hp = resolve(run_cfg(budget={"tokens": None, "flops": 1e17}))
    assert hp.compute == 1e17
    assert hp.batch_tokens == 1024 * 128
    assert hp.lr == pytest.approx(2.3382e-3, rel=1e-4)  # 0.3118 x 10^-2.125
    # A token budget keeps 6ND of its target
    assert resolve(run_cfg(budget={"tokens": 1e17 / (9 * N)})).compute == pytest.approx(
        6 * N * 1e17 / (9 * N))


def test_every_run_of_one_isoflop_profile_shares_its_batch_and_lr():
    # Exact FLOPs per token are 1.2-2.3x 6N along the ladder: with C = 6ND the batch doubled
    # between gpt_17m and gpt_25m at 1e17, partway along the profile.
    experiment = yaml.safe_load((CONFIGS / "experiment" / "isoflop.yaml").read_text())
    params = experiment["hydra"]["sweeper"]["params"]
    bounds = experiment["launch"]["tokens_per_param"]
    for budget in params["budget.flops"].split(","):
        rungs = [r for r in ladder(["experiment=isoflop", f"budget.flops={budget}"],
                                   params["model"].split(","))
                 if bounds["min"] <= r.hparams.budget.tokens / r.non_embedding_params
                 <= bounds["max"]]
        assert len(rungs) >= 4, budget  # the sizes the sweep trains
        assert {(r.hparams.lr, r.hparams.batch_tokens) for r in rungs} == {
            (rungs[0].hparams.lr, rungs[0].hparams.batch_tokens)}, budget
        assert rungs[0].hparams.compute == float(budget)
        if budget == "1e17":  # 0.292 x 1e17^0.3271 = 103.7 seqs of 1024 -> 128
            assert rungs[0].hparams.batch_tokens == 128 * 1024
            assert rungs[0].hparams.lr == pytest.approx(2.3382e-3, rel=1e-4)


def test_pinned_values_override_the_rules():
    cfg = run_cfg(train={"lr": 3e-3, "batch_tokens": 1024}, schedule={"warmup_fraction": 0.05})
    hp = resolve(cfg)
    assert (hp.lr, hp.batch_tokens, hp.grad_accum, hp.warmup_steps) == (3e-3, 1024, 1, None)
    assert hp.budget.steps == 390_625  # 4e8 / 1024
    assert hp.from_rule == {"lr": False, "batch_tokens": False, "warmup_steps": False}
    # Everything pinned needs no rule group at all.
    assert resolve(run_cfg(train={"lr": 3e-3, "batch_tokens": 1024},
                           schedule={"warmup_fraction": 0.05}, hparams=None)).lr == 3e-3


def test_rules_and_pins_mix():
    hp = resolve(run_cfg(train={"batch_tokens": 4096}))
    # 4e8 / 4096 = 97,656 steps; warmup round(2e7 / 4096) = 4883, under the cap of 9765.
    assert (hp.batch_tokens, hp.budget.steps, hp.warmup_steps) == (4096, 97_656, 4883)
    assert hp.lr == pytest.approx(2.5628e-3, rel=1e-4)  # the LR rule does not depend on the batch
    assert hp.from_rule == {"lr": True, "batch_tokens": False, "warmup_steps": True}


def test_rules_fitted_on_one_schedule_are_refused_to_a_run_of_another():
    fitted = {**GROUP, "name": "fitted", "fitted": {"schedule": "cosine"}}
    assert resolve(run_cfg(schedule={"kind": "cosine"}, hparams=fitted)).from_rule["lr"]
    with pytest.raises(ConfigError) as err:
        resolve(run_cfg(schedule={"kind": "wsd"}, hparams=fitted))
    assert str(err.value).startswith(
        "hparams=fitted was fitted on cosine runs, but schedule.kind=wsd: fit the rules on wsd "
        "runs (python -m sweep.fit.hparams), pin train.lr and train.batch_tokens")
    # With the LR and batch pinned only the base's warmup rule applies: nothing fitted is used
    pinned = run_cfg(train={"lr": 3e-3, "batch_tokens": 1024}, schedule={"kind": "wsd"},
                     hparams=fitted)
    assert resolve(pinned).warmup_steps is not None
    # The shipped rules were fitted elsewhere (DeepSeek): any schedule takes them
    assert GROUP["fitted"] == {"schedule": None}
    assert resolve(run_cfg(schedule={"kind": "wsd"})).from_rule["lr"]


def bad_group(path, value):
    group = copy.deepcopy(GROUP)
    section, key = path.split(".")
    if value is KeyError:
        del group[section][key]
    else:
        group[section][key] = value
    return group


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("lr.coefficient", 0, "hparams.lr.coefficient=0 must be a finite number > 0"),
        ("lr.exponent", "steep", "hparams.lr.exponent='steep' must be a finite number"),
        ("lr.max", KeyError, "hparams.lr.max=None must be"),
        ("lr.min", 0.1, "hparams.lr.min=0.1 exceeds hparams.lr.max=0.003"),
        ("batch.min_sequences", 6, "hparams.batch.min_sequences=6 must be a power of two (e.g. 4)"),
        ("batch.max_sequences", 2.5, "hparams.batch.max_sequences=2.5 must be an integer >= 1"),
        ("batch.max_sequences", 4, "hparams.batch.min_sequences=8 exceeds"),
        ("batch.min_steps", 0, "hparams.batch.min_steps=0 must be an integer >= 1"),
        ("warmup.tokens_per_param", -1, "hparams.warmup.tokens_per_param=-1 must be"),
        ("warmup.max_fraction", 1.5, "hparams.warmup.max_fraction=1.5 must be at most 1"),
        ("fitted.schedule", "linear", "hparams.fitted.schedule='linear' must be one of cosine, "
         "constant, wsd or null"),
    ],
)
def test_bad_rule_configs_are_one_line_errors(path, value, needle):
    with pytest.raises(ConfigError) as err:
        resolve(run_cfg(hparams=bad_group(path, value)))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (run_cfg(hparams=None), "train.lr=null asks for a rule, but no hparams group is selected"),
        (run_cfg(budget={"tokens": 500}), "less than one optimizer step of "
         "hparams.batch.min_sequences x train.seq_len=1024"),
        (run_cfg(train={"micro_batch_size": 3}), "train.micro_batch_size=3 does not divide"),
        (run_cfg(train={"batch_tokens": 1000}), "train.batch_tokens=1000 is not a multiple"),
        (run_cfg(train={"lr": -1}), "train.lr=-1 is out of range"),
        (run_cfg(train={"seq_len": 0}), "train.seq_len=0 must be a positive integer"),
    ],
)
def test_bad_run_configs_are_one_line_errors(cfg, needle):
    with pytest.raises(ConfigError) as err:
        resolve(cfg)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("tokens", [1e5, 1e6])
def test_defaults_are_sane_for_the_cpu_smoke_rungs(tokens):
    # The smoke sweep's corner: 1-11M params on 1e5-1e6 tokens (C ~ 1e12, far below the fits).
    for rung in ladder([f"budget.tokens={tokens}", "data=stdlib"], SMOKE_RUNGS):
        hp = rung.hparams
        assert 1e-3 <= hp.lr <= 1e-2, rung  # 3e-3: the clamp (see the YAML for why)
        assert hp.batch_tokens // rung.seq_len >= 8, rung
        assert hp.budget.steps >= 32, rung
        assert 1 <= rung.warmup_steps <= 0.1 * hp.budget.steps, rung


def test_defaults_are_what_a_practitioner_would_pick_at_300m():
    (rung,) = ladder(["budget.tokens_per_param=20"], ["gpt_287m"])
    hp = rung.hparams
    # C = 6 x 286,697,088 x 5,733,613,568 = 9.863e18: 0.3118 x 10^(-0.125 x 18.994) = 1.3171e-3
    assert hp.lr == pytest.approx(1.3171e-3, rel=1e-4)
    assert hp.batch_tokens == 4096 * 128 == 524_288  # 0.292 x C^0.3271 = 3726 seqs -> 2^12
    assert rung.warmup_steps == round(286_697_088 / 524_288) == 547  # N tokens, 5% of the run


def test_cli_prints_every_rung(capsys):
    main(["budget.tokens_per_param=20"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["model", "N", "D", "C=6ND", "lr"]
    rows = [line.split() for line in out[1:-2]]
    assert [row[0] for row in rows] == sorted(ladder_rungs(), key=lambda name: float(name[4:-1]))
    assert rows[-1][4:6] == ["1.32e-03", "524,288"]  # gpt_287m
    assert out[-2] == "from rules: lr, batch_tokens, warmup_steps"
    # Below C ~ 1.4e16 the rule's LR exceeds lr.max = 3e-3 (gpt_11m: 0.3118 x 1.35e16^-0.125 =
    # 3.006e-3): those rungs' LRs are marked, and the last line says why
    assert [row[0] for row in rows if row[4] == "3.00e-03*"] == [
        "gpt_1m", "gpt_3m", "gpt_6m", "gpt_11m"]
    assert not any(row[4].endswith("*") for row in rows[4:])
    assert out[-1] == "* the LR rule's value lies beyond hparams.lr.max, which clamps it"


def test_cli_reports_pins_and_errors_in_one_line(capsys):
    main(["budget.tokens=1e5", "train.lr=3e-3", "--models", "gpt_1m"])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "from rules: batch_tokens, warmup_steps; pinned: train.lr")
    with pytest.raises(SystemExit) as exit_:
        main(["budget.tokens=1e5", "train.micro_batch_size=6", "--models", "gpt_1m"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.micro_batch_size=6") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["budget.tokens=1e5", "--models", "gpt_9m"])
    assert "unknown model preset gpt_9m" in capsys.readouterr().err
