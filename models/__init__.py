"""The GPT model, its size ladder rule, and parameter/FLOP counting from a config.

Pure torch + arithmetic: this package reads no files and knows nothing of Hydra, data or sweeps.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.config import GPTConfig
from models.counting import FlopsPerToken, ParamCounts, count_params, flops_per_token
from models.shapes import shape_for_params

if TYPE_CHECKING:
    from models.gpt import GPT

__all__ = [
    "GPT",
    "FlopsPerToken",
    "GPTConfig",
    "ParamCounts",
    "count_params",
    "flops_per_token",
    "shape_for_params",
]


def __getattr__(name: str) -> Any:
    # Importing torch costs ~2 s; config checks and counting (sweep.plan) must not pay it.
    if name == "GPT":
        return importlib.import_module("models.gpt").GPT
    raise AttributeError(f"module 'models' has no attribute {name!r}")
