"""Device, precision and peak-throughput facts for a run: where it trains and how MFU is judged.

MFU needs the device's dense bf16 peak (FP8's under train.precision=fp8); an unknown device
reports MFU as null, never a guess.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from models.fp8 import E4M3, FP8_ALIGN, use_fp8_matmuls
from sweep.errors import ConfigError, finite_number, first_line

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s from the vendors' data sheets. Matched by
# substring of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.5e12),  # the PCIe cards of the NVL pairs run at lower clocks than SXM
    ("H100", 989.4e12),  # SXM5 / HBM3
    ("H200 NVL", 835.5e12),
    ("H200", 989.4e12),  # SXM; also matches GH200, whose Hopper is the same
    ("B200", 2250.0e12),
    ("A100", 312.0e12),
    ("L40S", 362.05e12),
    ("L40", 181.05e12),  # before "L4", which it contains
    ("L4", 121.0e12),
    ("A10G", 70.0e12),
    ("RTX 4090", 165.2e12),  # with fp32 accumulation, as PyTorch's bf16 matmuls use
    ("RTX 3090", 71.0e12),
    ("V100", 125.0e12),  # fp16: V100 has no bf16 tensor cores
)
# Dense FP8 tensor-core peak over dense bf16's on every card above that has FP8 (Ada, Hopper,
# Blackwell data sheets): the peak an FP8 run's MFU is judged against
FP8_OVER_BF16_PEAK = 2.0
# train.precision's values: bf16 autocast, float32, or bf16 autocast with FP8 Linear matmuls
PRECISIONS = ("bf16", "fp32", "fp8")
# train.residual_dtype's values: the residual stream's dtype under autocast (models.gpt.GPT)
RESIDUAL_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}

# torch.compile's modes (None: its default). reduce-overhead adds CUDA graphs, max-autotune
# benchmarks kernel choices at compile time (slow to compile, sometimes faster to run) and adds
# CUDA graphs too; max-autotune-no-cudagraphs is the same without them.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The modes whose CUDA graphs replay into the same output memory: a gradient that one
# micro-batch's backward leaves in it is overwritten by the next replay before it is summed
# (pytorch#169545), so under these, a CUDA run cannot accumulate gradients.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# train.compile_scope's values: torch.compile over the whole model, or over each block and the
# output apart (models.gpt.GPT.compile_regions: one graph for all the blocks, compiled once)
COMPILE_SCOPES = ("model", "blocks")


# Inductor's environment switches that only say where its caches live, not which kernels it makes
CACHE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE",
             "TORCHINDUCTOR_AUTOGRAD_CACHE")


def inductor_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The TORCHINDUCTOR_* switches set for this process, cache locations left out: they change
    the kernels torch.compile makes (e.g. TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1), so a bench
    result and a run's config.yaml record them."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items())
            if k.startswith("TORCHINDUCTOR_") and k not in CACHE_ENV}


@dataclass(frozen=True)
class Hardware:
    """The resolved device and numerics of a run."""

    device: torch.device
    device_name: str
    precision: str  # "bf16" (autocast), "fp32" or "fp8" (bf16 autocast, FP8 Linear matmuls)
    compile: bool
    peak_flops: float | None
    compile_mode: str | None = None  # torch.compile's mode when compile is on
    residual_dtype: str = "float32"  # the residual stream's under autocast: float32 or bf16
    compile_scope: str = "model"  # what torch.compile takes: the whole model, or its "blocks"

    @property
    def residual_torch_dtype(self) -> torch.dtype:
        """train.residual_dtype as the dtype GPT takes."""
        return RESIDUAL_DTYPES[self.residual_dtype]

    def compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """module under torch.compile (in compile_mode) when compile is on, else module itself.

        Dynamo's caches are reset first, so the model compiles as in a process of its own. Else
        every further shape in this process (a sweep's next run on the basic launcher, the
        bench's next shape) is a recompile of GPT.forward, and past dynamo's recompile limit (8
        per function) it runs eager with only a log warning: the bench's ladder from its 9th
        rung (gpt_135m) on would have been timed uncompiled.
        Under compile_scope "blocks", module (a GPT) compiles its regions in place and is
        returned itself.
        """
        if not self.compile:
            return module
        torch._dynamo.reset()
        # Static shapes: after an out-of-memory back-off, the smaller micro-batch gets a graph
        # of its own (one per halving), not a dynamic-batch graph with slower kernels for the
        # rest of the run, as dynamo's automatic dynamic shapes would make.
        if self.compile_scope == "blocks":
            module.compile_regions(mode=self.compile_mode, dynamic=False)
            return module
        return torch.compile(module, mode=self.compile_mode, dynamic=False)

    @property
    def cuda_graphs(self) -> bool:
        """Whether compiled steps replay CUDA graphs (train.compile_mode of CUDA_GRAPH_MODES)."""
        return self.device.type == "cuda" and self.compile and (
            self.compile_mode in CUDA_GRAPH_MODES
        )

    @property
    def autocast_dtype(self) -> torch.dtype:
        """The dtype autocast computes in: bf16, also under fp8 (all but the Linear matmuls)."""
        return torch.float32 if self.precision == "fp32" else torch.bfloat16

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """model on this device, its Linear layers' matmuls in FP8 under precision fp8; the
        parameters stay the same objects, so checkpoints and optimizer state are unchanged."""
        if self.precision == "fp8":
            use_fp8_matmuls(model)
        return model.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast (precision bf16 or fp8); a no-op context in float32."""
        if self.precision != "fp32":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for queued GPU work, so wall-clock timings mean something."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        """Hand cached, unused GPU memory back to the allocator (after an out-of-memory error)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def mfu(self, flops_per_s: float) -> float | None:
        """Model FLOPs utilisation against the device peak, or None when the peak is unknown."""
        if not self.peak_flops:
            return None
        return flops_per_s / self.peak_flops


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is the device running out of memory: torch.OutOfMemoryError, also when it
    comes wrapped (torch.compile's BackendCompilerFailed: max-autotune benchmarks kernels on
    real tensors while compiling) or as a CUDA library's failed allocation (cuBLAS)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, torch.OutOfMemoryError):
            return True
        text = str(current)
        if isinstance(current, RuntimeError) and (
            "CUBLAS_STATUS_ALLOC_FAILED" in text or "CUDA error: out of memory" in text
        ):
            return True
        current = getattr(current, "inner_exception", None) or current.__cause__
    return False


def peak_flops_for(device_name: str) -> float | None:
    """Dense bf16 peak of a known accelerator, else None (CPUs included)."""
    for needle, peak in PEAK_BF16_FLOPS:
        if needle in device_name:
            return peak
    return None


def fp8_supported(device: torch.device) -> str | None:
    """None when this device can run the FP8 matmuls, else why not (one line)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                    "has no FP8 matmuls, which need 8.9 or newer (Ada, Hopper, Blackwell)")
    try:
        a = torch.zeros(FP8_ALIGN, FP8_ALIGN, device=device).to(E4M3)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, AttributeError) as err:
        return (f"torch {torch.__version__} cannot run FP8 matmuls on {device.type}: "
                f"{first_line(err)}")
    return None


def use_tf32() -> None:
    """TF32 for any float32 matmul that autocast leaves behind (e.g. in the optimizer), in this
    process: the switches are per process. The legacy flags on purpose: torch 2.9-2.11's inductor
    reads them, and setting the new fp32_precision API instead makes torch.compile fail on a "mix
    of legacy and new APIs"."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def resolve_hardware(
    device: str,
    precision: str,
    compile_: str | bool,
    peak_flops: float | None,
    compile_mode: str | None = None,
    residual_dtype: str = "float32",
    compile_scope: str = "model",
) -> Hardware:
    """Validate `train.device/precision/compile/peak_flops/compile_mode/residual_dtype/
    compile_scope` against what this machine has."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"train.device={device!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device!r} but this machine has no CUDA GPU: use train.device=cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"train.device={device!r} is not supported: use auto, cpu, cuda or cuda:N"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device={device!r} but this machine has {torch.cuda.device_count()} CUDA "
            f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}: use one of those or cuda"
        )

    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision={precision!r} is unknown: use auto, "
                          f"{', '.join(PRECISIONS)}")
    if precision == "fp8" and (why := fp8_supported(dev)) is not None:
        raise ConfigError(f"train.precision=fp8 but {why}: use train.precision=bf16")
    if residual_dtype not in RESIDUAL_DTYPES:
        raise ConfigError(f"train.residual_dtype={residual_dtype!r} is unknown: use "
                          f"{' or '.join(RESIDUAL_DTYPES)}")
    if residual_dtype == "bf16" and precision == "fp32":
        raise ConfigError(
            f"train.residual_dtype=bf16 needs bf16 autocast, which precision fp32 (on {dev.type}) "
            "does not run: set train.precision=bf16 or train.residual_dtype=float32"
        )

    if compile_ == "auto":
        compile_ = dev.type == "cuda"
    if not isinstance(compile_, bool):
        raise ConfigError(f"train.compile={compile_!r} must be auto, true or false")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ConfigError(
            f"train.compile_mode={compile_mode!r} is unknown: use null or one of "
            f"{', '.join(COMPILE_MODES)}"
        )
    if compile_mode is not None and not compile_:
        raise ConfigError(
            f"train.compile_mode={compile_mode} needs torch.compile, which is off on "
            f"{dev.type}: set train.compile=true or leave train.compile_mode null"
        )
    if compile_scope not in COMPILE_SCOPES:
        raise ConfigError(f"train.compile_scope={compile_scope!r} is unknown: use "
                          f"{' or '.join(COMPILE_SCOPES)}")
    if compile_scope != "model" and not compile_:
        raise ConfigError(
            f"train.compile_scope={compile_scope} needs torch.compile, which is off on "
            f"{dev.type}: set train.compile=true or leave train.compile_scope=model"
        )
    if compile_scope != "model" and compile_mode in CUDA_GRAPH_MODES:
        # one CUDA graph per region, each replaying into its own memory, is untested here
        raise ConfigError(
            f"train.compile_scope={compile_scope} with train.compile_mode={compile_mode} (CUDA "
            "graphs) is untested: use train.compile_scope=model with it, or "
            "train.compile_mode=max-autotune-no-cudagraphs or null"
        )

    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        use_tf32()
    else:
        name = "cpu"
    if peak_flops is not None:
        rule = "must be a positive FLOP/s figure (e.g. 989.4e12) or null"
        if finite_number("train.peak_flops", peak_flops, rule) <= 0:
            raise ConfigError(f"train.peak_flops={peak_flops!r} {rule}")
    peak = float(peak_flops) if peak_flops else peak_flops_for(name)
    if precision == "fp8" and peak and not peak_flops:
        # judged against the FP8 peak it runs at, so FP8's speed cannot pass for utilisation
        peak *= FP8_OVER_BF16_PEAK
    return Hardware(
        device=dev, device_name=name, precision=precision, compile=compile_, peak_flops=peak,
        compile_mode=compile_mode, residual_dtype=residual_dtype, compile_scope=compile_scope,
    )


def resolve_loss_attention(
    setting: str | bool,
    hw: Hardware,
    d_model: int,
    bias: bool,
    loss_chunk_tokens: int | None,
    loss_kernel: str = "plain",
) -> bool:
    """Whether a run's head and loss run as attention (train.loss_attention): true and false as
    given (plan.py refuses true with a bias, loss chunks or the fused loss kernel), auto where it
    is the faster path on this device (models.attention_loss.pays) and the model allows it: no
    bias, no loss chunks nor loss_kernel=fused asked for."""
    if setting != "auto":
        return bool(setting)
    if bias or loss_chunk_tokens is not None or loss_kernel != "plain":
        return False
    from models.attention_loss import pays

    return pays(hw.device, hw.autocast_dtype, d_model)
