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


class RunsOutAbove(FixedLoss):
    """FixedLoss that runs out of memory on a batch of more than `limit` windows."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.batches = limit, []

    def forward(self, x, y, reduction="none"):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x, y, reduction)


def test_a_batch_that_runs_out_of_memory_is_scored_in_halves():
    # eval.batch_size is part of the run id: lowering it would start another run, not go on
    hw = resolve_hardware("cpu", "fp32", False, None)
    y = torch.arange(40).view(8, 5) % 7
    windows = [(y[:5], y[:5]), (y[5:], y[5:])]
    token_bytes = torch.tensor([0, 1, 2, 1, 3, 1, 2])
    whole = evaluate(FixedLoss(), windows, hw, token_bytes)
    model = RunsOutAbove(2)
    halves = evaluate(model, windows, hw, token_bytes)
    assert (halves.loss, halves.bpb, halves.tokens) == (whole.loss, whole.bpb, whole.tokens)
    assert model.batches == [5, 2, 3, 1, 2, 3, 1, 2]  # 5 -> 2 + (3 -> 1 + 2); 3 -> 1 + 2
    assert model.training


@pytest.mark.parametrize(("limit", "split"), [(0, True), (2, False)])
def test_out_of_memory_at_one_window_or_without_splitting_is_raised(limit, split):
    hw = resolve_hardware("cpu", "fp32", False, None)
    y = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(torch.OutOfMemoryError):
        evaluate(RunsOutAbove(limit), [(y, y)], hw, split_on_oom=split)
