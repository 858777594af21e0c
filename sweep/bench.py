"""`python -m sweep.bench`: training throughput of this project's GPT and training step, by shape,
on random tokens, with MFU by the 6N + 12LdT convention and by the exact FLOP count.

The protocol is the one nanoGPT's reference numbers were taken with (vocab 32768, seq_len 1024,
64 sequences a step, no accumulation, 10 warm-up then 20 timed steps); `--tiny` shrinks it so the
CPU (and CI) can run it. It imports torch and this project's modules only: no Hydra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from models import GPT, GPTConfig, count_params, flops_per_token
from sweep.errors import ConfigError, OneLineParser
from sweep.hardware import Hardware, resolve_hardware
from sweep.step import accumulate_gradients, apply_gradients, build_optimizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# (n_layer, d_model, n_head) of the nanoGPT reference table, and its tokens/s on one H100 80GB
# (PyTorch 2.11, bf16 autocast, torch.compile, fused AdamW, flash SDPA).
REFERENCE = {
    (4, 128, 2): 3.72e6,
    (6, 256, 4): 2.53e6,
    (8, 384, 6): 1.57e6,
    (12, 512, 8): 0.91e6,
    (12, 768, 12): 0.54e6,
    (24, 1024, 16): 0.205e6,
}
TINY_SHAPES = ((2, 64, 2), (2, 128, 4))


@dataclass(frozen=True)
class Protocol:
    """What each shape is timed on."""

    vocab_size: int = 32768
    seq_len: int = 1024
    batch_size: int = 64  # sequences per optimizer step, all in one micro-batch
    warmup_steps: int = 10
    timed_steps: int = 20


TINY = Protocol(vocab_size=512, seq_len=64, batch_size=4, warmup_steps=2, timed_steps=3)


@dataclass(frozen=True)
class Row:
    """One shape's measurement."""

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
    nanogpt_tokens_per_s: float | None  # the reference on an H100, where this shape has one
    profile: str | None = None  # --profile: the top ops of three profiled steps, as a table


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


def ladder_shapes(config_dir: Path = CONFIGS) -> list[tuple[str, int, int, int]]:
    """(name, n_layer, d_model, n_head) of the ladder presets in configs/model/gpt_*.yaml."""
    shapes = []
    for path in sorted(config_dir.glob("model/gpt_*.yaml")):
        values = flat_config(path)
        shapes.append((path.stem, values["n_layer"], values["d_model"], values["n_head"]))
    return sorted(shapes, key=lambda s: (s[1] * s[2] ** 2, s[0]))


def model_config(shape: tuple[int, int, int], protocol: Protocol) -> GPTConfig:
    """A shape with the architecture every rung shares (configs/model/base.yaml)."""
    n_layer, d_model, n_head = shape
    base = flat_config(CONFIGS / "model" / "base.yaml")
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{
        **{k: v for k, v in base.items() if k in fields},
        "n_layer": n_layer, "d_model": d_model, "n_head": n_head,
        "vocab_size": protocol.vocab_size, "max_seq_len": protocol.seq_len,
    })


