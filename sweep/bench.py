"""`python -m sweep.bench`: training throughput of this project's GPT and training step, by shape,
on random tokens, with MFU by the 6N + 12LdT convention and by the exact FLOP count.

The protocol is the one nanoGPT's reference numbers were taken with (vocab 32768, seq_len 1024,
64 sequences a step, no accumulation, 10 warm-up then 20 timed steps); `--tiny` shrinks it so the
CPU (and CI) can run it; `--copies K` times K copies of each shape training at once; `--arch
nanogpt` times nanoGPT's architecture instead, the baseline on a card that has no reference row.
It imports torch and this project's modules only: no Hydra (the measurement is sweep.throughput).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from models.config import LOSS_KERNELS, LossChoice, loss_fusions
from sweep.errors import ConfigError, OneLineParser
from sweep.hardware import (
    COMPILE_MODES,
    COMPILE_SCOPES,
    PRECISIONS,
    RESIDUAL_DTYPES,
    inductor_env,
    out_of_memory,
    resolve_hardware,
    resolve_loss_attention,
)
from sweep.nanogpt import REFERENCE
from sweep.throughput import (
    ARCHES,
    CONFIGS,
    TINY,
    BenchFailed,
    Protocol,
    Row,
    flat_config,
    measure,
    measure_copies,
    model_config,
)

TINY_SHAPES = ((2, 64, 2), (2, 128, 4))


def ladder_shapes(config_dir: Path = CONFIGS) -> list[tuple[str, int, int, int]]:
    """(name, n_layer, d_model, n_head) of the ladder presets in configs/model/gpt_*.yaml."""
    shapes = []
    for path in sorted(config_dir.glob("model/gpt_*.yaml")):
        values = flat_config(path)
        shapes.append((path.stem, values["n_layer"], values["d_model"], values["n_head"]))
    return sorted(shapes, key=lambda s: (s[1] * s[2] ** 2, s[0]))


def parse_shape(text: str) -> tuple[int, int, int]:
    """`--shape L,d,h` as (n_layer, d_model, n_head); ValueError saying what is wrong."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError("not three positive n_layer,d_model,n_head: write e.g. 4,128,2")
    n_layer, d_model, n_head = (int(p) for p in parts)
    return n_layer, d_model, n_head


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(rows: list[Row]) -> list[str]:
    """The rows as a fixed-width table."""
    lines = [f"{'shape':<16} {'L,d,h':<12} {'N':>8} {'tokens/s':>10} {'step ms':>8} "
             f"{'MFU 6N':>7} {'MFU ex':>7} {'mem GB':>7} {'vs nanoGPT':>10} {'warm-up s':>9}"]
    for r in rows:
        memory = "-" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 1e9:.1f}"
        reference = r.nanogpt_tokens_per_s
        ratio = f"{r.tokens_per_s / reference:.2f}x" if reference else "-"
        warmup = "-" if r.warmup_s is None else f"{r.warmup_s:.1f}"
        lines.append(
            f"{r.name:<16} {f'{r.n_layer},{r.d_model},{r.n_head}':<12} "
            f"{r.non_embedding_params / 1e6:>7.2f}M {r.tokens_per_s:>10,.0f} "
            f"{1e3 * r.step_time_s:>8.1f} {_pct(r.mfu_6n):>7} {_pct(r.mfu_exact):>7} "
            f"{memory:>7} {ratio:>10} {warmup:>9}"
        )
    return lines


def shape_failure(
    name: str,
    shape: tuple[int, int, int],
    protocol: Protocol,
    loss: LossChoice,
    err: Exception,
) -> str:
    """One line saying which shape failed, why, and what to change."""
    if isinstance(err, BenchFailed):
        return str(err)  # it names the shape already
    label = f"{name} ({shape[0]},{shape[1]},{shape[2]})"
    # The protocol allows no gradient accumulation, so the fixes are a smaller head or more memory
    if loss.attention:  # the head and loss hold no logits already
        smaller = ""
    elif loss.kernel == "fused":  # it makes the whole logits, as the plain loss
        smaller = "use --loss-chunk-tokens 4096 instead of --loss-kernel fused or "
    elif loss.chunk_tokens is None:
        smaller = "fuse the head and loss with --loss-chunk-tokens 4096 or "
    else:
        smaller = f"use smaller chunks than --loss-chunk-tokens {loss.chunk_tokens} or "
    return (f"{label} ran out of device memory at {protocol.batch_size} sequences of "
            f"{protocol.seq_len} tokens: {smaller}use a device with more memory")


