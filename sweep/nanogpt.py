"""nanoGPT's training throughput on one H100, its architecture (for timing it on any card), and this
project's goals against it. Plain data: no torch, so results can be compared anywhere.
"""

# nanoGPT's GPT as this project's GPTConfig fields (its train.py defaults): learned positions, the
# output head tied to the token embedding, no biases, 4x MLP, no dropout; its step is the same
# (bf16 autocast, torch.compile's default mode, fused AdamW with decay on matrices, clip at 1.0)
# and its loss the plain one (whole bf16 logits, cross-entropy in float32). `sweep.bench --arch
# nanogpt` times it, so that a card without a reference row below gets one measured on itself.
ARCHITECTURE = {
    "positions": "learned", "tie_embeddings": True, "bias": False, "mlp_ratio": 4, "dropout": 0.0,
}

# The reference table's protocol (sweep.throughput.Protocol's defaults): goals hold for it only.
PROTOCOL = {"vocab_size": 32768, "seq_len": 1024, "batch_size": 64, "warmup_steps": 10,
            "timed_steps": 20}

# The card the table was taken on, as torch names it (the SXM H100; PCIe and NVL cards are slower)
REFERENCE_DEVICE = "NVIDIA H100 80GB HBM3"

# (n_layer, d_model, n_head) of the nanoGPT reference table, and its tokens/s on one H100 80GB
# (PyTorch 2.11, bf16 autocast, torch.compile, fused AdamW, flash SDPA), with sweep.bench's
# default protocol (vocab 32768, seq_len 1024, 64 sequences a step, 10 + 20 steps).
REFERENCE = {
    (4, 128, 2): 3.72e6,
    (6, 256, 4): 2.53e6,
    (8, 384, 6): 1.57e6,
    (12, 512, 8): 0.91e6,
    (12, 768, 12): 0.54e6,
    (24, 1024, 16): 0.205e6,
}

# nanoGPT's architecture timed on cards its table was not taken on: `sweep.bench --arch nanogpt`
# (ARCHITECTURE above in this project's GPT, the plain loss, bf16, torch.compile's default mode),
# default protocol, one process a shape. With the numbers here, a session on that card compares
# against them instead of spending device time on the baseline (an --arch nanogpt result passed
# to sweep.bench_compare still wins). The card's name as torch gives it -> (where the numbers come
# from, tokens/s by shape).
MEASURED = {
    "NVIDIA H200": (
        "nanoGPT's GPT timed on an NVIDIA H200 on 2026-12-04 (torch 2.11.0+cu130, "
        "benchmarks/2026-12-04-h200)",
        {
            (4, 128, 2): 5.319e6,
            (6, 256, 4): 3.186e6,
            (8, 384, 6): 1.797e6,
            (12, 512, 8): 1.008e6,
            (12, 768, 12): 0.596e6,
            (24, 1024, 16): 0.220e6,
        },
    ),
}


def reference_for(device_name: str) -> tuple[str, dict[tuple[int, int, int], float]]:
    """nanoGPT's tokens/s by shape on this card with the default protocol, and where they come
    from: its H100 table, or its architecture timed on the card (MEASURED); ("", {}) else."""
    if device_name == REFERENCE_DEVICE:
        return "nanoGPT's H100 table", REFERENCE
    return MEASURED.get(device_name, ("", {}))


# The goals, same card and protocol: tokens/s at least these multiples of nanoGPT's (1.3x where
# the output head and the loss dominate, 1.05x at the larger shapes), and MFU (the 6N + 12LdT
# convention) at least 50 % at the largest.
RATIO_GOALS = {
    (4, 128, 2): 1.3, (6, 256, 4): 1.3, (8, 384, 6): 1.3,
    (12, 512, 8): 1.05, (12, 768, 12): 1.05, (24, 1024, 16): 1.05,
}
MFU_GOALS = {(24, 1024, 16): 0.50}
