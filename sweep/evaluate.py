"""Held-out evaluation: mean loss in nats per token and, where byte lengths are known, bits/byte.

Bits per byte follow nanochat's convention: special tokens (byte length 0) count in neither sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sweep.hardware import Hardware


@dataclass(frozen=True)
class EvalResult:
    """Loss over the fixed eval tokens; `bpb` is None when the dataset knows no byte lengths."""

    loss: float
    bpb: float | None
    tokens: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: Sequence[tuple[torch.Tensor, torch.Tensor]],
    hardware: Hardware,
    token_bytes: torch.Tensor | None = None,
) -> EvalResult:
    """Evaluate `model` on every (x, y) window; restores the model's training mode afterwards."""
    was_training = model.training
    model.eval()
    device = hardware.device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    byte_nats = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=device)
    tokens = 0
    try:
        for x, y in windows:
            with hardware.autocast():
                per_token = model(x, y, reduction="none").float()
            nats += per_token.sum(dtype=torch.float64)
            tokens += y.numel()
            if token_bytes is not None:
                lengths = token_bytes[y]
                byte_nats += (per_token * (lengths > 0)).sum(dtype=torch.float64)
                n_bytes += lengths.sum()
    finally:
        model.train(was_training)
    loss = nats.item() / tokens
    bpb = None
    if token_bytes is not None and n_bytes.item() > 0:
        bpb = byte_nats.item() / (math.log(2) * n_bytes.item())
    return EvalResult(loss=loss, bpb=bpb, tokens=tokens)
