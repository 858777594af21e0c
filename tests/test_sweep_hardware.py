"""Tests for sweep.hardware: device resolution on the CPU and the MFU peak table."""

import re

import pytest
import torch

import models.attention_loss
from sweep.errors import ConfigError
from sweep.hardware import (
    Hardware,
    inductor_env,
    out_of_memory,
    peak_flops_for,
    resolve_hardware,
    resolve_loss_attention,
)
from tests.helpers import needs_cpu_fp8


def test_cpu_auto_is_float32_uncompiled_and_has_no_mfu():
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    hw = resolve_hardware("auto", "auto", "auto", None)
    assert (hw.device.type, hw.precision, hw.compile, hw.peak_flops) == ("cpu", "fp32", False, None)
    assert hw.mfu(1e12) is None


def test_peak_table_matches_most_specific_name_first():
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    # the name the H200 machines lent here report, and the slower NVL cards that contain it
    assert peak_flops_for("NVIDIA H200") == peak_flops_for("NVIDIA GH200 480GB") == 989.4e12
    assert peak_flops_for("NVIDIA H200 NVL") == peak_flops_for("NVIDIA H100 NVL") == 835.5e12
    assert peak_flops_for("NVIDIA B200") == 2250e12
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    # "L40" contains "L4": each card its own peak
    assert (peak_flops_for("NVIDIA L40S"), peak_flops_for("NVIDIA L40"),
            peak_flops_for("NVIDIA L4")) == (362.05e12, 181.05e12, 121e12)
    assert peak_flops_for("Some Future GPU") is None


def test_user_peak_gives_mfu():
    hw = resolve_hardware("cpu", "fp32", False, 1e12)
    assert hw.mfu(2.5e11) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("tpu", "auto", "auto", None), "train.device='tpu'"),
        (("cpu", "fp16", "auto", None), "train.precision='fp16' is unknown: use auto, bf16, "
                                        "fp32, fp8"),
        (("cpu", "auto", "maybe", None), "train.compile='maybe'"),
        (("cpu", "auto", False, -3), "train.peak_flops=-3"),
        (("cpu", "auto", True, None, "fast"), "train.compile_mode='fast' is unknown: use null or "
                                              "one of default, reduce-overhead"),
        (("cpu", "auto", "auto", None, "max-autotune"),
         "train.compile_mode=max-autotune needs torch.compile, which is off on cpu: set "
         "train.compile=true"),
        (("cpu", "auto", True, None, None, "float32", "layers"),
         "train.compile_scope='layers' is unknown: use model or blocks"),
        (("cpu", "auto", False, None, None, "float32", "blocks"),
         "train.compile_scope=blocks needs torch.compile, which is off on cpu: set "
         "train.compile=true or leave train.compile_scope=model"),
        (("cpu", "auto", True, None, "reduce-overhead", "float32", "blocks"),
         "train.compile_scope=blocks with train.compile_mode=reduce-overhead (CUDA graphs) is "
         "untested: use train.compile_scope=model with it"),
        (("cpu", "bf16", False, None, None, "fp16"),
         "train.residual_dtype='fp16' is unknown: use float32 or bf16"),
        # auto on the CPU is float32, which has no autocast to keep a bf16 stream in
        (("cpu", "auto", False, None, None, "bf16"),
         "train.residual_dtype=bf16 needs bf16 autocast, which precision fp32 (on cpu) does not "
         "run: set train.precision=bf16 or train.residual_dtype=float32"),
    ],
)
def test_bad_hardware_settings(args, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        resolve_hardware(*args)


@needs_cpu_fp8()
def test_fp8_is_bf16_autocast_with_fp8_linears_judged_against_fp8s_peak(monkeypatch):
    import models.fp8

    hw = resolve_hardware("cpu", "fp8", False, None)
    assert hw.precision == "fp8" and hw.autocast_dtype == torch.bfloat16
    with hw.autocast():
        assert torch.is_autocast_enabled("cpu")
    model = hw.place(torch.nn.Sequential(torch.nn.Linear(16, 16)))
    assert isinstance(model[0], models.fp8.Float8Linear)
    assert isinstance(resolve_hardware("cpu", "bf16", False, None).place(
        torch.nn.Sequential(torch.nn.Linear(16, 16)))[0], torch.nn.Linear)
    # A card's table peak is bf16's; fp8 runs at twice it, and its MFU is judged against that.
    # A peak the user gives is taken as given.
    monkeypatch.setattr("sweep.hardware.peak_flops_for", lambda name: 989.4e12)
    assert resolve_hardware("cpu", "fp8", False, None).peak_flops == 2 * 989.4e12
    assert resolve_hardware("cpu", "bf16", False, None).peak_flops == 989.4e12
    assert resolve_hardware("cpu", "fp8", False, 1e15).peak_flops == 1e15


def test_fp8_where_torch_cannot_run_it_is_one_line(monkeypatch):
    def no_fp8(*args, **kwargs):
        raise RuntimeError("_scaled_mm is not implemented for this device\nmore detail")

    monkeypatch.setattr(torch, "_scaled_mm", no_fp8)
    with pytest.raises(ConfigError) as info:
        resolve_hardware("cpu", "fp8", False, None)
    assert str(info.value) == (
        f"train.precision=fp8 but torch {torch.__version__} cannot run FP8 matmuls on cpu: "
        "_scaled_mm is not implemented for this device: use train.precision=bf16")


def test_compile_mode_reaches_torch_compile(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile",
                        lambda module, mode=None, dynamic=None: seen.setdefault((mode, dynamic),
                                                                                module))
    module = torch.nn.Linear(2, 2)
    assert resolve_hardware("cpu", "fp32", False, None).compiled(module) is module
    assert resolve_hardware("cpu", "fp32", True, None, "max-autotune").compiled(module) is module
    assert resolve_hardware("cpu", "fp32", True, None).compiled(module) is module
    # Static shapes (dynamic=False): a back-off's smaller micro-batch gets a graph of its own
    assert seen == {("max-autotune", False): module, (None, False): module}


def test_every_model_compiles_past_dynamos_recompile_limit(monkeypatch):
    """A sweep's next run (or the bench's next shape) in the same process is compiled too: past
    dynamo's recompile limit a function runs eager, which the reset in compiled() prevents."""
    from models import GPT
    from tests.helpers import gpt_config

    graphs = []  # the models whose forward reached the compiler

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(n_layer)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode=None, dynamic=None: real_compile(
        module, mode=mode, dynamic=dynamic, backend=backend))
    hw = resolve_hardware("cpu", "fp32", True, None)
    x = torch.randint(64, (2, 16))
    # 2 instead of the default 8 keeps this fast: the third depth would be the first left eager.
    # config.patch, not monkeypatch, whose undo deletes the setting: torch 2.13 then hides it,
    # and the next recompile anywhere in the process fails on its lookup.
    with torch._dynamo.config.patch(recompile_limit=2):
        for n_layer in (1, 2, 3, 4):  # each depth fails the last one's guards, like the ladder
            model = GPT(gpt_config(n_layer=n_layer, d_model=32, n_head=2, vocab_size=64))
            hw.compiled(model)(x, x).backward()
    assert graphs == [1, 2, 3, 4]  # without the reset: [1, 2]


