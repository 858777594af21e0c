"""Tests for models.shapes and the configs/model ladder: every rung obeys the one rule.

The YAML is read here (OmegaConf), never in models/; the big rungs are counted from their shape
only, or built on the meta device, so no test allocates a 300M model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from models import GPT, GPTConfig, count_params, shape_for_params
from models.counting import non_embedding_params

MODEL_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
CONFIG_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}


def load_model_yaml(name: str) -> dict[str, Any]:
    """base.yaml merged under a rung file, as Hydra's `defaults: [base, _self_]` does."""
    base = OmegaConf.load(MODEL_DIR / "base.yaml")
    layer = OmegaConf.load(MODEL_DIR / f"{name}.yaml")
    if name != "base":
        assert list(layer.pop("defaults")) == ["base", "_self_"]
    return OmegaConf.to_container(OmegaConf.merge(base, layer))  # type: ignore[return-value]


def to_config(node: dict[str, Any], **overrides: Any) -> GPTConfig:
    fields = {k: v for k, v in node.items() if k in CONFIG_FIELDS}
    fields.update(overrides)
    return GPTConfig(**fields)


BASE = load_model_yaml("base")
RULE = {k: BASE[k] for k in ("aspect_ratio", "head_dim", "min_heads")}
TEMPLATE = to_config(BASE, vocab_size=32768)
RUNGS = sorted(
    (p.stem for p in MODEL_DIR.glob("gpt_*.yaml")),
    key=lambda name: load_model_yaml(name)["n_layer"],
)


def rung_config(name: str, **overrides: Any) -> GPTConfig:
    return to_config(load_model_yaml(name), **{"vocab_size": 32768, **overrides})


def test_base_yaml_is_a_valid_config() -> None:
    assert BASE["vocab_size"] is None  # filled from the dataset manifest by the sweep
    assert BASE["target_params"] is None
    assert RULE == {"aspect_ratio": 64, "head_dim": 64, "min_heads": 4}
    assert set(BASE) == CONFIG_FIELDS | {"name", "target_params"} | set(RULE)
    assert count_params(TEMPLATE).non_embedding == 393_856


def test_ladder_has_enough_rungs_and_only_shape_keys() -> None:
    assert len(RUNGS) >= 10
    for name in RUNGS:
        own = OmegaConf.to_container(OmegaConf.load(MODEL_DIR / f"{name}.yaml"))
        assert set(own) == {"defaults", "name", "n_layer", "d_model", "n_head"}, name


@pytest.mark.parametrize("name", RUNGS)
def test_rung_is_a_fixed_point_of_the_rule(name: str) -> None:
    config = rung_config(name)
    n = count_params(config).non_embedding
    assert shape_for_params(n, TEMPLATE, **RULE) == config
    assert config.d_model == RULE["aspect_ratio"] * config.n_layer
    assert load_model_yaml(name)["name"] == f"gpt_{round(n / 1e6)}m" == name
    # the comment in the file states the exact count
    assert f"{n:,}" in (MODEL_DIR / f"{name}.yaml").read_text()


def test_ladder_spans_1m_to_300m_evenly_in_log_n() -> None:
    counts = [count_params(rung_config(name)).non_embedding for name in RUNGS]
    assert counts[0] == 1_328_448
    assert counts[-1] == 286_697_088
    ratios = [b / a for a, b in zip(counts, counts[1:], strict=False)]
    assert all(1.3 <= r <= 2.6 for r in ratios), ratios


def test_smallest_rung_uses_min_heads() -> None:
    config = rung_config(RUNGS[0])
    assert (config.n_layer, config.d_model, config.n_head, config.head_dim) == (3, 192, 4, 48)
    assert all(rung_config(name).head_dim == 64 for name in RUNGS[1:])


@pytest.mark.parametrize(
    ("rung", "overrides"),
    [
        ("gpt_1m", {"vocab_size": 512}),
        ("gpt_1m", {"vocab_size": 50304, "tie_embeddings": True, "positions": "learned"}),
        ("gpt_1m", {"vocab_size": 512, "bias": True, "positions": "learned"}),
        ("gpt_3m", {"vocab_size": 50304, "bias": True, "tie_embeddings": True}),
        ("gpt_3m", {"vocab_size": 512, "max_seq_len": 256, "positions": "learned"}),
    ],
)
def test_counts_match_real_module_for_small_rungs(rung: str, overrides: dict[str, Any]) -> None:
    config = rung_config(rung, **overrides)
    model = GPT(config)
    assert count_params(config).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tie", [False, True])
