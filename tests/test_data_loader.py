"""Tests for data.loader: random, sequential and shuffled training windows (deterministic,
resumable) and the fixed evaluation windows. Shard i holds i*1000 + 0, 1, 2, ..., so a window
shows where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data import DataError, RandomWindows, TokenDataset, eval_windows
from data.config import TRAIN_WINDOW_ORDERS
from data.loader import (
    WINDOW_CLASSES,
    SequentialWindows,
    ShuffledWindows,
    permute,
    train_windows,
)
from data.shards import ShardWriter, make_manifest, write_manifest

SHARD_LENS = (100, 300, 5)  # the last is shorter than any window used here


def build(root: Path, lens: tuple[int, ...] = SHARD_LENS) -> TokenDataset:
    path = root / "ramp"
    path.mkdir(parents=True)
    splits = {}
    for split in ("train", "val"):
        writer = ShardWriter(path, split, vocab_size=4000, shard_tokens=max(lens))
        for i, n in enumerate(lens):
            writer.append(i * 1000 + np.arange(n))
            writer.end_shard()
        splits[split] = writer.close()
    write_manifest(path, make_manifest(name="ramp", vocab_size=4000, eot_id=0,
                                       tokenizer={"kind": "t", "hash": "h"}, splits=splits,
                                       source={"name": "ramp"}))
    return TokenDataset.open(path)


@pytest.fixture
def ds(tmp_path):
    return build(tmp_path)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_windows_are_shifted_contiguous_runs_inside_one_shard(ds):
    x, y = next(RandomWindows(ds, "train", batch_size=64, seq_len=10, seed=0))
    assert x.shape == y.shape == (64, 10) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, x + 1)  # the ramp: every token is its predecessor + 1, no shard jump
    assert (x[:, 0] // 1000 < 2).all()  # the 5-token shard cannot hold a window of 11


def test_starts_are_uniform_over_all_valid_windows(ds):
    loader = RandomWindows(ds, "train", batch_size=4000, seq_len=10, seed=3)
    first = torch.cat([next(loader)[0][:, 0] for _ in range(5)]).numpy()
    shard, offset = first // 1000, first % 1000
    # 90 starts in shard 0 and 290 in shard 1: each start equally likely.
    assert (shard == 0).mean() == pytest.approx(90 / 380, abs=0.015)
    assert offset[shard == 0].min() == 0 and offset[shard == 0].max() == 89
    assert offset[shard == 1].max() == 289
    hist = np.bincount(offset[shard == 1], minlength=290)
    expected = hist.sum() / 290
    assert np.abs(hist - expected).max() < 6 * np.sqrt(expected)


def test_same_seed_same_stream_other_seed_differs(ds):
    a = take(RandomWindows(ds, "train", 8, 10, seed=7), 3)
    b = take(RandomWindows(ds, "train", 8, 10, seed=7), 3)
    c = take(RandomWindows(ds, "train", 8, 10, seed=8), 3)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c, strict=True))


def test_state_dict_resumes_the_exact_stream(ds):
    loader = RandomWindows(ds, "train", 8, 10, seed=1)
    take(loader, 3)
    state = json.loads(json.dumps(loader.state_dict()))  # must survive a JSON round trip
    expected = take(loader, 2)
    resumed = RandomWindows(ds, "train", 8, 10, seed=1)
    resumed.load_state_dict(state)
    assert state["step"] == 3
    for (x1, y1), (x2, y2) in zip(expected, take(resumed, 2), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(DataError, match="saved with seq_len=10 but this loader has seq_len=12"):
        RandomWindows(ds, "train", 8, 12, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="step=-1"):
        resumed.load_state_dict({**state, "step": -1})


def test_too_short_split_and_bad_arguments(tmp_path, ds):
    with pytest.raises(DataError, match=r"no shard of at least seq_len\+1=301 tokens \(largest: "
                       r"300\): lower seq_len"):
        RandomWindows(ds, "train", 4, 300, seed=0)
    with pytest.raises(DataError, match="batch_size=0 must be a positive integer"):
        RandomWindows(ds, "train", 0, 10, seed=0)
    with pytest.raises(DataError, match="no split 'test'"):
        RandomWindows(ds, "test", 4, 10, seed=0)


def test_sequential_reads_the_split_once_an_epoch_in_order_then_wraps(ds):
    # Shard 0 (100 tokens) holds 9 windows of 11 advancing by 10, shard 1 (300) 29, shard 2 none.
    loader = train_windows("sequential", ds, "train", batch_size=4, seq_len=10, seed=0)
    assert isinstance(loader, SequentialWindows) and loader.num_windows == 38
    batches = take(loader, 19)  # 76 windows: two epochs exactly
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, x + 1)  # no window crosses a shard boundary (shard i starts at i*1000)
    assert torch.equal(x[:38], x[38:])  # the second epoch repeats the first in the same order
    starts = x[:38, 0].tolist()
    assert starts == [*range(0, 90, 10), *range(1000, 1290, 10)]
    # Every token of a usable shard is read once an epoch, in order, bar the tail that cannot fill
    # a window; a window after a shard's first repeats only its predecessor's last token.
    read = torch.cat([x[:38], y[:38, -1:]], dim=1).tolist()
    once = [t for row, s in zip(read, starts, strict=True) for t in (row[1:] if s % 1000 else row)]
    assert once == [*range(0, 91), *range(1000, 1291)]
    # Batch 9 takes windows 36, 37 (the split's last two) and 0, 1 of the next epoch.
    assert batches[9][0][:, 0].tolist() == [1270, 1280, 0, 10]


def test_sequential_is_a_function_of_the_step_and_resumes(ds):
    loader = train_windows("sequential", ds, "train", 8, 10, seed=3)
    take(loader, 5)
    state = json.loads(json.dumps(loader.state_dict()))
    assert (state["order"], state["step"]) == ("sequential", 5)
    expected = take(loader, 3)
    resumed = train_windows("sequential", ds, "train", 8, 10, seed=3)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, take(resumed, 3), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Batch 5 alone (a fresh loader set to step 5) is windows 40..47, i.e. 2..9 of epoch two.
    fresh = train_windows("sequential", ds, "train", 8, 10, seed=3)
    fresh.step = 5
    assert next(fresh)[0][:, 0].tolist() == [20, 30, 40, 50, 60, 70, 80, 1000]
    # A state from the other order is refused in one line, both ways round.
    with pytest.raises(DataError, match="saved with order='sequential' but this loader has "
                       "order='random'") as err:
        train_windows("random", ds, "train", 8, 10, seed=3).load_state_dict(state)
    assert "\n" not in str(err.value)
    random_state = RandomWindows(ds, "train", 8, 10, seed=3).state_dict()
    with pytest.raises(DataError, match="saved with order='random' but this loader has "
                       "order='sequential'"):
        resumed.load_state_dict(random_state)
    # A state saved before orders existed was random: it still resumes a random loader.
    legacy = {k: v for k, v in random_state.items() if k != "order"}
    RandomWindows(ds, "train", 8, 10, seed=3).load_state_dict(legacy)
    with pytest.raises(DataError, match="order='random'"):
        resumed.load_state_dict(legacy)


def test_sequential_refuses_too_short_split_and_unknown_order(ds):
    with pytest.raises(DataError, match=r"no shard of at least seq_len\+1=301 tokens"):
        train_windows("sequential", ds, "train", 4, 300, seed=0)
    # 300 tokens hold one window of seq_len 299 (and 299 tokens none, as eval_windows counts).
    assert train_windows("sequential", ds, "train", 4, 299, seed=0).num_windows == 1
    with pytest.raises(DataError, match="window order 'shuffle' is unknown: use one of random, "
                       "sequential, shuffled"):
        train_windows("shuffle", ds, "train", 4, 10, seed=0)


def test_permute_is_a_permutation_at_every_size_and_its_keys_choose_it():
    keys = np.random.default_rng(0).integers(0, 2**63, size=4, dtype=np.uint64)
    for n in (1, 2, 3, 5, 38, 1000, 4097):
        image = permute(np.arange(n), n, keys)
        assert sorted(image.tolist()) == list(range(n))
    other = np.random.default_rng(1).integers(0, 2**63, size=4, dtype=np.uint64)
    a, b = permute(np.arange(1000), 1000, keys), permute(np.arange(1000), 1000, other)
    assert (a != b).mean() > 0.9
    # Shuffled, not a shift or a stride: consecutive positions land a third of the range apart on
    # average (uniform pairs), and position and image are uncorrelated.
    n = 100_000
    image = permute(np.arange(n), n, keys)
    assert np.abs(np.diff(image)).mean() / n == pytest.approx(1 / 3, abs=0.01)
    assert abs(np.corrcoef(np.arange(n), image)[0, 1]) < 0.01
    # Any entry alone, at corpus sizes where a stored permutation would not fit in memory.
    big = permute(np.array([0, 123_456_789]), 10**11, keys)
    assert big.dtype == np.int64 and (big < 10**11).all()


def test_shuffled_reads_each_window_once_an_epoch_in_a_new_order(ds):
    loader = train_windows("shuffled", ds, "train", batch_size=4, seq_len=10, seed=5)
    assert isinstance(loader, ShuffledWindows) and loader.num_windows == 38
    x = torch.cat([b[0] for b in take(loader, 19)])  # 76 windows: two epochs exactly
    sequential = torch.cat([b[0] for b in take(train_windows("sequential", ds, "train", 38, 10, 0),
                                               1)])
    first, second = x[:38], x[38:]
    # Each epoch is the sequential tiling (every token once) in an order of its own.
    for epoch in (first, second):
        assert sorted(epoch[:, 0].tolist()) == sorted(sequential[:, 0].tolist())
        assert not torch.equal(epoch, sequential)
    assert not torch.equal(first, second)
    # A pure function of (seed, step): the same seed repeats it, another seed does not, a resumed
    # loader continues it, and batch 9 (windows 36, 37 and 0, 1 of epoch two) spans the epochs.
    again = torch.cat([b[0] for b in take(train_windows("shuffled", ds, "train", 4, 10, 5), 19)])
    other = torch.cat([b[0] for b in take(train_windows("shuffled", ds, "train", 4, 10, 6), 19)])
    assert torch.equal(x, again) and not torch.equal(x, other)
    resumed = train_windows("shuffled", ds, "train", 4, 10, seed=5)
    resumed.load_state_dict(json.loads(json.dumps({**loader.state_dict(), "step": 9})))
    assert torch.equal(next(resumed)[0], x[36:40])
    with pytest.raises(DataError, match="saved with order='shuffled' but this loader has "
                       "order='sequential'"):
        train_windows("sequential", ds, "train", 4, 10, 5).load_state_dict(loader.state_dict())
    # A batch wider than the split holds every window of an epoch and part of the next.
    wide = next(train_windows("shuffled", ds, "train", 100, 10, seed=5))[0][:, 0].tolist()
    assert sorted(wide[:38]) == sorted(wide[38:76]) == sorted(sequential[:, 0].tolist())


def test_sequential_matches_the_eval_windows_of_the_same_split(ds):
    # Same tiling rule as eval_windows: the first epoch is exactly the eval windows of the split.
    seq = torch.cat([b[0] for b in take(train_windows("sequential", ds, "val", 38, 10, 0), 1)])
    evals = torch.cat([b[0] for b in eval_windows(ds, "val", 10, 10**6, 64)])
    assert torch.equal(seq, evals)


def test_eval_windows_are_fixed_sequential_and_non_overlapping(ds):
    batches = eval_windows(ds, "val", seq_len=10, max_tokens=250, batch_size=8)
    assert [len(x) for x, _ in batches] == [8, 8, 8, 1]  # 250 // 10 = 25 windows
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, x + 1)
    # Shard 0 (100 tokens) gives 9 windows: targets 1..90; then shard 1 from its start.
    assert x[:, 0].tolist()[:10] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 1000]
    assert torch.equal(y[:9].flatten(), torch.arange(1, 91))
    assert y.numel() == 250 and len(torch.unique(y)) == 250
    again = eval_windows(ds, "val", seq_len=10, max_tokens=250, batch_size=5)
    assert torch.equal(torch.cat([b[0] for b in again]), x)  # batching does not change tokens


def test_eval_windows_stop_at_the_split_end_and_refuse_too_little(ds, tmp_path):
    batches = eval_windows(ds, "val", seq_len=50, max_tokens=10**6, batch_size=100)
    assert len(batches) == 1 and batches[0][0].shape == (1 + 5, 50)  # 99//50 + 299//50
    with pytest.raises(DataError, match="max_tokens=5 is less than one window of seq_len=10"):
        eval_windows(ds, "val", seq_len=10, max_tokens=5, batch_size=1)
    tiny = build(tmp_path / "tiny", lens=(5, 4))
    with pytest.raises(DataError, match=r"has 9 tokens, fewer than one eval window of seq_len\+1="
                       r"11 in any shard"):
        eval_windows(tiny, "val", seq_len=10, max_tokens=100, batch_size=1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_match_cpu(ds):
    for order in ("random", "sequential", "shuffled"):
        cpu = take(train_windows(order, ds, "train", 8, 10, seed=2), 2)
        gpu = take(train_windows(order, ds, "train", 8, 10, seed=2, device="cuda"), 2)
        for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
            assert xg.is_cuda and yg.is_cuda and xg.is_contiguous()
            assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())
    (xe, ye), *_ = eval_windows(ds, "val", 10, 100, 4, device="cuda")
    assert xe.is_cuda and torch.equal(ye.cpu(), xe.cpu() + 1)


def test_the_config_checks_name_every_window_order_the_loader_has():
    """sweep.plan checks train.windows against data.config's names, which need no torch."""
    assert tuple(WINDOW_CLASSES) == TRAIN_WINDOW_ORDERS == ("random", "sequential", "shuffled")
    assert WINDOW_CLASSES["sequential"] is SequentialWindows
    assert WINDOW_CLASSES["shuffled"] is ShuffledWindows
