"""Tests for data.dataset.TokenDataset: opening, memory-mapping, and every refusal to open.

Damage is done to real files on disk (truncation, a flipped byte, a missing shard) and each
error must name the file and the rebuild command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data import DataError, TokenDataset
from data.shards import MANIFEST, ShardWriter, make_manifest, write_manifest, write_token_bytes


def build_toy(root: Path, name: str = "toy", token_bytes: bool = False) -> Path:
    """Two splits of known tokens: train 0..24 in shards of 10, val 100..106."""
    path = root / name
    path.mkdir(parents=True)
    splits = {}
    for split, tokens in {"train": np.arange(25), "val": np.arange(100, 107)}.items():
        with ShardWriter(path, split, vocab_size=300, shard_tokens=10) as writer:
            writer.append(tokens, documents=1)
        splits[split] = writer.close()
    tb = write_token_bytes(path, np.arange(300) % 4, 300) if token_bytes else None
    manifest = make_manifest(
        name=name, vocab_size=300, eot_id=0, tokenizer={"kind": "toy", "hash": "x"},
        splits=splits, source={"name": name}, token_bytes=tb,
    )
    write_manifest(path, manifest)
    return path


def test_open_maps_each_shard_read_only(tmp_path):
    ds = TokenDataset.open(build_toy(tmp_path, token_bytes=True))
    assert (ds.name, ds.vocab_size, ds.eot_id) == ("toy", 300, 0)
    shards = ds.tokens("train")
    assert [len(s) for s in shards] == [10, 10, 5]
    assert all(isinstance(s, np.memmap) and not s.flags.writeable for s in shards)
    np.testing.assert_array_equal(np.concatenate(shards), np.arange(25))
    np.testing.assert_array_equal(ds.tokens("val")[0], np.arange(100, 107))
    assert ds.num_tokens("train") == 25 and ds.num_tokens("val") == 7
    assert ds.splits == ["train", "val"]
    np.testing.assert_array_equal(ds.token_bytes, np.arange(300) % 4)
    assert ds.config_hash == ds.manifest["config_hash"]


def test_not_prepared_names_the_prepare_command(tmp_path):
    with pytest.raises(DataError) as err:
        TokenDataset.open(tmp_path / "synthetic")
    msg = str(err.value)
    assert "dataset 'synthetic' is not prepared at" in msg and "(no manifest.json)" in msg
    assert msg.endswith("run python -m data.prepare data=synthetic") and "\n" not in msg
    with pytest.raises(DataError, match=r"data=<config> data.name=mine$"):
        TokenDataset.open(tmp_path / "mine")


def test_truncated_shard_is_refused_even_without_verify(tmp_path):
    path = build_toy(tmp_path)
    shard = path / "train_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"train_00001.bin is truncated .*18 bytes on disk, the "
                       r"manifest says 20: rebuild it with .* force=true"):
        TokenDataset.open(path, verify=False)


def test_flipped_byte_is_caught_by_verify_only(tmp_path):
    path = build_toy(tmp_path)
    shard = path / "val_00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"val_00000.bin is corrupted \(sha256 mismatch\)"):
        TokenDataset.open(path)
    assert TokenDataset.open(path, verify=False).tokens("val")[0][1] == 101 ^ (1 << 8)


def test_missing_shard_and_bad_token_bytes_are_named(tmp_path):
    path = build_toy(tmp_path, token_bytes=True)
    (path / "token_bytes.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"token_bytes .*token_bytes.npy is corrupted"):
        TokenDataset.open(path)
    (path / "train_00002.bin").unlink()
    with pytest.raises(DataError, match=r"shard .*train_00002.bin is missing"):
        TokenDataset.open(path)


def test_unknown_split_and_malformed_manifest(tmp_path):
    path = build_toy(tmp_path)
    with pytest.raises(DataError, match=r"has no split 'test' \(it has: train, val\)"):
        TokenDataset.open(path).tokens("test")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["splits"] = {}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="lists no splits"):
        TokenDataset.open(path)
    del manifest["splits"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"malformed \(bad field 'splits'\)"):
        TokenDataset.open(path)
    manifest["version"] = 99
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="version 99"):
        TokenDataset.open(path)
