"""Tests for models.attention_loss: the head + cross-entropy as two attention calls gives the plain
path's loss and gradients (to rounding in float64 and float32, within bf16 rounding under autocast),
compiled too, with logits far apart, and never makes a [tokens, vocab] tensor in training or eval.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import models.attention_loss
from models import GPT
from models.attention_loss import (
    CUDNN_VERSION,
    attention_cross_entropy,
    cuda_kernel,
    pays,
    token_attention_cross_entropy,
)
from tests.helpers import gpt_config
from tests.test_models_loss import (
    LargestTensor,
    assert_compiled_matches_eager,
    grads,
    leaves,
)


def reference(hidden, weight, targets, reduction="mean"):
    logits = hidden @ weight.t()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           reduction=reduction)


@pytest.mark.parametrize("tokens", [(3, 11), (2, 37)])  # 74 tokens: not a multiple of 32
def test_float64_loss_and_gradients_match_the_plain_path(tokens):
    hidden, weight, _, targets = leaves(tokens=tokens, bias=False)
    fused = attention_cross_entropy(hidden, weight, targets)
    want = reference(hidden, weight, targets)
    assert fused.dtype == torch.float64
    torch.testing.assert_close(fused, want, rtol=1e-12, atol=0)
    for got, expected in zip(grads(fused, (hidden, weight)), grads(want, (hidden, weight)),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


def test_gradcheck_and_upstream_gradient_scaling():
    hidden, weight, _, targets = leaves(tokens=(2, 5), d=4, vocab=7, bias=False)
    assert torch.autograd.gradcheck(
        lambda h, w: attention_cross_entropy(h, w, targets), (hidden, weight))
    once = grads(attention_cross_entropy(hidden, weight, targets), (hidden, weight))
    thrice = grads(3.0 * attention_cross_entropy(hidden, weight, targets), (hidden, weight))
    for g1, g3 in zip(once, thrice, strict=True):
        torch.testing.assert_close(g3, 3.0 * g1, rtol=1e-12, atol=0)


# 4: the tokens' log-sum-exps 55 nats apart, near the 60 the loss takes (MAX_LSE_SPREAD)
@pytest.mark.parametrize("scale", [0.0, 1.0, 4.0])
def test_float32_matches_from_uniform_to_far_apart_logits(scale):
    """The weight's gradient goes through exp(-lse) and exp(lse'): no overflow or lost terms when
    tokens' log-sum-exps differ by tens of nats; at zero weights the loss is log(vocab)."""
    hidden, weight, _, targets = leaves(torch.float32, tokens=(4, 64), d=16, vocab=300,
                                        bias=False)
    weight = (weight.detach() * scale).requires_grad_()
    fused = attention_cross_entropy(hidden, weight, targets)
    want = reference(hidden, weight, targets)
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=0)
    if scale == 0.0:
        assert fused.item() == pytest.approx(torch.log(torch.tensor(300.0)).item(), rel=1e-6)
    for got, expected in zip(grads(fused, (hidden, weight)), grads(want, (hidden, weight)),
                             strict=True):
        assert torch.isfinite(got).all()
        # at zero weights the hidden states' gradient is zero
        assert (got - expected).norm().item() <= 1e-5 * expected.norm().item() + 1e-12


@pytest.mark.parametrize("scale", [8.0, 40.0])
def test_log_sum_exps_too_far_apart_give_a_nan_loss_and_weight_gradient(scale):
    """Beyond 60 nats between tokens' log-sum-exps, the weight gradient's call would flush terms
    that matter (at 86 nats, scale 8, it is 2e-3 off; at 460, 10 %): the loss and that gradient
    are NaN, what the training loop calls a divergence, not a silently wrong gradient."""
    hidden, weight, _, targets = leaves(torch.float32, tokens=(4, 64), d=16, vocab=300,
                                        bias=False)
    far = hidden.detach().clone()
    far[0, 0] *= scale
    assert lse_spread(far, weight) > 80
    loss = attention_cross_entropy(far.requires_grad_(), weight, targets)
    loss.backward()
    assert loss.isnan() and weight.grad.isnan().all()


