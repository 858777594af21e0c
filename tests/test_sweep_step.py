"""Tests for sweep.step: the out-of-memory back-off recognises a wrapped OOM and nothing else, and
CUDA-graph compile modes are refused where a step accumulates gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from sweep.errors import ConfigError
from sweep.hardware import Hardware, resolve_hardware
from sweep.step import accumulate_with_backoff, check_cuda_graphs

CPU = resolve_hardware("cpu", "fp32", False, None)


def graphs(mode: str | None) -> Hardware:
    return Hardware(device=torch.device("cuda"), device_name="NVIDIA H200", precision="bf16",
                    compile=True, peak_flops=989.4e12, compile_mode=mode)


class Squares(torch.nn.Module):
    """loss = mean((w x)^2); raises `error` for micro-batches above `limit` sequences."""

    def __init__(self, limit: int, error: BaseException) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.limit, self.error, self.sizes = limit, error, []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.error
        return ((self.w * x) ** 2).mean()


def wrapped_oom() -> RuntimeError:
    """What torch.compile raises for an OOM while it autotunes: the OOM is its cause."""
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as oom:
            raise RuntimeError("backend='inductor' raised: OutOfMemoryError") from oom
    except RuntimeError as err:
        return err


def test_a_wrapped_out_of_memory_halves_the_micro_batch_with_the_same_gradient():
    xs = torch.arange(8, dtype=torch.float32).reshape(8, 1)
    model = Squares(limit=2, error=wrapped_oom())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, micro = accumulate_with_backoff(model, optimizer, xs, xs, 8, 1, CPU)
    assert micro == 2 and model.sizes == [8, 4, 2, 2, 2, 2]
    # The batch mean of x^2 (w = 1) and its gradient 2 w mean(x^2), as in one batch of 8
    assert loss.item() == pytest.approx(17.5)
    assert model.w.grad.item() == pytest.approx(35.0)


def test_any_other_error_is_raised_as_it_is_without_a_retry():
    model = Squares(limit=2, error=RuntimeError("shape mismatch"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        accumulate_with_backoff(model, optimizer, torch.ones(8, 1), torch.ones(8, 1), 8, 1, CPU)
    assert model.sizes == [8]


@pytest.mark.parametrize(("mode", "sequences", "micro", "refused"), [
    ("reduce-overhead", 16, 8, True),
    ("max-autotune", 16, 8, True),
    ("reduce-overhead", 16, 16, False),  # one micro-batch a step: nothing accumulates
    ("reduce-overhead", 4, 8, False),  # the micro-batch is capped at the step's batch
    ("max-autotune-no-cudagraphs", 16, 8, False),
    (None, 16, 8, False),
])
def test_cuda_graphs_are_refused_where_a_step_accumulates(mode, sequences, micro, refused):
    if not refused:
        check_cuda_graphs(graphs(mode), sequences, micro)
        return
    with pytest.raises(ConfigError) as err:
        check_cuda_graphs(graphs(mode), sequences, micro)
    assert str(err.value) == (
        f"train.compile_mode={mode} replays CUDA graphs, which cannot accumulate gradients, but "
        "a step here is 2 micro-batches of 8 sequences: use train.compile_mode="
        "max-autotune-no-cudagraphs (or null), or train.micro_batch_size=16 if that fits in "
        "memory"
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_real_cuda_out_of_memory_backs_off_and_the_step_completes():
    """Memory capped at 6 GB: 64 x 1024 tokens of 32768-way float32 logits (8.6 GB) cannot fit,
    a smaller micro-batch can; the step's loss is an untrained model's, ln 32768."""
    from models import GPT
    from tests.helpers import gpt_config

    hw = resolve_hardware("cuda", "bf16", False, None)
    total = torch.cuda.get_device_properties(hw.device).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 6e9 / total), hw.device)
    try:
        torch.manual_seed(0)
        model = GPT(gpt_config(n_layer=2, d_model=256, n_head=4, vocab_size=32768,
                               max_seq_len=1024)).to(hw.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        tokens = torch.randint(32768, (64, 1025), device=hw.device)
        retries: list[int] = []
        loss, micro = accumulate_with_backoff(model, optimizer, tokens[:, :-1], tokens[:, 1:],
                                              64, 1, hw, on_retry=retries.append)
        optimizer.step()
        assert micro < 64 and retries and retries[-1] == micro
        assert loss.item() == pytest.approx(math.log(32768), abs=0.5)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, hw.device)
        torch.cuda.empty_cache()
