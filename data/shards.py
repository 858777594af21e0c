"""On-disk format of a prepared dataset: raw little-endian token shards plus manifest.json.

Everything that writes the format lives here (streaming ShardWriter, token_bytes, manifest); the
reader is data.dataset.TokenDataset. A manifest's presence means the dataset is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from data.errors import DataError

FORMAT = "scaling-sweep-shards"
VERSION = 1
MANIFEST = "manifest.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
_PARTIAL = ".partial"
_HASH_BLOCK_BYTES = 1 << 22
_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Smallest little-endian unsigned dtype that holds every token id below vocab_size."""
    if not 1 <= vocab_size <= 2**32:
        raise DataError(f"vocab_size={vocab_size} is outside 1..2**32: fix the tokenizer/config")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj, so equal configs hash equal whatever the key order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make renames inside directory durable (a crash after rename must not lose the entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], tmp: Path | None = None) -> None:
    """Call write(handle) on a temp file (default `<name>.tmp-<pid>` beside path), fsync it and
    rename it over path, so readers see either the old file or the whole new one."""
    path = Path(path)
    tmp = tmp or path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None:
            # Errors raised inside `write` (a full disk mid-torch.save) name no file: name it.
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write payload to path so that readers see either the old file or the whole new one."""
    atomic_write(path, lambda f: f.write(payload))


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> Path:
    """Write manifest.json atomically; call it last, after every shard is on disk."""
    path = Path(directory) / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def prepare_command(name: str, force: bool = False, data_dir: Path | None = None) -> str:
    """The command that (re)builds dataset `name` (into `data_dir`, when given), for messages."""
    # A dataset named after a config file is built by that config; otherwise the name was set
    # on the command line and we cannot know which config it came from.
    if (_CONFIG_DIR / "data" / f"{name}.yaml").is_file():
        cmd = f"python -m data.prepare data={name}"
    else:
        cmd = f"python -m data.prepare data=<config> data.name={name}"
    if data_dir is not None and Path(data_dir).resolve() != _default_data_dir():
        # Without it the command would build into the default folder, and the run, looking
        # where it was told, would fail again
        cmd += f" paths.data_dir={Path(data_dir).resolve()}"
    return cmd + (" force=true" if force else "")


def _default_data_dir() -> Path:
    """configs/paths/default.yaml's data_dir, resolved as from this process."""
    return (Path(os.environ.get("SCALING_ROOT") or ".") / "data_cache").resolve()


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse directory/manifest.json and check its format; DataError when it is not ours."""
    path = Path(directory) / MANIFEST
    directory = Path(directory)
    rebuild = f"rebuild it with {prepare_command(directory.name, True, directory.parent)}"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__}): {rebuild}") from e
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a JSON object: {rebuild}")
    fmt, version = manifest.get("format"), manifest.get("version")
    if fmt != FORMAT or version != VERSION:
        raise DataError(
            f"{path} has format {fmt!r} version {version!r}, but this code reads {FORMAT!r} "
            f"version {VERSION}: {rebuild}"
        )
    return manifest


def write_token_bytes(directory: Path, token_bytes: np.ndarray, vocab_size: int) -> dict[str, str]:
    """Save each token's UTF-8 byte length (0 for specials); returns the manifest entry."""
    arr = np.asarray(token_bytes)
    if arr.shape != (vocab_size,) or arr.dtype.kind not in "iu" or (arr < 0).any():
        raise DataError(
            f"token_bytes has shape {arr.shape} dtype {arr.dtype}, expected non-negative ints "
            f"of shape ({vocab_size},): fix the tokenizer export"
        )
    path = Path(directory) / TOKEN_BYTES_FILE
    buffer = io.BytesIO()
    np.save(buffer, arr.astype("<i4"))
    atomic_write_bytes(path, buffer.getvalue())
    return {"file": TOKEN_BYTES_FILE, "sha256": sha256_file(path)}


