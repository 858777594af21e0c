"""The measurement behind `python -m sweep.bench`: one shape's training step timed on random tokens,
alone or as several copies training at once on one device (as a sweep sharing a GPU would).

It imports torch and this project's modules only (no Hydra, no YAML library): the GPU image has
nothing else.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models import GPT, GPTConfig, count_params, flops_per_token
from models.config import LossChoice
from sweep.hardware import Hardware, use_tf32
from sweep.nanogpt import ARCHITECTURE, PROTOCOL, reference_for
from sweep.step import accumulate_gradients, apply_gradients, build_optimizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# What `--arch` times: this project's GPT as configs/model/base.yaml sets it, or nanoGPT's.
ARCHES = ("project", "nanogpt")
# The step's optimizer settings as configs/train.yaml sets them (a test holds them equal; the GPU
# image cannot compose it: no Hydra). The LR is the rules' business and does not change the time.
OPTIMIZER = {"lr": 3e-4, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}
GRAD_CLIP = 1.0
# The plain head and F.cross_entropy, as train.yaml's defaults (frozen, so one serves all)
PLAIN_LOSS = LossChoice()


class BenchFailed(RuntimeError):
    """A measurement could not be taken (one line saying what to change)."""


@dataclass(frozen=True)
class Protocol:
    """What each shape is timed on."""

    vocab_size: int = PROTOCOL["vocab_size"]
    seq_len: int = PROTOCOL["seq_len"]
    batch_size: int = PROTOCOL["batch_size"]  # sequences per optimizer step, one micro-batch
    warmup_steps: int = PROTOCOL["warmup_steps"]
    timed_steps: int = PROTOCOL["timed_steps"]


TINY = Protocol(vocab_size=512, seq_len=64, batch_size=4, warmup_steps=2, timed_steps=3)


@dataclass(frozen=True)
class Row:
    """One shape's measurement. With copies > 1, tokens/s and MFU are the copies' together,
    step_time_s is one copy's mean step and peak memory the sum over the copies."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    non_embedding_params: int
    matmul_params: int  # non-embedding + output head: the N of MFU's 6N
    tokens_per_s: float
    step_time_s: float
    mfu_6n: float | None  # (6 N + 12 L d T) x tokens/s / peak
    mfu_exact: float | None  # exact forward+backward FLOPs per token x tokens/s / peak
    peak_memory_bytes: int | None
    loss: float
    nanogpt_tokens_per_s: float | None  # nanoGPT's on this card, where sweep.nanogpt has it
    profile: str | None = None  # --profile: the top ops of three profiled steps, as a table
    copies: int = 1  # copies of the shape trained at once on the device
    # The warm-up steps' wall time, torch.compile's included: what a run pays before its first
    # step at speed (the slowest copy's with copies > 1).
    warmup_s: float | None = None
    loss_attention: bool = False  # the head and loss ran as attention (--loss-attention)
    loss_kernel: str = "plain"  # plain or fused (--loss-kernel)


def _scalar(text: str) -> int | float | bool | str | None:
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def flat_config(path: Path) -> dict[str, int | float | bool | str | None]:
    """The top-level `key: scalar` pairs of a flat YAML file (the model presets are), read
    without a YAML library: the GPU image has none."""
    pairs = re.findall(r"^(\w+):[ \t]*([^#\n]*?)[ \t]*(?:#.*)?$", path.read_text(), re.M)
    return {key: _scalar(value) for key, value in pairs if value}


def model_config(
    shape: tuple[int, int, int], protocol: Protocol, arch: str = "project"
) -> GPTConfig:
    """A shape with the architecture every rung shares (configs/model/base.yaml), or with
    nanoGPT's (arch "nanogpt")."""
    if arch not in ARCHES:
        raise ValueError(f"arch={arch!r} is unknown: use one of {', '.join(ARCHES)}")
    n_layer, d_model, n_head = shape
    base = flat_config(CONFIGS / "model" / "base.yaml")
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{
        **{k: v for k, v in base.items() if k in fields},
        **(ARCHITECTURE if arch == "nanogpt" else {}),
        "n_layer": n_layer, "d_model": d_model, "n_head": n_head,
        "vocab_size": protocol.vocab_size, "max_seq_len": protocol.seq_len,
    })


