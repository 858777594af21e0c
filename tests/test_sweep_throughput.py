"""Tests for sweep.throughput: one shape timed alone, and several copies timed at once in their
own processes, whose failures end the measurement in one line and leave no process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from models import GPT, count_params
from models.config import LossChoice
from sweep.bench import TINY_SHAPES
from sweep.hardware import Hardware, peak_flops_for, resolve_hardware
from sweep.throughput import (
    GRAD_CLIP,
    OPTIMIZER,
    TINY,
    BenchFailed,
    Protocol,
    _row,
    measure,
    measure_copies,
    model_config,
)

CPU = resolve_hardware("cpu", "fp32", False, None)


def test_the_bench_steps_with_the_optimizer_settings_of_train_yaml(synthetic_root):
    from tests.conftest import compose_train

    train = compose_train(synthetic_root).train
    assert (OPTIMIZER["weight_decay"], OPTIMIZER["betas"], OPTIMIZER["eps"], GRAD_CLIP) == (
        train.weight_decay, (train.beta1, train.beta2), train.eps, train.grad_clip)


def test_the_fused_losses_time_the_same_training():
    plain = measure("tiny", TINY_SHAPES[0], TINY, CPU)
    chunked = measure("tiny", TINY_SHAPES[0], TINY, CPU, LossChoice(chunk_tokens=100))
    attention = measure("tiny", TINY_SHAPES[0], TINY, CPU, LossChoice(attention=True))
    assert chunked.loss == pytest.approx(plain.loss, rel=1e-5)  # 5 AdamW steps, same batches
    assert attention.loss == pytest.approx(plain.loss, rel=1e-5)


def test_nanogpts_architecture_is_learned_positions_and_a_tied_head_with_the_same_blocks():
    ours, theirs = (model_config((4, 128, 2), Protocol(), arch) for arch in ("project", "nanogpt"))
    assert (ours.positions, ours.tie_embeddings) == ("rope", False)
    assert (theirs.positions, theirs.tie_embeddings, theirs.bias) == ("learned", True, False)
    # nanoGPT's table: 0.79M non-embedding parameters at 4,128,2 (12 L d^2 plus the norms)
    assert count_params(theirs).non_embedding == count_params(ours).non_embedding == 787_584
    model = GPT(model_config(TINY_SHAPES[0], TINY, "nanogpt"))
    assert model.lm_head.weight is model.wte.weight and model.wpe is not None
    with pytest.raises(ValueError, match="arch='gpt2' is unknown: use one of project, nanogpt"):
        model_config((4, 128, 2), Protocol(), "gpt2")


def test_the_tied_head_is_still_a_matmul_in_mfus_n():
    """nanoGPT's 6N counts its head (tied to the embedding): the same N and FLOPs as an untied
    head, so the two architectures' MFUs compare; a different model, so a different loss."""
    ours = measure("tiny", TINY_SHAPES[0], TINY, CPU)
    theirs = measure("tiny", TINY_SHAPES[0], TINY, CPU, arch="nanogpt")
    assert theirs.matmul_params == ours.matmul_params == ours.non_embedding_params + 512 * 64
    assert theirs.loss != pytest.approx(ours.loss, rel=1e-4)


@pytest.mark.parametrize(("device", "protocol", "reference"), [
    ("NVIDIA H100 80GB HBM3", Protocol(), 3.72e6),
    ("NVIDIA H100 PCIe", Protocol(), None),  # a slower H100: the SXM table does not apply
    ("NVIDIA H200", Protocol(), 5.319e6),  # its architecture timed on an H200 (MEASURED)
    ("NVIDIA H200 NVL", Protocol(), None),  # a slower H200: not the card it was timed on
    ("NVIDIA A100-SXM4-80GB", Protocol(), None),
    ("NVIDIA H100 80GB HBM3", TINY, None),
    ("NVIDIA H200", TINY, None),
])
def test_nanogpts_numbers_apply_to_their_own_card_and_protocol_only(device, protocol,
                                                                    reference):
    hw = Hardware(device=CPU.device, device_name=device, precision="bf16", compile=True,
                  peak_flops=peak_flops_for(device))
    row = _row("nanogpt-0", model_config((4, 128, 2), protocol), protocol, hw, 4e6,
               step_time_s=0.0164, peak_memory_bytes=None, loss=10.4)
    assert row.nanogpt_tokens_per_s == reference


def test_copies_train_the_same_steps_and_count_all_their_tokens_over_the_shared_window():
    alone = measure("tiny", TINY_SHAPES[0], TINY, CPU)
    together = measure_copies("tiny", TINY_SHAPES[0], TINY, CPU, copies=2)
    assert together.copies == 2 and alone.copies == 1
    assert together.loss == pytest.approx(alone.loss, rel=1e-5)  # seed 0 in each copy
    assert together.matmul_params == alone.matmul_params
    assert together.warmup_s > 0 and alone.warmup_s > 0
    # Both copies' tokens over a window at least as long as either copy's own: no more than
    # two copies each at its own step time could give.
    tokens_per_step = TINY.batch_size * TINY.seq_len
    assert 0 < together.tokens_per_s <= 2 * tokens_per_step / together.step_time_s * 1.001
    assert not multiprocessing.active_children()


def test_a_copy_that_fails_names_its_error_in_one_line():
    with pytest.raises(BenchFailed) as caught:
        # d_model 65 does not split into 2 heads: each copy fails building the model
        measure_copies("odd", (2, 65, 2), TINY, CPU, copies=2)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("odd as 2 copies at once: copy ")
    assert "ValueError: " in message and "use fewer --copies" in message
    assert not multiprocessing.active_children()


def test_a_killed_copy_stops_the_others_at_once():
    """A copy killed mid-warm-up (as by the OOM killer) ends the measurement within seconds: the
    other copy is terminated, not left warming up for its 100,000 steps."""
    endless = Protocol(vocab_size=512, seq_len=64, batch_size=4, warmup_steps=100_000,
                       timed_steps=3)

    def kill_one() -> None:
        while len(multiprocessing.active_children()) < 2:
            time.sleep(0.05)
        time.sleep(2.0)  # into the warm-up
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    started = time.monotonic()
    with pytest.raises(BenchFailed, match=r"copy \d failed \(killed by signal 9\)"):
        measure_copies("tiny", TINY_SHAPES[0], endless, CPU, copies=2)
    assert time.monotonic() - started < 60
    assert not multiprocessing.active_children()
