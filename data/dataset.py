"""Read-only access to a prepared dataset: checks the manifest and shards, then memory-maps them.

Opening fails loudly (DataError naming the file and the fix) on anything that would otherwise
train silently on wrong data: not prepared, foreign format, truncated or corrupted shards.
Checksums already verified are remembered in VERIFIED_CACHE, keyed by each file's stat.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DataError
from data.shards import (
    MANIFEST,
    atomic_write_bytes,
    dtype_for_vocab,
    prepare_command,
    read_manifest,
    sha256_file,
)

# Hashing a 20 GB corpus takes ~20 s per run start. After a file verifies, its stat and sha256 go
# here; a later open re-hashes only files whose stat changed. Not in the manifest, never written
# by prepare: a rebuilt dataset is a new directory, and a missing or unreadable cache costs only
# the hashing it would have saved.
VERIFIED_CACHE = ".verified.json"


class TokenDataset:
    """A prepared dataset directory: manifest plus one read-only memmap per shard."""

    def __init__(
        self, path: Path, manifest: dict[str, Any], token_bytes: np.ndarray | None
    ) -> None:
        """Use TokenDataset.open(path); this constructor trusts an already checked manifest."""
        self.path = path
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.vocab_size: int = int(manifest["vocab_size"])
        self.eot_id: int = int(manifest["eot_id"])
        self.config_hash: str = manifest.get("config_hash", "")
        self.dtype = dtype_for_vocab(self.vocab_size)
        self.token_bytes = token_bytes
        self._memmaps: dict[str, list[np.ndarray]] = {}

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> TokenDataset:
        """Open a dataset directory; verify=True also checks every shard's sha256 (cached)."""
        path = Path(path)
        rebuild = f"rebuild it with {prepare_command(path.name, True, path.parent)}"
        if not (path / MANIFEST).is_file():
            raise DataError(
                f"dataset '{path.name}' is not prepared at {path} (no {MANIFEST}): "
                f"run {prepare_command(path.name, data_dir=path.parent)}"
            )
        manifest = read_manifest(path)
        try:
            vocab_size = int(manifest["vocab_size"])
            dtype = dtype_for_vocab(vocab_size)
            shards = [
                (s["file"], int(s["tokens"]), s["sha256"])
                for entry in manifest["splits"].values()
                for s in entry["shards"]
            ]
            _ = int(manifest["eot_id"]), str(manifest["name"])  # fail here, not in a trainer
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{path / MANIFEST} is malformed (bad field {e}): {rebuild}") from e
        if manifest.get("dtype") != dtype.name:
            raise DataError(
                f"{path / MANIFEST} says dtype {manifest.get('dtype')!r} but vocab_size "
                f"{vocab_size} needs {dtype.name}: {rebuild}"
            )
        if not manifest["splits"]:
            raise DataError(f"{path / MANIFEST} lists no splits: {rebuild}")
        checker = _FileChecker(path, verify, rebuild)
        for file, tokens, sha256 in shards:
            checker.check("shard", file, tokens * dtype.itemsize, sha256)
        tokenizer = manifest.get("tokenizer") or {}
        if tokenizer.get("file"):  # text corpora ship their tokenizer.json, hashed
            checker.check("tokenizer", tokenizer["file"], None, tokenizer.get("hash", ""))
        token_bytes = None
        if manifest.get("token_bytes"):
            entry = manifest["token_bytes"]
            file = path / entry["file"]
            checker.check("token_bytes", entry["file"], None, entry["sha256"])
            token_bytes = np.load(file, allow_pickle=False)
            if token_bytes.shape != (vocab_size,):
                raise DataError(
                    f"{file} has shape {token_bytes.shape}, expected ({vocab_size},): {rebuild}"
                )
        checker.save()
        return cls(path, manifest, token_bytes)

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def _split(self, split: str) -> dict[str, Any]:
        try:
            return self.manifest["splits"][split]
        except KeyError:
            raise DataError(
                f"dataset '{self.name}' at {self.path} has no split '{split}' "
                f"(it has: {', '.join(self.splits)}): use one of those"
            ) from None

    def tokens(self, split: str) -> list[np.ndarray]:
        """One read-only memmap per shard of `split`, in order (cached after the first call)."""
        entry = self._split(split)
        if split not in self._memmaps:
            # mmap cannot map an empty file, and an empty shard holds nothing to read anyway.
            self._memmaps[split] = [
                np.memmap(self.path / s["file"], dtype=self.dtype, mode="r")
                if s["tokens"] else np.empty(0, self.dtype)
                for s in entry["shards"]
            ]
        return self._memmaps[split]

    def num_tokens(self, split: str) -> int:
        return int(self._split(split)["tokens"])

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.num_tokens(s):,}" for s in self.splits)
        return f"TokenDataset({str(self.path)!r}, vocab_size={self.vocab_size}, {counts})"


class _FileChecker:
    """Size checks always; sha256 checks when verify, skipping files the cache vouches for."""

    def __init__(self, path: Path, verify: bool, rebuild: str) -> None:
        self.path, self.verify, self.rebuild = path, verify, rebuild
        self.cached = _read_cache(path / VERIFIED_CACHE) if verify else {}
        self.verified: dict[str, dict[str, Any]] = {}

    def check(self, kind: str, name: str, size_bytes: int | None, sha256: str) -> None:
        file = self.path / name
        if not file.is_file():
            raise DataError(f"{kind} {file} is missing: {self.rebuild}")
        before = file.stat()
        if size_bytes is not None and before.st_size != size_bytes:
            raise DataError(
                f"{kind} {file} is truncated or overwritten: {before.st_size} bytes on disk, the "
                f"manifest says {size_bytes}: {self.rebuild}"
            )
        if not self.verify:
            return
        entry = {**_stat_key(before), "sha256": sha256}
        if self.cached.get(name) == entry:
            self.verified[name] = entry
            return
        if sha256_file(file) != sha256:
            raise DataError(f"{kind} {file} is corrupted (sha256 mismatch): {self.rebuild}")
        # A file written to while it was hashed may not hold what was hashed: do not vouch for it.
        if _stat_key(file.stat()) == _stat_key(before):
            self.verified[name] = entry

    def save(self) -> None:
        """Rewrite the cache when it changed; entries of files not in this manifest are dropped."""
        if not self.verify or self.verified == self.cached:
            return
        payload = json.dumps({"files": self.verified}, indent=1, sort_keys=True) + "\n"
        # A read-only dataset directory (shared or mounted) just verifies every time. Atomic: a
        # run opening the dataset meanwhile reads the old cache or the new one, whole.
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.path / VERIFIED_CACHE, payload.encode())


def _stat_key(st: os.stat_result) -> dict[str, int]:
    # Any write changes mtime or at least ctime (which, unlike mtime, cannot be set back by hand);
    # a copy or rebuild gets a new inode. A size-preserving in-place edit is thus re-hashed.
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }


def _read_cache(file: Path) -> dict[str, dict[str, Any]]:
    """The cache's entries, or none when it is missing, unreadable or malformed."""
    try:
        files = json.loads(file.read_bytes())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}
