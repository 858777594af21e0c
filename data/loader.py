"""Batches from a TokenDataset: training windows (random, sequential or shuffled; resumable) and
fixed evaluation windows.

A window is seq_len + 1 consecutive tokens inside one shard; x is its first seq_len tokens and
y the last seq_len, so y[i] is the token that follows x[i].
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from data.dataset import TokenDataset
from data.errors import DataError


def _to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, seq_len+1] int64 windows -> contiguous (x, y) on device, one host-to-device copy."""
    buf = torch.from_numpy(windows)
    if device.type == "cuda":
        # Pinned memory lets the copy run asynchronously, overlapping the previous step's kernels.
        buf = buf.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        buf = buf.to(device)
    # Contiguous so that callers can .view(-1) the targets for cross-entropy.
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise DataError(f"{key}={value!r} must be a positive integer: fix {key}")


class TrainWindows:
    """Infinite, resumable stream of training windows; subclasses choose which windows a step gets.

    A subclass says how many windows a shard holds and where each starts, and which global window
    indices (counted through the split's shards in order) batch `step` takes. That choice is a
    pure function of (seed, step), so resuming only needs the step counter.
    """

    order: ClassVar[str]

    def __init__(
        self,
        dataset: TokenDataset,
        split: str,
        batch_size: int,
        seq_len: int,
        seed: int,
        device: str | torch.device = "cpu",
    ) -> None:
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise DataError(f"seed={seed!r} must be a non-negative integer: fix the seed")
        self.dataset = dataset
        self.split = split
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.step = 0
        counts = [(s, self._windows_in(len(s))) for s in dataset.tokens(split)]
        shards = [(s, n) for s, n in counts if n > 0]
        if not shards:
            longest = max((len(s) for s in dataset.tokens(split)), default=0)
            raise DataError(
                f"split '{split}' of dataset '{dataset.name}' has no shard of at least "
                f"seq_len+1={self.seq_len + 1} tokens (largest: {longest}): lower seq_len or "
                "prepare more tokens"
            )
        self._shards = [s for s, _ in shards]
        # A global window index maps to (shard, index in shard) via the cumulative counts.
        self._windows_cum = np.cumsum([n for _, n in shards])
        self.num_windows = int(self._windows_cum[-1])

    def _windows_in(self, shard_tokens: int) -> int:
        raise NotImplementedError

    def _offsets(self, index_in_shard: np.ndarray) -> np.ndarray:
        """Where window i of a shard starts in it."""
        raise NotImplementedError

    def _indices(self, step: int) -> np.ndarray:
        """Global indices of the windows of batch `step`, each in [0, num_windows)."""
        raise NotImplementedError

    def __iter__(self) -> TrainWindows:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._indices(self.step)
        shard_idx = np.searchsorted(self._windows_cum, index, side="right")
        offsets = self._offsets(index - np.concatenate(([0], self._windows_cum[:-1]))[shard_idx])
        window = self.seq_len + 1
        out = np.empty((self.batch_size, window), dtype=np.int64)
        for row, (s, o) in enumerate(zip(shard_idx.tolist(), offsets.tolist(), strict=True)):
            out[row] = self._shards[s][o : o + window]
        self.step += 1
        return _to_device(out, self.device)

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state; load_state_dict(state) continues the identical stream."""
        return {
            "order": self.order,
            "step": self.step,
            "seed": self.seed,
            "split": self.split,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "dataset": self.dataset.name,
            "config_hash": self.dataset.config_hash,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        # States saved before window orders existed have no "order"; they were all random.
        state = {"order": "random", **state}
        for key in ("order", "seed", "split", "batch_size", "seq_len", "config_hash"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"loader state was saved with {key}={state.get(key)!r} but this loader has "
                    f"{key}={mine[key]!r}: resume with the same data and batch settings"
                )
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise DataError(
                f"loader state has step={step!r}, not a non-negative integer: pass the dict "
                "that state_dict() returned"
            )
        self.step = step


class RandomWindows(TrainWindows):
    """Uniformly random training windows, deterministic in (seed, step).

    Batch `step` is drawn with np.random.default_rng([seed, step]), so any batch can be recomputed
    alone. Every window start inside a shard is equally likely; windows never cross a shard
    boundary.
    """

    order = "random"

    def _windows_in(self, shard_tokens: int) -> int:
        return max(shard_tokens - self.seq_len, 0)

    def _offsets(self, index_in_shard: np.ndarray) -> np.ndarray:
        return index_in_shard  # any token may start a window

    def _indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.num_windows, size=self.batch_size)


class SequentialWindows(TrainWindows):
    """The split front to back: windows advance by seq_len inside each shard, as eval_windows.

    Batch `step` holds windows [step*B, (step+1)*B) of that sequence modulo its length, so the
    stream wraps into a new epoch (same order) when it runs out. Consecutive windows share one
    token (the last target of one is the first input of the next); a shard's tail too short for
    another window is skipped. The seed plays no part in the order.
    """

    order = "sequential"

    def _windows_in(self, shard_tokens: int) -> int:
        return max(shard_tokens - 1, 0) // self.seq_len

    def _offsets(self, index_in_shard: np.ndarray) -> np.ndarray:
        return index_in_shard * self.seq_len

    def _indices(self, step: int) -> np.ndarray:
        first = step * self.batch_size
        return np.arange(first, first + self.batch_size, dtype=np.int64) % self.num_windows


def _mix(values: np.ndarray, key: np.uint64) -> np.ndarray:
    """A 64-bit hash of uint64 `values` under `key` (splitmix64's finalizer; wraps mod 2**64)."""
    x = (values ^ key) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(index: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """Image of `index` (each in [0, n)) under a pseudo-random permutation of range(n) that `keys`
    (uint64 round keys) choose: a Feistel network on 2h bits, cycle-walked back into range(n).

    O(1) memory at any n, where a stored permutation of every window of a 10B-token corpus at
    seq_len 128 would take 600 MB per rank; any entry is computed alone, so a resumed run needs
    only the step. The Feistel network is a bijection of [0, 4**h) for any round function, and
    walking a value again until it lands below n (4**h < 4n: under 4 rounds of walking on average)
    keeps it one of range(n).
    """
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    out = np.asarray(index, dtype=np.uint64).copy()
    todo = np.ones(out.shape, dtype=bool)
    with np.errstate(over="ignore"):  # the hash multiplies modulo 2**64 on purpose
        while todo.any():
            left, right = out[todo] >> shift, out[todo] & mask
            for key in keys:
                left, right = right, left ^ (_mix(right, key) & mask)
            out[todo] = (left << shift) | right
            todo &= out >= np.uint64(n)
    return out.astype(np.int64)


class ShuffledWindows(SequentialWindows):
    """The windows of `sequential` (advancing by seq_len, so each token once an epoch), in a new
    random order every epoch: one-epoch scaling-law runs read fresh tokens in a random order.

    The global window position p = step*B + row is window permute(p % n) of epoch p // n, with the
    epoch's permutation keyed by (seed, epoch): a pure function of (seed, step), so resuming needs
    only the step. Unlike `random`, a run of D tokens on a corpus of D tokens reads every token
    once; random windows would leave a third of it unread (1 - 1/e read) and read the rest ~1.6x.
    """

    order = "shuffled"
    rounds = 4  # Feistel rounds: 3 make a pseudo-random permutation (Luby-Rackoff), 4 a strong one

    def _indices(self, step: int) -> np.ndarray:
        position = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epoch, index = np.divmod(position, self.num_windows)
        out = np.empty_like(index)
        for e in np.unique(epoch).tolist():  # a batch spans two epochs at most, unless B > n
            keys = np.random.default_rng([self.seed, e]).integers(
                0, 2**63, size=self.rounds, dtype=np.uint64
            )
            mine = epoch == e
            out[mine] = permute(index[mine], self.num_windows, keys)
        return out


WINDOW_CLASSES: dict[str, type[TrainWindows]] = {
    cls.order: cls for cls in (RandomWindows, SequentialWindows, ShuffledWindows)
}  # by data.config.TRAIN_WINDOW_ORDERS, which names them for config checks


def train_windows(
    order: str,
    dataset: TokenDataset,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> TrainWindows:
    """The training-window stream of the given order (`train.windows`): random | sequential |
    shuffled."""
    if order not in WINDOW_CLASSES:
        raise DataError(
            f"window order {order!r} is unknown: use one of {', '.join(WINDOW_CLASSES)}"
        )
    return WINDOW_CLASSES[order](dataset, split, batch_size, seq_len, seed, device)


def eval_windows(
    dataset: TokenDataset,
    split: str,
    seq_len: int,
    max_tokens: int,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation batches: consecutive windows from the start of `split`, shard by shard.

    Windows advance by seq_len, so targets never overlap and every token after the first of a
    shard is a target once. At most max_tokens targets (whole windows only); every run on the same
    dataset and seq_len therefore scores exactly the same tokens.
    """
    _check_positive(seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size)
    if max_tokens < seq_len:
        raise DataError(
            f"max_tokens={max_tokens} is less than one window of seq_len={seq_len} target "
            "tokens: raise max_tokens (eval tokens) or lower seq_len"
        )
    n_wanted = max_tokens // seq_len
    pieces: list[np.ndarray] = []
    n_have = 0
    for shard in dataset.tokens(split):
        if n_have == n_wanted:
            break
        n = min((len(shard) - 1) // seq_len, n_wanted - n_have) if len(shard) > 0 else 0
        if n <= 0:
            continue
        # Strided view: window i starts at i*seq_len; copy only what is used.
        view = np.lib.stride_tricks.sliding_window_view(shard[: n * seq_len + 1], seq_len + 1)
        pieces.append(np.asarray(view[::seq_len][:n], dtype=np.int64))
        n_have += n
    if n_have == 0:
        total = dataset.num_tokens(split)
        raise DataError(
            f"split '{split}' of dataset '{dataset.name}' has {total} tokens, fewer than one "
            f"eval window of seq_len+1={seq_len + 1} in any shard: lower seq_len or prepare "
            "more tokens"
        )
    windows = np.concatenate(pieces)
    device = torch.device(device)
    return [
        _to_device(windows[i : i + batch_size], device) for i in range(0, len(windows), batch_size)
    ]
