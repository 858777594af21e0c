"""Tests for sweep.bench: the CLI on the CPU (tiny protocol), its MFU arithmetic, the ladder it
reads, running without Hydra, and (on a GPU only) the compiled bf16 step against float32.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models.attention_loss
from models import GPT, GPTConfig
from sweep import bench
from sweep.bench import ladder_shapes, named_shapes
from sweep.hardware import resolve_hardware
from sweep.nanogpt import REFERENCE
from sweep.step import accumulate_gradients
from sweep.throughput import BenchFailed, measure
from tests.conftest import PYTHON
from tests.helpers import needs_cpu_fp8

REPO = Path(__file__).resolve().parent.parent
# The GPU image has torch but none of these: the benchmark must run without them.
WITHOUT_EXTRAS = (
    "import runpy, sys\n"
    "for name in ('hydra', 'omegaconf', 'datasets', 'wandb', 'submitit'):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['sweep.bench', *sys.argv[1:]]\n"
    "runpy.run_module('sweep.bench', run_name='__main__')\n"
)


def bench_without_extras(*args: str) -> subprocess.CompletedProcess:
    """`python -m sweep.bench ARGS` as on the GPU image: Hydra, wandb and the like absent."""
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_tiny_cpu_bench_prints_a_table_and_writes_json_with_mfu_by_both_conventions(tmp_path):
    out = tmp_path / "bench.json"
    result = bench_without_extras("--device", "cpu", "--tiny", "--peak-flops", "1e12",
                                  "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "tiny-0" in result.stdout and "tiny-1" in result.stdout
    report = json.loads(out.read_text())
    assert (report["device"], report["precision"], report["compile"]) == ("cpu", "fp32", False)
    assert report["protocol"] == {"vocab_size": 512, "seq_len": 64, "batch_size": 4,
                                  "warmup_steps": 2, "timed_steps": 3}
    assert report["inductor_env"] == {}  # eager: no compiler switch applies
    rows = report["rows"]
    assert [(r["n_layer"], r["d_model"], r["n_head"]) for r in rows] == [(2, 64, 2), (2, 128, 4)]
    for r in rows:
        # N of 6N: the blocks and final norm plus the untied head (vocab 512 x d_model).
        assert r["matmul_params"] == r["non_embedding_params"] + 512 * r["d_model"]
        flops = 6 * r["matmul_params"] + 12 * r["n_layer"] * r["d_model"] * 64
        assert r["mfu_6n"] == pytest.approx(flops * r["tokens_per_s"] / 1e12)
        assert r["mfu_exact"] > 0 and r["tokens_per_s"] > 0
        assert r["step_time_s"] == pytest.approx(4 * 64 / r["tokens_per_s"])
        assert r["peak_memory_bytes"] is None and r["nanogpt_tokens_per_s"] is None
        assert 5.0 < r["loss"] < 7.0  # about ln(512) = 6.24 after 5 steps on random tokens
        assert 0 < r["warmup_s"] < 60  # the 2 warm-up steps' wall time, as printed
    assert "warm-up s" in result.stdout.splitlines()[1]
    assert not list(tmp_path.glob("*.tmp-*"))
    # The loss as training picks it (train.loss_attention=auto): plain on a CPU, row by row
    assert report["loss_attention"] == "auto"
    assert "loss plain, or as attention where faster (auto)" in result.stdout.splitlines()[0]
    assert [r["loss_attention"] for r in rows] == [False, False]


def test_copies_of_a_chosen_shape_run_without_the_extras_too(tmp_path):
    """--shape alone times only that shape; --copies trains it in two processes at once, also
    with the GPU image's packages (spawned copies import the project's modules only)."""
    out = tmp_path / "bench.json"
    result = bench_without_extras("--device", "cpu", "--tiny", "--shape", "2,64,2", "--copies",
                                  "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 copies of each shape at once" in result.stdout
    report = json.loads(out.read_text())
    assert report["copies"] == 2
    assert [(r["name"], r["copies"]) for r in report["rows"]] == [("2x64", 2)]


def test_nanogpts_architecture_is_timed_as_the_baseline(tmp_path):
    out = tmp_path / "bench.json"
    result = bench_without_extras("--device", "cpu", "--tiny", "--shape", "2,64,2", "--arch",
                                  "nanogpt", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nanoGPT's GPT on cpu (fp32, compile False, loss plain)")
    report = json.loads(out.read_text())
    assert (report["arch"], report["loss_chunk_tokens"]) == ("nanogpt", None)
    [row] = report["rows"]
    assert row["matmul_params"] == row["non_embedding_params"] + 512 * 64


def test_without_a_known_peak_mfu_is_null_not_a_guess(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [PYTHON, "-m", "sweep.bench", "--device", "cpu", "--tiny", "--out", str(out),
         "--loss-chunk-tokens", "100", "--profile", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "loss fused in chunks of 100 tokens" in result.stdout
    report = json.loads(out.read_text())
    assert report["loss_chunk_tokens"] == 100 and report["compile_mode"] is None
    assert all(r["mfu_6n"] is None and r["mfu_exact"] is None for r in report["rows"])
    # --profile: each shape's top ops by (here CPU) time, printed and kept in the JSON
    for r in report["rows"]:
        assert "aten::mm" in r["profile"] and r["profile"] in result.stdout


def test_the_loss_as_attention_is_timed_and_recorded(tmp_path):
    out = tmp_path / "bench.json"
    result = bench_without_extras("--device", "cpu", "--tiny", "--shape", "2,64,2",
                                  "--loss-attention", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("this project's GPT on cpu (fp32, compile False, loss as "
                                    "attention)")
    report = json.loads(out.read_text())
    assert (report["loss_attention"], report["loss_chunk_tokens"]) == (True, None)
    [row] = report["rows"]
    assert row["loss_attention"] is True
    # random tokens: ln 512 = 6.24 at the start, a little below after 5 steps on one batch
    assert row["tokens_per_s"] > 0 and 5.0 < row["loss"] < 6.24


def test_the_fused_loss_kernel_is_timed_and_recorded_with_the_plain_loss(tmp_path, capsys):
    losses = {}
    for kernel in ("plain", "fused"):
        out = tmp_path / f"{kernel}.json"
        assert bench.main(["--device", "cpu", "--tiny", "--shape", "2,64,2", "--loss-kernel",
                           kernel, "--loss-attention", "false", "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        [row] = report["rows"]
        assert report["loss_kernel"] == row["loss_kernel"] == kernel
        losses[kernel] = row["loss"]
    assert "loss fused kernel)" in capsys.readouterr().out
    # the same seed and batch: the same loss after 5 steps, to float32 rounding
    assert losses["fused"] == pytest.approx(losses["plain"], rel=1e-5)


def test_compiled_regions_are_timed_recorded_and_train_as_eager_does(tmp_path, capsys):
    losses = {}
    for scope, extra in (("eager", ["--compile", "false"]),
                         ("blocks", ["--compile", "true", "--compile-scope", "blocks"])):
        out = tmp_path / f"{scope}.json"
        assert bench.main(["--device", "cpu", "--tiny", "--shape", "2,64,2", *extra,
                           "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["compile_scope"] == ("blocks" if scope == "blocks" else "model")
        losses[scope] = report["rows"][0]["loss"]
    assert "compile True by blocks" in capsys.readouterr().out
    # the same seed and batch after 5 steps: compiled float32 kernels round a little differently
    assert losses["blocks"] == pytest.approx(losses["eager"], rel=1e-5)


def test_a_bf16_residual_stream_is_timed_and_recorded(tmp_path, capsys):
    losses = {}
    for dtype in ("float32", "bf16"):
        out = tmp_path / f"{dtype}.json"
        assert bench.main(["--device", "cpu", "--tiny", "--shape", "2,64,2", "--precision",
                           "bf16", "--residual-dtype", dtype, "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["residual_dtype"] == dtype
        [row] = report["rows"]
        losses[dtype] = row["loss"]
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("this project's GPT")][1].startswith(
        "this project's GPT on cpu (bf16, bf16 residual stream, compile False")
    # the same seed and batch after 5 steps: the same loss within bf16 rounding, not the same bits
    assert losses["bf16"] == pytest.approx(losses["float32"], rel=1e-2)
    assert losses["bf16"] != losses["float32"]


@needs_cpu_fp8()
def test_fp8_is_timed_recorded_and_its_mfu_peak_named(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--tiny", "--shape", "2,64,2", "--precision", "fp8",
                       "--peak-flops", "1e12", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("this project's GPT on cpu (fp8, compile False")
    assert lines[1] == "fp8: MFU is against FP8's peak (1.0 TFLOP/s), not bf16's"
    report = json.loads(out.read_text())
    [row] = report["rows"]
    assert report["precision"] == "fp8" and report["peak_flops"] == 1e12
    # random tokens: ln 512 = 6.24 at the start, a little below after 5 steps on one batch
    assert 5.0 < row["loss"] < 6.24


def test_auto_times_the_loss_as_attention_where_it_pays_and_says_so(tmp_path, capsys,
                                                                    monkeypatch):
    # As on a GPU where it is the faster loss: only the widths it pays at take it
    monkeypatch.setattr(models.attention_loss, "pays",
                        lambda device, dtype, d_model: d_model <= 64)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["loss_attention"] == "auto"
    assert [(r["d_model"], r["loss_attention"]) for r in report["rows"]] == [(64, True),
                                                                           (128, False)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("tiny-0") and lines[3].endswith(
        "(the loss as attention: auto found it faster here)")
    assert lines[4].startswith("tiny-1")


@pytest.mark.parametrize(("args", "line"), [
    (["--device", "tpu"], "error: --device='tpu' is not a device"),
    (["--device", "cpu", "--loss-chunk-tokens", "0"],
     "error: --loss-chunk-tokens=0 must be a positive number of tokens"),
    (["--device", "cpu", "--profile", "-1"], "error: --profile=-1 must be a number of rows"),
    (["--device", "cpu", "--compile-mode", "max-autotune"],
     "error: --compile-mode=max-autotune needs torch.compile, which is off on cpu: set "
     "--compile=true or leave --compile-mode null"),
    (["--device", "cpu", "--copies", "0"], "error: --copies=0 must be at least 1"),
    (["--device", "cpu", "--copies", "2", "--profile", "5"],
     "error: --profile=5 profiles one process: leave it out with --copies=2"),
    (["--device", "cpu", "--shape", "4,128"],
     "error: --shape='4,128': not three positive n_layer,d_model,n_head: write e.g. 4,128,2"),
    (["--device", "cpu", "--shape", "2,65,2"],
     "error: --shape='2,65,2': n_head=2 does not divide d_model=65"),
    (["--device", "cpu", "--arch", "nanogpt", "--loss-chunk-tokens", "512"],
     "error: --loss-chunk-tokens=512 is not nanoGPT's step, which --arch nanogpt times as it "
     "is: leave out --loss-chunk-tokens there"),
    (["--device", "cpu", "--arch", "nanogpt", "--loss-attention"],
     "error: --loss-attention is not nanoGPT's step, which --arch nanogpt times as it is: "
     "leave out --loss-attention there"),
    (["--device", "cpu", "--loss-attention", "maybe"],
     "error: argument --loss-attention: invalid choice: 'maybe'"),
    (["--device", "cpu", "--loss-attention", "true", "--loss-chunk-tokens", "512"],
     "error: --loss-chunk-tokens=512 and --loss-attention are different ways to fuse the head "
     "and loss: give one"),
    (["--device", "cpu", "--loss-attention", "--loss-chunk-tokens", "512"],
     "error: --loss-chunk-tokens=512 and --loss-attention are different ways to fuse the head "
     "and loss: give one"),
    (["--device", "cpu", "--loss-kernel", "fused", "--loss-chunk-tokens", "512"],
     "error: --loss-chunk-tokens=512 and --loss-kernel fused are different ways to fuse the "
     "head and loss: give one"),
    (["--device", "cpu", "--loss-kernel", "fused", "--loss-attention"],
     "error: --loss-attention and --loss-kernel fused are different ways to fuse the head and "
     "loss: give one"),
    (["--device", "cpu", "--loss-kernel", "triton"],
     "error: argument --loss-kernel: invalid choice: 'triton'"),
    (["--device", "cpu", "--arch", "nanogpt", "--loss-kernel", "fused"],
     "error: --loss-kernel=fused is not nanoGPT's step, which --arch nanogpt times as it is: "
     "leave out --loss-kernel there"),
    (["--device", "cpu", "--arch", "nanogpt", "--compile", "true", "--compile-mode",
      "max-autotune"], "error: --compile-mode=max-autotune is not nanoGPT's step"),
    (["--device", "cpu", "--arch", "nanogpt", "--copies", "2"],
     "error: --copies=2 is not nanoGPT's step"),
    (["--device", "cpu", "--arch", "nanogpt", "--precision", "fp8"],
     "error: --precision=fp8 is not nanoGPT's step, which --arch nanogpt times in bf16: leave "
     "out --precision there"),
    (["--device", "cpu", "--arch", "nanogpt", "--precision", "bf16", "--residual-dtype", "bf16"],
     "error: --residual-dtype=bf16 is not nanoGPT's step, whose residual stream is float32: "
     "leave out --residual-dtype there"),
    (["--device", "cpu", "--residual-dtype", "bf16"],
     "error: --residual-dtype=bf16 needs bf16 autocast, which precision fp32 (on cpu) does not "
     "run: set --precision=bf16 or --residual-dtype=float32"),
    (["--device", "cpu", "--arch", "nanogpt", "--compile", "true", "--compile-scope", "blocks"],
     "error: --compile-scope=blocks is not nanoGPT's step, which --arch nanogpt times as it is: "
     "leave out --compile-scope there"),
    (["--device", "cpu", "--compile-scope", "blocks"],
     "error: --compile-scope=blocks needs torch.compile, which is off on cpu: set "
     "--compile=true or leave --compile-scope=model"),
    (["--device", "cpu", "--arch", "gpt2"], "error: argument --arch: invalid choice: 'gpt2'"),
    (["--device", "cpu", "--out", "no-such-folder/bench.json"],
     "error: --out=no-such-folder/bench.json: the folder no-such-folder does not exist"),
    (["--device", "cpu", "--out", "."], "error: --out=. is a folder: name the JSON file"),
    (["--device", "cpu", "--shape", "2,64,2", "--shape", "2,64,2"],
     "error: --shape='2,64,2' is given twice: give each shape once"),
    (["--device", "cpu", "--peak-flops", "-1"], "error: --peak-flops=-1.0 must be a positive"),
])
def test_bad_arguments_are_one_line(tmp_path, args, line, capsys, monkeypatch):
    # In this process (a CLI process would spend 2 s importing torch per case); the test below
    # runs one case as the real command
    monkeypatch.chdir(REPO)
    try:
        code = bench.main(["--out", str(tmp_path / "b"), *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line) and captured.out == ""
    assert not (tmp_path / "b").exists()


def test_a_bad_argument_from_the_command_line_is_one_line(tmp_path):
    result = subprocess.run(
        [PYTHON, "-m", "sweep.bench", "--out", str(tmp_path / "b"), "--device", "cpu",
         "--shape", "2,65,2"], cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("error: --shape='2,65,2': n_head=2 does not divide d_model=65: "
                             "pick n_head from 1, 5, 13, 65 or change d_model\n")
    assert not (tmp_path / "b").exists()


def _failing_at(shape_name: str, error: BaseException):
    """sweep.bench's measure, raising `error` for the shape called shape_name."""
    def measure_or_fail(name, *args, **kwargs):
        if name == shape_name:
            raise error
        return measure(name, *args, **kwargs)
    return measure_or_fail