def release_memory(device: torch.device) -> None:
    """Free what a failed shape left behind, so that the next shape starts on an empty device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_json(path: Path, result: dict) -> None:
    """Write the results through a temp file + rename: a killed bench never leaves half a JSON
    (not data.shards' helper: the GPU image lacks what the data package imports)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sweep.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--shapes", choices=("reference", "ladder", "all"), default=None,
                   help="nanoGPT's reference shapes, this project's ladder presets, or both "
                        "(default: all; with --tiny, two tiny shapes)")
    p.add_argument("--shape", action="append", default=[], metavar="L,d,h",
                   help="time this n_layer,d_model,n_head too (repeatable); alone, only these")
    p.add_argument("--copies", type=int, default=1, metavar="K",
                   help="train K copies of each shape at once on the device, each in its own "
                        "process (as a sweep with several runs per GPU); tokens/s and MFU are "
                        "then theirs together (default: 1)")
    p.add_argument("--arch", choices=ARCHES, default="project",
                   help="project: this project's GPT (configs/model/base.yaml); nanogpt: "
                        "nanoGPT's (learned positions, tied head, plain loss), the baseline "
                        "measured on this card (default: project)")
    p.add_argument("--tiny", action="store_true",
                   help="a shrunk protocol (vocab 512, 64 tokens, 4 sequences, 2 + 3 steps): "
                        "seconds on a CPU, what CI runs")
    p.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                   help="torch.compile (auto: on CUDA)")
    p.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile's mode, as train.compile_mode (default: torch's default)")
    p.add_argument("--compile-scope", default="model", choices=COMPILE_SCOPES,
                   help="as train.compile_scope: compile the whole model (the default) or each "
                        "block and the output apart (blocks: a deep model compiles faster)")
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="as train.precision: auto (bf16 on CUDA, fp32 on the CPU), bf16, fp32, "
                        "or fp8 (the Linear layers' matmuls in FP8, MFU against FP8's peak)")
    p.add_argument("--residual-dtype", choices=tuple(RESIDUAL_DTYPES), default="float32",
                   help="as train.residual_dtype: the residual stream's dtype under bf16 "
                        "autocast, float32 (the default, nanoGPT's) or bf16")
    p.add_argument("--loss-chunk-tokens", type=int, default=None, metavar="N",
                   help="fuse the output head and the loss over chunks of N tokens, as "
                        "train.loss_chunk_tokens=N (default: the plain head and loss)")
    p.add_argument("--loss-attention", nargs="?", const="true", default="auto",
                   choices=("auto", "true", "false"),
                   help="the output head and the loss as two fused attention calls (the logits "
                        "never written out), as train.loss_attention; auto (the default, as in "
                        "training): per shape, where it is the faster loss; bare: true")
    p.add_argument("--loss-kernel", choices=LOSS_KERNELS, default="plain",
                   help="fused: one kernel writes each token's loss and the logits' gradient in "
                        "the forward pass, as train.loss_kernel (default: plain)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="the device's peak FLOP/s for MFU (default: the known-device table)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="after timing a shape, profile three steps and print the ROWS ops with "
                        "the most device time (also in the JSON)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results file")
    return p


def named_shapes(
    which: str, custom: list[tuple[str, tuple[int, int, int]]]
) -> list[tuple[str, tuple[int, int, int]]]:
    """The shapes to time, named: `custom` (--shape), then "tiny", nanoGPT's "reference", the
    "ladder" presets, or "all" (reference and ladder)."""
    shapes = list(custom)
    if which == "tiny":
        shapes = [(f"tiny-{i}", s) for i, s in enumerate(TINY_SHAPES)]
    if which in ("reference", "all"):
        shapes += [(f"nanogpt-{i}", s) for i, s in enumerate(REFERENCE)]
    if which in ("ladder", "all"):
        # A ladder rung of a reference shape (gpt_85m is 12,768,12) is timed once, named both
        known = {shape: i for i, (_, shape) in enumerate(shapes)}
        for name, L, d, h in ladder_shapes():
            if (L, d, h) in known:
                i = known[(L, d, h)]
                shapes[i] = (f"{shapes[i][0]}/{name}", shapes[i][1])
            else:
                shapes.append((name, (L, d, h)))
    return shapes


