"""The lowest loss a model reading windows of seq_len tokens can reach on the synthetic corpus.

The entropy rate assumes the whole past is known. A model sees one window: its first targets are
predicted from a token or two (which fact, and where in it?), and until the window shows an EOT
the model cannot tell which of a document's facts_per_doc slots it is in, so every fact boundary
might be the end of the document. The best any model can do is the Bayes posterior over the hidden
state (position in the document, current fact) given the window so far. This module runs that
exact filter on sampled windows and averages its loss per target: the floor a fitted irreducible
loss E should find for runs at that seq_len.

It estimates floor - rate, not the floor itself: per window, the filter's losses minus those of a
predictor that knows the whole past (whose mean per target is exactly the entropy rate). The two
agree once the hidden state is pinned down (usually soon after the first EOT), so the difference
is small, its Monte Carlo error tiny (~0.0002 nats at seq_len 128 with 2000 windows), and the
filter can stop there.

Windows start at uniformly random stream positions, as the train loader's do; the val windows,
which advance by seq_len, cover a document's positions evenly when seq_len and doc_tokens share
no factor (128 and 129 by default) and the eval set holds doc_tokens windows or more. Otherwise
they start at some positions only, whose floors differ little: measured at seq_len 128 (60
windows at each of 16 positions), every position's floor lies in 0.618-0.621 but a window that
starts at an EOT (the rate, 0.5909: the EOT pins its position), which is 1 in doc_tokens of the
uniform average. A val set missing or favouring positions moves its floor by ~0.3 % at most.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.shards import atomic_write_bytes
from data.synthetic import EOT_ID, FLOOR_STREAM, ZipfFacts

# Windows per estimate: 2000 give a standard error of ~0.0002 nats (0.03 %) at seq_len 128 in
# about a second on one core; a fitted E's interval is a hundred times wider.
FLOOR_WINDOWS = 2000
# Per-dataset cache of computed floors (seq_len -> WindowFloor), beside the shards, like
# data.dataset's checksum cache: missing or unreadable, it costs only the recomputation.
CACHE = ".window_floor.json"
# Bumped when the estimate changes, so a cache written by older code is recomputed.
_METHOD = 1


@dataclass(frozen=True)
class WindowFloor:
    """The Bayes-optimal mean loss per target over windows of seq_len tokens, with its error."""

    nats: float
    stderr: float  # Monte Carlo standard error of nats
    seq_len: int
    windows: int


class BayesFilter:
    """The exact posterior over (position in the document, current fact) given a window so far."""

    def __init__(self, process: ZipfFacts) -> None:
        self.m, self.length = process.fact_len, process.doc_tokens
        self.facts: list[list[int]] = process.facts.astype(np.int64).tolist()
        self.p: list[float] = process.probs.tolist()
        self.starting: dict[int, list[int]] = {}  # token -> facts that start with it
        self.occurs: dict[int, list[tuple[int, int]]] = {}  # token -> (fact, offset) holding it
        for k, fact in enumerate(self.facts):
            self.starting.setdefault(fact[0], []).append(k)
            for j, token in enumerate(fact):
                self.occurs.setdefault(token, []).append((k, j))
        self.slots = process.facts_per_doc

    def losses(self, block: list[int], stop_when_known: bool = False) -> list[float]:
        """-log P(block[i] | block[:i]) for i = 1..len(block)-1 under the process.

        stop_when_known: end once a single state remains; from there on the loss is the
        full-past predictor's (the state is all the past can say about the future).
        """
        m, last = self.m, self.length - 1
        # A state is (position in the document, fact there), fact -1 at the EOT; the position
        # is uniform and the fact is drawn from p, so the first token leaves these
        if block[0] == EOT_ID:
            state: dict[tuple[int, int], float] = {(last, -1): 1.0}
        else:
            state = {(s * m + j, k): self.p[k] for s in range(self.slots)
                     for k, j in self.occurs.get(block[0], ())}
        total = sum(state.values())
        out = []
        for x in block[1:]:
            if stop_when_known and len(state) == 1:
                break
            moved: dict[tuple[int, int], float] = {}
            fresh: dict[int, float] = {}  # next position -> mass about to draw a new fact
            for (phi, k), w in state.items():
                nxt = phi + 1 if phi < last else 0
                if nxt == last:
                    if x == EOT_ID:
                        moved[(nxt, -1)] = moved.get((nxt, -1), 0.0) + w
                elif nxt % m == 0:
                    fresh[nxt] = fresh.get(nxt, 0.0) + w
                elif self.facts[k][nxt % m] == x:
                    moved[(nxt, k)] = w
            for nxt, w in fresh.items():
                for k in self.starting.get(x, ()):
                    moved[(nxt, k)] = w * self.p[k]
            kept = sum(moved.values())
            if kept <= 0:
                raise ValueError(f"token {x} cannot follow this window under the process")
            out.append(-math.log(kept / total))
            # renormalised: a long window would otherwise underflow to zero mass
            state, total = {key: w / kept for key, w in moved.items()}, 1.0
        return out


def prefix_losses(process: ZipfFacts) -> np.ndarray:
    """[n_facts, fact_len] -log P(the fact's j-th token | its tokens before it): what a predictor
    that knows the whole past pays along each fact. Facts that share a prefix share its mass,
    and each row sums to -log p_k (facts are distinct)."""
    n, m = process.n_facts, process.fact_len
    facts, p = process.facts.astype(np.int64), process.probs
    mass = np.empty((n, m + 1))
    mass[:, 0] = 1.0
    for j in range(1, m + 1):
        _, group = np.unique(facts[:, :j], axis=0, return_inverse=True)
        group = group.reshape(-1)
        mass[:, j] = np.bincount(group, weights=p)[group]
    return -np.log(mass[:, 1:] / mass[:, :-1])


def full_past_losses(process: ZipfFacts, prefix: np.ndarray, draws: np.ndarray, start: int,
                     targets: int) -> list[float]:
    """Losses of the predictor that knows the whole past, for targets start+1 .. start+targets
    of the stream of documents `draws`; `prefix` is prefix_losses(process)."""
    m, length = process.fact_len, process.doc_tokens
    out = []
    for pos in range(start + 1, start + targets + 1):
        phi = pos % length
        out.append(0.0 if phi == length - 1 else  # the EOT after the last fact is certain
                   float(prefix[draws[pos // length][phi // m], phi % m]))
    return out


def window_floor(process: ZipfFacts, seq_len: int, windows: int = FLOOR_WINDOWS) -> WindowFloor:
    """The floor for windows of seq_len inputs (seq_len targets, the first with one token of
    context), estimated on `windows` windows drawn from the process (seeded, so repeatable)."""
    if seq_len < 1 or windows < 2:
        raise ValueError(f"seq_len={seq_len} and windows={windows}: need at least 1 and 2")
    rate = process.entropies()["entropy_rate_nats"]
    bayes, prefix = BayesFilter(process), prefix_losses(process)
    rng = np.random.default_rng([process.seed, FLOOR_STREAM])
    docs = (seq_len + 1) // process.doc_tokens + 2  # enough for a window starting anywhere
    excess = np.empty(windows)
    for w in range(windows):
        draws = process.draw(rng, docs)
        start = int(rng.integers(process.doc_tokens))
        block = process.render(draws).reshape(-1)[start:start + seq_len + 1].tolist()
        losses = bayes.losses(block, stop_when_known=True)
        excess[w] = sum(losses) - sum(full_past_losses(process, prefix, draws, start, len(losses)))
    excess /= seq_len
    return WindowFloor(nats=float(rate + excess.mean()),
                       stderr=float(excess.std(ddof=1) / math.sqrt(windows)),
                       seq_len=seq_len, windows=windows)


def dataset_window_floor(path: Path, manifest: dict[str, Any], seq_len: int) -> WindowFloor | None:
    """The floor at seq_len for the prepared dataset at `path` (computed once, then read from
    its CACHE), or None for a dataset that is not the synthetic corpus."""
    source = manifest.get("source") or {}
    if source.get("source") != "synthetic":
        return None
    cache = Path(path) / CACHE
    floors = _read_cache(cache)
    known = _as_floor(floors.get(str(seq_len)), seq_len)
    if known is not None:
        return known
    process = ZipfFacts(**{key: source[key] for key in (
        "vocab_size", "n_facts", "fact_len", "facts_per_doc", "zipf_exponent", "seed")})
    floor = window_floor(process, seq_len)
    floors[str(seq_len)] = asdict(floor)
    # A read-only dataset directory only costs the next run the same second
    with contextlib.suppress(OSError):
        atomic_write_bytes(cache, (json.dumps({"method": _METHOD, "floors": floors}, indent=1)
                                   + "\n").encode())
    return floor


def _read_cache(cache: Path) -> dict[str, Any]:
    """seq_len -> floor fields from the cache; empty when missing, unreadable or outdated."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(known, dict) or known.get("method") != _METHOD:
        return {}
    floors = known.get("floors")
    return floors if isinstance(floors, dict) else {}


def _as_floor(entry: Any, seq_len: int) -> WindowFloor | None:
    """A cache entry as a WindowFloor, or None unless it is one for seq_len."""
    if not isinstance(entry, dict) or entry.get("seq_len") != seq_len:
        return None
    nats, stderr, windows = entry.get("nats"), entry.get("stderr"), entry.get("windows")
    if not (isinstance(nats, float) and isinstance(stderr, float) and isinstance(windows, int)
            and math.isfinite(nats) and math.isfinite(stderr)):
        return None
    return WindowFloor(nats=nats, stderr=stderr, seq_len=seq_len, windows=windows)
