"""Tests for models.gpt: shapes, loss, causality, tying, init statistics, rotary, training.

Models here are tiny (d_model <= 128) so the whole file runs in a few seconds on two CPU cores.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from models import GPT
from models.gpt import apply_rope, rope_tables
from tests.helpers import gpt_config


def make_model(seed: int = 0, **overrides: Any) -> GPT:
    torch.manual_seed(seed)
    return GPT(gpt_config(**overrides))


BOTH_POSITIONS = pytest.mark.parametrize("positions", ["rope", "learned"])


@BOTH_POSITIONS
def test_logits_shape(positions: str) -> None:
    model = make_model(positions=positions)
    idx = torch.randint(0, 101, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 101)
    assert logits.dtype == torch.float32


@BOTH_POSITIONS
@pytest.mark.parametrize("tie", [False, True])
def test_loss_at_init_is_log_vocab(positions: str, tie: bool) -> None:
    vocab = 512
    model = make_model(positions=positions, tie_embeddings=tie, vocab_size=vocab)
    idx = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = model(idx, targets)
    assert loss.shape == ()
    assert abs(loss.item() - math.log(vocab)) < 0.1


def test_reduction_none_matches_mean() -> None:
    model = make_model()
    idx = torch.randint(0, 101, (2, 9))
    targets = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        per_token = model(idx, targets, reduction="none")
        mean = model(idx, targets)
        logits = model(idx)
    assert per_token.shape == (2, 9)
    assert per_token.dtype == torch.float32
    torch.testing.assert_close(per_token.mean(), mean)
    # spot-check one position against the definition: -log softmax at the target
    expected = -torch.log_softmax(logits[1, 4], dim=-1)[targets[1, 4]]
    torch.testing.assert_close(per_token[1, 4], expected)


def test_loss_is_float32_under_bf16_weights() -> None:
    model = make_model().to(torch.bfloat16)
    idx = torch.randint(0, 101, (2, 8))
    with torch.no_grad():
        assert model(idx).dtype == torch.bfloat16
        loss = model(idx, idx)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - math.log(101)) < 0.2


def test_unknown_reduction_raises() -> None:
    model = make_model()
    idx = torch.randint(0, 101, (1, 4))
    with pytest.raises(ValueError, match="reduction='sum'"):
        model(idx, idx, reduction="sum")


@BOTH_POSITIONS
def test_causal_mask(positions: str) -> None:
    model = make_model(positions=positions).eval()
    idx = torch.randint(0, 101, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 101
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :12], after[:, :12], rtol=0, atol=1e-6)
    assert (before[:, 12:] - after[:, 12:]).abs().max() > 1e-3


def test_sequence_longer_than_context_raises() -> None:
    model = make_model(max_seq_len=16)
    with pytest.raises(ValueError) as err:
        model(torch.zeros(1, 17, dtype=torch.long))
    assert "17" in str(err.value)
    assert "max_seq_len=16" in str(err.value)
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 101)


def test_tie_embeddings_shares_storage() -> None:
    tied = make_model(tie_embeddings=True)
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    untied = make_model(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    # a parameter listed once, so the optimizer updates it once
    vocab_by_dim = [p for p in tied.parameters() if p.shape == (101, 64)]
    assert len(vocab_by_dim) == 1


def test_rope_tables_are_buffers_not_parameters_or_state() -> None:
    model = make_model(positions="rope", max_seq_len=32)
    # head_dim 16 -> 8 rotation frequencies, each for both channels of its pair
    assert model.rope_cos.shape == model.rope_sin.shape == (32, 16)
    names = {name for name, _ in model.named_parameters()}
    assert not any("rope" in name for name in names)
    assert not any("rope" in key for key in model.state_dict())
    assert model.wpe is None
    learned = make_model(positions="learned", max_seq_len=32)
    assert learned.wpe is not None and learned.wpe.weight.shape == (32, 64)


def test_rope_scores_depend_only_on_relative_offset() -> None:
    cos, sin = rope_tables(64, 16)
    q = torch.randn(16)
    k = torch.randn(16)

    def score(pos_q: int, pos_k: int) -> float:
        rq = apply_rope(q.view(1, 1, 1, 16), cos[pos_q : pos_q + 1], sin[pos_q : pos_q + 1])
        rk = apply_rope(k.view(1, 1, 1, 16), cos[pos_k : pos_k + 1], sin[pos_k : pos_k + 1])
        return float((rq * rk).sum())

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(0, 0) == pytest.approx(float(q @ k), abs=1e-5)  # position 0 is the identity
    assert abs(score(5, 2) - score(5, 4)) > 1e-3


def test_rope_in_projection_layout_matches_rotating_each_head() -> None:
    """apply_rope on [B, T, 2, H, D] (q and k as the qkv projection lays them out) gives, after
    the transpose to [B, H, T, D], exactly the per-head rotation of channel pairs (i, i + D/2)."""
    torch.manual_seed(0)
    B, T, H, D = 2, 12, 3, 8
    cos, sin = rope_tables(16, D)
    qk = torch.randn(B, T, 2, H, D)
    got = apply_rope(qk, cos[:T], sin[:T])
    # the angles, as rope_tables makes them: frequency base^(-i / (D/2)) at each position
    freq = 10_000.0 ** (-torch.arange(D // 2) / (D // 2))
    angles = torch.arange(T)[:, None] * freq
    c, s = angles.cos(), angles.sin()
    for which in range(2):
        x = qk[:, :, which].transpose(1, 2)  # [B, H, T, D]
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        want = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
        assert torch.equal(got[:, :, which].transpose(1, 2), want)
    # the norm of each head's vector is kept: a rotation
    torch.testing.assert_close(got.norm(dim=-1), qk.norm(dim=-1))


def test_gpt2_init_statistics() -> None:
    n_layer, std = 4, 0.02
    model = make_model(n_layer=n_layer, d_model=128, n_head=4, bias=True, init_std=std)
    resid_std = std / math.sqrt(2 * n_layer)
    for block in model.blocks:
        # 16k-64k samples each: the empirical std is within ~1% of the true one
        assert block.attn.out_proj.weight.std().item() == pytest.approx(resid_std, rel=0.03)
        assert block.mlp.down.weight.std().item() == pytest.approx(resid_std, rel=0.03)
        assert block.attn.qkv.weight.std().item() == pytest.approx(std, rel=0.03)
        assert block.mlp.up.weight.std().item() == pytest.approx(std, rel=0.03)
        assert block.attn.qkv.bias.abs().max().item() == 0.0
        assert block.mlp.down.bias.abs().max().item() == 0.0
        assert torch.equal(block.ln_1.weight, torch.ones(128))
    assert model.wte.weight.std().item() == pytest.approx(std, rel=0.03)
    assert model.lm_head.weight.std().item() == pytest.approx(std, rel=0.03)


def test_dropout_only_active_in_training() -> None:
    model = make_model(dropout=0.5)
    idx = torch.randint(0, 101, (2, 8))
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)
        model.train()
        assert (model(idx) - model(idx)).abs().max() > 1e-4


@BOTH_POSITIONS
def test_adamw_overfits_one_batch(positions: str) -> None:
    model = make_model(positions=positions, vocab_size=64, max_seq_len=16)
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 64, (4, 16), generator=gen)
    targets = torch.randint(0, 64, (4, 16), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(64), abs=0.1)
    assert losses[-1] < 0.5  # random targets: only memorisation gets here


def _compiled_step_bytes(positions: str, n_layer: int, autocast: bool = False,
                         residual_dtype: torch.dtype = torch.float32) -> float:
    """Bytes the kernels of one compiled bf16 training step (forward and backward) read and
    write, by inductor's own count of its buffers: a measure of memory traffic any device shares.
    The step is a bf16 model's, or with `autocast` a float32 model's under bf16 autocast (as
    training runs), compiled whole (fullgraph: no graph break)."""
    import torch._inductor.metrics as metrics

    torch.manual_seed(0)
    model = GPT(gpt_config(positions=positions, n_layer=n_layer, d_model=128, n_head=2,
                           vocab_size=256, max_seq_len=128), residual_dtype=residual_dtype)
    if not autocast:
        model = model.to(torch.bfloat16)
    idx, targets = torch.randint(0, 256, (2, 2, 128))
    torch._dynamo.reset()
    metrics.reset()
    torch._logging.set_logs(inductor_metrics=True)  # inductor counts bytes only when logging them
    try:
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.compile(model, fullgraph=True)(idx, targets)
        loss.backward()
    finally:
        torch._logging.set_logs()
        torch._dynamo.reset()
    return metrics.num_bytes_accessed


def test_rotary_adds_no_pass_over_the_qkv_gradient_in_a_compiled_step() -> None:
    """Rotary's memory traffic beyond learned positions', a layer, in [batch, seq, d_model] bf16
    tensors by inductor's count: 8.0 (its forward reads q and k and writes them rotated; its
    backward rides in the one kernel that assembles the qkv gradient; the count takes the roll's
    second read of each tensor as a read of its own, which on a GPU its caches serve). The
    split-and-concatenate form counted 11.5: a second pass over that gradient (in an H200's
    profile of the 24x1024 step the two kernels that assembled it took 3.9 %, BENCHMARKS.md)."""
    unit = 2 * 128 * 128 * 2
    beyond = [(_compiled_step_bytes("rope", n) - _compiled_step_bytes("learned", n)) / unit
              for n in (1, 2)]
    per_layer = beyond[1] - beyond[0]  # the position tables' own share cancels
    assert per_layer == pytest.approx(8.0, abs=1.0)


def test_a_bf16_residual_stream_saves_25_tensors_of_a_layers_traffic_in_a_compiled_step() -> None:
    """Under autocast the blocks add their bf16 outputs into a float32 stream, whose reads, writes
    and gradient cost twice bf16's: in bf16, a compiled step's layer moves 25 [batch, seq,
    d_model] bf16 tensors fewer by inductor's count of its memory traffic. At 16 x 128 tokens
    that is 147.2 against 122.2, a sixth; here, at 2 x 128, the weights' traffic weighs more
    (196.2 and 171.3). The layer's share only: the difference between 2 layers and 1."""
    unit = 2 * 128 * 128 * 2
    per_layer = {}
    for dtype in (torch.float32, torch.bfloat16):
        one, two = (_compiled_step_bytes("rope", n, autocast=True, residual_dtype=dtype)
                    for n in (1, 2))
        per_layer[dtype] = (two - one) / unit
    assert per_layer[torch.float32] - per_layer[torch.bfloat16] == pytest.approx(25, abs=1)


