"""Tests for data.shards: the raw shard format, the streaming ShardWriter and the manifest helpers.

Every check reads the bytes back from disk rather than trusting the writer's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from data.errors import DataError
from data.shards import (
    FORMAT,
    MANIFEST,
    VERSION,
    ShardWriter,
    atomic_write_bytes,
    canonical_hash,
    dtype_for_vocab,
    make_manifest,
    read_manifest,
    write_manifest,
    write_token_bytes,
)


def test_dtype_for_vocab_picks_smallest_little_endian_type():
    assert dtype_for_vocab(2) == np.dtype("<u2")
    assert dtype_for_vocab(65536) == np.dtype("<u2")
    assert dtype_for_vocab(65537) == np.dtype("<u4")
    assert dtype_for_vocab(512).name == "uint16"
    with pytest.raises(DataError, match="vocab_size=0"):
        dtype_for_vocab(0)


def test_writer_rolls_shards_at_size_and_checksums_match_disk(tmp_path):
    chunks = [np.arange(7), np.arange(100, 113), np.arange(200, 205)]  # 25 tokens
    with ShardWriter(tmp_path, "train", vocab_size=512, shard_tokens=10) as writer:
        for chunk in chunks:
            writer.append(chunk, documents=2)
    entry = writer.close()
    assert [s["tokens"] for s in entry["shards"]] == [10, 10, 5]
    assert [s["file"] for s in entry["shards"]] == [
        "train_00000.bin", "train_00001.bin", "train_00002.bin"
    ]
    assert entry["tokens"] == 25 and entry["documents"] == 6 and entry["bytes"] is None
    on_disk = []
    for shard in entry["shards"]:
        raw = (tmp_path / shard["file"]).read_bytes()
        assert len(raw) == shard["tokens"] * 2  # no header, two bytes a token
        assert hashlib.sha256(raw).hexdigest() == shard["sha256"]
        on_disk.append(np.frombuffer(raw, dtype="<u2"))
    np.testing.assert_array_equal(np.concatenate(on_disk), np.concatenate(chunks))
    assert sorted(p.name for p in tmp_path.iterdir()) == [s["file"] for s in entry["shards"]]


def test_writer_exact_multiple_leaves_no_empty_shard(tmp_path):
    with ShardWriter(tmp_path, "val", vocab_size=512, shard_tokens=4) as writer:
        writer.append(np.arange(8))
    assert [s["tokens"] for s in writer.close()["shards"]] == [4, 4]
    assert len(list(tmp_path.iterdir())) == 2


def test_end_shard_cuts_early_and_is_idempotent(tmp_path):
    with ShardWriter(tmp_path, "train", vocab_size=512, shard_tokens=10) as writer:
        writer.append(np.arange(3))
        writer.end_shard()
        writer.end_shard()
        writer.append(np.arange(12))
    assert [s["tokens"] for s in writer.close()["shards"]] == [3, 10, 2]


def test_writer_uses_uint32_above_65536_and_is_little_endian(tmp_path):
    tokens = np.array([0, 1, 65535, 65536, 69999], dtype=np.int64)
    with ShardWriter(tmp_path, "train", vocab_size=70000, shard_tokens=100) as writer:
        writer.append(tokens)
    raw = (tmp_path / "train_00000.bin").read_bytes()
    assert len(raw) == 5 * 4
    assert raw[12:16] == (65536).to_bytes(4, "little")
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<u4"), tokens)


def test_writer_counts_bytes_only_when_every_chunk_knows_them(tmp_path):
    with ShardWriter(tmp_path, "a", vocab_size=512, shard_tokens=100) as writer:
        writer.append(np.arange(3), n_bytes=10)
        writer.append(np.arange(3), n_bytes=5)
    assert writer.close()["bytes"] == 15
    with ShardWriter(tmp_path, "b", vocab_size=512, shard_tokens=100) as writer:
        writer.append(np.arange(3), n_bytes=10)
        writer.append(np.arange(3))
    assert writer.close()["bytes"] is None


@pytest.mark.parametrize("bad", [[0, 512], [-1, 3]])
def test_writer_rejects_ids_outside_vocab(tmp_path, bad):
    writer = ShardWriter(tmp_path, "train", vocab_size=512, shard_tokens=10)
    with pytest.raises(DataError, match=r"outside 0\.\.511"):
        writer.append(np.array(bad))


def test_writer_abort_removes_the_partial_shard_only(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, "t", 512, 4) as writer:
        writer.append(np.arange(6))  # one finished shard, one partial
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["t_00000.bin"]


def test_token_bytes_and_manifest_round_trip(tmp_path):
    entry = write_token_bytes(tmp_path, np.array([0, 1, 2, 3]), vocab_size=4)
    assert entry["file"] == "token_bytes.npy"
    np.testing.assert_array_equal(np.load(tmp_path / entry["file"]), [0, 1, 2, 3])
    with pytest.raises(DataError, match=r"expected non-negative ints of shape \(4,\)"):
        write_token_bytes(tmp_path, np.array([1, 2]), vocab_size=4)
    source = {"name": "toy", "source": "files", "x": 1}
    manifest = make_manifest(
        name="toy", vocab_size=4, eot_id=3, tokenizer={"kind": "bpe", "hash": "h"},
        splits={"train": {"tokens": 0, "documents": 0, "bytes": None, "shards": []}},
        source=source, token_bytes=entry, extra={"note": 1},
    )
    assert list(manifest)[:6] == ["format", "version", "name", "vocab_size", "dtype", "eot_id"]
    assert manifest["format"] == FORMAT and manifest["version"] == VERSION
    assert manifest["config_hash"] == canonical_hash(source) and manifest["note"] == 1
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == json.loads(json.dumps(manifest))


def test_read_manifest_rejects_foreign_format_and_garbage(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": 2}))
    with pytest.raises(DataError, match=f"version 2, but this code reads '{FORMAT}' version 1"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="manifest.json is unreadable"):
        read_manifest(tmp_path)


def test_canonical_hash_ignores_key_order_not_values():
    assert canonical_hash({"a": 1, "b": 2}) == canonical_hash({"b": 2, "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})
    assert len(canonical_hash({})) == 64


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
