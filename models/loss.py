"""The output head and cross-entropy fused over chunks of tokens, so that the [tokens, vocab] logits
and their gradient never exist whole: at small widths they are most of a step's memory traffic.

The gradients are computed in the forward pass, chunk by chunk (softmax minus one-hot), and only
scaled in the backward pass: the same numbers as the plain head + `F.cross_entropy` up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give the head's matmul here (x's own dtype outside autocast)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def torch_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row losses, softmax - one_hot in logits' dtype) of 2-D logits [rows, vocab]: the
    losses in float32 (float64 for float64 logits), as models.fused_loss's kernel gives them."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(x, dim=-1)
    losses = lse - x.gather(1, targets[:, None]).squeeze(1)
    p = torch.exp(x - lse[:, None])
    p = p.scatter_add(1, targets[:, None], p.new_full((p.shape[0], 1), -1.0))
    return losses, p.to(logits.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_tokens: int,
    ) -> torch.Tensor:
        dtype = compute_dtype(hidden)
        # Casts done once, not per chunk; autocast is switched off below so that every dtype is
        # the one written here.
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        # The loss and the sums over chunks in float32 at least (float64 stays float64): a bf16
        # running sum would lose the small terms.
        acc = torch.promote_types(dtype, torch.float32)
        tokens = hidden.shape[0]
        loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_bias = (
            torch.zeros(bias.shape, dtype=acc, device=bias.device) if bias is not None else None
        )
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, tokens, chunk_tokens):
                h = hidden[start : start + chunk_tokens].to(dtype)
                t = targets[start : start + chunk_tokens]
                # addmm, as F.linear: the bias is added before the one rounding to dtype
                logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())
                # float32 log-sum-exp, as the plain path's logits.float() gives, and
                # d(sum of losses)/d(logits) = softmax - one_hot(target), rounded to dtype
                losses, grad = torch_cross_entropy(logits, t)
                loss_sum = loss_sum + losses.sum()
                if grad_bias is not None:
                    grad_bias = grad_bias + grad.sum(0, dtype=acc)
                grad_hidden[start : start + chunk_tokens] = grad @ w
                grad_weight = grad_weight + (grad.t() @ h).to(acc)
        ctx.tokens = tokens
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return loss_sum / tokens

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (*scaled_gradients(ctx, grad_loss, grad_hidden, grad_weight, grad_bias), None, None)


def scaled_gradients(
    ctx: torch.autograd.function.FunctionCtx,
    grad_loss: torch.Tensor,
    grad_hidden: torch.Tensor,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The gradients of the summed losses, made in a fused forward, as those of the mean loss
    times grad_loss, in the hidden state's and the weight's dtype (ctx.tokens, .weight_dtype)."""
    scale = grad_loss / ctx.tokens  # the loss is the mean over tokens
    return (
        grad_hidden * scale.to(grad_hidden.dtype),
        (grad_weight * scale).to(ctx.weight_dtype),
        (grad_bias * scale).to(ctx.weight_dtype) if grad_bias is not None else None,
    )


def check_chunk_tokens(value: object, name: str = "chunk_tokens") -> None:
    """ValueError unless value is a positive int (tokens per chunk); `name` is what it is called."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (tokens per chunk)")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_tokens: int,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` against targets, in float32, computed
    chunk_tokens rows at a time. hidden is [..., d_model], targets the matching [...] ids."""
    check_chunk_tokens(chunk_tokens)
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _LinearCrossEntropy.apply(flat, weight, bias, targets.reshape(-1), chunk_tokens)


def token_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_tokens: int,
) -> torch.Tensor:
    """Per-token float32 cross-entropy of the head, shaped like targets, made chunk_tokens rows at a
    time: for evaluation (no gradients), whose peak memory is then one chunk's logits, not all."""
    check_chunk_tokens(chunk_tokens)
    flat = hidden.reshape(-1, hidden.shape[-1])
    ids = targets.reshape(-1)
    losses = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)
    for start in range(0, ids.shape[0], chunk_tokens):
        # F.linear under the caller's autocast and .float(), as the plain path: the same numbers
        logits = F.linear(flat[start : start + chunk_tokens], weight, bias)
        losses[start : start + chunk_tokens] = F.cross_entropy(
            logits.float(), ids[start : start + chunk_tokens], reduction="none"
        )
    return losses.view(targets.shape)
