"""Tests for sweep.schedule: warmup, cosine to 10%, constant and WSD over exactly a run's steps.

The warmup is a pinned fraction of the steps, or the hparams rule's steps when the fraction is null.
"""

import math

import pytest

from sweep.errors import ConfigError
from sweep.schedule import build_schedule

CFG = {"kind": "cosine", "warmup_fraction": 0.1, "min_lr_ratio": 0.1, "cooldown_fraction": 0.2}


def test_cosine_warms_up_then_ends_at_min_ratio():
    s = build_schedule(CFG, total_steps=100)
    assert s.warmup_steps == 10
    assert s.multiplier(0) == pytest.approx(0.1)
    assert s.multiplier(9) == pytest.approx(1.0)
    assert s.multiplier(99) == pytest.approx(0.1)  # last step of the run sits at 10%
    mid = 10 + (99 - 10) / 2
    assert s.multiplier(int(mid)) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * ((int(mid) - 10) / 89)))
    )
    values = [s.multiplier(i) for i in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_constant_holds_peak_after_warmup():
    s = build_schedule({**CFG, "kind": "constant"}, total_steps=50)
    assert [s.multiplier(i) for i in (5, 20, 49)] == [1.0, 1.0, 1.0]


def test_wsd_decays_linearly_over_the_cooldown():
    s = build_schedule({**CFG, "kind": "wsd"}, total_steps=100)
    assert s.cooldown_steps == 20
    assert s.multiplier(79) == 1.0
    assert s.multiplier(80) == pytest.approx(1 - 0.9 / 20)
    assert s.multiplier(99) == pytest.approx(0.1)


def test_single_step_run_uses_peak_lr():
    assert build_schedule(CFG, total_steps=1).multiplier(0) == 1.0


def test_cosine_with_one_step_after_the_warmup_still_ends_at_min_ratio():
    s = build_schedule({**CFG, "warmup_fraction": 0.8}, total_steps=5)
    assert [s.multiplier(i) for i in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.1])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"kind": "linear"}, "schedule.kind='linear' is unknown"),
        ({"warmup_fraction": 1.5}, "schedule.warmup_fraction=1.5"),
        ({"kind": "wsd", "warmup_fraction": 0.6, "cooldown_fraction": 0.6}, "exceed"),
        # all warmup: the run would end at the peak, not at min_lr_ratio
        ({"warmup_fraction": 1.0}, "warmup_fraction=1.0 leaves none of the run's 10 steps"),
        ({"warmup_fraction": 0.96}, "warmup_fraction=0.96 leaves none"),  # rounds to 10 steps
        ({"min_lr_ratio": True}, "schedule.min_lr_ratio=True must be a number"),
        ({"cooldown_fraction": float("nan")}, "schedule.cooldown_fraction=nan"),
    ],
)
def test_bad_schedules(change, needle):
    with pytest.raises(ConfigError, match=needle):
        build_schedule({**CFG, **change}, total_steps=10)


def test_null_fraction_takes_the_rules_warmup_steps():
    s = build_schedule({**CFG, "warmup_fraction": None}, total_steps=100, warmup_steps=7)
    assert s.warmup_steps == 7
    assert s.multiplier(6) == pytest.approx(1.0)
    # A pinned fraction wins over any rule.
    assert build_schedule(CFG, total_steps=100, warmup_steps=7).warmup_steps == 10


@pytest.mark.parametrize(
    ("warmup_steps", "needle"),
    [
        (None, "schedule.warmup_fraction=null takes the warmup from the hparams rule"),
        (0, "warmup_steps=0 must be a positive integer"),
        (200, "warmup (200) plus cooldown (0) steps exceed the run's 100 steps"),
    ],
)
def test_rule_warmup_errors(warmup_steps, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        build_schedule({**CFG, "warmup_fraction": None}, total_steps=100,
                       warmup_steps=warmup_steps)