def test_counts_match_meta_module_for_every_rung(tie: bool) -> None:
    # the meta device builds the module without storage, so even 287M costs nothing
    for name in RUNGS:
        config = rung_config(name, tie_embeddings=tie, positions="learned")
        with torch.device("meta"):
            model = GPT(config)
        assert count_params(config).total == sum(p.numel() for p in model.parameters()), name


def test_rung_totals_with_default_vocab() -> None:
    # untied, rope, vocab 32768: total = non_embedding + 2 * 32768 * d_model
    assert count_params(rung_config("gpt_1m")).total == 13_911_360
    assert count_params(rung_config("gpt_287m")).total == 362_194_560


def test_shape_for_5m_is_the_nearest_rule_shape() -> None:
    config = shape_for_params(5e6, TEMPLATE, **RULE)
    assert (config.n_layer, config.d_model, config.n_head) == (5, 320, 5)
    assert config.d_model % config.n_head == 0
    n = count_params(config).non_embedding
    below = non_embedding_params(4, 256, 4, False)
    above = non_embedding_params(6, 384, 4, False)
    assert below < 5e6 < n < above
    assert abs(math.log(n / 5e6)) < abs(math.log(below / 5e6))
    # everything except the shape is the template's
    assert dataclasses.replace(config, n_layer=2, d_model=128, n_head=4) == TEMPLATE


def test_rule_picks_nearest_in_log_space() -> None:
    n4, n5 = non_embedding_params(4, 256, 4, False), non_embedding_params(5, 320, 4, False)
    midpoint = math.sqrt(n4 * n5)
    assert shape_for_params(midpoint * 0.999, TEMPLATE, **RULE).n_layer == 4
    assert shape_for_params(midpoint * 1.001, TEMPLATE, **RULE).n_layer == 5
    assert shape_for_params(1, TEMPLATE, **RULE).n_layer == 1  # tiny targets clamp to the floor
    assert shape_for_params(1, TEMPLATE, **RULE).n_head == 4  # d_model 64 -> 16-wide heads


def test_rule_respects_template_mlp_ratio_and_bias() -> None:
    template = dataclasses.replace(TEMPLATE, mlp_ratio=2, bias=True)
    target = non_embedding_params(9, 576, 2, True)
    config = shape_for_params(target, template, **RULE)
    assert (config.n_layer, config.mlp_ratio, config.bias) == (9, 2, True)
    assert count_params(config).non_embedding == target


@pytest.mark.parametrize("target", [0, -5e6, float("nan"), float("inf"), 1e15])
def test_bad_targets_raise(target: float) -> None:
    with pytest.raises(ValueError) as err:
        shape_for_params(target, TEMPLATE, **RULE)
    assert "target_params=" in str(err.value)
    assert "\n" not in str(err.value)


def test_rule_that_breaks_head_divisibility_raises() -> None:
    # aspect 32 with 64-wide heads: n_layer=11 gives d_model=352 and 5 heads, which do not divide
    target = non_embedding_params(11, 352, 4, False)
    with pytest.raises(ValueError, match=r"n_layer=11, d_model=352, n_head=5 is invalid"):
        shape_for_params(target, TEMPLATE, aspect_ratio=32, head_dim=64, min_heads=4)


@pytest.mark.parametrize("knob", ["aspect_ratio", "head_dim", "min_heads"])
def test_rule_knobs_must_be_positive(knob: str) -> None:
    with pytest.raises(ValueError, match=f"{knob}=0"):
        shape_for_params(5e6, TEMPLATE, **{**RULE, knob: 0})


def test_rungs_compose_under_hydra() -> None:
    hydra = pytest.importorskip("hydra")
    with hydra.initialize_config_dir(config_dir=str(MODEL_DIR.parent), version_base="1.3"):
        cfg = hydra.compose(config_name=None, overrides=["+model=gpt_85m"])
    model = OmegaConf.to_container(cfg.model)
    assert (model["name"], model["n_layer"], model["d_model"], model["n_head"]) == (
        "gpt_85m",
        12,
        768,
        12,
    )
    assert model["positions"] == "rope" and model["aspect_ratio"] == 64
