"""The output head and cross-entropy as two calls of the fused attention kernels (cuDNN, flash or
memory-efficient), so the [tokens, vocab] logits are made tile by tile on chip, never written out.

Cross-entropy is softmax attention with scale 1: the tokens' hidden states query the head's rows
(keys and values), and attention returns each token's log-sum-exp over the vocabulary, which the
loss needs, and sum_v p_iv w_v, the softmax's part of the hidden state's gradient. The weight's
gradient, sum_i p_iv h_i, is attention the other way: the head's rows query the tokens, whose
values carry exp(-lse_i) (shifted into float32's range); that output, times exp of its own
log-sum-exp, is the sum.
"""

from __future__ import annotations

import torch

from models.loss import compute_dtype, scaled_gradients

# The widest head dim each CUDA kernel takes in this project's use, with the oldest GPU (compute
# capability) it runs on; the first that fits is used, as SDPA would choose (cuDNN's is the
# fastest on Hopper: 700 TFLOP/s at d 128 on an H200, flash 330 at d 256). float32, or anything
# wider: the memory-efficient kernels (slower). cuDNN from 9.10 takes head dims up to 256 on
# Hopper (compute capability 9), as PyTorch's SDPA dispatch allows there.
CUDNN_MAX_DIM, CUDNN_MIN_CAPABILITY = 128, 9
CUDNN_HOPPER_MAX_DIM, CUDNN_HOPPER_MIN_VERSION = 256, 91000
FLASH_MAX_DIM, FLASH_MIN_CAPABILITY = 256, 8
# The cuDNN this torch loads (0: none), read once: dynamo folds it to a constant
CUDNN_VERSION = (torch.backends.cudnn.version() or 0) if torch.backends.cudnn.is_available() else 0


def cuda_kernel(dtype: torch.dtype, dim: int, capability: int, cudnn_version: int = 0) -> str:
    """'cudnn', 'flash' or 'efficient': the CUDA attention kernel for inputs of this dtype and head
    dim on a GPU of this compute capability (major version) with this cuDNN (e.g. 91300)."""
    if dtype in (torch.bfloat16, torch.float16) and dim % 8 == 0:
        cudnn_dim = (CUDNN_HOPPER_MAX_DIM if capability == 9
                     and cudnn_version >= CUDNN_HOPPER_MIN_VERSION else CUDNN_MAX_DIM)
        if dim <= cudnn_dim and capability >= CUDNN_MIN_CAPABILITY:
            return "cudnn"
        if dim <= FLASH_MAX_DIM and capability >= FLASH_MIN_CAPABILITY:
            return "flash"
    return "efficient"


def pays(device: torch.device, dtype: torch.dtype, d_model: int) -> bool:
    """Whether the loss as attention is the faster head and loss on this device, for a model of
    this width computing in dtype: where it runs on cuDNN's kernel (a Hopper or newer GPU, d_model
    up to 128). Measured on an H200 (BENCHMARKS.md, 2026-12-04): 1.39x the plain step's tokens/s
    at 4x128, but 0.87x at 6x256 (flash) and 0.5-0.7x from 8x384 on (memory-efficient), as it
    does 8 M V d FLOPs against the plain path's 6 M V d."""
    if device.type != "cuda":
        return False
    capability = torch.cuda.get_device_properties(device).major
    # cuDNN at d_model 256 (cuDNN 9.10 on Hopper) is yet to be timed: only what was measured
    return (d_model <= CUDNN_MAX_DIM
            and cuda_kernel(dtype, d_model, capability, CUDNN_VERSION) == "cudnn")


