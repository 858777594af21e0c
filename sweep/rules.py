"""The arithmetic of the hparams rules (configs/hparams): batch rounding, the min_steps halving and
the warmup, free of Hydra and torch so the fitter can check a fitted law with the same code.
"""

from __future__ import annotations

import math


def nearest_power_of_two(value: float) -> float:
    """2^round(log2 value): nearest in log space, so a factor sqrt(2) at most from `value` (the
    batch law's fit is only good to about that: DeepSeek shows a broad near-optimal band)."""
    return 2.0 ** round(math.log2(value))


def halved_for_steps(
    sequences: int, min_sequences: int, seq_len: int, target_tokens: float, min_steps: int
) -> int:
    """Halve the batch (not below min_sequences) until the run takes at least min_steps
    optimizer steps: with too few, the warmup and decay have nothing to work with."""
    while sequences > min_sequences and target_tokens // (sequences * seq_len) < min_steps:
        sequences //= 2
    return sequences


def warmup_length(
    tokens_per_param: float,
    max_fraction: float,
    non_embedding_params: float,
    batch_tokens: float,
    total_steps: int,
) -> int:
    """About tokens_per_param x N tokens of warmup, at most max_fraction of the run, at least 1."""
    wanted = round(tokens_per_param * non_embedding_params / batch_tokens)
    cap = math.floor(max_fraction * total_steps)
    return max(1, min(wanted, cap))