def test_log_sum_exps_well_apart_within_the_limit_are_exact():
    """At 40 nats of spread (one token's hidden state 4x the others') the loss and both
    gradients are the plain path's to float32 rounding."""
    hidden, weight, _, targets = leaves(torch.float32, tokens=(4, 64), d=16, vocab=300,
                                        bias=False)
    near = hidden.detach().clone()
    near[0, 0] *= 4.0
    near.requires_grad_()
    assert 35 < lse_spread(near, weight) < 60
    fused = attention_cross_entropy(near, weight, targets)
    want = F.cross_entropy((near @ weight.t()).view(-1, 300), targets.view(-1))
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=0)
    for got, expected in zip(grads(fused, (near, weight)), grads(want, (near, weight)),
                             strict=True):
        assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def lse_spread(hidden: torch.Tensor, weight: torch.Tensor) -> float:
    """The largest minus the smallest log-sum-exp of the tokens' logits."""
    lse = torch.logsumexp((hidden @ weight.t()).view(-1, weight.shape[0]), -1)
    return (lse.max() - lse.min()).item()


def test_bf16_autocast_matches_the_plain_path_within_bf16_rounding():
    hidden, weight, _, targets = leaves(torch.float32, tokens=(4, 64), d=32, vocab=500,
                                        bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = attention_cross_entropy(hidden, weight, targets)
        want = F.cross_entropy((hidden @ weight.t()).float().view(-1, 500), targets.view(-1))
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, want, rtol=1e-3, atol=0)
    for g, w in zip(grads(fused, (hidden, weight)), grads(want, (hidden, weight)), strict=True):
        assert g.dtype == torch.float32
        assert ((g - w).norm() / w.norm()).item() < 1e-2  # bf16 keeps 8 bits of mantissa


def test_token_losses_match_the_plain_per_token_losses():
    hidden, weight, _, targets = leaves(torch.float32, bias=False)
    with torch.no_grad():
        got = token_attention_cross_entropy(hidden, weight, targets)
        want = reference(hidden, weight, targets, "none").view(targets.shape)
    assert got.dtype == torch.float32 and got.shape == targets.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_with_attention_loss_trains_and_evaluates_as_the_plain_model(tie):
    torch.manual_seed(0)
    config = gpt_config(tie_embeddings=tie, bias=False, vocab_size=997)
    plain_model = GPT(config)
    fused = GPT(config, loss_attention=True)
    fused.load_state_dict(plain_model.state_dict())
    idx, targets = torch.randint(997, (4, 32)), torch.randint(997, (4, 32))
    a = plain_model(idx, targets)
    with LargestTensor() as largest:
        b = fused(idx, targets)
        b.backward()
    a.backward()
    # nothing as large as the logits: the head's weight (997 x 32) is the largest tensor
    assert largest.numel == config.vocab_size * config.d_model < 4 * 32 * 997
    torch.testing.assert_close(b, a, rtol=1e-6, atol=0)
    for (name, p), q in zip(plain_model.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=name)
    with torch.no_grad(), LargestTensor() as largest:
        per_token = fused(idx, targets, reduction="none")
        mean = fused(idx, targets)
    assert largest.numel < 4 * 32 * 997
    with torch.no_grad():
        torch.testing.assert_close(per_token, plain_model(idx, targets, reduction="none"),
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean, per_token.mean(), rtol=1e-6, atol=0)


# aot_eager traces the two attention calls through dynamo and AOT autograd in seconds; inductor
# adds the CPU C++ codegen (~15 s), so it runs with the slow tests.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_with_attention_loss_matches_eager(backend: str):
    assert_compiled_matches_eager(backend, loss_attention=True)