# The weight's gradient call normalises each head row's scores s_iv over the tokens by their
# largest, m_v <= the largest log-sum-exp; a token's term there, exp(s_iv - m_v), flushes to zero
# below exp(-87) (float32's and bf16's range), though its true weight exp(s_iv - lse_i) is at most
# exp(spread - 87). Within 60 nats of spread, the terms lost weigh under vocab x exp(-27) of the
# gradient (6e-8 at vocab 32768), below its rounding; the scaled values exp(shift - lse_i) stay
# within exp(+-30). Measured (d 16, vocab 300): exact to 1e-6 up to a spread of 63 nats, 2e-3 off
# at 86, 10 % at 110. Language models' log-sum-exps lie far closer (gpt_1m trained on the stdlib
# corpus to a validation loss of 3.06: 6.7-9.1 nats apart in each batch of 64 x 128 tokens): a
# batch spread wider gets a NaN loss and weight gradient, which the training loop reports as a
# divergence.
MAX_LSE_SPREAD = 60.0
# What a run that ends diverged with this loss adds to its error
DIVERGED_HINT = (
    " (with train.loss_attention, also where a batch's tokens' log-sum-exps lie more than "
    f"{MAX_LSE_SPREAD:.0f} nats apart, which its weight gradient cannot hold: "
    "train.loss_attention=false follows the run further)"
)


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/float32 inputs, float64 for float64: what sums are kept in."""
    return torch.promote_types(dtype, torch.float32)


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q @ k.T) @ v and the log-sum-exp of each row of q @ k.T (float32, or float64 for
    float64 inputs), for 2-D [rows, dim] inputs of one dtype, by the device's fused kernel (no
    [rows, keys] tensor)."""
    q, k, v = q[None, None], k[None, None], v[None, None]  # one batch, one head
    rows, dim = q.shape[-2], q.shape[-1]
    aten = torch.ops.aten
    if q.device.type == "cpu":
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=1.0)
    else:
        # dynamo folds get_device_properties to a constant: no graph break
        kernel = cuda_kernel(q.dtype, dim, torch.cuda.get_device_properties(q.device).major,
                             CUDNN_VERSION)
        if kernel == "cudnn":
            out, lse = aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False,
                                                                False, scale=1.0)[:2]
        elif kernel == "flash":
            out, lse = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False,
                                                                scale=1.0)[:2]
        else:
            out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0,
                                                                    False, scale=1.0)[:2]
    # [1, 1, rows] or cuDNN's [1, 1, rows, 1]; the memory-efficient kernel pads rows to a
    # multiple of 32
    return out[0, 0], lse.reshape(-1)[:rows].to(_accumulate_dtype(q.dtype))


def _token_losses(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """(losses, attention output, log-sum-exps, h, target rows) of hidden h against head w; all
    but the output in float32 at least (the dtype the gradients are summed in)."""
    out, lse = _attention(h, w, w)
    acc = lse.dtype
    # h . w_target from the compute-dtype values the kernel saw, summed in float32 at least
    h_acc, target_rows = h.to(acc), w[targets].to(acc)
    losses = lse - (h_acc * target_rows).sum(-1)
    return losses, out, lse, h_acc, target_rows


class _AttentionCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        dtype = compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            losses, out, lse, h_acc, target_rows = _token_losses(h, w, targets)
            # d(sum of losses)/dh_i = sum_v p_iv w_v - w_target(i)
            grad_hidden = (out.to(lse.dtype) - target_rows).to(hidden.dtype)
            # d(sum of losses)/dw_v = sum_i p_iv h_i - (sum of h_i whose target is v); the first
            # term: the rows of w query the tokens with values h_i exp(shift - lse_i), and the
            # output times exp(lse'_v - shift) undoes the normalising. The shift, mid-range of
            # the lse, keeps both factors within float32's (and bf16's) exponent range.
            top, bottom = lse.max(), lse.min()
            shift = (top + bottom) / 2
            values = (h_acc * torch.exp(shift - lse)[:, None]).to(dtype)
            out_w, lse_w = _attention(w, h, values)
            # Past float32's range: NaN, not an overflowed or flushed gradient, nor an error,
            # which on a GPU would need a sync each step (or kill the process unrecorded). Set
            # in the per-row scale, so the whole gradient is NaN without a pass of its own.
            beyond = top - bottom > MAX_LSE_SPREAD
            scale = torch.where(beyond, torch.nan, torch.exp(lse_w - shift))
            grad_weight = out_w.to(lse.dtype) * scale[:, None]
            grad_weight = grad_weight.index_add(0, targets, h_acc, alpha=-1.0)
            loss = torch.where(beyond, torch.nan, losses.sum() / hidden.shape[0])
        ctx.tokens = hidden.shape[0]
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return (*scaled_gradients(ctx, grad_loss, grad_hidden, grad_weight, None)[:2], None)


def attention_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (a head without bias) against targets, by two
    attention calls. hidden is [..., d_model], targets the matching [...] ids."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _AttentionCrossEntropy.apply(flat, weight, targets.reshape(-1))


def token_attention_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per-token float32 cross-entropy of the head, shaped like targets, by one attention call:
    for evaluation (no gradients)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    dtype = compute_dtype(flat)
    with torch.autocast(flat.device.type, enabled=False):
        losses = _token_losses(flat.to(dtype), weight.to(dtype), targets.reshape(-1))[0]
    return losses.view(targets.shape)