def make_manifest(
    *,
    name: str,
    vocab_size: int,
    eot_id: int,
    tokenizer: Mapping[str, Any],
    splits: Mapping[str, Mapping[str, Any]],
    source: Mapping[str, Any],
    token_bytes: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest in the documented key order; extra adds source-specific sections."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "vocab_size": int(vocab_size),
        "dtype": dtype_for_vocab(vocab_size).name,
        "eot_id": int(eot_id),
        "tokenizer": dict(tokenizer),
        "splits": {k: dict(v) for k, v in splits.items()},
        "token_bytes": dict(token_bytes) if token_bytes is not None else None,
        "source": dict(source),
        "config_hash": canonical_hash(dict(source)),
    }
    manifest.update(extra or {})
    return manifest


class ShardWriter:
    """Streams one split's tokens into fixed-size shards, hashing them on the way.

    Memory stays bounded by the caller's chunk size: tokens go straight to the open file. A shard
    is written as `<file>.partial` and renamed when full, so a finished name is a finished shard.
    """

    def __init__(self, directory: Path, split: str, vocab_size: int, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise DataError(f"shard_tokens={shard_tokens} must be >= 1: set data.shard_tokens")
        self.directory = Path(directory)
        self.split = split
        self.vocab_size = vocab_size
        self.dtype = dtype_for_vocab(vocab_size)
        self.shard_tokens = shard_tokens
        self.tokens = 0
        self.documents = 0
        self.n_bytes: int | None = 0
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._hash: Any = None
        self._in_shard = 0
        self._closed = False

    def _shard_name(self) -> str:
        return f"{self.split}_{len(self.shards):05d}.bin"

    def _open_shard(self) -> None:
        self._file = open(self.directory / (self._shard_name() + _PARTIAL), "wb")  # noqa: SIM115
        self._hash = hashlib.sha256()
        self._in_shard = 0

    def _finish_shard(self) -> None:
        name = self._shard_name()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.directory / (name + _PARTIAL), self.directory / name)
        digest = self._hash.hexdigest()
        self.shards.append({"file": name, "tokens": self._in_shard, "sha256": digest})

    def append(self, tokens: np.ndarray, documents: int = 1, n_bytes: int | None = None) -> None:
        """Append a chunk holding `documents` whole documents (n_bytes of text, if known)."""
        if self._closed:
            raise RuntimeError("ShardWriter.append after close")
        arr = np.asarray(tokens)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise DataError(f"{self.split}: tokens must be a 1-D integer array, got {arr.dtype}")
        # Catch tokenizer bugs here: a silent cast would wrap ids into valid-looking garbage.
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise DataError(
                f"{self.split}: token ids span {int(arr.min())}..{int(arr.max())}, outside "
                f"0..{self.vocab_size - 1}: fix vocab_size or the tokenizer"
            )
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.documents += documents
        self.n_bytes = None if n_bytes is None or self.n_bytes is None else self.n_bytes + n_bytes
        while arr.size:
            if self._file is None:
                self._open_shard()
            take = min(arr.size, self.shard_tokens - self._in_shard)
            view = memoryview(arr[:take]).cast("B")
            self._file.write(view)
            self._hash.update(view)
            self._in_shard += take
            self.tokens += take
            arr = arr[take:]
            if self._in_shard == self.shard_tokens:
                self._finish_shard()

    def end_shard(self) -> None:
        """Finish the current shard early, e.g. so that a shard never spans two source files."""
        if self._file is not None:
            self._finish_shard()

    def close(self) -> dict[str, Any]:
        """Flush the last shard and return this split's manifest entry."""
        if not self._closed:
            if self._file is not None:
                self._finish_shard()
            self._closed = True
        return {
            "tokens": self.tokens,
            "documents": self.documents,
            "bytes": self.n_bytes if self.tokens else None,
            "shards": list(self.shards),
        }

    def abort(self) -> None:
        """Drop the shard being written; finished shards stay (the caller owns the directory)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            (self.directory / (self._shard_name() + _PARTIAL)).unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
