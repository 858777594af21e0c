"""The size ladder as one rule: target non-embedding params -> (n_layer, d_model, n_head).

The rung presets themselves live in `configs/model/gpt_*.yaml`; tests check they obey this rule.
"""

from __future__ import annotations

import dataclasses
import math

from models.config import GPTConfig, check_positive_int
from models.counting import non_embedding_params

MAX_LAYERS = 128


def _heads(d_model: int, head_dim: int, min_heads: int) -> int:
    # the smallest widths would get 1-3 heads at the usual head_dim; narrower heads keep
    # attention multi-headed there
    return max(d_model // head_dim, min_heads)


def shape_for_params(
    target_params: float,
    template: GPTConfig,
    *,
    aspect_ratio: int,
    head_dim: int,
    min_heads: int,
) -> GPTConfig:
    """Return `template` with the rule's shape whose non-embedding count is nearest in log space.

    Rule: d_model = aspect_ratio * n_layer, n_head = max(d_model // head_dim, min_heads), n_layer
    in 1..128; ties go to the shallower model.
    """
    check_positive_int("aspect_ratio", aspect_ratio)
    check_positive_int("head_dim", head_dim)
    check_positive_int("min_heads", min_heads)
    if (
        isinstance(target_params, bool)
        or not isinstance(target_params, int | float)
        or not math.isfinite(target_params)
        or target_params <= 0
    ):
        raise ValueError(
            f"target_params={target_params!r} must be a positive number of non-embedding "
            "parameters, e.g. 5e6"
        )
    counts = {
        n_layer: non_embedding_params(
            n_layer, aspect_ratio * n_layer, template.mlp_ratio, template.bias
        )
        for n_layer in range(1, MAX_LAYERS + 1)
    }
    if target_params > counts[MAX_LAYERS]:
        raise ValueError(
            f"target_params={target_params:.3g} exceeds the largest shape the rule allows "
            f"({counts[MAX_LAYERS]:.3g} at n_layer={MAX_LAYERS}, "
            f"d_model={aspect_ratio * MAX_LAYERS}): lower target_params"
        )
    log_target = math.log(target_params)
    n_layer = min(counts, key=lambda n: (abs(math.log(counts[n]) - log_target), n))
    d_model = aspect_ratio * n_layer
    n_head = _heads(d_model, head_dim, min_heads)
    try:
        return dataclasses.replace(template, n_layer=n_layer, d_model=d_model, n_head=n_head)
    except ValueError as err:
        raise ValueError(
            f"the rule's shape n_layer={n_layer}, d_model={d_model}, n_head={n_head} is invalid "
            f"({err}): pick aspect_ratio={aspect_ratio} a multiple of head_dim={head_dim} and "
            f"min_heads={min_heads} dividing it"
        ) from err