def _row(
    name: str, config: GPTConfig, protocol: Protocol, hw: Hardware, tokens_per_s: float, **rest
) -> Row:
    """A Row with its parameter counts and both MFUs worked out from tokens_per_s."""
    params = count_params(config)
    # The head is a [vocab, d_model] matmul whether or not its weight is the embedding's
    matmul = params.non_embedding + config.vocab_size * config.d_model
    flops_6n = 6 * matmul + 12 * config.n_layer * config.d_model * protocol.seq_len
    exact = flops_per_token(config, protocol.seq_len).flops_exact
    shape = (config.n_layer, config.d_model, config.n_head)
    return Row(
        name=name, n_layer=config.n_layer, d_model=config.d_model, n_head=config.n_head,
        non_embedding_params=params.non_embedding, matmul_params=matmul,
        tokens_per_s=tokens_per_s,
        mfu_6n=hw.mfu(flops_6n * tokens_per_s),
        mfu_exact=hw.mfu(exact * tokens_per_s),
        nanogpt_tokens_per_s=(reference_for(hw.device_name)[1].get(shape)
                              if protocol == Protocol() else None),
        **rest,
    )


def _timed(
    name: str,
    shape: tuple[int, int, int],
    protocol: Protocol,
    hw: Hardware,
    loss: LossChoice,
    profile_rows: int,
    before_timing: Callable[[], object],
    arch: str,
) -> tuple[Row, float, float]:
    """measure(), also returning the timed window's ends on time.monotonic(), which every
    process of the machine shares; before_timing() runs between the warm-up and the window."""
    config = model_config(shape, protocol, arch)
    torch.manual_seed(0)
    model = hw.place(GPT(config, loss_chunk_tokens=loss.chunk_tokens,
                         loss_attention=loss.attention, loss_kernel=loss.kernel,
                         residual_dtype=hw.residual_torch_dtype))
    step_model = hw.compiled(model)
    optimizer = build_optimizer(model, **OPTIMIZER, fused=hw.device.type == "cuda")
    tokens = torch.randint(protocol.vocab_size, (protocol.batch_size, protocol.seq_len + 1),
                           device=hw.device)
    xs, ys = tokens[:, :-1], tokens[:, 1:]

    def train_step() -> torch.Tensor:
        # The loop's own step: one micro-batch of the whole batch, clip, AdamW.
        step_loss = accumulate_gradients(step_model, xs, ys, protocol.batch_size, hw)
        apply_gradients(model, optimizer, grad_clip=GRAD_CLIP)
        return step_loss

    warmup_start = time.monotonic()
    for _ in range(protocol.warmup_steps):
        train_step()
    hw.synchronize()
    warmup_s = time.monotonic() - warmup_start
    before_timing()
    if hw.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(hw.device)
    start = time.monotonic()
    for _ in range(protocol.timed_steps):
        last_loss = train_step()
    hw.synchronize()
    end = time.monotonic()
    # The timed window's peak, before the profiled steps add theirs
    peak = torch.cuda.max_memory_allocated(hw.device) if hw.device.type == "cuda" else None
    profile = _profile(train_step, hw, profile_rows) if profile_rows > 0 else None
    elapsed = end - start
    row = _row(
        name, config, protocol, hw,
        tokens_per_s=protocol.timed_steps * protocol.batch_size * protocol.seq_len / elapsed,
        step_time_s=elapsed / protocol.timed_steps,
        peak_memory_bytes=peak,
        loss=float(last_loss),
        profile=profile,
        warmup_s=warmup_s,
        loss_attention=loss.attention,
        loss_kernel=loss.kernel,
    )
    return row, start, end


def measure(
    name: str,
    shape: tuple[int, int, int],
    protocol: Protocol,
    hw: Hardware,
    loss: LossChoice = PLAIN_LOSS,
    profile_rows: int = 0,
    arch: str = "project",
) -> Row:
    """Time the training step (forward, backward, clip, AdamW) of one shape on random tokens,
    compiled as hw says, with the head and loss as `loss` says; arch one of ARCHES.
    profile_rows > 0: then profile three more steps and keep that many top ops by device time."""
    return _timed(name, shape, protocol, hw, loss, profile_rows, before_timing=lambda: None,
                  arch=arch)[0]


