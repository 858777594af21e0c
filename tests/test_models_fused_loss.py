"""Tests for models.fused_loss: the loss and the logits' gradient made in one pass give the plain
path's loss and gradients (to rounding in float64, within bf16 rounding under autocast), compiled
too; the Triton kernel (run by Triton's CPU interpreter) gives the torch ops' numbers; and a
training step touches the [tokens, vocab] logits outside the head's matmuls once, not three times.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from models import GPT
from models.fused_loss import cross_entropy_with_grad, fused_cross_entropy
from models.loss import torch_cross_entropy
from tests.helpers import gpt_config
from tests.test_models_loss import assert_compiled_matches_eager, grads, leaves, plain

ROOT = Path(__file__).resolve().parents[1]
# scripts/setup.sh installs Triton here for a CPU build of torch, outside its site-packages
TRITON_BESIDE = ROOT / ".venv" / "triton-interpreter"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tokens", [(3, 11), (1, 1)])
def test_float64_loss_and_gradients_match_the_plain_path(bias, tokens):
    hidden, weight, b, targets = leaves(bias=bias, tokens=tokens)
    # The plain path's .float() would round float64 to float32; compare with float64 throughout.
    logits = F.linear(hidden, weight, b)
    reference = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    fused = fused_cross_entropy(hidden, weight, b, targets)
    assert fused.dtype == torch.float64
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=0)
    for got, want in zip(grads(fused, (hidden, weight, b)), grads(reference, (hidden, weight, b)),
                         strict=True):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)


def test_gradcheck_and_upstream_gradient_scaling():
    hidden, weight, b, targets = leaves(tokens=(2, 5), d=4, vocab=7)
    assert torch.autograd.gradcheck(
        lambda h, w, bb: fused_cross_entropy(h, w, bb, targets), (hidden, weight, b)
    )
    once = grads(fused_cross_entropy(hidden, weight, b, targets), (hidden, weight, b))
    thrice = grads(3.0 * fused_cross_entropy(hidden, weight, b, targets), (hidden, weight, b))
    for g1, g3 in zip(once, thrice, strict=True):
        torch.testing.assert_close(g3, 3.0 * g1, rtol=1e-12, atol=0)


def test_float32_matches_and_the_loss_is_the_known_entropy_at_uniform_logits():
    hidden, weight, b, targets = leaves(dtype=torch.float32, tokens=(4, 64), d=16, vocab=300)
    fused = fused_cross_entropy(hidden, weight, b, targets)
    torch.testing.assert_close(fused, plain(hidden, weight, b, targets), rtol=1e-6, atol=0)
    zero = torch.zeros(300, 16, requires_grad=True)
    uniform = fused_cross_entropy(hidden, zero, None, targets)
    assert uniform.item() == pytest.approx(torch.log(torch.tensor(300.0)).item(), rel=1e-6)
    # at uniform logits each row's gradient is 1/300 - one_hot(target)
    _, grad = torch_cross_entropy(torch.zeros(2, 300), torch.tensor([0, 299]))
    assert grad[0, 0].item() == pytest.approx(1 / 300 - 1) and grad[1, 5] == pytest.approx(1 / 300)


def test_bf16_autocast_matches_the_plain_path_within_bf16_rounding():
    hidden, weight, b, targets = leaves(dtype=torch.float32, tokens=(4, 64), d=32, vocab=500)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_cross_entropy(hidden, weight, b, targets)
        reference = plain(hidden, weight, b, targets)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference, rtol=1e-3, atol=0)
    got, want = grads(fused, (hidden, weight, b)), grads(reference, (hidden, weight, b))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32  # the leaves' dtype, as autocast's casts give back
        assert ((g - w).norm() / w.norm()).item() < 1e-2  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_training_forward_uses_the_fused_loss_and_matches_the_plain_model(tie):
    torch.manual_seed(0)
    plain_model = GPT(gpt_config(tie_embeddings=tie, bias=True)).double()
    fused = GPT(gpt_config(tie_embeddings=tie, bias=True), loss_kernel="fused").double()
    fused.load_state_dict(plain_model.state_dict())
    idx, targets = torch.randint(101, (3, 17)), torch.randint(101, (3, 17))
    a, b = plain_model(idx, targets), fused(idx, targets)
    assert type(b.grad_fn).__name__ == "_HeadCrossEntropyBackward"
    a.backward()
    b.backward()
    # the plain path rounds its logits to float32 for the loss: agreement to float32 rounding
    torch.testing.assert_close(b, a.to(b.dtype), rtol=1e-6, atol=0)
    for (name, p), q in zip(plain_model.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-8, msg=name)
    # without gradients, or per token, it is the plain path's output
    with torch.no_grad():
        assert fused(idx, targets).grad_fn is None
        torch.testing.assert_close(fused(idx, targets, reduction="none"),
                                   plain_model(idx, targets, reduction="none"))


@pytest.mark.parametrize(("loss", "message"), [
    ({"loss_kernel": "triton"}, "loss_kernel='triton' is unknown: use one of plain, fused"),
    ({"loss_kernel": "fused", "loss_chunk_tokens": 64},
     "loss_chunk_tokens=64 and loss_kernel=fused are different ways to fuse the head and loss"),
    ({"loss_kernel": "fused", "loss_attention": True},
     "loss_attention=true and loss_kernel=fused are different ways"),
    ({"loss_chunk_tokens": 0}, "loss_chunk_tokens=0 must be a positive integer"),
    ({"loss_attention": "yes"}, "loss_attention='yes' must be true or false"),
])
def test_unknown_or_doubled_loss_settings_are_refused(loss, message):
    with pytest.raises(ValueError, match=message):
        GPT(gpt_config(), **loss)


class LogitsPasses(TorchDispatchMode):
    """Counts the ops, other than matmuls, that read or write a tensor of `numel` elements."""

    MATMULS = {"mm", "addmm", "bmm", "t", "transpose", "view", "_unsafe_view", "detach"}

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel = numel
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        tensors = [t for t in (*args, *(out if isinstance(out, tuple | list) else (out,)))
                   if isinstance(t, torch.Tensor)]
        if name not in self.MATMULS and any(t.numel() == self.numel for t in tensors):
            self.ops.append(name)
        return out


def test_a_training_step_passes_over_the_logits_once_outside_the_matmuls():
    torch.manual_seed(0)
    config = gpt_config(n_layer=1, vocab_size=997)  # the logits outgrow every other tensor
    # 4 x 15 tokens: not d_model's 64, so the logits' size is not the head weight's
    idx, targets = torch.randint(997, (4, 15)), torch.randint(997, (4, 15))
    ops = {}
    for kernel in ("plain", "fused"):
        model = GPT(config, loss_kernel=kernel)
        with LogitsPasses(4 * 15 * 997) as passes:
            model(idx, targets).backward()
        ops[kernel] = passes.ops
    # fused: the one kernel; plain: log-softmax, nll and their backwards (eager ops)
    assert ops["fused"] == ["cross_entropy_with_grad"], ops
    assert ops["plain"] == ["_log_softmax", "nll_loss_forward", "nll_loss_backward",
                            "_log_softmax_backward_data"], ops


# aot_eager traces the custom op and backward through dynamo and AOT autograd in seconds;
# inductor adds the CPU C++ codegen (~15 s), so it runs with the slow tests.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_with_the_fused_loss_matches_eager(backend: str):
    assert_compiled_matches_eager(backend, loss_kernel="fused")


def test_the_op_compiles_without_a_graph_break():
    logits, targets = torch.randn(6, 40), torch.randint(40, (6,))
    compiled = torch.compile(cross_entropy_with_grad, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(logits, targets), torch_cross_entropy(logits, targets),
                         strict=True):
        torch.testing.assert_close(got, want)


# Runs in a process of its own: Triton reads TRITON_INTERPRET when a kernel is defined.
KERNEL_CHECK = textwrap.dedent("""
    import torch
    from models.fused_loss import triton_cross_entropy
    from models.loss import torch_cross_entropy

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for vocab, block in ((29, 8), (300, 64), (1000, 1024)):
            logits = (torch.randn(37, vocab, generator=g) * 4).to(dtype)
            targets = torch.randint(vocab, (37,), generator=g)
            targets[0], targets[1] = 0, vocab - 1  # the vocabulary's two ends
            losses, grad = triton_cross_entropy(logits, targets, block)
            want_losses, want_grad = torch_cross_entropy(logits, targets)
            assert losses.dtype == torch.float32 and grad.dtype == dtype
            torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-5)
            # float32: exp's rounding grows with x - lse (up to ~40 here); bf16: one unit in the
            # last place of the rounded gradient, at most
            tol = 1e-5 if dtype == torch.float32 else 2 ** -8
            assert (grad.float() - want_grad.float()).abs().max().item() <= tol, (dtype, vocab)
            assert abs(grad.float().sum(1)).max().item() < 37 * tol + 1e-5  # rows sum to 0
    # rows strided (64 columns of a 128-wide buffer) and ids outside the vocabulary
    logits = torch.randn(4, 128, generator=g)[:, :64]
    losses, _ = triton_cross_entropy(logits, torch.tensor([0, 63, 64, -1]), 16)
    want, _ = torch_cross_entropy(logits[:2], torch.tensor([0, 63]))
    torch.testing.assert_close(losses[:2], want)
    assert losses[2:].isnan().all()
    print("kernel ok")
