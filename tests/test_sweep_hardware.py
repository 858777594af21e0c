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
    ],
)
def test_bad_hardware_settings(args, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        resolve_hardware(*args)
