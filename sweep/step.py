"""One optimizer step's mechanics: AdamW parameter groups, gradient accumulation over
micro-batches, and the out-of-memory back-off that halves the micro-batch and retries the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from sweep.errors import ConfigError, OutOfMemory
from sweep.hardware import Hardware, out_of_memory


def build_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    fused: bool,
) -> torch.optim.AdamW:
    """AdamW with decay on matrices (linear and embedding weights) only; `fused` on CUDA (not
    for an FSDP model, whose parameters are DTensors: foreach there)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def fitting_micro_batch(at_most: int, batch_sequences: int) -> int | None:
    """The largest micro-batch of at most `at_most` sequences that divides the step's batch
    into whole micro-batches (None when at_most < 1)."""
    for size in range(min(at_most, batch_sequences), 0, -1):
        if batch_sequences % size == 0:
            return size
    return None


def check_cuda_graphs(hardware: Hardware, sequences: int, micro_batch_size: int) -> None:
    """ConfigError when a step of `sequences` (per rank) needs several micro-batches while
    compiled steps replay CUDA graphs: the next replay overwrites the gradients the previous
    micro-batch left in the graph's memory (pytorch#169545), crashing or training on wrong
    gradients."""
    micro = fitting_micro_batch(micro_batch_size, sequences)
    if not hardware.cuda_graphs or micro is None or micro == sequences:
        return
    raise ConfigError(
        f"train.compile_mode={hardware.compile_mode} replays CUDA graphs, which cannot "
        f"accumulate gradients, but a step here is {sequences // micro} micro-batches of "
        f"{micro} sequences: use train.compile_mode=max-autotune-no-cudagraphs (or null), or "
        f"train.micro_batch_size={sequences} if that fits in memory"
    )


def smaller_micro_batch(micro_batch_size: int, batch_sequences: int) -> int | None:
    """The largest micro-batch that divides the step's batch and is at most half of
    micro_batch_size, or None when it is 1 already."""
    return fitting_micro_batch(micro_batch_size // 2, batch_sequences)


def accumulate_gradients(
    model: torch.nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    micro_batch_size: int,
    hardware: Hardware,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Forward and backward over one step's batch in micro-batches of micro_batch_size
    sequences; returns the step's mean loss (detached). The gradients are the batch mean's.

    no_sync() wraps every micro-batch but the last: DDP all-reduces gradients once a step.
    """
    accum = xs.shape[0] // micro_batch_size
    step_loss = torch.zeros((), device=xs.device)
    for i, (x, y) in enumerate(zip(xs.chunk(accum), ys.chunk(accum), strict=True)):
        with no_sync() if i < accum - 1 else contextlib.nullcontext():
            with hardware.autocast():
                loss = model(x, y) / accum
            loss.backward()
        step_loss += loss.detach()
    return step_loss


def apply_gradients(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None
) -> None:
    """The update that ends a step: clip the global gradient norm (unless None), step AdamW,
    drop the gradients."""
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def accumulate_with_backoff(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    xs: torch.Tensor,
    ys: torch.Tensor,
    micro_batch_size: int,
    min_micro_batch_size: int,
    hardware: Hardware,
    on_retry: Callable[[int], None] = lambda smaller: None,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, int]:
    """accumulate_gradients, halving the micro-batch after each out-of-memory error (the global
    batch, and so the run's hyperparameters, stay); returns the step's loss and the micro-batch
    that fitted. OutOfMemory when even min_micro_batch_size does not fit."""
    micro = micro_batch_size
    while True:
        try:
            return accumulate_gradients(model, xs, ys, micro, hardware, no_sync), micro
        except Exception as err:  # out of memory, also when wrapped; the rest re-raise
            if not out_of_memory(err):
                raise
            # retried below, outside the handler, whose traceback pins the activations
        # The failed attempt may have left partial gradients: the retry starts from none.
        optimizer.zero_grad(set_to_none=True)
        hardware.empty_cache()
        smaller = smaller_micro_batch(micro, xs.shape[0])
        if smaller is None or smaller < min_micro_batch_size:
            raise OutOfMemory(
                f"out of memory at train.micro_batch_size={micro} (floor "
                f"train.min_micro_batch_size={min_micro_batch_size}): use a GPU with more "
                "memory, a shorter train.seq_len or a smaller model"
            )
        on_retry(smaller)
        micro = smaller