def _profile(train_step: Callable[[], torch.Tensor], hw: Hardware, rows: int) -> str:
    """The `rows` ops that took the most device time (CPU time on the CPU) over three steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if hw.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            train_step()
        hw.synchronize()
    sort = "self_device_time_total" if hw.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


ANOTHER_FAILED = "stopped: another copy failed"


def _copy(
    index: int,
    args: tuple,
    barrier: threading.Barrier,
    results: multiprocessing.Queue,
) -> None:
    """One copy's process: warm up, wait for every copy, time; reports (index, result or why)."""
    name, shape, protocol, hw, loss, arch = args
    try:
        # hw was resolved in the parent; TF32, a per-process switch, is set again here
        if hw.device.type == "cuda":
            use_tf32()
        results.put((index, _timed(name, shape, protocol, hw, loss, 0, barrier.wait, arch)))
    except threading.BrokenBarrierError:
        results.put((index, ANOTHER_FAILED))
    except Exception as exc:  # reported to the parent, which names it in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        results.put((index, f"{type(exc).__name__}: {first}".rstrip(": ")))
        barrier.abort()


def measure_copies(
    name: str,
    shape: tuple[int, int, int],
    protocol: Protocol,
    hw: Hardware,
    copies: int,
    loss: LossChoice = PLAIN_LOSS,
    arch: str = "project",
) -> Row:
    """Train `copies` copies of one shape at once on the device, each in its own process (as a
    sweep running several runs per GPU does); they start timing together, after every copy's
    warm-up. tokens/s counts all copies' tokens over the span from the first start to the last
    end. BenchFailed (one line) when a copy fails, e.g. out of memory."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    barrier = context.Barrier(copies)
    results = context.Queue()
    args = (name, shape, protocol, hw, loss, arch)
    workers = [context.Process(target=_copy, args=(i, args, barrier, results), daemon=True)
               for i in range(copies)]
    for worker in workers:
        worker.start()
    reports: dict[int, object] = {}
    failure: tuple[int, str] | None = None
    try:
        while len(reports) < copies and failure is None:
            try:
                index, outcome = results.get(timeout=1.0)
            except queue.Empty:
                for index, worker in enumerate(workers):
                    code = worker.exitcode
                    if index not in reports and code not in (None, 0):
                        # Killed (e.g. by the kernel's OOM killer) before it could report.
                        failure = (index, f"killed by signal {-code}" if code < 0
                                   else f"its process exited with code {code}")
                continue
            # A copy stopped by another's failure: that one's own reason is still on its way.
            if isinstance(outcome, str) and outcome != ANOTHER_FAILED:
                failure = (index, outcome)
            reports[index] = outcome
    finally:
        if failure is not None or len(reports) < copies:
            # Failed or interrupted: the other copies would only hold the device.
            barrier.abort()
            for worker in workers:
                worker.terminate()
        for worker in workers:
            worker.join()
    if failure is not None:
        index, why = failure
        raise BenchFailed(f"{name} as {copies} copies at once: copy {index} failed ({why}): "
                          "use fewer --copies or a smaller shape")
    timed = [reports[i] for i in range(copies)]
    span = max(end for _, _, end in timed) - min(start for _, start, _ in timed)
    rows = [row for row, _, _ in timed]
    memory = [row.peak_memory_bytes for row in rows]
    return _row(
        name, model_config(shape, protocol, arch), protocol, hw,
        tokens_per_s=copies * protocol.timed_steps * protocol.batch_size * protocol.seq_len / span,
        step_time_s=sum(row.step_time_s for row in rows) / copies,
        peak_memory_bytes=None if None in memory else sum(memory),
        loss=rows[0].loss,
        copies=copies,
        warmup_s=max(row.warmup_s for row in rows),
        loss_attention=loss.attention,
        loss_kernel=loss.kernel,
    )
