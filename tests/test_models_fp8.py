"""Tests for models.fp8: FP8 Linear matmuls against float64, within FP8's rounding, eager and
compiled, on the CPU (torch._scaled_mm runs there) and on CUDA; the swap keeps the parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.fp8 import (
    E4M3,
    E5M2,
    Float8Linear,
    _cast,
    fp8_eligible,
    fp8_linear,
    use_fp8_matmuls,
)
from models.gpt import GPT
from sweep.hardware import resolve_hardware
from sweep.step import accumulate_gradients
from tests.helpers import gpt_config, needs_cpu_fp8

pytestmark = needs_cpu_fp8()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def operands(rows=64, k=128, n=96, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.02
    b = torch.randn(n, generator=g, dtype=torch.float64)
    grad = torch.randn(rows, n, generator=g, dtype=torch.float64)
    return [t.to(device) for t in (x, w, b, grad)]


@pytest.mark.parametrize(("dtype", "top", "step"),
                         [(E4M3, 448.0, 2 ** -3), (E5M2, 57344.0, 2 ** -2)])
def test_a_cast_fills_the_format_and_rounds_to_its_mantissa(dtype, top, step):
    x = torch.randn(1000, dtype=torch.float64) * 1e-3  # far below the format's range: scaled up
    cast, inverse = _cast(x, dtype)
    assert cast.dtype == dtype and cast.float().abs().max().item() == top
    back = cast.double() * inverse.double()
    # round to nearest: half a unit in the last place of 3 (e4m3) or 2 (e5m2) mantissa bits
    big = x.abs() > 1e-3 * 2 ** -6  # normal numbers of the format after scaling
    assert ((back - x).abs()[big] <= x.abs()[big] * step / 2 * 1.0001).all()
    zero, inverse = _cast(torch.zeros(16, 16), E4M3)
    assert torch.isfinite(inverse) and (zero.float() == 0).all()


def test_the_forward_is_the_product_of_the_cast_operands():
    """Exactly the float64 product of the dequantized e4m3 operands: the scales are right."""
    x, w, b, _ = operands()
    y = fp8_linear(x.float(), w.float(), b.float())
    assert y.dtype == torch.float32
    x8, x_inv = _cast(x.float(), E4M3)
    w8, w_inv = _cast(w.float(), E4M3)
    expected = (x8.double() * x_inv.double()) @ (w8.double() * w_inv.double()).T + b
    assert relative(y, expected) < 1e-6


def test_forward_and_gradients_are_the_float64_ones_within_fp8_rounding():
    x, w, b, grad = operands()
    for t in (x, w, b):
        t.requires_grad_()
    F.linear(x, w, b).backward(grad)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fp8_linear(x32, w32, b32)
    assert y.dtype == torch.bfloat16
    y.backward(grad.to(y.dtype))
    assert (x32.grad.dtype, w32.grad.dtype) == (torch.float32, torch.float32)
    # e4m3 operands: ~1 % on the output; e5m2 gradients (2 mantissa bits): several %
    assert relative(y, F.linear(x, w, b)) < 0.03
    assert relative(x32.grad, x.grad) < 0.12 and relative(w32.grad, w.grad) < 0.12
    assert relative(b32.grad, b.grad) < 0.01  # the bias's gradient is a sum of bf16 gradients
    # Not float64's: the FP8 path ran (a bf16 matmul would be within 1 %)
    assert relative(x32.grad, x.grad) > 0.01


def test_scaled_mm_gets_row_major_then_column_major_operands_from_any_strides(monkeypatch):
    """cuBLAS's FP8 matmul takes only a row-major first and a column-major second operand (the
    CPU's kernel takes any, so this checks the layouts themselves): a column-major input and a
    transposed output gradient are laid out so, and the numbers are the contiguous inputs' ones."""
    layouts = []
    real = torch._scaled_mm

    def recording(a, b, **kwargs):
        layouts.append((a.stride(), a.shape[1], b.stride(), b.shape[0]))
        return real(a, b, **kwargs)

    x, w, _, grad = operands()
    x_cols = x.float().t().contiguous().t()  # the same [64, 128] values, column-major
    grad_t = grad.float().t().contiguous().t()
    x_cols.requires_grad_(True)
    monkeypatch.setattr(torch, "_scaled_mm", recording)
    y = fp8_linear(x_cols, w.float())
    y.backward(grad_t)
    assert len(layouts) == 3  # the forward, then the input's and the weight's gradients
    for a_stride, a_cols, b_stride, b_rows in layouts:
        assert a_stride == (a_cols, 1) and b_stride == (1, b_rows)
    monkeypatch.setattr(torch, "_scaled_mm", real)
    x_rows = x.float().requires_grad_(True)
    y_rows = fp8_linear(x_rows, w.float())
    y_rows.backward(grad.float())
    assert torch.equal(y, y_rows) and torch.equal(x_cols.grad, x_rows.grad)


