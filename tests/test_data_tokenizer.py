"""Tests for data.tokenizer: byte-level BPE training, exact byte lengths per token, the Encoder's
EOT placement and dtype, and one-line errors for unreadable tokenizer files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from data import DataError
from data.tokenizer import (
    Encoder,
    eot_id,
    id_space,
    read_tokenizer_file,
    to_bytes,
    token_byte_lengths,
    tokenizer_from_bytes,
    train_bpe,
)

EOT = "<|endoftext|>"
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "def add(a, b):\n    return a + b\n\n" * 3,
    "Café crème, naïve façade, déjà vu. " * 3,
    "中文分词很有趣，中文字符占三个字节。" * 2,
    "Emoji: 😀🚀🎉 and a tab\tand a newline\n" * 2,
    "numbers 12345 67890 3.14159 2.71828 " * 3,
] * 4
# Texts the tokenizer never saw in training; the 4-byte emoji and 3-byte CJK span several tokens.
UNSEEN = [
    "é", "中文", "😀", "a", "", " ", "\n\n", "Ünïcödé façade 北京 🦀 ok",
    "mixed\r\nline endings\rhere", "\x00\x7f control bytes \u200b zero-width",
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(iter(CORPUS), 400, EOT)


def test_train_bpe_has_the_requested_size_bytes_and_eot(bpe):
    vocab = bpe.get_vocab(with_added_tokens=True)
    assert bpe.get_vocab_size(with_added_tokens=True) == 400 == len(vocab)
    assert sorted(vocab.values()) == list(range(400))
    assert eot_id(bpe, EOT, "t") == vocab[EOT] == 0  # special tokens come first
    # All 256 byte symbols are in, whether or not the corpus used them.
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)
    # 256 bytes + EOT + merges: 143 merges were learned.
    assert len(json.loads(bpe.to_str())["model"]["merges"]) == 400 - 257


def test_train_bpe_on_a_tiny_sample_gives_fewer_tokens():
    tok = train_bpe(iter(["abab"]), 512, EOT)
    size = tok.get_vocab_size(with_added_tokens=True)
    assert 258 <= size < 512  # the bytes, EOT and the few merges "abab" supports
    assert tok.token_to_id(EOT) is not None and tok.token_to_id("ab") is not None


def test_train_bpe_is_deterministic():
    a = to_bytes(train_bpe(iter(CORPUS), 350, EOT))
    b = to_bytes(train_bpe(iter(CORPUS), 350, EOT))
    assert a == b


def test_train_bpe_refuses_a_vocabulary_below_the_byte_alphabet():
    with pytest.raises(DataError, match=r"^data.vocab_size=257 is too small .* at least 258"):
        train_bpe(iter(CORPUS), 257, EOT)


@pytest.mark.parametrize("text", CORPUS[:6] + UNSEEN)
def test_token_bytes_sum_to_the_utf8_length(bpe, text):
    lengths = token_byte_lengths(bpe)
    ids = bpe.encode(text, add_special_tokens=False).ids
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert bpe.decode(ids) == text


def gpt2_bytes_to_unicode():
    """GPT-2's encoder.py mapping (byte -> printable char), written out independently."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def test_token_byte_lengths_per_token(bpe):
    lengths = token_byte_lengths(bpe)
    assert lengths.shape == (400,) and lengths.dtype == np.int64
    assert lengths[bpe.token_to_id(EOT)] == 0
    to_byte = {c: b for b, c in gpt2_bytes_to_unicode().items()}
    assert set(to_byte) == set(pre_tokenizers.ByteLevel.alphabet())
    for token, token_id in bpe.get_vocab().items():
        if token != EOT:
            raw = bytes(to_byte[c] for c in token)
            assert lengths[token_id] == len(raw), token
    # Spot checks: " the" is a 4-byte token, 'é' is 2 bytes, '中' is 3 and the emoji 4.
    assert lengths[bpe.token_to_id("Ġthe")] == 4
    for char, n in (("é", 2), ("中", 3), ("😀", 4)):
        assert lengths[bpe.encode(char, add_special_tokens=False).ids].sum() == n
    assert (lengths[1:] >= 1).all() and lengths.sum() > 400