def test_a_gpu_index_beyond_the_machine_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^train.device='cuda:2' but this machine has 2 CUDA "
                       r"GPU\(s\), cuda:0 to cuda:1: use one of those or cuda$"):
        resolve_hardware("cuda:2", "auto", "auto", None)


def test_out_of_memory_is_recognised_when_wrapped_and_nothing_else_is():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert out_of_memory(oom)
    # torch.compile re-raises an OOM while autotuning as BackendCompilerFailed, which keeps it
    # as inner_exception and as the cause
    wrapped = RuntimeError("backend='inductor' raised: OutOfMemoryError")
    wrapped.inner_exception = oom
    assert out_of_memory(wrapped)
    try:
        raise RuntimeError("compile failed") from oom
    except RuntimeError as err:
        assert out_of_memory(err)
    assert out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                      "`cublasCreate(handle)`"))
    assert not out_of_memory(RuntimeError("shape mismatch"))
    assert not out_of_memory(ValueError("CUDA error: out of memory"))  # not torch's kind
    loop = RuntimeError("a cycle")
    loop.__cause__ = RuntimeError("back")
    loop.__cause__.__cause__ = loop
    assert not out_of_memory(loop)


@pytest.mark.parametrize(("device", "compile_", "mode", "graphs"), [
    ("cuda", True, "reduce-overhead", True),
    ("cuda", True, "max-autotune", True),  # it turns CUDA graphs on too
    ("cuda", True, "max-autotune-no-cudagraphs", False),
    ("cuda", True, None, False),
    ("cpu", True, "reduce-overhead", False),  # inductor makes no CUDA graphs on the CPU
])
def test_which_compile_modes_replay_cuda_graphs(device, compile_, mode, graphs):
    hw = Hardware(device=torch.device(device), device_name="x", precision="bf16",
                  compile=compile_, peak_flops=None, compile_mode=mode)
    assert hw.cuda_graphs is graphs


def test_loss_attention_auto_asks_where_it_pays_for_a_model_that_allows_it(monkeypatch):
    cpu = resolve_hardware("cpu", "fp32", False, None)
    assert resolve_loss_attention("auto", cpu, 128, False, None) is False  # not on a CPU
    assert resolve_loss_attention(True, cpu, 384, False, None) is True  # as given
    assert resolve_loss_attention(False, cpu, 128, False, None) is False
    asked = []
    monkeypatch.setattr(models.attention_loss, "pays",
                        lambda device, dtype, d_model: asked.append((dtype, d_model)) or True)
    assert resolve_loss_attention("auto", cpu, 128, False, None) is True
    bf16 = Hardware(torch.device("cpu"), "cpu", "bf16", False, None)
    assert resolve_loss_attention("auto", bf16, 64, False, None) is True
    assert asked == [(torch.float32, 128), (torch.bfloat16, 64)]  # the step's compute dtype
    # A bias, loss chunks or the fused loss kernel rule it out: auto keeps that loss, no error
    assert resolve_loss_attention("auto", cpu, 128, True, None) is False
    assert resolve_loss_attention("auto", cpu, 128, False, 512) is False
    assert resolve_loss_attention("auto", cpu, 128, False, None, "fused") is False
    assert len(asked) == 2


def test_inductor_switches_from_the_environment_are_recorded_without_cache_paths():
    environ = {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1", "TORCHINDUCTOR_CACHE_DIR": "/c",
               "TRITON_CACHE_DIR": "/t", "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "PATH": "/bin",
               "TORCHINDUCTOR_MAX_AUTOTUNE": "1"}
    assert inductor_env(environ) == {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1",
                                     "TORCHINDUCTOR_MAX_AUTOTUNE": "1"}
