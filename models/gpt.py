"""A GPT-2-style decoder: pre-LayerNorm blocks, causal SDPA attention, GELU MLP, GPT-2 init.

Positions are rotary (applied to q and k) or a learned table; the output head is untied unless
`tie_embeddings` shares the token-embedding weight. `models/counting.py` mirrors this layout.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.attention_loss import attention_cross_entropy, token_attention_cross_entropy
from models.config import GPTConfig, LossChoice
from models.fused_loss import fused_cross_entropy
from models.loss import linear_cross_entropy, token_cross_entropy

# The usual RoPE base (Su et al. 2021); contexts of a few thousand tokens give no reason to tune it.
ROPE_BASE = 10_000.0

Rope = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) tables, None for learned positions


def rope_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of shape [seq_len, head_dim] for rotating channel pairs (i, i + half):
    cos is [cos, cos] and sin is [-sin, sin] over the pairs' frequencies, as apply_rope wants."""
    half = head_dim // 2
    inv_freq = ROPE_BASE ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, ..., head_dim] by position (dim 1); cos/sin are rope_tables' [T, head_dim].

    Pair (x1, x2) becomes (x1 cos - x2 sin, x2 cos + x1 sin): x * cos + roll(x) * sin, where the
    roll by half a head swaps the halves. One elementwise expression, with no concatenation: its
    backward (the same roll) then fuses into the kernel that assembles the qkv projection's
    gradient. The split-and-concatenate form cost a second pass over that gradient (BENCHMARKS.md).
    """
    # [T, D] -> [T, 1, ..., D]: one row per position, shared by every head (and q and k)
    shape = (cos.shape[0],) + (1,) * (x.dim() - 3) + (cos.shape[1],)
    cos, sin = cos.to(x.dtype).view(shape), sin.to(x.dtype).view(shape)
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # one fused projection: a single matmul of d -> 3d, counted as such in counting.py
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        if rope is not None:
            # q and k rotated together, in the projection's own [B, T, ., H, D] layout: the
            # kernel reads and writes in one order. Rotating after the transpose to [B, H, T, D]
            # made inductor fuse it with a relayout that ran at a tenth of the H200's memory
            # bandwidth, 13 % of a step at 12x768 (BENCHMARKS.md)
            qk = apply_rope(qkv[:, :, :2], *rope)
            q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]
        else:
            q, k, v = qkv.unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D] views for SDPA
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.out_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.up = nn.Linear(config.d_model, hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.d_model, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab_size], or the float32 cross-entropy loss.

    loss_chunk_tokens: when set, a training forward (mean loss, gradients on) fuses the head and
    the cross-entropy over chunks of that many tokens (models/loss.py), and a forward without
    gradients (evaluation) makes its losses a chunk at a time, instead of the whole logits
    tensor; the loss is the same up to rounding, so it is a speed and memory knob only.
    loss_attention: instead, the head and the cross-entropy run as two calls of the fused
    attention kernels (models/attention_loss.py), which never write the logits out; a head
    without bias only.
    loss_kernel "fused": a training forward computes the logits whole, then each token's loss and
    the logits' gradient in one kernel (models/fused_loss.py), which the backward pass only feeds
    to the head's matmuls; "plain": F.cross_entropy and its own backward.
    residual_dtype: the residual stream's dtype under autocast. float32 (autocast's own, and
    nanoGPT's): the embedding's float32 output, to which every block adds its bf16 branches in
    float32. bfloat16: the embedding's output cast to it, so the stream, the sums the blocks
    add and their gradients stay in bf16 (nanochat's and Megatron-LM's default): less memory
    traffic a layer, the same LayerNorms (autocast computes them in float32). Without autocast
    the stream keeps the weights' dtype whatever this says.
    """

    def __init__(
        self,
        config: GPTConfig,
        loss_chunk_tokens: int | None = None,
        loss_attention: bool = False,
        loss_kernel: str = "plain",
        residual_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.loss = LossChoice(loss_chunk_tokens, loss_attention, loss_kernel)
        if residual_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"residual_dtype={residual_dtype} is unsupported: use torch.float32 "
                             "or torch.bfloat16")
        self.residual_dtype = residual_dtype
        if loss_attention and config.bias:
            raise ValueError("loss_attention needs an output head without bias: set bias=False")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = (
            nn.Embedding(config.max_seq_len, config.d_model)
            if config.positions == "learned"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if config.positions == "rope":
            cos, sin = rope_tables(config.max_seq_len, config.head_dim)
            # non-persistent: derived from the config, so not parameters and not in checkpoints
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # GPT-2: each block adds two residual branches, so scale them to keep the stream's
        # variance independent of depth
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=resid_std)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(
                f"idx has shape {tuple(idx.shape)}: pass token ids as [batch, seq_len]"
            )
        seq_len = idx.shape[1]
        if seq_len > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_seq_len={self.config.max_seq_len}: "
                "shorten the batch or raise max_seq_len"
            )
        x = self.wte(idx)
        rope: Rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(seq_len, device=idx.device))
        else:
            rope = (self.rope_cos[:seq_len], self.rope_sin[:seq_len])
        if self.residual_dtype == torch.bfloat16 and torch.is_autocast_enabled(x.device.type):
            # autocast leaves the embedding's output in float32; a bf16 stream is cast here once
            x = x.to(torch.bfloat16)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope)
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction={reduction!r} is unknown: use 'mean' or 'none'")
        return self._output(x, targets, reduction)

    def compile_regions(self, **options: Any) -> None:
        """torch.compile (with `options`) each block and the output (final LayerNorm, head and
        loss) instead of the whole model: the blocks are alike, so one graph serves them all and
        a deep model compiles in about the time of one block and the output (on the CPU, 12
        layers: 7.0 s against 20.6 s whole). The embedding runs eager, as do the few ops between
        the regions."""
        for block in self.blocks:
            block.compile(**options)
        # an instance attribute in front of the method: the model's state and state_dict as before
        self._output = torch.compile(self._output, **options)

    def _output(
        self, x: torch.Tensor, targets: torch.Tensor | None, reduction: str
    ) -> torch.Tensor:
        """The last block's output -> logits, or the loss (forward's `targets` and `reduction`)."""
        x = self.ln_f(x)
        if targets is not None and self.loss.attention:
            if not torch.is_grad_enabled():
                per_token = token_attention_cross_entropy(x, self.lm_head.weight, targets)
                return per_token.mean() if reduction == "mean" else per_token
            if reduction == "mean":
                return attention_cross_entropy(x, self.lm_head.weight, targets)
        if targets is not None and self.loss.chunk_tokens is not None:
            head = (self.lm_head.weight, self.lm_head.bias)
            if not torch.is_grad_enabled():
                # evaluation: per-token losses a chunk at a time, never the whole logits
                per_token = token_cross_entropy(x, *head, targets, self.loss.chunk_tokens)
                return per_token.mean() if reduction == "mean" else per_token
            if reduction == "mean":
                return linear_cross_entropy(x, *head, targets, self.loss.chunk_tokens)
        if (targets is not None and self.loss.kernel == "fused" and reduction == "mean"
                and torch.is_grad_enabled()):
            return fused_cross_entropy(x, self.lm_head.weight, self.lm_head.bias, targets)
        logits = self.lm_head(x)
        if targets is None:
            return logits
        # float32 so bf16/fp16 logits do not lose precision in the log-sum-exp
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction
        )
        return loss if reduction == "mean" else loss.view(targets.shape)
