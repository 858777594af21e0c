"""Data: corpus sources, token shards + manifest, and batch loaders for training and evaluation.

The torch loaders load on first use, so preparing data and reading manifests need no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from data.dataset import TokenDataset
from data.errors import DataError
from data.prepare import prepare

if TYPE_CHECKING:
    from data.loader import RandomWindows, eval_windows

__all__ = ["DataError", "RandomWindows", "TokenDataset", "eval_windows", "prepare"]


def __getattr__(name: str) -> Any:
    # Importing torch costs ~2 s; `python -m data.prepare` and manifest readers must not pay it.
    if name in ("RandomWindows", "eval_windows"):
        return getattr(importlib.import_module("data.loader"), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
