"""Tests for models.loss: the chunked head + cross-entropy gives the plain path's loss and
gradients (exactly in float64, within rounding in float32 and bf16), compiled too, and GPT uses it
only where a gradient is wanted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import GPT
from models.loss import linear_cross_entropy
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
    assert model(idx, targets, reduction="none").shape == (2, 9)
    with torch.no_grad():
        mean = model(idx, targets)
    assert mean.grad_fn is None
    torch.testing.assert_close(mean, model(idx, targets, reduction="none").mean().detach())


def test_compiled_chunked_model_matches_eager():
    torch.manual_seed(0)
    config = gpt_config(n_layer=1, vocab_size=64)
    eager = GPT(config, loss_chunk_tokens=16)
    compiled_model = GPT(config, loss_chunk_tokens=16)
    compiled_model.load_state_dict(eager.state_dict())
    idx, targets = torch.randint(64, (2, 24)), torch.randint(64, (2, 24))
    a = eager(idx, targets)
    b = torch.compile(compiled_model)(idx, targets)
    a.backward()
    b.backward()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=0)
    for p, q in zip(eager.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7)