@BOTH_POSITIONS
def test_a_bf16_residual_stream_is_bf16_between_blocks_only_under_autocast(positions) -> None:
    reference = make_model(positions=positions)
    torch.manual_seed(0)
    model = GPT(gpt_config(positions=positions), residual_dtype=torch.bfloat16)
    model.load_state_dict(reference.state_dict())
    seen: list[torch.dtype] = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    idx, targets = torch.randint(0, 101, (2, 4, 16))
    # Without autocast it is the float32 model, to the bit
    assert torch.equal(model(idx, targets), reference(idx, targets))
    assert set(seen) == {torch.float32}
    seen.clear()
    losses = []
    for m in (reference, model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(idx, targets)
        loss.backward()
        losses.append(loss)
    assert seen == [torch.bfloat16] * len(model.blocks)
    assert losses[1].dtype == torch.float32
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-2)
    for (name, p32), p16 in zip(reference.named_parameters(), model.parameters(), strict=True):
        assert p16.grad.dtype == torch.float32  # the parameters and their gradients stay float32
        cosine = torch.nn.functional.cosine_similarity(p32.grad.flatten(), p16.grad.flatten(),
                                                       dim=0)
        assert cosine > 0.99, name


def test_an_unsupported_residual_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="residual_dtype=torch.float16 is unsupported: use "
                                         "torch.float32 or torch.bfloat16"):
        GPT(gpt_config(), residual_dtype=torch.float16)


def test_compiled_regions_share_one_graph_for_the_blocks_and_give_the_eager_loss() -> None:
    """compile_regions: the blocks are one graph, compiled once, the output another; the loss,
    gradients and state_dict are the eager model's. Nine blocks, past dynamo's recompile limit
    (8 a function): were each block a compile of its own, the last would run eager."""
    from torch._dynamo.utils import counters

    eager = make_model(n_layer=9)
    regional = make_model(n_layer=9)
    regional.compile_regions(dynamic=False)
    assert regional.state_dict().keys() == eager.state_dict().keys()
    idx, targets = torch.randint(0, 101, (2, 4, 16))
    torch._dynamo.reset()
    counters.clear()
    try:
        losses = [m(idx, targets) for m in (eager, regional)]
        for loss in losses:
            loss.backward()
        assert counters["stats"]["unique_graphs"] == 2  # one block graph for nine blocks
    finally:
        torch._dynamo.reset()
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-6)
    for (name, p), q in zip(eager.named_parameters(), regional.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