# How each train.loss_* setting of models.config.loss_fusions is given here
_LOSS_FLAGS = {"loss_chunk_tokens": "--loss-chunk-tokens={}", "loss_attention": "--loss-attention",
               "loss_kernel": "--loss-kernel {}"}


def argument_problem(args: argparse.Namespace) -> str | None:
    """The first flag that cannot be run as given, as one line saying how to fix it."""
    if args.loss_chunk_tokens is not None and args.loss_chunk_tokens < 1:
        return (f"--loss-chunk-tokens={args.loss_chunk_tokens} must be a positive number of "
                "tokens: leave it out for the plain head and loss")
    fusions = loss_fusions(args.loss_chunk_tokens, args.loss_attention == "true", args.loss_kernel)
    if len(fusions) > 1:
        asked = " and ".join(_LOSS_FLAGS[key].format(value) for key, value, _ in fusions)
        return f"{asked} are different ways to fuse the head and loss: give one"
    if args.profile < 0:
        return f"--profile={args.profile} must be a number of rows (0: no profile)"
    if not args.out.parent.is_dir():
        return (f"--out={args.out}: the folder {args.out.parent} does not exist: create it or "
                "point --out into an existing folder")
    if args.out.is_dir():
        return f"--out={args.out} is a folder: name the JSON file, e.g. {args.out / 'bench.json'}"
    if args.copies < 1:
        return f"--copies={args.copies} must be at least 1 (copies trained at once)"
    if args.arch == "nanogpt":
        # The baseline is nanoGPT's own step: one run, torch.compile's default, the plain loss
        for flag, value, off in (("--loss-chunk-tokens", args.loss_chunk_tokens, None),
                                 ("--loss-attention", args.loss_attention == "true", False),
                                 ("--loss-kernel", args.loss_kernel, "plain"),
                                 ("--compile-mode", args.compile_mode, None),
                                 ("--compile-scope", args.compile_scope, "model"),
                                 ("--copies", args.copies, 1)):
            if value != off:
                given = flag if value is True else f"{flag}={value}"  # a switch, or a value
                return (f"{given} is not nanoGPT's step, which --arch nanogpt times as "
                        f"it is: leave out {flag} there")
    if args.arch == "nanogpt" and args.precision == "fp8":
        return ("--precision=fp8 is not nanoGPT's step, which --arch nanogpt times in bf16: "
                "leave out --precision there")
    if args.arch == "nanogpt" and args.residual_dtype != "float32":
        return (f"--residual-dtype={args.residual_dtype} is not nanoGPT's step, whose residual "
                "stream is float32: leave out --residual-dtype there")
    if args.copies > 1 and args.profile:
        return (f"--profile={args.profile} profiles one process: leave it out with "
                f"--copies={args.copies}")
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    compile_ = {"auto": "auto", "true": True, "false": False}[args.compile]
    try:
        hw = resolve_hardware(args.device, args.precision, compile_, args.peak_flops,
                              args.compile_mode, args.residual_dtype, args.compile_scope)
    except ConfigError as err:
        # The config's names, as this CLI's flags
        message = str(err)
        for key in ("compile_mode", "compile_scope", "peak_flops", "device", "precision",
                    "compile", "residual_dtype"):
            message = message.replace(f"train.{key}", f"--{key.replace('_', '-')}")
        print(f"error: {message}", file=sys.stderr)
        return 2
    problem = argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    protocol = TINY if args.tiny else Protocol()
    shapes = []
    for text in args.shape:
        try:
            shape = parse_shape(text)
            model_config(shape, protocol, args.arch)  # a bad shape fails here, not later
        except ValueError as err:
            print(f"error: --shape={text!r}: {err}", file=sys.stderr)
            return 2
        if shape in [s for _, s in shapes]:
            print(f"error: --shape={text!r} is given twice: give each shape once",
                  file=sys.stderr)
            return 2
        shapes.append((f"{shape[0]}x{shape[1]}", shape))
    which = args.shapes or ("custom" if shapes else "tiny" if args.tiny else "all")
    shapes = named_shapes(which, shapes)
    compile_label = f"{hw.compile}" + (f" {args.compile_mode}" if args.compile_mode else "")
    if hw.compile and hw.compile_scope != "model":
        compile_label += f" by {hw.compile_scope}"
    attention = {"auto": "auto", "true": True, "false": False}[args.loss_attention]
    loss_label = (f"fused in chunks of {args.loss_chunk_tokens} tokens"
                  if args.loss_chunk_tokens else "fused kernel" if args.loss_kernel == "fused"
                  else "as attention" if attention is True
                  else "plain" if attention is False or args.arch == "nanogpt"
                  else "plain, or as attention where faster (auto)")
    arch_label = "nanoGPT's GPT" if args.arch == "nanogpt" else "this project's GPT"
    tuning = inductor_env()
    if tuning and hw.compile:
        compile_label += ", " + " ".join(f"{k}={v}" for k, v in tuning.items())
    precision_label = hw.precision + (", bf16 residual stream" if hw.residual_dtype == "bf16"
                                      else "")
    print(f"{arch_label} on {hw.device_name} ({precision_label}, compile {compile_label}, loss "
          f"{loss_label}), torch {torch.__version__}; {protocol}")
    if hw.precision == "fp8":
        peak = "unknown" if hw.peak_flops is None else f"{hw.peak_flops / 1e12:.1f} TFLOP/s"
        print(f"fp8: MFU is against FP8's peak ({peak}), not bf16's")
    if args.copies > 1:
        print(f"{args.copies} copies of each shape at once: tokens/s and MFU are the copies' "
              "together, step ms one copy's, memory all copies'")
    print(format_table([])[0])
    rows: list[Row] = []
    failed: list[dict] = []
    header = {
        "arch": args.arch,
        "device": hw.device_name, "precision": hw.precision, "compile": hw.compile,
        "residual_dtype": hw.residual_dtype,
        "compile_mode": args.compile_mode,
        "compile_scope": hw.compile_scope,
        "inductor_env": tuning if hw.compile else {},
        "loss_chunk_tokens": args.loss_chunk_tokens,
        # true, false or "auto" (each row says which loss it ran)
        "loss_attention": False if args.arch == "nanogpt" else attention,
        "loss_kernel": args.loss_kernel,
        "copies": args.copies,
        "peak_flops": hw.peak_flops, "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "protocol": asdict(protocol),
    }
    for done, (name, shape) in enumerate(shapes, start=1):
        failure = None
        config = model_config(shape, protocol, args.arch)
        as_attention = resolve_loss_attention(attention, hw, config.d_model, config.bias,
                                              args.loss_chunk_tokens, args.loss_kernel)
        loss = LossChoice(args.loss_chunk_tokens, as_attention, args.loss_kernel)
        try:
            if args.copies > 1:
                rows.append(measure_copies(name, shape, protocol, hw, args.copies, loss,
                                           args.arch))
            else:
                rows.append(measure(name, shape, protocol, hw, loss, args.profile, args.arch))
        except Exception as err:  # a failed shape or out of memory; the rest re-raise
            if not isinstance(err, BenchFailed) and not out_of_memory(err):
                raise
            failure = shape_failure(name, shape, protocol, loss, err)
        if failure is None:
            print(format_table(rows)[-1], flush=True)
            if attention == "auto" and loss.attention:
                print(f"{'':<16} (the loss as attention: auto found it faster here)", flush=True)
            if rows[-1].profile:
                print(rows[-1].profile, flush=True)
        else:
            # The next shapes still run (a later one may fit); this one is named in the JSON.
            print(f"error: {failure}", file=sys.stderr, flush=True)
            failed.append({"name": name, "n_layer": shape[0], "d_model": shape[1],
                           "n_head": shape[2], "error": failure})
            release_memory(hw.device)  # out here, where the error's frames are gone
        # After every shape: a bench stopped later (killed, a crash) keeps what it measured.
        write_json(args.out, {**header, "rows": [asdict(r) for r in rows], "failed": failed,
                              "pending": [n for n, _ in shapes[done:]]})
    names = ", ".join(f["name"] for f in failed)
    print(f"results: {args.out}" + (f" ({len(failed)} of {len(shapes)} shapes failed: {names})"
                                    if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
