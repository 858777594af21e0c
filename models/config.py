"""The architecture of one GPT model as a frozen, validated dataclass.

Defaults live in `configs/model/base.yaml`, not here, so every field must be given explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POSITION_KINDS = ("rope", "learned")
# How a training forward computes the cross-entropy (GPT's loss_kernel, train.loss_kernel): plain is
# the head, then F.cross_entropy and its own backward; fused is models/fused_loss.py
LOSS_KERNELS = ("plain", "fused")


def loss_fusions(
    chunk_tokens: int | None, attention: bool | str, kernel: str
) -> list[tuple[str, str, str]]:
    """Each way of fusing the head and loss that these train.* settings ask for, as (key, value,
    the value that turns it off) in the configs' spelling; two or more cannot run together.
    attention "auto" asks for nothing: it resolves to false beside the other two."""
    asked = (("loss_chunk_tokens", chunk_tokens is not None, f"{chunk_tokens}", "null"),
             ("loss_attention", attention is True, "true", "false"),
             ("loss_kernel", kernel == "fused", "fused", "plain"))
    return [(key, value, off) for key, on, value, off in asked if on]


@dataclass(frozen=True)
class LossChoice:
    """How a training forward computes the output head and its cross-entropy: plain, in chunks
    of chunk_tokens, as attention or with the fused kernel (train.loss_*, attention resolved)."""

    chunk_tokens: int | None = None
    attention: bool = False
    kernel: str = "plain"

    def __post_init__(self) -> None:
        if self.chunk_tokens is not None:
            check_positive_int("loss_chunk_tokens", self.chunk_tokens)
        _check_bool("loss_attention", self.attention)
        if self.kernel not in LOSS_KERNELS:
            raise ValueError(f"loss_kernel={self.kernel!r} is unknown: use one of "
                             f"{', '.join(LOSS_KERNELS)}")
        fusions = loss_fusions(self.chunk_tokens, self.attention, self.kernel)
        if len(fusions) > 1:
            asked = " and ".join(f"{key}={value}" for key, value, _ in fusions)
            raise ValueError(f"{asked} are different ways to fuse the head and loss: choose one")


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def check_positive_int(name: str, value: object) -> None:
    """ValueError "name=value must be a positive integer" unless value is an int >= 1."""
    # bool is an int subclass; `n_layer: true` in YAML is a typo, not a layer count
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer: set {name} >= 1")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be true or false")


@dataclass(frozen=True)
class GPTConfig:
    """Shape and knobs of a decoder-only transformer; see base.yaml for what each one means."""

    n_layer: int
    d_model: int
    n_head: int
    vocab_size: int
    max_seq_len: int
    positions: str
    tie_embeddings: bool
    bias: bool
    mlp_ratio: int
    dropout: float
    init_std: float

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "vocab_size", "max_seq_len", "mlp_ratio"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_head != 0:
            choices = ", ".join(str(k) for k in _divisors(self.d_model))
            raise ValueError(
                f"n_head={self.n_head} does not divide d_model={self.d_model}: "
                f"pick n_head from {choices} or change d_model"
            )
        if self.positions not in POSITION_KINDS:
            raise ValueError(
                f"positions={self.positions!r} is unknown: use one of {', '.join(POSITION_KINDS)}"
            )
        if self.positions == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"head_dim={self.head_dim} (d_model={self.d_model} / n_head={self.n_head}) is odd "
                "but rotary positions rotate pairs of channels: change n_head or use "
                "positions=learned"
            )
        _check_bool("tie_embeddings", self.tie_embeddings)
        _check_bool("bias", self.bias)
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout={self.dropout!r} must satisfy 0 <= dropout < 1")
        if (
            isinstance(self.init_std, bool)
            or not isinstance(self.init_std, int | float)
            or not math.isfinite(self.init_std)
            or self.init_std <= 0
        ):
            raise ValueError(f"init_std={self.init_std!r} must be a positive number, e.g. 0.02")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head
