"""Tokenizers for text corpora: train a byte-level BPE or load a tokenizer.json (`tokenizers`).

`tokenizers` is imported inside functions: reading manifests and the synthetic corpus need none of
it. Encoding runs in Rust on all cores (encode_batch releases the GIL and fans out over Rayon).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data.errors import DataError, first_line
from data.shards import dtype_for_vocab

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
# The 256 byte symbols plus EOT must fit, and one merge makes it a BPE at all.
MIN_BPE_VOCAB = 258


def check_bpe_vocab(vocab_size: int) -> None:
    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(
            f"data.vocab_size={vocab_size} is too small for a byte-level BPE (256 bytes + "
            f"end-of-text + merges): use at least {MIN_BPE_VOCAB}, e.g. 8192"
        )


def train_bpe(texts: Iterable[str], vocab_size: int, eot_token: str) -> Tokenizer:
    """A byte-level BPE learned from texts: 256 byte tokens, eot_token, then merges up to size.

    Byte-level means every string encodes (no unknown token) and every token has an exact byte
    length, which makes bits per byte exact.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_bpe_vocab(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eot_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def tokenizer_from_bytes(payload: bytes, origin: str) -> Tokenizer:
    """Parse a tokenizer.json; origin names the file in the error."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(payload.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception, decode a UnicodeDecodeError
        raise DataError(
            f"{origin} is not a readable tokenizer.json ({first_line(e, limit=120)}): point "
            "data.tokenizer_path at a file saved by the `tokenizers` library"
        ) from None


def read_tokenizer_file(path: str | Path) -> bytes:
    """The bytes of a user's tokenizer.json, or a one-line DataError naming the path."""
    path = Path(path).expanduser()
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(
            f"data.tokenizer_path={str(path)!r} cannot be read ({e.strerror or e}): fix the path "
            "or set data.tokenizer_path=null to train a BPE"
        ) from None


def to_bytes(tokenizer: Tokenizer) -> bytes:
    """The tokenizer.json payload that goes into a dataset directory and is hashed."""
    return tokenizer.to_str(pretty=False).encode("utf-8")


def payload_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def eot_id(tokenizer: Tokenizer, eot_token: str, origin: str) -> int:
    token_id = tokenizer.token_to_id(eot_token)
    if token_id is None:
        raise DataError(
            f"{origin} has no token {eot_token!r}: set data.eot_token to the tokenizer's "
            "end-of-text token"
        )
    return int(token_id)


def id_space(tokenizer: Tokenizer) -> int:
    """Highest token id + 1: the embedding rows the ids need. Not the token count, which a
    tokenizer.json whose ids have gaps (a removed token, say) puts lower."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def eot_as_special(tokenizer: Tokenizer, eot_token: str) -> Tokenizer:
    """The tokenizer to encode documents with: itself when eot_token is one of its special tokens,
    else a copy in which it is one (same id).

    Encoder encodes special tokens' strings as text; a plain end-of-text token would still match
    a literal "<|end|>" in a document: a false document end, whose bytes bits/byte then misses.
    """
    added = json.loads(tokenizer.to_str()).get("added_tokens") or []
    if any(t.get("content") == eot_token and t.get("special") for t in added):
        return tokenizer
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.add_special_tokens([eot_token])  # an existing token keeps its id, now special
    return copy


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: each printable stand-in char -> the byte it means."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _is_byte_level(spec: dict[str, Any]) -> bool:
    def byte_levels(node: Any) -> list[dict[str, Any]]:
        if not isinstance(node, dict):
            return []
        if node.get("type") == "ByteLevel":
            return [node]
        return [b for n in node.get("pretokenizers", []) or [] for b in byte_levels(n)]

    model = spec.get("model") or {}
    found = byte_levels(spec.get("pre_tokenizer"))
    # add_prefix_space puts a space before each text that is not in it: one byte too many.
    return model.get("type") == "BPE" and bool(found) and not any(
        b.get("add_prefix_space") for b in found
    )


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray | None:
    """Each token id's length in UTF-8 bytes (0 for special tokens), or None if not byte-level.

    For a byte-level BPE the bytes of a text's tokens are the text's bytes, so summing these over
    scored tokens gives the exact byte count for bits per byte. Other tokenizers (normalizers,
    SentencePiece metaspace) do not map tokens to bytes exactly, and get no bits per byte.
    """
    spec = json.loads(tokenizer.to_str())
    if spec.get("normalizer") is not None or not _is_byte_level(spec):
        return None
    decoder = _byte_decoder()
    lengths = np.zeros(id_space(tokenizer), dtype=np.int64)
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for token, token_id in tokenizer.get_vocab(with_added_tokens=True).items():
        if token_id in added:
            # Added tokens match raw text, not stand-in chars ('é' is 2 bytes, not byte 0xE9);
            # special ones never come from text (Encoder encodes their strings as text).
            special = added[token_id].get("special")
            lengths[token_id] = 0 if special else len(token.encode("utf-8"))
        elif all(c in decoder for c in token):
            lengths[token_id] = len(token)  # one stand-in char per byte
        else:
            lengths[token_id] = len(token.encode("utf-8"))
    return lengths


class Encoder:
    """Documents -> one flat token array with eot_id after every document."""

    def __init__(self, tokenizer: Tokenizer, eot_id: int) -> None:
        self.tokenizer = tokenizer
        self.eot_id = eot_id
        self.vocab_size = id_space(tokenizer)
        self.dtype = dtype_for_vocab(self.vocab_size)
        # A document's text is data: a literal "<|endoftext|>" in it must encode as its bytes, not
        # as the EOT id (a false document boundary, and tokens whose bytes miss from bits/byte).
        if hasattr(tokenizer, "encode_special_tokens"):  # tokenizers >= 0.15.1
            tokenizer.encode_special_tokens = True
        # encode_batch_fast skips character offsets we never use (tokenizers >= 0.20).
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    def encode(self, documents: Sequence[str]) -> np.ndarray:
        encodings = self._encode(list(documents), add_special_tokens=False)
        ids = [e.ids for e in encodings]
        total = sum(map(len, ids)) + len(ids)
        eot = [self.eot_id]
        pieces = itertools.chain.from_iterable(zip(ids, itertools.repeat(eot)))
        return np.fromiter(itertools.chain.from_iterable(pieces), dtype=self.dtype, count=total)
