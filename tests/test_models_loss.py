"""Tests for models.loss: the chunked head + cross-entropy gives the plain path's loss and
gradients (exactly in float64, within rounding in float32 and bf16), compiled too; GPT uses it for
training and its chunked per-token losses for evaluation, which never makes the whole logits.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from models import GPT
from models.loss import linear_cross_entropy, token_cross_entropy
from sweep.evaluate import evaluate
from sweep.hardware import resolve_hardware
from tests.helpers import gpt_config


def plain(hidden, weight, bias, targets):
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def leaves(dtype=torch.float64, tokens=(3, 11), d=8, vocab=29, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*tokens, d, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(vocab, d, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(vocab, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(vocab, tokens, generator=g)
    return hidden, weight, b, targets


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk", [1, 5, 33, 34, 1000])  # 33 tokens: 1 per chunk ... all in one
@pytest.mark.parametrize("bias", [True, False])
def test_float64_loss_and_gradients_match_the_plain_path(chunk, bias):
    hidden, weight, b, targets = leaves(bias=bias)
    # The plain path's .float() would round float64 to float32; compare with float64 throughout.
    logits = F.linear(hidden, weight, b)
    reference = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    fused = linear_cross_entropy(hidden, weight, b, targets, chunk)
    assert fused.dtype == torch.float64
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=0)
    for got, want in zip(grads(fused, (hidden, weight, b)), grads(reference, (hidden, weight, b)),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_gradcheck_and_upstream_gradient_scaling():
    hidden, weight, b, targets = leaves(tokens=(2, 5), d=4, vocab=7)
    assert torch.autograd.gradcheck(
        lambda h, w, bb: linear_cross_entropy(h, w, bb, targets, 3), (hidden, weight, b)
    )
    once = grads(linear_cross_entropy(hidden, weight, b, targets, 3), (hidden, weight, b))
    thrice = grads(3.0 * linear_cross_entropy(hidden, weight, b, targets, 3), (hidden, weight, b))
    for g1, g3 in zip(once, thrice, strict=True):
        torch.testing.assert_close(g3, 3.0 * g1, rtol=1e-12, atol=0)


def test_float32_matches_and_the_loss_is_the_known_entropy_at_uniform_logits():
    hidden, weight, b, targets = leaves(dtype=torch.float32, tokens=(4, 64), d=16, vocab=300)
    fused = linear_cross_entropy(hidden, weight, b, targets, 50)
    torch.testing.assert_close(fused, plain(hidden, weight, b, targets), rtol=1e-6, atol=0)
    zero = torch.zeros(300, 16, requires_grad=True)
    uniform = linear_cross_entropy(hidden, zero, None, targets, 50)
    assert uniform.item() == pytest.approx(torch.log(torch.tensor(300.0)).item(), rel=1e-6)


def test_bf16_autocast_matches_the_plain_path_within_bf16_rounding():
    hidden, weight, b, targets = leaves(dtype=torch.float32, tokens=(4, 64), d=32, vocab=500)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, b, targets, 100)
        reference = plain(hidden, weight, b, targets)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference, rtol=1e-3, atol=0)
    got, want = grads(fused, (hidden, weight, b)), grads(reference, (hidden, weight, b))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        assert ((g - w).norm() / w.norm()).item() < 1e-2  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("chunk", [0, -4, 2.5, True, None])
def test_bad_chunk_sizes_are_refused_with_the_value(chunk):
    hidden, weight, b, targets = leaves()
    with pytest.raises(ValueError, match=rf"chunk_tokens={chunk!r} must be a positive integer"):
        linear_cross_entropy(hidden, weight, b, targets, chunk)
    if chunk is not None:
        with pytest.raises(ValueError, match=rf"loss_chunk_tokens={chunk!r}"):
            GPT(gpt_config(), loss_chunk_tokens=chunk)


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_training_forward_uses_chunks_and_matches_the_plain_model(tie):
    torch.manual_seed(0)
    plain_model = GPT(gpt_config(tie_embeddings=tie, bias=True)).double()
    chunked = GPT(gpt_config(tie_embeddings=tie, bias=True), loss_chunk_tokens=7).double()
    chunked.load_state_dict(plain_model.state_dict())
    idx = torch.randint(101, (3, 17))
    targets = torch.randint(101, (3, 17))
    a, b = plain_model(idx, targets), chunked(idx, targets)
    a.backward()
    b.backward()
    # the plain path rounds its logits to float32 for the loss: agreement to float32 rounding
    torch.testing.assert_close(b, a.to(b.dtype), rtol=1e-6, atol=0)
    for (name, p), q in zip(plain_model.named_parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-8, msg=name)


def test_gpt_without_gradients_or_per_token_keeps_the_plain_outputs():
    torch.manual_seed(0)
    model = GPT(gpt_config(), loss_chunk_tokens=5)
    idx, targets = torch.randint(101, (2, 9)), torch.randint(101, (2, 9))
    assert model(idx).shape == (2, 9, 101)
    per_token = model(idx, targets, reduction="none")  # with gradients: the plain path
    assert per_token.shape == (2, 9) and per_token.grad_fn is not None
    with torch.no_grad():
        mean = model(idx, targets)
        chunked = model(idx, targets, reduction="none")
    assert mean.grad_fn is None
    torch.testing.assert_close(chunked, per_token.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mean, per_token.mean().detach(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("chunk", [1, 4, 33, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_token_losses_match_the_plain_per_token_losses(chunk, bias):
    hidden, weight, b, targets = leaves(torch.float32, bias=bias)
    with torch.no_grad():
        expected = F.cross_entropy(
            F.linear(hidden, weight, b).view(-1, 29), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        got = token_cross_entropy(hidden, weight, b, targets, chunk)
    assert got.dtype == torch.float32 and got.shape == targets.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = token_cross_entropy(hidden, weight, b, targets, chunk)
    assert bf16.dtype == torch.float32  # bf16 logits, float32 losses as the plain path
    torch.testing.assert_close(bf16, expected, rtol=0.05, atol=0.05)


class LargestTensor(TorchDispatchMode):
    """Records the most elements any op's output had."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_evaluation_with_chunks_never_makes_the_whole_logits_and_gives_the_same_loss():
    torch.manual_seed(0)
    config = gpt_config(n_layer=1, vocab_size=997)  # the vocab outgrows every other tensor
    plain_model = GPT(config)
    chunked = GPT(config, loss_chunk_tokens=8)
    chunked.load_state_dict(plain_model.state_dict())
    windows = [(torch.randint(997, (4, 16)), torch.randint(997, (4, 16))) for _ in range(2)]
    hw = resolve_hardware("cpu", "fp32", False, None)
    sizes = {}
    for name, model in (("plain", plain_model), ("chunked", chunked)):
        with LargestTensor() as largest:
            sizes[name] = (evaluate(model, windows, hw).loss, largest.numel)
    assert sizes["plain"][1] == 4 * 16 * 997  # the whole logits of one window
    assert sizes["chunked"][1] == config.vocab_size * config.d_model  # the head's weight
    assert sizes["chunked"][0] == pytest.approx(sizes["plain"][0], rel=1e-6)


# aot_eager traces the chunked loss through dynamo and AOT autograd (where a custom backward
# breaks) in seconds; inductor adds the CPU C++ codegen, ~30 s, so it runs with the slow tests.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_chunked_model_matches_eager(backend: str):
    assert_compiled_matches_eager(backend, loss_chunk_tokens=16)


def assert_compiled_matches_eager(backend: str, **loss: Any) -> None:
    """A one-layer GPT built with `loss` (GPT's keyword arguments) gives the eager model's loss
    and gradients when compiled with `backend`."""
    torch.manual_seed(0)
    config = gpt_config(n_layer=1, vocab_size=64)
    eager = GPT(config, **loss)
    compiled_model = GPT(config, **loss)
    compiled_model.load_state_dict(eager.state_dict())
    idx, targets = torch.randint(64, (2, 24)), torch.randint(64, (2, 24))
    a = eager(idx, targets)
    b = torch.compile(compiled_model, backend=backend)(idx, targets)
    a.backward()
    b.backward()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=0)
    for p, q in zip(eager.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7)
