"""Tests for models.config: GPTConfig validation and its one-line ValueError messages.

Every bad value a user can type in YAML must be rejected with a message naming that value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from models import GPTConfig
from tests.helpers import gpt_config


def make_config(**overrides: Any) -> GPTConfig:
    return gpt_config(**{"d_model": 128, "vocab_size": 256, "max_seq_len": 64, **overrides})


def test_valid_config_and_head_dim() -> None:
    config = make_config(d_model=192, n_head=4)
    assert config.head_dim == 48
    assert make_config(d_model=128, n_head=128, positions="learned").head_dim == 1


def test_config_is_frozen() -> None:
    config = make_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 3  # type: ignore[misc]


def test_no_python_defaults_for_yaml_knobs() -> None:
    # defaults belong to configs/model/base.yaml; a Python default would silently shadow them
    with_defaults = [
        f.name for f in dataclasses.fields(GPTConfig) if f.default is not dataclasses.MISSING
    ]
    assert with_defaults == []


def test_head_divisibility_message_lists_choices() -> None:
    with pytest.raises(ValueError) as err:
        make_config(n_head=3)
    assert str(err.value) == (
        "n_head=3 does not divide d_model=128: pick n_head from 1, 2, 4, 8, 16, 32, 64, 128 "
        "or change d_model"
    )
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"n_layer": 0}, "n_layer=0"),
        ({"n_layer": -2}, "n_layer=-2"),
        ({"n_layer": 2.5}, "n_layer=2.5"),
        ({"n_layer": True}, "n_layer=True"),
        ({"d_model": 0}, "d_model=0"),
        ({"n_head": 0}, "n_head=0"),
        ({"vocab_size": None}, "vocab_size=None"),
        ({"vocab_size": 0}, "vocab_size=0"),
        ({"max_seq_len": 0}, "max_seq_len=0"),
        ({"mlp_ratio": 0}, "mlp_ratio=0"),
        ({"positions": "alibi"}, "positions='alibi'"),
        ({"d_model": 96, "n_head": 32}, "head_dim=3"),  # odd head_dim cannot be rotated
        ({"tie_embeddings": "no"}, "tie_embeddings='no'"),
        ({"bias": 1}, "bias=1"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"init_std": 0.0}, "init_std=0.0"),
        ({"init_std": float("nan")}, "init_std=nan"),
    ],
)
def test_bad_values_raise_one_line_naming_the_value(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        make_config(**overrides)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_odd_head_dim_is_fine_for_learned_positions() -> None:
    assert make_config(d_model=96, n_head=32, positions="learned").head_dim == 3
