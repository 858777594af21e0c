"""Read-only access to a prepared dataset: checks the manifest and shards, then memory-maps them.

Opening fails loudly (DataError naming the file and the fix) on anything that would otherwise
train silently on wrong data: not prepared, foreign format, truncated or corrupted shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DataError
from data.shards import MANIFEST, dtype_for_vocab, prepare_command, read_manifest, sha256_file


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
        """Open a dataset directory; verify=True also checks every shard's sha256."""
        path = Path(path)
        rebuild = f"rebuild it with {prepare_command(path.name, force=True)}"
        if not (path / MANIFEST).is_file():
            raise DataError(
                f"dataset '{path.name}' is not prepared at {path} (no {MANIFEST}): "
                f"run {prepare_command(path.name)}"
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
        for file, tokens, sha256 in shards:
            _check_file("shard", path / file, tokens * dtype.itemsize, sha256, verify, rebuild)
        tokenizer = manifest.get("tokenizer") or {}
        if tokenizer.get("file"):  # text corpora ship their tokenizer.json, hashed
            _check_file("tokenizer", path / tokenizer["file"], None, tokenizer.get("hash", ""),
                        verify, rebuild)
        token_bytes = None
        if manifest.get("token_bytes"):
            entry = manifest["token_bytes"]
            file = path / entry["file"]
            _check_file("token_bytes", file, None, entry["sha256"], verify, rebuild)
            token_bytes = np.load(file, allow_pickle=False)
            if token_bytes.shape != (vocab_size,):
                raise DataError(
                    f"{file} has shape {token_bytes.shape}, expected ({vocab_size},): {rebuild}"
                )
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


def _check_file(
    kind: str, file: Path, size_bytes: int | None, sha256: str, verify: bool, rebuild: str
) -> None:
    if not file.is_file():
        raise DataError(f"{kind} {file} is missing: {rebuild}")
    actual = file.stat().st_size
    if size_bytes is not None and actual != size_bytes:
        raise DataError(
            f"{kind} {file} is truncated or overwritten: {actual} bytes on disk, the manifest "
            f"says {size_bytes}: {rebuild}"
        )
    if verify and sha256_file(file) != sha256:
        raise DataError(f"{kind} {file} is corrupted (sha256 mismatch): {rebuild}")