@pytest.mark.parametrize(("dtype", "dim", "capability", "cudnn", "kernel"), [
    (torch.bfloat16, 128, 9, 90100, "cudnn"),  # Hopper
    (torch.bfloat16, 256, 9, 91000, "cudnn"),  # Hopper with cuDNN 9.10 or later
    (torch.bfloat16, 256, 9, 90800, "flash"),  # ... before it
    (torch.bfloat16, 256, 10, 91300, "flash"),  # Blackwell: 128 at most for cuDNN
    (torch.bfloat16, 128, 10, 91300, "cudnn"),
    (torch.bfloat16, 128, 8, 91300, "flash"),  # Ampere, Ada
    (torch.float16, 256, 8, 0, "flash"),
    (torch.bfloat16, 384, 9, 91300, "efficient"),  # wider than flash or cuDNN take
    (torch.bfloat16, 100, 9, 91300, "efficient"),  # not a multiple of 8
    (torch.bfloat16, 128, 7, 91300, "efficient"),  # Turing: no flash kernels
    (torch.float32, 64, 9, 91300, "efficient"),
])
def test_the_cuda_kernel_is_the_fastest_that_takes_the_inputs(dtype, dim, capability, cudnn,
                                                              kernel):
    assert cuda_kernel(dtype, dim, capability, cudnn) == kernel


@pytest.mark.parametrize(("capability", "dtype", "d_model", "faster"), [
    (9, torch.bfloat16, 128, True),  # cuDNN's kernel: 1.39x the plain loss at 4x128 on an H200
    (10, torch.bfloat16, 64, True),
    (9, torch.bfloat16, 256, False),  # flash: 0.87x at 6x256; cuDNN's there not yet timed
    (9, torch.bfloat16, 384, False),  # memory-efficient: 0.47x at 8x384
    (8, torch.bfloat16, 128, False),  # flash on an A100
    (9, torch.float32, 128, False),
])
def test_it_pays_where_cudnns_kernel_runs_it(monkeypatch, capability, dtype, d_model, faster):
    # A CUDA device as torch describes it, without needing one; a cuDNN that takes d 256 too
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(major=capability))
    monkeypatch.setattr(models.attention_loss, "CUDNN_VERSION", 91300)
    assert pays(torch.device("cuda"), dtype, d_model) is faster
    assert pays(torch.device("cpu"), dtype, d_model) is False


def test_a_head_with_bias_or_chunks_too_is_refused():
    with pytest.raises(ValueError, match="loss_attention needs an output head without bias"):
        GPT(gpt_config(bias=True), loss_attention=True)
    with pytest.raises(ValueError, match="loss_chunk_tokens=64 and loss_attention=true are"):
        GPT(gpt_config(bias=False), loss_chunk_tokens=64, loss_attention=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("dtype", "d"), [
    (torch.float32, 64),  # float32: the memory-efficient kernels
    (torch.bfloat16, 128),  # cuDNN's on a Hopper GPU, else flash
    (torch.bfloat16, 256),  # flash
    (torch.bfloat16, 384),  # wider than flash takes: the memory-efficient kernels
    # 24x1024's width: its 30 bench steps ended 0.36 nats from the plain loss's on an H200
    (torch.bfloat16, 1024),
])
def test_attention_loss_on_cuda_matches_the_plain_path(dtype, d):
    """Each CUDA kernel the loss may pick gives the plain loss and gradients, over 4100 tokens
    (not a multiple of the kernels' 32- to 128-row blocks)."""
    major = torch.cuda.get_device_properties(0).major
    print(f"kernel: {cuda_kernel(dtype, d, major, CUDNN_VERSION)}, cuDNN {CUDNN_VERSION}")
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4100, d, device="cuda", generator=g).requires_grad_()
    weight = (torch.randn(5000, d, device="cuda", generator=g) * d ** -0.5).requires_grad_()
    targets = torch.randint(5000, (4100,), device="cuda", generator=g)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 reference
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            fused = attention_cross_entropy(hidden, weight, targets)
            want = F.cross_entropy((hidden @ weight.t()).float(), targets)
        pairs = zip(grads(fused, (hidden, weight)), grads(want, (hidden, weight)), strict=True)
        errors = [((got - expected).norm() / expected.norm()).item() for got, expected in pairs]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    close = 1e-5 if dtype == torch.float32 else 1e-2
    assert fused.item() == pytest.approx(want.item(), rel=close)
    assert max(errors) < close, errors
