"""Tests for sweep.evaluate: loss in nats per token and exact bits per byte."""

import math

import pytest
import torch
from torch import nn

from sweep.evaluate import evaluate
from sweep.hardware import resolve_hardware


class FixedLoss(nn.Module):
    """A 'model' whose per-token loss is the target id itself, so the sums are known exactly."""

    def forward(self, x, y, reduction="none"):
        assert reduction == "none"
        return y.float()


def test_loss_and_bits_per_byte_exclude_zero_byte_tokens():
    hw = resolve_hardware("cpu", "fp32", False, None)
    y = torch.tensor([[0, 1, 2, 3]])
    windows = [(y.clone(), y)]
    token_bytes = torch.tensor([0, 1, 2, 4])  # token 0 is special: no bytes
    result = evaluate(FixedLoss(), windows, hw, token_bytes)
    assert result.loss == pytest.approx((0 + 1 + 2 + 3) / 4)
    assert result.bpb == pytest.approx((1 + 2 + 3) / (math.log(2) * (1 + 2 + 4)))
    assert result.tokens == 4
    assert evaluate(FixedLoss(), windows, hw).bpb is None


def test_evaluate_restores_training_mode():
    hw = resolve_hardware("cpu", "fp32", False, None)
    model = FixedLoss().train()
    evaluate(model, [(torch.ones(1, 2, dtype=torch.long),) * 2], hw)
    assert model.training
