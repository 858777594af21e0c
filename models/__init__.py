"""The GPT model, its size ladder rule, and parameter/FLOP counting from a config.

Pure torch + arithmetic: this package reads no files and knows nothing of Hydra, data or sweeps.
"""

from models.config import GPTConfig
from models.counting import FlopsPerToken, ParamCounts, count_params, flops_per_token
from models.gpt import GPT
from models.shapes import shape_for_params

__all__ = [
    "GPT",
    "FlopsPerToken",
    "GPTConfig",
    "ParamCounts",
    "count_params",
    "flops_per_token",
    "shape_for_params",
]
