"""The Triton kernel of models/fused_loss.py: each token row's cross-entropy and the gradient of its
logits (softmax minus one-hot) from one read of the row. Imported on first use only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The Triton kernel's blocks of vocabulary per loop step and warps per row, picked by timing them
# on the first call of each vocabulary size (triton.autotune): a row of 32768 bf16 logits is 64 KiB,
# so the best split depends on the card's registers and caches, which differ by GPU. A block as
# wide as the vocabulary holds the row in registers (one read); narrower ones loop over it twice.
AUTOTUNE_CONFIGS = ((2048, 8), (4096, 8), (4096, 16), (8192, 16), (8192, 32), (16384, 16),
                    (16384, 32), (32768, 16), (32768, 32))


@triton.jit
def _cross_entropy_rows(logits_ptr, grad_ptr, targets_ptr, losses_ptr, row_stride,
                        vocab: tl.constexpr, BLOCK: tl.constexpr):
    # vocab a compile-time constant: a run's one size, whose loops and masks it then knows
    # int64: rows x vocab passes 2^31 at 65536 tokens of a 32768 vocabulary
    row = tl.program_id(0).to(tl.int64)
    logits_ptr += row * row_stride
    grad_ptr += row * vocab
    target = tl.load(targets_ptr + row)
    # a target outside the vocabulary gives a NaN loss (the data's ids are checked upstream)
    inside = (target >= 0) & (target < vocab)
    target_logit = tl.load(logits_ptr + target, mask=inside, other=float("nan"))
    cols = tl.arange(0, BLOCK)
    if vocab <= BLOCK:
        # the whole row in registers: read once, written once
        mask = cols < vocab
        x = tl.load(logits_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
        top = tl.max(x, 0)
        lse = top + tl.log(tl.sum(tl.exp(x - top), 0))
        tl.store(losses_ptr + row, lse - target_logit.to(tl.float32))
        # d(loss)/d(logits) = softmax - one_hot(target)
        p = tl.exp(x - lse)
        p = tl.where(cols == target, p - 1.0, p)
        tl.store(grad_ptr + cols, p.to(grad_ptr.dtype.element_ty), mask=mask)
    else:
        # the running maximum and the sum of exp(x - maximum), in float32, in one read
        top = float("-inf")
        total = 0.0
        for start in range(0, vocab, BLOCK):
            offs = start + cols
            x = tl.load(logits_ptr + offs, mask=offs < vocab,
                        other=float("-inf")).to(tl.float32)
            new_top = tl.maximum(top, tl.max(x, 0))
            total = total * tl.exp(top - new_top) + tl.sum(tl.exp(x - new_top), 0)
            top = new_top
        lse = top + tl.log(total)
        tl.store(losses_ptr + row, lse - target_logit.to(tl.float32))
        # the row's second read: from L2 while few rows are in flight
        for start in range(0, vocab, BLOCK):
            offs = start + cols
            mask = offs < vocab
            x = tl.load(logits_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            p = tl.where(offs == target, p - 1.0, p)
            tl.store(grad_ptr + offs, p.to(grad_ptr.dtype.element_ty), mask=mask)


_autotuned_rows = triton.autotune(
    configs=[triton.Config({"BLOCK": block}, num_warps=warps)
             for block, warps in AUTOTUNE_CONFIGS],
    key=["vocab"],
)(_cross_entropy_rows)


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row float32 losses, softmax - one_hot in logits' dtype) of 2-D logits [rows, vocab]
    by the kernel: autotuned, or with this many columns per loop step (block, a power of two;
    what the CPU interpreter tests use)."""
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    targets = targets.contiguous()
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    grad = torch.empty((rows, vocab), dtype=logits.dtype, device=logits.device)
    if rows == 0:
        return losses, grad
    args = (logits, grad, targets, losses, logits.stride(0), vocab)
    if block is None:
        with torch.cuda.device(logits.device):
            _autotuned_rows[(rows,)](*args)
    else:
        _cross_entropy_rows[(rows,)](*args, BLOCK=block)
    return losses, grad
