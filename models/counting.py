"""Parameter and FLOP counts of a GPT from its config alone (no module is built, so 300M is free).

Conventions of `flops_exact` (forward + backward = 3 x forward matmul FLOPs, 2 per multiply-add):
- causal masking is NOT discounted: the full seq_len x seq_len attention-score and value matmuls
  are counted, as in Kaplan 2020 / Chinchilla and as the math SDPA backend computes them (flash
  kernels skip about half of that work, so their real cost is lower);
- the token-embedding lookup is a gather and counts 0 FLOPs (Chinchilla appendix F counts it as a
  matmul; we do not); the output head is a matmul and is counted, tied or not;
- elementwise work (LayerNorm, softmax, GELU, rotary, residual adds, biases, the loss) is left out:
  under 1% of the total at these shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import GPTConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by component; `total` equals the module's parameter numel (tied counted once)."""

    embedding: int  # token embedding (also the head weight when tied)
    position: int  # learned position table; 0 for rope
    head: int  # untied head weight plus head bias if any
    non_embedding: int  # blocks + final LayerNorm: Kaplan's N
    total: int


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token in the three conventions the fitter can choose from."""

    flops_6nd: int  # 6 x non_embedding (Kaplan 2020)
    flops_6nd_total: int  # 6 x (non_embedding + vocab_size * d_model): every matmul weight
    flops_exact: int  # forward + backward matmuls incl. attention and head
    by_component: dict[str, int]  # breaks flops_exact down; values sum to it


def non_embedding_params(n_layer: int, d_model: int, mlp_ratio: int, bias: bool) -> int:
    """Blocks plus final LayerNorm for a shape; shapes.py searches over this without configs."""
    d, hidden = d_model, mlp_ratio * d_model
    norm = 2 * d if bias else d
    attention = 4 * d * d + (4 * d if bias else 0)  # fused qkv (d -> 3d) and out-proj
    mlp = 2 * d * hidden + (hidden + d if bias else 0)
    return n_layer * (2 * norm + attention + mlp) + norm


def count_params(config: GPTConfig) -> ParamCounts:
    """Exact parameter counts of `GPT(config)` by component."""
    d, vocab = config.d_model, config.vocab_size
    embedding = vocab * d
    position = config.max_seq_len * d if config.positions == "learned" else 0
    head = (0 if config.tie_embeddings else vocab * d) + (vocab if config.bias else 0)
    non_embedding = non_embedding_params(config.n_layer, d, config.mlp_ratio, config.bias)
    return ParamCounts(
        embedding=embedding,
        position=position,
        head=head,
        non_embedding=non_embedding,
        total=embedding + position + head + non_embedding,
    )


def flops_per_token(config: GPTConfig, seq_len: int) -> FlopsPerToken:
    """FLOPs to train on one token at context length `seq_len` (see the module docstring)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive integer")
    if seq_len > config.max_seq_len:
        raise ValueError(
            f"seq_len={seq_len} exceeds max_seq_len={config.max_seq_len}: "
            "the model cannot run it; lower seq_len or raise max_seq_len"
        )
    d, n_layer = config.d_model, config.n_layer
    forward = {
        "attention_qkv": n_layer * 2 * d * 3 * d,
        "attention_scores": n_layer * 2 * seq_len * d,
        "attention_values": n_layer * 2 * seq_len * d,
        "attention_out": n_layer * 2 * d * d,
        "mlp": n_layer * 2 * 2 * config.mlp_ratio * d * d,
        "head": 2 * d * config.vocab_size,
    }
    # backward costs two matmuls per forward one (grad wrt input and wrt weight / other operand)
    by_component = {name: 3 * flops for name, flops in forward.items()}
    non_embedding = count_params(config).non_embedding
    return FlopsPerToken(
        flops_6nd=6 * non_embedding,
        flops_6nd_total=6 * (non_embedding + config.vocab_size * d),
        flops_exact=sum(by_component.values()),
        by_component=by_component,
    )
