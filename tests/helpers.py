"""Plain helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models import GPTConfig

# A small valid model; tests override only what they are about. The YAML holds the real defaults.
SMALL_GPT = dict(
    n_layer=2, d_model=64, n_head=4, vocab_size=101, max_seq_len=32, positions="rope",
    tie_embeddings=False, bias=False, mlp_ratio=4, dropout=0.0, init_std=0.02,
)


def gpt_config(**overrides: Any) -> GPTConfig:
    """A GPTConfig built from SMALL_GPT with `overrides` applied."""
    return GPTConfig(**{**SMALL_GPT, **overrides})


def linked_root(parent: Path, synthetic_root: Path, name: str) -> Path:
    """A fresh paths.root_dir `parent/name` whose data_cache is the session's prepared data."""
    root = parent / name
    root.mkdir()
    (root / "data_cache").symlink_to(synthetic_root / "data_cache")
    return root


def needs_cpu_fp8() -> pytest.MarkDecorator:
    """skipif this torch cannot run FP8 matmuls on the CPU (train.precision=fp8's tests there).
    A function, so this module imports torch only for the tests that use it."""
    import torch

    from sweep.hardware import fp8_supported

    return pytest.mark.skipif(fp8_supported(torch.device("cpu")) is not None,
                              reason="this torch has no FP8 matmuls on the CPU")
