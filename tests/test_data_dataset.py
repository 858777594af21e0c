"""Tests for data.dataset.TokenDataset: opening, memory-mapping, and every refusal to open.

Damage is done to real files on disk (truncation, a flipped byte, a missing shard) and each
error must name the file and the rebuild command.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import data.dataset
from data import DataError, TokenDataset
from data.dataset import VERIFIED_CACHE
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
    # The folder it looked in, which is not the default: the command builds the dataset there
    assert msg.endswith(f"run python -m data.prepare data=synthetic paths.data_dir={tmp_path}")
    assert "\n" not in msg
    with pytest.raises(DataError, match=r"data=<config> data.name=mine paths.data_dir=\S+$"):
        TokenDataset.open(tmp_path / "mine")


def test_a_dataset_in_the_default_folder_needs_no_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        TokenDataset.open(Path("data_cache") / "synthetic")
    assert str(err.value).endswith("run python -m data.prepare data=synthetic")


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


@pytest.fixture
def hashed(monkeypatch):
    """Names of the files TokenDataset.open hashes, in order."""
    calls: list[str] = []
    real = data.dataset.sha256_file

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(data.dataset, "sha256_file", counting)
    return calls


def test_verified_files_are_not_hashed_again(tmp_path, hashed):
    path = build_toy(tmp_path, token_bytes=True)
    files = ["train_00000.bin", "train_00001.bin", "train_00002.bin", "val_00000.bin",
             "token_bytes.npy"]
    TokenDataset.open(path)
    assert hashed == files
    cache = json.loads((path / VERIFIED_CACHE).read_text())["files"]
    assert sorted(cache) == sorted(files)
    manifest = json.loads((path / MANIFEST).read_text())
    assert cache["val_00000.bin"]["sha256"] == manifest["splits"]["val"]["shards"][0]["sha256"]
    assert cache["val_00000.bin"]["size"] == 14
    assert VERIFIED_CACHE not in (path / MANIFEST).read_text()
    hashed.clear()
    ds = TokenDataset.open(path)
    assert hashed == [] and ds.num_tokens("train") == 25
    # verify=False neither hashes nor touches the cache.
    before = (path / VERIFIED_CACHE).stat().st_mtime_ns
    TokenDataset.open(path, verify=False)
    assert hashed == [] and (path / VERIFIED_CACHE).stat().st_mtime_ns == before


def test_same_size_corruption_after_a_verified_open_is_caught(tmp_path, hashed):
    path = build_toy(tmp_path)
    TokenDataset.open(path)
    shard = path / "train_00001.bin"
    st = shard.stat()
    time.sleep(0.05)  # file clocks tick every few ms: let the write's ctime differ from the cached
    with open(shard, "r+b") as f:  # in place: same inode, same size
        f.seek(4)
        f.write(b"\xff\xff")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert shard.stat().st_size == st.st_size and shard.stat().st_ino == st.st_ino
    hashed.clear()
    with pytest.raises(DataError, match=r"train_00001.bin is corrupted \(sha256 mismatch\)"):
        TokenDataset.open(path)
    assert hashed == ["train_00001.bin"]  # train_00000.bin, untouched, is still vouched for
    # Setting the mtime back by hand does not hide the edit: the ctime moved on with the write.
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match="train_00001.bin is corrupted"):
        TokenDataset.open(path)


def test_any_stat_change_rehashes_and_a_rebuilt_file_is_cached_anew(tmp_path, hashed, monkeypatch):
    path = build_toy(tmp_path)
    TokenDataset.open(path)
    shard = path / "val_00000.bin"
    # Same bytes, new inode (as a copy or a restore from backup): re-hashed, then cached again.
    copy = path / "copy.tmp"
    copy.write_bytes(shard.read_bytes())
    os.replace(copy, shard)
    hashed.clear()
    TokenDataset.open(path)
    assert hashed == ["val_00000.bin"]
    hashed.clear()
    TokenDataset.open(path)
    assert hashed == []
    # A file that changes while it is hashed verifies (its bytes were right) but is not cached.
    counting = data.dataset.sha256_file

    def written_meanwhile(file):
        digest = counting(file)
        os.utime(file, ns=(0, file.stat().st_mtime_ns + 1))
        return digest

    monkeypatch.setattr(data.dataset, "sha256_file", written_meanwhile)
    (path / VERIFIED_CACHE).unlink()
    hashed.clear()
    TokenDataset.open(path)
    assert len(hashed) == 4 and not (path / VERIFIED_CACHE).exists()


def test_a_bad_or_unwritable_cache_only_costs_hashing(tmp_path, hashed, monkeypatch):
    path = build_toy(tmp_path)
    (path / VERIFIED_CACHE).write_text("{not json")
    TokenDataset.open(path)
    assert len(hashed) == 4 and json.loads((path / VERIFIED_CACHE).read_text())["files"]
    # A cache vouching for another checksum (a rebuilt manifest, a forged entry) is not trusted.
    cache = json.loads((path / VERIFIED_CACHE).read_text())
    cache["files"]["train_00000.bin"]["sha256"] = "0" * 64
    (path / VERIFIED_CACHE).write_text(json.dumps(cache))
    hashed.clear()
    TokenDataset.open(path)
    assert hashed == ["train_00000.bin"]
    # A read-only dataset directory (a shared mount; chmod would not stop a test run as root, so
    # the write fails here as it would there): opening works and verifies every time.
    def read_only(file, payload):
        raise PermissionError(13, "Read-only file system", str(file))

    (path / VERIFIED_CACHE).unlink()
    monkeypatch.setattr(data.dataset, "atomic_write_bytes", read_only)
    hashed.clear()
    TokenDataset.open(path)
    TokenDataset.open(path)
    assert len(hashed) == 8 and not (path / VERIFIED_CACHE).exists()