def measure(
    name: str,
    shape: tuple[int, int, int],
    protocol: Protocol,
    hw: Hardware,
    loss_chunk_tokens: int | None = None,
    compile_mode: str | None = None,
    profile_rows: int = 0,
) -> Row:
    """Time the training step (forward, backward, clip, AdamW) of one shape on random tokens;
    loss_chunk_tokens and compile_mode as train.loss_chunk_tokens and torch.compile's mode.
    profile_rows > 0: then profile three more steps and keep that many top ops by device time."""
    n_layer, d_model, n_head = shape
    config = model_config(shape, protocol)
    torch.manual_seed(0)
    model = GPT(config, loss_chunk_tokens=loss_chunk_tokens).to(hw.device)
    step_model = torch.compile(model, mode=compile_mode) if hw.compile else model
    optimizer = build_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
                                fused=hw.device.type == "cuda")
    tokens = torch.randint(protocol.vocab_size, (protocol.batch_size, protocol.seq_len + 1),
                           device=hw.device)
    xs, ys = tokens[:, :-1], tokens[:, 1:]

    def train_step() -> torch.Tensor:
        # The loop's own step: one micro-batch of the whole batch, clip, AdamW.
        loss = accumulate_gradients(step_model, xs, ys, protocol.batch_size, hw)
        apply_gradients(model, optimizer, grad_clip=1.0)
        return loss

    start = 0.0
    for step in range(protocol.warmup_steps + protocol.timed_steps):
        if step == protocol.warmup_steps:
            hw.synchronize()
            if hw.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(hw.device)
            start = time.perf_counter()
        loss = train_step()
    hw.synchronize()
    elapsed = time.perf_counter() - start
    profile = _profile(train_step, hw, profile_rows) if profile_rows > 0 else None
    tokens_per_s = protocol.timed_steps * protocol.batch_size * protocol.seq_len / elapsed
    params = count_params(config)
    matmul = params.non_embedding + params.head
    flops_6n = 6 * matmul + 12 * n_layer * d_model * protocol.seq_len
    exact = flops_per_token(config, protocol.seq_len).flops_exact
    peak = hw.peak_flops
    return Row(
        name=name, n_layer=n_layer, d_model=d_model, n_head=n_head,
        non_embedding_params=params.non_embedding, matmul_params=matmul,
        tokens_per_s=tokens_per_s, step_time_s=elapsed / protocol.timed_steps,
        mfu_6n=flops_6n * tokens_per_s / peak if peak else None,
        mfu_exact=exact * tokens_per_s / peak if peak else None,
        peak_memory_bytes=(torch.cuda.max_memory_allocated(hw.device)
                           if hw.device.type == "cuda" else None),
        loss=float(loss),
        profile=profile,
        nanogpt_tokens_per_s=(REFERENCE.get(shape)
                              if protocol == Protocol() and "H100" in hw.device_name else None),
    )


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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(rows: list[Row]) -> list[str]:
    """The rows as a fixed-width table."""
    lines = [f"{'shape':<16} {'L,d,h':<12} {'N':>8} {'tokens/s':>10} {'step ms':>8} "
             f"{'MFU 6N':>7} {'MFU ex':>7} {'mem GB':>7} {'vs nanoGPT':>10}"]
    for r in rows:
        memory = "-" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 1e9:.1f}"
        reference = r.nanogpt_tokens_per_s
        ratio = f"{r.tokens_per_s / reference:.2f}x" if reference else "-"
        lines.append(
            f"{r.name:<16} {f'{r.n_layer},{r.d_model},{r.n_head}':<12} "
            f"{r.non_embedding_params / 1e6:>7.2f}M {r.tokens_per_s:>10,.0f} "
            f"{1e3 * r.step_time_s:>8.1f} {_pct(r.mfu_6n):>7} {_pct(r.mfu_exact):>7} "
            f"{memory:>7} {ratio:>10}"
        )
    return lines


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sweep.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--shapes", choices=("reference", "ladder", "all"), default=None,
                   help="nanoGPT's reference shapes, this project's ladder presets, or both "
                        "(default: all; with --tiny, two tiny shapes)")
    p.add_argument("--tiny", action="store_true",
                   help="a shrunk protocol (vocab 512, 64 tokens, 4 sequences, 2 + 3 steps): "
                        "seconds on a CPU, what CI runs")
    p.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                   help="torch.compile (auto: on CUDA)")
    p.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"),
                   help="torch.compile's mode (default: torch's default)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--loss-chunk-tokens", type=int, default=None, metavar="N",
                   help="fuse the output head and the loss over chunks of N tokens, as "
                        "train.loss_chunk_tokens=N (default: the plain head and loss)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="the device's peak FLOP/s for MFU (default: the known-device table)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="after timing a shape, profile three steps and print the ROWS ops with "
                        "the most device time (also in the JSON)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    compile_ = {"auto": "auto", "true": True, "false": False}[args.compile]
    try:
        hw = resolve_hardware(args.device, args.precision, compile_, args.peak_flops)
    except ConfigError as err:
        print(f"error: {str(err).replace('train.', '--')}", file=sys.stderr)
        return 2
    if args.loss_chunk_tokens is not None and args.loss_chunk_tokens < 1:
        print(f"error: --loss-chunk-tokens={args.loss_chunk_tokens} must be a positive number "
              "of tokens: leave it out for the plain head and loss", file=sys.stderr)
        return 2
    if args.profile < 0:
        print(f"error: --profile={args.profile} must be a number of rows (0: no profile)",
              file=sys.stderr)
        return 2
    if args.compile_mode and not hw.compile:
        print(f"error: --compile-mode={args.compile_mode} needs torch.compile: add "
              "--compile true", file=sys.stderr)
        return 2
    protocol = TINY if args.tiny else Protocol()
    which = args.shapes or ("tiny" if args.tiny else "all")
    shapes = [(f"tiny-{i}", s) for i, s in enumerate(TINY_SHAPES)] if which == "tiny" else []
    if which in ("reference", "all"):
        shapes += [(f"nanogpt-{i}", s) for i, s in enumerate(REFERENCE)]
    if which in ("ladder", "all"):
        shapes += [(name, (L, d, h)) for name, L, d, h in ladder_shapes()]
    compile_label = f"{hw.compile}" + (f" {args.compile_mode}" if args.compile_mode else "")
    loss_label = (f"fused in chunks of {args.loss_chunk_tokens} tokens"
                  if args.loss_chunk_tokens else "plain")
    print(f"device: {hw.device_name} ({hw.precision}, compile {compile_label}, loss "
          f"{loss_label}), torch {torch.__version__}; {protocol}")
    print(format_table([])[0])
    rows = []
    for name, shape in shapes:
        rows.append(measure(name, shape, protocol, hw, args.loss_chunk_tokens,
                            args.compile_mode, args.profile))
        print(format_table(rows)[-1], flush=True)
        if rows[-1].profile:
            print(rows[-1].profile, flush=True)
    result = {
        "device": hw.device_name, "precision": hw.precision, "compile": hw.compile,
        "compile_mode": args.compile_mode, "loss_chunk_tokens": args.loss_chunk_tokens,
        "peak_flops": hw.peak_flops, "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "protocol": asdict(protocol), "rows": [asdict(r) for r in rows],
    }
    # Temp file + rename: a killed benchmark never leaves half a JSON behind (not data.shards'
    # helper: the GPU image lacks what the data package imports).
    tmp = args.out.with_name(f"{args.out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
