"""Tests for data.synthetic_floor: the Bayes filter's losses are the exact conditional entropies
(checked against every block of a tiny corpus), and the window floor lies above the entropy rate
and falls to it as windows grow."""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from data import synthetic_floor
from data.synthetic import ZipfFacts
from data.synthetic_floor import (
    CACHE,
    BayesFilter,
    dataset_window_floor,
    full_past_losses,
    prefix_losses,
    window_floor,
)

# Two content tokens, three facts of two tokens: every token starts a fact and sits in all three,
# so the filter has fact, offset and slot ambiguity to resolve. Documents are 5 tokens.
TINY = ZipfFacts(vocab_size=3, n_facts=3, fact_len=2, facts_per_doc=2, zipf_exponent=1.0, seed=0)
DEFAULT = ZipfFacts(vocab_size=512, n_facts=512, fact_len=8, facts_per_doc=16, zipf_exponent=1.0,
                    seed=0)


def every_block(process: ZipfFacts, seq_len: int):
    """(probability, start, draws, block of seq_len + 1 tokens) over every start position and
    every fact draw of the documents a block can touch."""
    length, slots = process.doc_tokens, process.facts_per_doc
    docs = (seq_len + length) // length + 1
    for start in range(length):
        for combo in itertools.product(range(process.n_facts), repeat=docs * slots):
            draws = np.array(combo).reshape(docs, slots)
            prob = float(np.prod(process.probs[draws])) / length
            block = process.render(draws).reshape(-1)[start:start + seq_len + 1].tolist()
            yield prob, start, draws, block


def entropy(masses: dict) -> float:
    return -sum(p * math.log(p) for p in masses.values() if p > 0)


@pytest.mark.parametrize("seq_len", [1, 4, 7])
def test_the_filters_losses_are_the_exact_conditional_entropy_of_the_block(seq_len: int) -> None:
    bayes, prefix = BayesFilter(TINY), prefix_losses(TINY)
    blocks: dict[tuple, float] = defaultdict(float)
    firsts: dict[int, float] = defaultdict(float)
    expected_loss = expected_full_past = 0.0
    for prob, start, draws, block in every_block(TINY, seq_len):
        blocks[tuple(block)] += prob
        firsts[block[0]] += prob
        losses = bayes.losses(block)
        assert len(losses) == seq_len
        expected_loss += prob * sum(losses)
        full_past = full_past_losses(TINY, prefix, draws, start, seq_len)
        expected_full_past += prob * sum(full_past)
        # Stopping once the state is known leaves the excess over the full-past losses as is
        stopped = bayes.losses(block, stop_when_known=True)
        assert sum(stopped) - sum(full_past[:len(stopped)]) == pytest.approx(
            sum(losses) - sum(full_past), abs=1e-12)
    assert sum(blocks.values()) == pytest.approx(1.0, abs=1e-12)
    # E[-log P(x_1..x_T | x_0)] = H(X_0..X_T) - H(X_0)
    assert expected_loss == pytest.approx(entropy(blocks) - entropy(firsts), abs=1e-12)
    # The predictor that knows the whole past averages exactly the entropy rate per target
    rate = TINY.entropies()["entropy_rate_nats"]
    assert expected_full_past / seq_len == pytest.approx(rate, abs=1e-12)
    assert expected_loss / seq_len > rate


def test_the_sampled_floor_agrees_with_the_exact_one_within_its_error() -> None:
    seq_len = 7
    blocks: dict[tuple, float] = defaultdict(float)
    firsts: dict[int, float] = defaultdict(float)
    for prob, _, _, block in every_block(TINY, seq_len):
        blocks[tuple(block)] += prob
        firsts[block[0]] += prob
    exact = (entropy(blocks) - entropy(firsts)) / seq_len
    floor = window_floor(TINY, seq_len, windows=4000)
    assert (floor.seq_len, floor.windows) == (seq_len, 4000)
    assert 0 < floor.stderr < 0.01
    assert abs(floor.nats - exact) < 4 * floor.stderr


def test_the_default_corpus_floor_at_128_tokens_is_5_percent_above_the_rate() -> None:
    rate = DEFAULT.entropies()["entropy_rate_nats"]
    floor = window_floor(DEFAULT, 128)
    # 0.6213 +- 0.0002: the first target guesses the fact from one token, and until the window
    # shows an EOT every fact boundary might be the document's end
    assert floor.nats == pytest.approx(0.6213, abs=5e-4) and floor.stderr < 3e-4
    assert floor.nats / rate - 1 == pytest.approx(0.052, abs=0.001)
    assert window_floor(DEFAULT, 128) == floor  # seeded: the same windows every time


def test_the_floor_falls_toward_the_rate_as_windows_grow() -> None:
    rate = DEFAULT.entropies()["entropy_rate_nats"]
    floors = [window_floor(DEFAULT, n, windows=400).nats for n in (16, 128, 1024)]
    assert floors[0] > floors[1] > floors[2] > rate
    assert floors[2] / rate - 1 < 0.01


def synthetic_manifest(process: ZipfFacts) -> dict:
    keys = ("vocab_size", "n_facts", "fact_len", "facts_per_doc", "zipf_exponent", "seed")
    return {"source": {"name": "synthetic", "source": "synthetic",
                       **{key: getattr(process, key) for key in keys}}}


def test_a_datasets_floor_is_computed_once_then_read_from_its_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = synthetic_manifest(TINY)
    first = dataset_window_floor(tmp_path, manifest, 7)
    assert first == window_floor(TINY, 7)
    assert json.loads((tmp_path / CACHE).read_text())["floors"]["7"]["nats"] == first.nats

    def no_compute(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed again")

    monkeypatch.setattr(synthetic_floor, "window_floor", no_compute)
    assert dataset_window_floor(tmp_path, manifest, 7) == first
    monkeypatch.undo()
    # A new seq_len joins the cache; a damaged cache is computed afresh
    assert dataset_window_floor(tmp_path, manifest, 3) == window_floor(TINY, 3)
    assert set(json.loads((tmp_path / CACHE).read_text())["floors"]) == {"3", "7"}
    for damaged in ("{not json", '{"method": 1, "floors": {"7": {"nats": "x"}}}', "[]"):
        (tmp_path / CACHE).write_text(damaged)
        assert dataset_window_floor(tmp_path, manifest, 7) == first


def test_text_datasets_have_no_window_floor(tmp_path: Path) -> None:
    assert dataset_window_floor(tmp_path, {"source": {"source": "stdlib"}}, 128) is None
    assert not (tmp_path / CACHE).exists()


def test_an_unwritable_dataset_directory_still_gives_the_floor(tmp_path: Path) -> None:
    missing = tmp_path / "gone"  # the cache cannot be written there
    assert dataset_window_floor(missing, synthetic_manifest(TINY), 7) == window_floor(TINY, 7)