""")


def triton_path() -> str | None:
    """Where the kernel's test finds Triton: "" with torch (a CUDA build), scripts/setup.sh's
    install beside a CPU build's environment, or None (not installed)."""
    if importlib.util.find_spec("triton") is not None:
        return ""
    return str(TRITON_BESIDE) if (TRITON_BESIDE / "triton").is_dir() else None


def test_the_triton_kernel_gives_the_torch_ops_numbers():
    beside = triton_path()
    if beside is None:
        pytest.skip(f"no Triton, with torch or in {TRITON_BESIDE} (scripts/setup.sh puts it there)")
    path = os.pathsep.join(p for p in (str(ROOT), beside) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kernel ok" in done.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_autotuned_kernel_on_cuda_matches_the_torch_ops(dtype):
    """At the benchmark's vocabulary (32768) and 65536 rows: rows x vocab is 2^31, past int32."""
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = 65536 if dtype == torch.bfloat16 else 4100
    logits = (torch.randn(rows, 32768, device="cuda", generator=g) * 3).to(dtype)
    targets = torch.randint(32768, (rows,), device="cuda", generator=g)
    losses, grad = cross_entropy_with_grad(logits, targets)
    tail = slice(rows - 4096, rows)  # the last rows: where a 32-bit offset would wrap
    want_losses, want_grad = torch_cross_entropy(logits[tail], targets[tail])
    torch.testing.assert_close(losses[tail], want_losses, rtol=1e-5, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -8
    assert (grad[tail].float() - want_grad.float()).abs().max().item() <= tol
