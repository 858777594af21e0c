"""Tests for sweep.hardware: device resolution on the CPU and the MFU peak table."""

import pytest
import torch

from sweep.errors import ConfigError
from sweep.hardware import peak_flops_for, resolve_hardware


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
    assert peak_flops_for("Some Future GPU") is None


def test_user_peak_gives_mfu():
    hw = resolve_hardware("cpu", "fp32", False, 1e12)
    assert hw.mfu(2.5e11) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("tpu", "auto", "auto", None), "train.device='tpu'"),
        (("cpu", "fp16", "auto", None), "train.precision='fp16'"),
        (("cpu", "auto", "maybe", None), "train.compile='maybe'"),
        (("cpu", "auto", False, -3), "train.peak_flops=-3"),
        (("cpu", "auto", True, None, "fast"), "train.compile_mode='fast' is unknown: use null or "
                                              "one of default, reduce-overhead"),
        (("cpu", "auto", "auto", None, "max-autotune"),
         "train.compile_mode=max-autotune needs torch.compile, which is off on cpu: set "
         "train.compile=true"),
    ],
)
def test_bad_hardware_settings(args, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        resolve_hardware(*args)


def test_compile_mode_reaches_torch_compile(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: seen.setdefault(mode, module))
    module = torch.nn.Linear(2, 2)
    assert resolve_hardware("cpu", "fp32", False, None).compiled(module) is module
    assert resolve_hardware("cpu", "fp32", True, None, "max-autotune").compiled(module) is module
    assert resolve_hardware("cpu", "fp32", True, None).compiled(module) is module
    assert seen == {"max-autotune": module, None: module}


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
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: real_compile(
        module, mode=mode, backend=backend))
    # 2 instead of the default 8 keeps this fast: the third depth would be the first left eager.
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    hw = resolve_hardware("cpu", "fp32", True, None)
    x = torch.randint(64, (2, 16))
    for n_layer in (1, 2, 3, 4):  # each depth fails the last one's guards, like the ladder
        model = GPT(gpt_config(n_layer=n_layer, d_model=32, n_head=2, vocab_size=64))
        hw.compiled(model)(x, x).backward()
    assert graphs == [1, 2, 3, 4]  # without the reset: [1, 2]