def test_added_tokens_count_their_raw_utf8_bytes(bpe):
    tok = Tokenizer.from_str(bpe.to_str())
    tok.add_tokens(["é!", "<sep>"])  # non-special: matched in raw text
    tok.add_special_tokens(["<pad>"])
    lengths = token_byte_lengths(tok)
    assert lengths[tok.token_to_id("é!")] == 3  # 'é' is 2 bytes, not the stand-in for 0xE9
    assert lengths[tok.token_to_id("<sep>")] == 5
    assert lengths[tok.token_to_id("<pad>")] == 0
    text = "x é! y <sep> z"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.token_to_id("é!") in ids
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def _trained(pre_tokenizer, normalizer=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def test_non_byte_level_tokenizers_have_no_byte_lengths():
    vocab = {"hello": 0, "world": 1, "[UNK]": 2}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    assert token_byte_lengths(word_level) is None
    # A normalizer changes the text before bytes are taken (NFKC folds 'ﬁ' into 'fi').
    normalized = _trained(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFKC())
    assert token_byte_lengths(normalized) is None
    # A BPE over whitespace words, not bytes.
    assert token_byte_lengths(_trained(pre_tokenizers.Whitespace())) is None
    # A prefix space adds a byte the text does not have ("hello" -> "Ġhello").
    prefixed = _trained(pre_tokenizers.ByteLevel(add_prefix_space=True))
    assert prefixed.encode("hello").tokens[0].startswith("Ġ")
    assert token_byte_lengths(prefixed) is None


def test_byte_level_inside_a_sequence_counts(bpe):
    tok = Tokenizer.from_str(bpe.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    lengths = token_byte_lengths(tok)
    text = "year 2024 in 北京 😀"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert lengths is not None and int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_encoder_puts_eot_after_every_document(bpe):
    docs = ["hello world", "", "é中😀", "the end"]
    enc = Encoder(bpe, eot_id(bpe, EOT, "t"))
    arr = enc.encode(docs)
    assert arr.dtype == np.uint16 and arr.ndim == 1
    eot = bpe.token_to_id(EOT)
    assert (arr == eot).sum() == len(docs) and arr[-1] == eot
    # Splitting at EOT gives back each document's own encoding, in order.
    cuts = np.flatnonzero(arr == eot)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    pieces = [arr[s:c].tolist() for s, c in zip(starts, cuts, strict=True)]
    assert pieces == [bpe.encode(d, add_special_tokens=False).ids for d in docs]
    assert [bpe.decode(p) for p in pieces] == docs
    assert enc.encode([]).size == 0 and enc.encode([""]).tolist() == [eot]


def test_encoder_dtype_follows_the_vocabulary(bpe):
    big = Tokenizer.from_str(bpe.to_str())
    big.add_tokens([f"tok{i}" for i in range(2**16)])  # 65936 tokens: past uint16
    enc = Encoder(big, 0)
    arr = enc.encode(["tok65535 hello"])
    assert enc.dtype == np.uint32 and arr.dtype == np.uint32
    assert arr.tolist()[0] == big.token_to_id("tok65535") > 2**16 - 1


def test_encoder_encodes_a_literal_eot_string_as_text(bpe):
    tok = Tokenizer.from_str(bpe.to_str())
    lengths = token_byte_lengths(tok)
    doc = f"a document that quotes {EOT} in its text"
    arr = Encoder(tok, 0).encode([doc])
    assert (arr == 0).sum() == 1 and arr[-1] == 0  # one boundary, at the end
    assert int(lengths[arr].sum()) == len(doc.encode("utf-8"))
    assert tok.decode(arr[:-1].tolist()) == doc


def test_tokenizer_round_trips_through_bytes(bpe, tmp_path):
    payload = to_bytes(bpe)
    path = tmp_path / "tokenizer.json"
    path.write_bytes(payload)
    again = tokenizer_from_bytes(read_tokenizer_file(path), str(path))
    assert to_bytes(again) == payload
    assert again.encode("Café 中文").ids == bpe.encode("Café 中文").ids


@pytest.mark.parametrize(
    "payload", [b"not json at all", b'{"version": "1.0"}', b"\xff\xfe\x00garbage", b""]
)
def test_a_bad_tokenizer_file_is_one_line_naming_the_file(tmp_path, payload):
    path = tmp_path / "bad.json"
    path.write_bytes(payload)
    origin = f"data.tokenizer_path={str(path)!r}"
    with pytest.raises(DataError) as err:
        tokenizer_from_bytes(read_tokenizer_file(path), origin)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "is not a readable tokenizer.json" in message


def test_a_missing_tokenizer_file_is_one_line_naming_the_path(tmp_path):
    path = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(DataError, match=r"^data.tokenizer_path='.*nope/tokenizer.json' cannot be "
                                        r"read \(No such file or directory\)") as err:
        read_tokenizer_file(path)
    assert "\n" not in str(err.value)


def test_missing_eot_token_is_a_data_error(bpe):
    with pytest.raises(DataError, match=r"^the file has no token '<\|eos\|>': set data.eot_token"):
        eot_id(bpe, "<|eos|>", "the file")


def test_ids_with_a_gap_size_the_vocabulary_by_the_highest_id(bpe):
    # A tokenizer.json whose end-of-text moved from id 0 to one past the last id: the ids need
    # more embedding rows than there are tokens (sizing by the count overflowed the byte table)
    spec = json.loads(bpe.to_str())
    count = bpe.get_vocab_size(with_added_tokens=True)
    spec["added_tokens"][0]["id"] = count
    spec["model"]["vocab"][EOT] = count
    gap = Tokenizer.from_str(json.dumps(spec))
    assert gap.get_vocab_size(with_added_tokens=True) == count
    assert id_space(gap) == count + 1 == len(token_byte_lengths(gap))
    enc = Encoder(gap, count)
    assert enc.vocab_size == count + 1
    assert enc.encode(["hello"]).tolist()[-1] == count