def test_shapes_fp8_cannot_run_take_the_plain_linear():
    x, w, b, _ = operands(rows=64, k=20, n=96)
    assert not fp8_eligible(x, w)
    assert torch.equal(fp8_linear(x, w, b), F.linear(x, w, b))
    assert not fp8_eligible(torch.zeros(3, 5, 128), w.new_zeros(96, 128))  # 15 rows
    assert fp8_eligible(torch.zeros(4, 4, 128), w.new_zeros(96, 128))


def test_the_swap_keeps_parameters_ties_and_state():
    torch.manual_seed(0)
    config = gpt_config(n_layer=2, d_model=64, n_head=2, vocab_size=256, tie_embeddings=True)
    model = GPT(config)
    before = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_fp8_matmuls(model) == 4 * 2 + 1  # qkv, out_proj, up, down a layer; the head
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, Float8Linear) and model.lm_head.weight is model.wte.weight
    assert dict(model.named_parameters()) == before  # the same objects, names and count
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert use_fp8_matmuls(model) == 0  # already swapped


def test_a_compiled_fp8_step_has_no_graph_break_and_follows_the_float32_one():
    config = gpt_config(n_layer=2, d_model=64, n_head=2, vocab_size=256, max_seq_len=32)
    torch.manual_seed(0)
    reference = GPT(config)
    model = GPT(config)
    model.load_state_dict(reference.state_dict())
    hw = resolve_hardware("cpu", "fp8", True, None)
    hw.place(model)
    tokens = torch.randint(256, (4, 33), generator=torch.Generator().manual_seed(1))
    xs, ys = tokens[:, :-1], tokens[:, 1:]
    loss32 = accumulate_gradients(reference, xs, ys, 4, resolve_hardware("cpu", "fp32", False,
                                                                         None))
    torch._dynamo.reset()
    # fullgraph: a graph break inside the autograd Function raises instead of running eager
    loss8 = accumulate_gradients(torch.compile(model, fullgraph=True), xs, ys, 4, hw)
    assert loss8.item() == pytest.approx(loss32.item(), rel=2e-3)
    for (name, p32), p8 in zip(reference.named_parameters(), model.parameters(), strict=True):
        assert relative(p8.grad, p32.grad) < 0.2, name
        cosine = F.cosine_similarity(p32.grad.flatten(), p8.grad.flatten(), dim=0)
        assert cosine > 0.98, name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA GPU with FP8 matmuls")
def test_cuda_fp8_matmuls_are_the_cast_operands_product_and_train_like_float32():
    """On the GPU, _scaled_mm's operand layouts: the forward is the dequantized product, the
    gradients float64's within FP8 rounding; then a compiled fp8 step of a 4x256 GPT at vocab
    32768 against the float32 eager one."""
    x, w, b, grad = operands(rows=1024, k=256, n=512, device="cuda")
    x32, w32, b32 = (t.float().requires_grad_() for t in (x, w, b))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fp8_linear(x32, w32, b32)
    y.backward(grad.to(y.dtype))
    x8, x_inv = _cast(x.float(), E4M3)
    w8, w_inv = _cast(w.float(), E4M3)
    exact = (x8.double() * x_inv.double()) @ (w8.double() * w_inv.double()).T + b
    assert relative(y, exact) < 1e-2  # bf16 output, fast accumulation
    for t in (x, w, b):
        t.requires_grad_()
    F.linear(x, w, b).backward(grad)
    assert relative(x32.grad, x.grad) < 0.12 and relative(w32.grad, w.grad) < 0.12

    config = gpt_config(n_layer=4, d_model=256, n_head=4, vocab_size=32768, max_seq_len=1024)
    torch.manual_seed(0)
    eager, fast = GPT(config).cuda(), GPT(config)
    fast.load_state_dict(eager.state_dict())
    hw = resolve_hardware("cuda", "fp8", True, None)
    hw.place(fast)
    tokens = torch.randint(32768, (8, 1025), device="cuda")
    xs, ys = tokens[:, :-1], tokens[:, 1:]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        loss32 = accumulate_gradients(eager, xs, ys, 8, resolve_hardware("cuda", "fp32", False,
                                                                         None))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    loss8 = accumulate_gradients(torch.compile(fast), xs, ys, 8, hw)
    assert loss8.item() == pytest.approx(loss32.item(), rel=2e-2)
    for (name, p32), p8 in zip(eager.named_parameters(), fast.parameters(), strict=True):
        cosine = F.cosine_similarity(p32.grad.flatten().float(), p8.grad.flatten().float(), dim=0)
        assert cosine > 0.97, name
