"""Tests for data.synthetic: the Zipf-facts process, its exact entropies and its determinism.

The entropies are checked against estimates from generated tokens, with the draws decoded back
from the tokens alone (which is also the claim that makes the entropy rate exact).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from data.errors import DataError
from data.synthetic import EOT_ID, SyntheticSource, ZipfFacts

DEFAULTS = dict(vocab_size=512, n_facts=2048, fact_len=8, facts_per_doc=16, zipf_exponent=1.0,
                seed=0)


def config(**overrides):
    return {**DEFAULTS, "train_tokens": 10_000, "val_tokens": 1_000, **overrides}


def generate(process: ZipfFacts, n_docs: int, stream: int = 1, chunk_docs: int = 4096):
    return np.concatenate(list(process.documents(stream, n_docs, chunk_docs)))


def decode_draws(process: ZipfFacts, tokens: np.ndarray) -> np.ndarray:
    """Recover each document's fact indices from its tokens alone (facts are distinct)."""
    docs = tokens.reshape(-1, process.doc_tokens)
    assert (docs[:, -1] == EOT_ID).all() and (docs[:, :-1] != EOT_ID).all()
    rows = docs[:, :-1].reshape(-1, process.fact_len).astype(np.uint64)
    facts = process.facts.astype(np.uint64)
    mult = np.random.default_rng(1).integers(1, 2**63, size=process.fact_len, dtype=np.uint64)
    fact_keys, row_keys = facts @ mult, rows @ mult  # wrapping hash; distinct for distinct rows
    order = np.argsort(fact_keys)
    pos = np.searchsorted(fact_keys[order], row_keys)
    draws = order[pos]
    np.testing.assert_array_equal(facts[draws], rows)  # every chunk is exactly one fact
    return draws.reshape(len(docs), process.facts_per_doc)


@pytest.fixture(scope="module")
def default_process():
    return ZipfFacts(**DEFAULTS)


def test_facts_are_distinct_content_tokens(default_process):
    facts = default_process.facts
    assert facts.shape == (2048, 8) and facts.dtype == np.uint16
    assert facts.min() >= 1 and facts.max() <= 511
    assert len(np.unique(facts, axis=0)) == 2048


def test_small_fact_space_is_sampled_without_replacement():
    process = ZipfFacts(vocab_size=3, n_facts=4, fact_len=2, facts_per_doc=3, zipf_exponent=1.0,
                        seed=5)
    assert sorted(map(tuple, process.facts.tolist())) == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_exact_entropies_of_default_config(default_process):
    ent = default_process.entropies()
    p = default_process.probs
    h = -(p * np.log(p)).sum()
    assert ent["zipf_entropy_nats"] == pytest.approx(h, rel=1e-12)
    assert ent["entropy_rate_nats"] == pytest.approx(16 * h / 129, rel=1e-12)
    assert ent["doc_tokens"] == 129
    # Pinned so that an accidental change to the process shows up here.
    assert ent["zipf_entropy_nats"] == pytest.approx(5.6396, abs=1e-4)
    assert ent["entropy_rate_nats"] == pytest.approx(0.6995, abs=1e-4)
    assert ent["unigram_entropy_nats"] == pytest.approx(5.8113, abs=1e-4)
    assert ent["top_fact_prob"] == pytest.approx(1 / np.sum(1 / np.arange(1, 2049)), rel=1e-12)


def test_uniform_zipf_has_log_n_entropy():
    process = ZipfFacts(vocab_size=64, n_facts=100, fact_len=3, facts_per_doc=4, zipf_exponent=0.0,
                        seed=0)
    assert process.entropies()["zipf_entropy_nats"] == pytest.approx(np.log(100), rel=1e-12)


def test_entropies_match_empirical_estimates(default_process):
    n_docs = 20_000  # 2.58M tokens, 320k fact draws
    tokens = generate(default_process, n_docs)
    ent = default_process.entropies()
    counts = np.bincount(tokens, minlength=512)
    freq = counts[counts > 0] / tokens.size
    assert -(freq * np.log(freq)).sum() == pytest.approx(ent["unigram_entropy_nats"], rel=0.01)
    draws = decode_draws(default_process, tokens)
    p = default_process.probs
    observed = np.bincount(draws.ravel(), minlength=2048) / draws.size
    sigma = np.sqrt(p * (1 - p) / draws.size)
    assert np.abs(observed - p).max() < 5 * sigma.max()
    assert np.abs((observed - p) / sigma).max() < 5.5
    # The true model's mean code length per token is an unbiased estimate of the entropy rate.
    code_length = -np.log(p[draws]).sum() / tokens.size
    assert code_length == pytest.approx(ent["entropy_rate_nats"], rel=0.01)


def test_same_seed_same_bytes_other_seed_differs(default_process):
    a = generate(default_process, 300)
    b = generate(ZipfFacts(**DEFAULTS), 300)
    assert a.tobytes() == b.tobytes()
    c = generate(ZipfFacts(**{**DEFAULTS, "seed": 1}), 300)
    assert a.tobytes() != c.tobytes()
    assert not np.array_equal(default_process.facts, ZipfFacts(**{**DEFAULTS, "seed": 1}).facts)


def test_output_does_not_depend_on_chunking_or_split_sizes(default_process):
    whole = generate(default_process, 1000, chunk_docs=1000)
    assert np.array_equal(whole, generate(default_process, 1000, chunk_docs=7))
    assert np.array_equal(whole[: 300 * 129], generate(default_process, 300))  # prefix-stable
    small = SyntheticSource(config(train_tokens=1_000))
    large = SyntheticSource(config(train_tokens=100_000))
    val_small = np.concatenate([c for s, c, _, _ in small.chunks() if s == "val"])
    val_large = np.concatenate([c for s, c, _, _ in large.chunks() if s == "val"])
    assert np.array_equal(val_small, val_large)
    train = np.concatenate([c for s, c, _, _ in small.chunks() if s == "train"])
    assert not np.array_equal(train[: val_small.size], val_small)


def test_split_sizes_round_down_to_whole_documents():
    source = SyntheticSource(config(train_tokens=1000, val_tokens=5))
    assert source.planned_tokens() == {"train": 7 * 129, "val": 129}  # at least one document
    chunks = [(c, d) for s, c, d, _ in source.chunks() if s == "train"]
    assert sum(c.size for c, _ in chunks) == 7 * 129 and sum(d for _, d in chunks) == 7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vocab_size": 1}, r"data.vocab_size=1 must be an integer in 2\.\.4294967296"),
        ({"n_facts": 10, "vocab_size": 3, "fact_len": 3}, r"n_facts=10 exceeds the 8 distinct"),
        ({"train_tokens": -5}, r"data.train_tokens=-5 must be an integer >= 1"),
        ({"zipf_exponent": "big"}, r"data.zipf_exponent='big' must be a finite number"),
        ({"seed": True}, r"data.seed=True must be an integer"),
    ],
)
def test_bad_values_raise_one_line(overrides, message):
    with pytest.raises(DataError, match=message) as err:
        SyntheticSource(config(**overrides))
    assert "\n" not in str(err.value)


@pytest.mark.slow  # a wall-clock bound: out of CI, where load could make it flake
def test_generation_is_fast(default_process):
    default_process.facts  # noqa: B018 - build the facts outside the timed region
    start = time.perf_counter()
    n = sum(c.size for c in default_process.documents(1, 40_000, 8192))  # 5.2M tokens
    rate = n / (time.perf_counter() - start)
    assert rate > 2e6, f"{rate:.3g} tokens/s"  # ~7e7 measured; the bound only catches a Python loop
