"""Held-out evaluation: mean loss in nats per token and, where byte lengths are known, bits/byte.

Bits per byte follow nanochat's convention: special tokens (byte length 0) count in neither sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sweep.hardware import Hardware, out_of_memory


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
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    split_on_oom: bool = True,
) -> EvalResult:
    """Evaluate `model` on every (x, y) window; restores the model's training mode afterwards.

    `reduce` sums the totals in place across data-parallel ranks, each of which evaluated its
    own share of the windows, so that every rank returns the loss over all of them.
    split_on_oom: a batch of windows that runs out of memory is scored in halves instead, down
    to one window (the sums, and so the result, are the same up to rounding): eval.batch_size is
    part of the run id, so lowering it is no way to go on with a run. Off under data
    parallelism, where a rank retrying a sharded forward alone would misalign the collectives.
    """
    was_training = model.training
    model.eval()
    device = hardware.device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    byte_nats = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=device)
    tokens = 0
    pending = list(windows)[::-1]  # a stack: halves of a batch go back on top, in order
    try:
        while pending:
            x, y = pending.pop()
            try:
                with hardware.autocast():
                    per_token = model(x, y, reduction="none").float()
            except Exception as err:  # out of memory, also when wrapped; the rest re-raise
                if not out_of_memory(err) or not split_on_oom or x.shape[0] == 1:
                    raise
                per_token = None  # retried below, outside the handler that pins the memory
            if per_token is None:
                hardware.empty_cache()
                half = x.shape[0] // 2
                pending += [(x[half:], y[half:]), (x[:half], y[:half])]
                continue
            nats += per_token.sum(dtype=torch.float64)
            tokens += y.numel()
            if token_bytes is not None:
                lengths = token_bytes[y]
                byte_nats += (per_token * (lengths > 0)).sum(dtype=torch.float64)
                n_bytes += lengths.sum()
    finally:
        model.train(was_training)
    count = torch.tensor(float(tokens), dtype=torch.float64, device=device)
    totals = torch.stack([nats, byte_nats, n_bytes.double(), count])
    if reduce is not None:
        reduce(totals)
    nats_sum, byte_nats_sum, bytes_sum, tokens_sum = totals.tolist()
    loss = nats_sum / tokens_sum
    bpb = None
    if token_bytes is not None and bytes_sum > 0:
        bpb = byte_nats_sum / (math.log(2) * bytes_sum)
    return EvalResult(loss=loss, bpb=bpb, tokens=int(tokens_sum))
