"""The cross-entropy over the head's logits and its gradient in one pass, inside the forward: one
Triton kernel per token row on CUDA (the same arithmetic in torch ops elsewhere).

The plain loss reads the [tokens, vocab] logits in the forward pass (the log-sum-exp), then again in
the backward pass to write their gradient: three passes over the largest tensor of a small model's
step. Here one kernel reads each row, keeps it on chip for the softmax, and writes the loss and
softmax minus one-hot at once; the backward pass only runs the head's two gradient matmuls.
"""

from __future__ import annotations

import torch

from models.loss import compute_dtype, torch_cross_entropy

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch-ops path below serves every device then
    triton = None

# The Triton kernel's blocks of vocabulary per loop step and warps per row, picked by timing them
# on the first call of each vocabulary size (triton.autotune): a row of 32768 bf16 logits is 64 KiB,
# so the best split depends on the card's registers and caches, which differ by GPU. A block as
# wide as the vocabulary holds the row in registers (one read); narrower ones loop over it twice.
AUTOTUNE_CONFIGS = ((2048, 8), (4096, 8), (4096, 16), (8192, 16), (8192, 32), (16384, 16),
                    (16384, 32), (32768, 16), (32768, 32))

if triton is not None:

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


def triton_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row float32 losses, softmax - one_hot in logits' dtype) of 2-D logits [rows, vocab]
    by the Triton kernel: autotuned, or with this many columns per loop step (block, a power of
    two; what the CPU interpreter tests use)."""
    if triton is None:
        raise RuntimeError("the fused loss's Triton kernel needs triton: pip install triton")
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


@torch.library.custom_op("scaling_sweep::cross_entropy_with_grad", mutates_args=())
def cross_entropy_with_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's cross-entropy and d(loss)/d(logits) of 2-D logits [rows, vocab] against targets
    [rows]: the Triton kernel on CUDA (bf16, fp16 or float32 logits), torch ops elsewhere. An op of
    its own, so torch.compile calls it as it is rather than tracing into Triton's launcher."""
    if logits.is_cuda and triton is not None and logits.dtype != torch.float64:
        return triton_cross_entropy(logits, targets)
    return torch_cross_entropy(logits, targets)


@cross_entropy_with_grad.register_fake
def _(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    loss_dtype = torch.promote_types(logits.dtype, torch.float32)
    return logits.new_empty(logits.shape[0], dtype=loss_dtype), torch.empty_like(logits)


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        dtype = compute_dtype(hidden)
        # autocast off: every cast is the one written here, as the plain path's autocast makes them
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            logits = h @ w.t() if bias is None else torch.addmm(bias.to(dtype), h, w.t())
            losses, grad = cross_entropy_with_grad(logits, targets)
        ctx.tokens = hidden.shape[0]
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.save_for_backward(grad, h, w)
        return losses.sum() / ctx.tokens

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad, h, w = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        # The kernel wrote the gradient of the summed losses; the mean's 1/tokens and the upstream
        # gradient scale the two small products, not the [tokens, vocab] gradient (no extra pass)
        scale = grad_loss.to(torch.promote_types(grad_loss.dtype, torch.float32)) / ctx.tokens
        with torch.autocast(grad.device.type, enabled=False):
            grad_hidden = ((grad @ w).to(hidden_dtype) * scale).to(hidden_dtype)
            grad_weight = ((grad.t() @ h).to(weight_dtype) * scale).to(weight_dtype)
            grad_bias = None
            if bias_dtype is not None:
                grad_bias = (grad.sum(0, dtype=scale.dtype) * scale).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None


def fused_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """Mean float32 cross-entropy of `hidden @ weight.T + bias` against targets, whose gradient the
    forward pass computes in the same kernel. hidden is [..., d_model], targets the matching ids."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _HeadCrossEntropy.apply(flat, weight, bias, targets.reshape(-1))
