"""Tests for models.counting: parameter counts against real modules, FLOPs against FlopCounterMode.

FlopCounterMode runs under the MATH SDPA backend: on the CPU it counts the flash kernel as 0 FLOPs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models import GPT, GPTConfig, count_params, flops_per_token
from tests.helpers import gpt_config


def make_config(**overrides: Any) -> GPTConfig:
    return gpt_config(**{"vocab_size": 97, **overrides})


VARIANTS = [
    {},
    {"positions": "learned"},
    {"tie_embeddings": True},
    {"bias": True},
    {"positions": "learned", "tie_embeddings": True, "bias": True},
    {"n_layer": 3, "d_model": 48, "n_head": 3, "mlp_ratio": 2, "vocab_size": 50},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_param_counts_match_module(overrides: dict[str, Any]) -> None:
    config = make_config(**overrides)
    model = GPT(config)
    counts = count_params(config)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.embedding == model.wte.weight.numel()
    assert counts.position == (model.wpe.weight.numel() if model.wpe is not None else 0)
    blocks_and_norm = sum(p.numel() for p in model.blocks.parameters())
    blocks_and_norm += sum(p.numel() for p in model.ln_f.parameters())
    assert counts.non_embedding == blocks_and_norm
    assert counts.head == counts.total - counts.embedding - counts.position - blocks_and_norm


def test_param_counts_by_hand() -> None:
    # d=64, 2 layers, no bias: per layer 12*d^2 + 2 LayerNorm weights, plus the final LayerNorm
    counts = count_params(make_config(positions="learned"))
    assert counts.non_embedding == 2 * (12 * 64 * 64 + 2 * 64) + 64 == 98_624
    assert counts.embedding == 97 * 64 == 6_208
    assert counts.head == 6_208
    assert counts.position == 32 * 64 == 2_048
    assert counts.total == 98_624 + 2 * 6_208 + 2_048
    tied_bias = count_params(make_config(tie_embeddings=True, bias=True))
    # head bias stays when the weight is tied: a tied head contributes only its bias
    assert tied_bias.head == 97
    assert tied_bias.non_embedding == 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64 == 100_096


def test_flop_conventions_by_hand() -> None:
    config = make_config(n_layer=2, d_model=64, vocab_size=97)
    flops = flops_per_token(config, seq_len=16)
    n = count_params(config).non_embedding
    assert flops.flops_6nd == 6 * n
    assert flops.flops_6nd_total == 6 * (n + 97 * 64)
    assert flops.by_component == {
        "attention_qkv": 3 * 2 * 2 * 64 * 192,
        "attention_scores": 3 * 2 * 2 * 16 * 64,
        "attention_values": 3 * 2 * 2 * 16 * 64,
        "attention_out": 3 * 2 * 2 * 64 * 64,
        "mlp": 3 * 2 * 2 * 2 * 4 * 64 * 64,
        "head": 3 * 2 * 64 * 97,
    }
    assert flops.flops_exact == sum(flops.by_component.values()) == 651_648
    # the 6N rule and the exact count differ by attention-over-context and the head
    matmul_weights = 6 * (n + 97 * 64) - 6 * (2 * 2 * 64 + 64)  # minus LayerNorm weights
    attention = 3 * 2 * 2 * 2 * 16 * 64
    assert flops.flops_exact == matmul_weights + attention


def test_tying_does_not_change_flops() -> None:
    untied = flops_per_token(make_config(), 16)
    tied = flops_per_token(make_config(tie_embeddings=True), 16)
    assert tied == untied


@pytest.mark.parametrize(
    ("overrides", "batch", "seq_len"),
    [
        ({}, 2, 16),
        ({"positions": "learned", "tie_embeddings": True}, 3, 32),
        ({"bias": True, "n_layer": 3, "d_model": 96, "n_head": 6, "vocab_size": 211}, 2, 24),
        ({"d_model": 32, "n_head": 2, "mlp_ratio": 3, "positions": "learned", "bias": True}, 1, 7),
    ],
)
def test_flops_exact_matches_flop_counter(
    overrides: dict[str, Any], batch: int, seq_len: int
) -> None:
    config = make_config(**overrides)
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (batch, seq_len))
    # MATH decomposes attention into counted bmm ops; the embedding output requires grad, so the
    # first layer's input gradient (a real matmul) is counted as well
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx).backward()
    measured = counter.get_total_flops()
    predicted = flops_per_token(config, seq_len).flops_exact * batch * seq_len
    assert predicted == measured


def test_flops_reject_bad_seq_len() -> None:
    config = make_config(max_seq_len=32)
    with pytest.raises(ValueError, match="seq_len=33 exceeds max_seq_len=32"):
        flops_per_token(config, 33)
    with pytest.raises(ValueError, match="seq_len=0"):
        flops_per_token(config, 0)
