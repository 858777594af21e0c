"""FP8 matmuls for a model's Linear layers (train.precision=fp8): e4m3 activations and weights,
e5m2 gradients, one dynamic scale per tensor, products accumulated by torch._scaled_mm.

The recipe is torchao's "tensorwise" float8 training, written out in one autograd Function so the
project needs no further package: each matmul's operands are scaled so their largest magnitude
meets the format's, cast, multiplied at FP8 rate and unscaled in the output's bf16 or float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn  # forward operands: 3 mantissa bits, magnitudes to 448
E5M2 = torch.float8_e5m2  # gradients: 2 mantissa bits, magnitudes to 57344, the wider range
# cuBLASLt's FP8 matmuls need every dimension a multiple of 16; other shapes run in bf16
FP8_ALIGN = 16


def _cast(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x scaled so its largest |value| is dtype's largest and cast to dtype, the inverse scale):
    x ~= cast.float() * inverse. The clamp keeps rounding at the top from overflowing to NaN."""
    top = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float()
    scale = top / amax.clamp(min=1e-12)  # an all-zero tensor keeps a finite scale
    cast = (x.float() * scale).clamp(-top, top).to(dtype)
    return cast, scale.reciprocal()


def _row_major(x: torch.Tensor) -> torch.Tensor:
    """x [r, c] in row-major memory, as _scaled_mm's first operand: cuBLAS's FP8 matmul takes no
    other layout, and a cast keeps its input's strides (the CPU's kernel takes any)."""
    return x.contiguous()


def _column_major(x: torch.Tensor) -> torch.Tensor:
    """x [r, c] with the same values in column-major memory, as _scaled_mm's second operand."""
    return x.t().contiguous().t()


class _Float8Matmul(torch.autograd.Function):
    """x [M, K] @ weight[N, K].T in FP8, forward and both gradients. Eager, the FP8 operands are
    what the backward pass keeps; under torch.compile the partitioner decides, and keeps x in bf16
    to cast again there (on the CPU its graphs did so, reading x once more)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        x8, x_inv = _cast(_row_major(x), E4M3)
        w8, w_inv = _cast(_row_major(weight), E4M3)
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.dtypes = (x.dtype, weight.dtype)
        # fast accumulation in the forward only, as torchao does: the gradients' sums keep
        # full-precision accumulation
        return torch._scaled_mm(x8, w8.t(), scale_a=x_inv, scale_b=w_inv, out_dtype=out_dtype,
                                use_fast_accum=x.is_cuda)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        g8, g_inv = _cast(_row_major(grad), E5M2)
        # dx [M, K] = g [M, N] @ w [N, K]; dw [N, K] = g.T [N, M] @ x [M, K]. _scaled_mm takes a
        # row-major first and a column-major second operand, hence the transposed copies
        grad_x = torch._scaled_mm(g8, _column_major(w8), scale_a=g_inv, scale_b=w_inv,
                                  out_dtype=x_dtype)
        grad_w = torch._scaled_mm(_row_major(g8.t()), _column_major(x8), scale_a=g_inv,
                                  scale_b=x_inv, out_dtype=w_dtype)
        return grad_x, grad_w, None


def fp8_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight.T can run in FP8: every dimension a multiple of FP8_ALIGN and a
    floating input (the last dimension of x is weight's second)."""
    rows = x.numel() // max(x.shape[-1], 1)
    return (x.is_floating_point() and x.shape[-1] == weight.shape[1]
            and all(n > 0 and n % FP8_ALIGN == 0 for n in (rows, *weight.shape)))


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(x, weight, bias) with the matmul in FP8 where fp8_eligible, else F.linear itself.

    The output is in autocast's dtype when autocast is on for x's device, else in x's dtype.
    """
    if not fp8_eligible(x, weight):
        return F.linear(x, weight, bias)
    kind = x.device.type
    out_dtype = x.dtype
    if torch.is_autocast_enabled(kind):
        # x in autocast's dtype first, as F.linear would take it: a LayerNorm's float32 output is
        # then written in bf16 by its own kernel, not kept in float32 for the amax and the cast
        out_dtype = torch.get_autocast_dtype(kind)
        x = x.to(out_dtype)
    # autocast off inside: the Function casts its operands itself, and its output keeps out_dtype
    with torch.autocast(kind, enabled=False):
        y = _Float8Matmul.apply(x.reshape(-1, x.shape[-1]), weight, out_dtype)
        y = y.view(*x.shape[:-1], weight.shape[0])
        return y if bias is None else y + bias.to(y.dtype)


class Float8Linear(nn.Linear):
    """nn.Linear whose matmul runs in FP8 (fp8_linear): the same parameters, names and state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Linear:
        """A Float8Linear holding linear's own Parameter objects (ties and optimizer state hold)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        return new


def use_fp8_matmuls(model: nn.Module) -> int:
    """Turn every nn.Linear of model into a Float8Linear in place; returns how many.

    The head's matmuls inside the fused, chunked or attention losses (which take its weight, not
    the module) stay in bf16: only the plain loss calls the head module.
    """
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, Float8Linear.from_linear(child))
                swapped += 1
    return swapped

