"""Synthetic "Zipf facts" corpus whose entropy rate is known exactly, to check fitted loss floors.

Power-law distributed facts give power-law learning curves (Hutter 2021; Michaud et al. 2023), so a
scaling-law fit's irreducible loss E can be compared with the true entropy rate of the data.

The process, all of it seeded:
- token 0 is EOT (end of document); tokens 1..vocab_size-1 are content;
- `n_facts` distinct facts, each a random sequence of `fact_len` content tokens;
- a document is `facts_per_doc` facts drawn i.i.d. with p_k ∝ k^-zipf_exponent (k = 1..n_facts),
  concatenated, then EOT; documents are i.i.d.

Facts are distinct and sit at fixed positions, so a document's tokens determine its draws and its
entropy is exactly facts_per_doc * H(p). Per token that is the entropy rate
    facts_per_doc * H(p) / (facts_per_doc * fact_len + 1)  nats.
It is a lower bound on any model's loss. A model with a finite window starts each window without
knowing where the fact boundaries are (the phase), so it pays a little more there; a good model
approaches the rate as the window grows. The unigram entropy (the loss of a model that ignores
context) is computed exactly from P(t) = (1{t=EOT} + facts_per_doc * sum_k p_k count_k(t)) / L.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from data.config import check_float, check_int
from data.errors import DataError
from data.shards import dtype_for_vocab

EOT_ID = 0
# Options of this source, in the order the manifest shows them (generic keys live in prepare).
OPTIONS = (
    "vocab_size", "n_facts", "fact_len", "facts_per_doc", "zipf_exponent",
    "train_tokens", "val_tokens", "seed",
)
# Independent random streams per purpose, derived as SeedSequence([seed, stream]): unlike seed+1,
# this keeps seed=1's train documents from being seed=0's val documents.
_FACTS_STREAM = 0
SPLIT_STREAMS = {"train": 1, "val": 2}
FLOOR_STREAM = 3  # the windows data.synthetic_floor samples
# Documents per generated chunk: bounds memory (~1M tokens) while keeping numpy calls large.
_CHUNK_TOKENS = 1 << 20
# Below this many possible facts we sample distinct ones without replacement; above it duplicates
# are so rare that resampling them is cheaper than indexing the space.
_ENUMERABLE = 1 << 62


@dataclass(frozen=True)
class ZipfFacts:
    """The generative process: facts, their Zipf probabilities, documents and exact entropies."""

    vocab_size: int
    n_facts: int
    fact_len: int
    facts_per_doc: int
    zipf_exponent: float
    seed: int

    @property
    def doc_tokens(self) -> int:
        return self.facts_per_doc * self.fact_len + 1

    @cached_property
    def facts(self) -> np.ndarray:
        """[n_facts, fact_len] distinct content-token sequences; row k-1 is the k-th most likely."""
        rng = np.random.default_rng([self.seed, _FACTS_STREAM])
        n_content = self.vocab_size - 1
        possible = n_content**self.fact_len
        if possible < _ENUMERABLE:
            codes = rng.choice(possible, size=self.n_facts, replace=False)
            digits = np.empty((self.n_facts, self.fact_len), dtype=np.int64)
            for j in range(self.fact_len):
                codes, digits[:, j] = np.divmod(codes, n_content)
            rows = digits + 1
        else:
            rows = rng.integers(1, self.vocab_size, size=(self.n_facts, self.fact_len))
            while True:
                _, first = np.unique(rows, axis=0, return_index=True)
                dup = np.ones(self.n_facts, dtype=bool)
                dup[first] = False
                if not dup.any():
                    break
                rows[dup] = rng.integers(1, self.vocab_size, size=(int(dup.sum()), self.fact_len))
        return rows.astype(dtype_for_vocab(self.vocab_size))

    @cached_property
    def probs(self) -> np.ndarray:
        """Zipf probabilities p_k ∝ k^-zipf_exponent over facts k = 1..n_facts."""
        weights = np.arange(1, self.n_facts + 1, dtype=np.float64) ** -self.zipf_exponent
        return weights / weights.sum()

    def entropies(self) -> dict[str, float | int]:
        """Exact entropies in nats (see the module docstring), as recorded in the manifest."""
        p = self.probs
        zipf = float(-(p * np.log(p)).sum())
        unigram = np.zeros(self.vocab_size, dtype=np.float64)
        np.add.at(unigram, self.facts.astype(np.int64), p[:, None])
        unigram *= self.facts_per_doc
        unigram[EOT_ID] += 1.0
        unigram /= self.doc_tokens
        nz = unigram[unigram > 0]
        return {
            "entropy_rate_nats": self.facts_per_doc * zipf / self.doc_tokens,
            "unigram_entropy_nats": float(-(nz * np.log(nz)).sum()),
            "zipf_entropy_nats": zipf,
            "doc_tokens": self.doc_tokens,
            "top_fact_prob": float(p[0]),
        }

    def documents(self, stream: int, n_docs: int, chunk_docs: int) -> Iterator[np.ndarray]:
        """Yield n_docs documents as flat token chunks of at most chunk_docs documents each.

        The output depends only on (seed, stream, n_docs), not on chunk_docs: uniforms are drawn
        row-major, so chunked draws are the same stream as one big draw.
        """
        rng = np.random.default_rng([self.seed, stream])
        done = 0
        while done < n_docs:
            n = min(chunk_docs, n_docs - done)
            yield self.render(self.draw(rng, n)).reshape(-1)
            done += n

    @cached_property
    def _cdf(self) -> np.ndarray:
        cdf = np.cumsum(self.probs)
        cdf[-1] = 1.0  # rounding must not leave a sliver of [0, 1) past the last fact
        return cdf

    def draw(self, rng: np.random.Generator, n_docs: int) -> np.ndarray:
        """[n_docs, facts_per_doc] fact indices (0-based: 0 is the most likely fact)."""
        return np.searchsorted(self._cdf, rng.random((n_docs, self.facts_per_doc)), side="right")

    def render(self, draws: np.ndarray) -> np.ndarray:
        """[n_docs, doc_tokens] tokens of the documents whose facts are `draws`."""
        n, n_content = len(draws), self.facts_per_doc * self.fact_len
        out = np.empty((n, self.doc_tokens), dtype=self.facts.dtype)
        out[:, :n_content] = self.facts[draws].reshape(n, n_content)
        out[:, n_content] = EOT_ID
        return out


class SyntheticSource:
    """prepare's view of the synthetic corpus: validated config -> token chunks per split."""

    options = OPTIONS

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        vocab_size = check_int(cfg, "vocab_size", 2, 2**32)
        fact_len = check_int(cfg, "fact_len", 1)
        n_facts = check_int(cfg, "n_facts", 1)
        possible = (vocab_size - 1) ** fact_len
        if n_facts > possible:
            raise DataError(
                f"data.n_facts={n_facts} exceeds the {possible} distinct facts of "
                f"fact_len={fact_len} over {vocab_size - 1} content tokens: lower data.n_facts "
                "or raise data.vocab_size/data.fact_len"
            )
        self.process = ZipfFacts(
            vocab_size=vocab_size,
            n_facts=n_facts,
            fact_len=fact_len,
            facts_per_doc=check_int(cfg, "facts_per_doc", 1),
            zipf_exponent=check_float(cfg, "zipf_exponent", 0.0),
            seed=check_int(cfg, "seed", 0),
        )
        self.vocab_size = vocab_size
        self.eot_id = EOT_ID
        self.split_tokens = {
            "train": check_int(cfg, "train_tokens", 1),
            "val": check_int(cfg, "val_tokens", 1),
        }
        self.config = {
            "vocab_size": vocab_size,
            "n_facts": n_facts,
            "fact_len": fact_len,
            "facts_per_doc": self.process.facts_per_doc,
            "zipf_exponent": self.process.zipf_exponent,
            "train_tokens": self.split_tokens["train"],
            "val_tokens": self.split_tokens["val"],
            "seed": self.process.seed,
        }

    def split_docs(self, split: str) -> int:
        """Whole documents per split: the requested tokens rounded down, but at least one."""
        # Rounding down keeps a train_tokens that is a multiple of shard_tokens from leaving a
        # tiny last shard that no training window fits in.
        return max(1, self.split_tokens[split] // self.process.doc_tokens)

    def planned_tokens(self) -> dict[str, int | None]:
        return {s: self.split_docs(s) * self.process.doc_tokens for s in SPLIT_STREAMS}

    def check_inputs(self) -> None:
        """Nothing to find: __init__ has checked the whole config."""

    def setup(self, say: Any) -> None:
        """Nothing to learn: the vocabulary is the config's."""

    def chunks(self) -> Iterator[tuple[str, np.ndarray, int, int | None]]:
        """(split, tokens, documents, bytes) chunks: all of train, then all of val."""
        doc_tokens = self.process.doc_tokens
        chunk_docs = max(1, _CHUNK_TOKENS // doc_tokens)
        for split, stream in SPLIT_STREAMS.items():
            for chunk in self.process.documents(stream, self.split_docs(split), chunk_docs):
                yield split, chunk, chunk.size // doc_tokens, None

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    def tokenizer(self) -> dict[str, str]:
        # Token ids carry no text, so the vocabulary is fully described by its size and EOT id.
        desc = {"kind": "synthetic", "vocab_size": self.vocab_size, "eot_id": self.eot_id}
        digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        return {"kind": "synthetic", "hash": digest, "spec": self.tokenizer_spec()}

    def files(self) -> dict[str, bytes]:
        return {}

    def token_bytes(self) -> np.ndarray | None:
        return None  # synthetic tokens are not text: bits-per-byte is undefined

    def manifest_extra(self) -> dict[str, Any]:
        return {"synthetic": self.process.entropies()}