def _compile_failed_oom() -> RuntimeError:
    """What torch.compile raises for an OOM while max-autotune benchmarks: the OOM inside."""
    err = RuntimeError("backend='inductor' raised: OutOfMemoryError: CUDA out of memory")
    err.inner_exception = torch.OutOfMemoryError("CUDA out of memory")
    return err


@pytest.mark.parametrize(("error", "line"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB"),
     "error: tiny-0 (2,64,2) ran out of device memory at 4 sequences of 64 tokens: fuse the "
     "head and loss with --loss-chunk-tokens 4096 or use a device with more memory"),
    (_compile_failed_oom(),
     "error: tiny-0 (2,64,2) ran out of device memory at 4 sequences of 64 tokens: fuse the "
     "head and loss with --loss-chunk-tokens 4096 or use a device with more memory"),
    # what measure_copies raises when a copy fails
    (BenchFailed("tiny-0 as 2 copies at once: copy 1 failed (killed by signal 9): use fewer "
                 "--copies or a smaller shape"),
     "error: tiny-0 as 2 copies at once: copy 1 failed (killed by signal 9): use fewer "
     "--copies or a smaller shape"),
])
def test_a_failed_shape_is_one_line_and_the_others_are_still_measured(
    tmp_path, monkeypatch, capsys, error, line
):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(bench, "measure", _failing_at("tiny-0", error))
    assert bench.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line]
    assert "(1 of 2 shapes failed: tiny-0)" in captured.out
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["rows"]] == ["tiny-1"]
    assert [(f["name"], f["n_layer"], f["d_model"]) for f in report["failed"]] == [
        ("tiny-0", 2, 64)]
    assert report["pending"] == []


