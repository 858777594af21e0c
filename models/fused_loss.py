"""The cross-entropy over the head's logits and its gradient in one pass, inside the forward: one
Triton kernel per token row on CUDA (the same arithmetic in torch ops elsewhere).

The plain loss reads the [tokens, vocab] logits in the forward pass (the log-sum-exp), then again in
the backward pass to write their gradient: three passes over the largest tensor of a small model's
step. Here one kernel reads each row, keeps it on chip for the softmax, and writes the loss and
softmax minus one-hot at once; the backward pass only runs the head's two gradient matmuls.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from models.loss import compute_dtype, torch_cross_entropy


@functools.cache
def has_triton() -> bool:
    """Whether Triton is installed (CUDA builds of torch bring it), without importing it."""
    return importlib.util.find_spec("triton") is not None


def triton_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row float32 losses, softmax - one_hot in logits' dtype) of 2-D logits [rows, vocab]
    by the Triton kernel: autotuned, or with this many columns per loop step (block, a power of
    two; what the CPU interpreter tests use)."""
    if not has_triton():
        raise RuntimeError("the fused loss's Triton kernel needs triton: pip install triton")
    # Here, not at the top: a run that never calls the kernel (every CPU run) never loads Triton
    from models.fused_loss_kernel import cross_entropy

    return cross_entropy(logits, targets, block)


@torch.library.custom_op("scaling_sweep::cross_entropy_with_grad", mutates_args=())
def cross_entropy_with_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's cross-entropy and d(loss)/d(logits) of 2-D logits [rows, vocab] against targets
    [rows]: the Triton kernel on CUDA (bf16, fp16 or float32 logits), torch ops elsewhere. An op of
    its own, so torch.compile calls it as it is rather than tracing into Triton's launcher."""
    if logits.is_cuda and has_triton() and logits.dtype != torch.float64:
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
        # (a 0-dim tensor: a product with it keeps the other factor's floating dtype)
        scale = grad_loss.to(torch.promote_types(grad_loss.dtype, torch.float32)) / ctx.tokens
        with torch.autocast(grad.device.type, enabled=False):
            grad_hidden = (grad @ w).to(hidden_dtype) * scale
            grad_weight = (grad.t() @ h).to(weight_dtype) * scale
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