def test_a_bench_stopped_midway_keeps_the_shapes_it_measured(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(bench, "measure", _failing_at("tiny-1", KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--device", "cpu", "--tiny", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["rows"]] == ["tiny-0"]
    assert report["rows"][0]["tokens_per_s"] > 0
    assert (report["failed"], report["pending"]) == ([], ["tiny-1"])
    assert not list(tmp_path.glob("*.tmp-*"))


def test_ladder_shapes_are_the_model_presets_smallest_first():
    shapes = ladder_shapes()
    assert len(shapes) == 11
    assert shapes[0] == ("gpt_1m", 3, 192, 4)
    assert shapes[-1][0] == "gpt_287m"
    assert len(REFERENCE) == 6
    # --shapes all times the rung that is a reference shape once, under both names
    every = named_shapes("all", [])
    assert len(every) == 16 and len({shape for _, shape in every}) == 16
    assert ("nanogpt-4/gpt_85m", (12, 768, 12)) in every


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("d_model", "loss"), [
    (256, {}),
    (256, {"loss_chunk_tokens": 3000}),  # 3000: chunks of uneven size
    (256, {"loss_kernel": "fused"}),  # the Triton kernel, autotuned at vocab 32768
    # the lean step that gpu_check times (the residual stream and its gradient in bf16, the fused
    # loss kernel), compiled by blocks (train.compile_scope=blocks)
    (256, {"residual_dtype": torch.bfloat16, "loss_kernel": "fused", "regions": True}),
    (128, {"loss_attention": True}),  # cuDNN's kernels on a Hopper GPU, else flash
    (256, {"loss_attention": True}),  # the flash kernels
    (384, {"loss_attention": True}),  # wider than they take: the memory-efficient kernels
])
def test_compiled_bf16_step_matches_the_float32_eager_step(d_model, loss):
    """The CUDA training step (torch.compile, bf16 autocast) gives the float32 eager loss and
    gradients on the same batch, within bf16 tolerance, whichever way the head and loss run, with
    a bf16 residual stream too, and compiled whole or by blocks."""
    config = GPTConfig(n_layer=4, d_model=d_model, n_head=4, vocab_size=32768, max_seq_len=1024,
                       positions="rope", tie_embeddings=False, bias=False, mlp_ratio=4,
                       dropout=0.0, init_std=0.02)
    torch.manual_seed(0)
    loss = dict(loss)
    regions = loss.pop("regions", False)
    eager = GPT(config).cuda()
    fast = GPT(config, **loss).cuda()
    fast.load_state_dict(eager.state_dict())
    tokens = torch.randint(32768, (8, 1025), device="cuda")
    xs, ys = tokens[:, :-1], tokens[:, 1:]
    fp32 = resolve_hardware("cuda", "fp32", False, None)
    bf16 = resolve_hardware("cuda", "bf16", True, None)
    # resolve_hardware lets float32 matmuls use TF32; the reference is true float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        loss32 = accumulate_gradients(eager, xs, ys, 8, fp32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if regions:
        fast.compile_regions()
    loss16 = accumulate_gradients(fast if regions else torch.compile(fast), xs, ys, 8, bf16)
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-2)
    for (name, p32), p16 in zip(eager.named_parameters(), fast.parameters(), strict=True):
        cosine = torch.nn.functional.cosine_similarity(
            p32.grad.flatten().float(), p16.grad.flatten().float(), dim=0)
        assert cosine > 0.99, name
