"""Text corpora as prepare() sources: the hub, local files and the Python standard library.

A source streams documents, assigns each to train or val by a hash of its text, learns (or loads)
the tokenizer and yields token chunks in bounded batches; prepare() writes them to shards.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from data import text
from data import tokenizer as tk
from data.config import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_str,
)
from data.errors import DataError

SPLITS = ("train", "val")
# Options every text source has, after its own; the comments live in configs/data/_text.yaml.
TEXT_OPTIONS = (
    "vocab_size", "tokenizer_path", "tokenizer_train_bytes", "eot_token", "val_fraction",
    "max_documents", "batch_bytes",
)
# Documents per read from `datasets`: big enough to amortise its per-batch cost, small enough
# that one read of long documents stays a few MB.
_READ_DOCS = 256
_HASH_KEY = b"scaling-sweep-val-split"


def is_val(document: bytes, val_fraction: float) -> bool:
    """Whether a document belongs to val: a keyed hash of its bytes, read as a number in [0, 1).

    It depends on the text alone, so the split is the same whatever the document order, cap or
    parallelism, and exact duplicates never straddle train and val.
    """
    digest = hashlib.blake2b(document, digest_size=8, key=_HASH_KEY).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


class TextSource:
    """What the three text sources share; subclasses name their options and documents()."""

    kind_options: tuple[str, ...] = ()
    options: tuple[str, ...] = TEXT_OPTIONS
    _files: int | None = None  # how many files documents() found, where the source has files

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        own = self._validate(cfg)
        vocab_size = None if cfg["vocab_size"] is None else check_int(cfg, "vocab_size", 2, 2**32)
        path = check_str(cfg, "tokenizer_path", optional=True)
        common: dict[str, Any] = {
            "vocab_size": vocab_size,
            "tokenizer_path": path,
            "tokenizer_train_bytes": check_int(cfg, "tokenizer_train_bytes", 1),
            "eot_token": check_str(cfg, "eot_token"),
            "val_fraction": check_fraction(cfg, "val_fraction"),
            "max_documents": None if cfg["max_documents"] is None
            else check_int(cfg, "max_documents", 1),
            "batch_bytes": check_int(cfg, "batch_bytes", 1),
        }
        self._tokenizer_payload: bytes | None = None
        if path is not None:
            # The file's hash is part of the config: a changed file is a different dataset.
            self._tokenizer_payload = tk.read_tokenizer_file(path)
            common["tokenizer_sha256"] = tk.payload_hash(self._tokenizer_payload)
        elif vocab_size is None:
            raise DataError(
                "data.vocab_size=null needs data.tokenizer_path: set data.vocab_size (e.g. 8192) "
                "to train a BPE, or point data.tokenizer_path at a tokenizer.json"
            )
        else:
            tk.check_bpe_vocab(vocab_size)  # before any disk work, not after reading the corpus
        self.config = {**own, **common}
        self.vocab_size = vocab_size or 0  # the tokenizer's real size, once setup() has run
        self.eot_id = -1
        self._tokenizer: Any = None
        self._token_bytes: np.ndarray | None = None
        self._trained_bytes = 0
        self._documents_read = 0
        self._given: tuple[Any, int, int] | None = None  # the tokenizer file, once checked

    # --- what a subclass provides -------------------------------------------------------------
    def _validate(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def documents(self) -> Iterator[list[str]]:
        """Batches of document texts, in a fixed order, all of them (the cap is applied here)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts about the corpus for the manifest (files, versions)."""
        return {} if self._files is None else {"files": self._files}

    # --- the Source protocol ------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Raise DataError now for a corpus that cannot be found or reached, or a tokenizer file
        that does not fit: prepare() calls this before it reports anything or makes a directory.

        Not part of __init__: a training run builds the source too, and it must not need the
        corpus (it reads shards) nor the network.
        """
        if self._tokenizer_payload is not None:
            self._given_tokenizer()

    def _given_tokenizer(self) -> tuple[Any, int, int]:
        """data.tokenizer_path parsed and checked against the config: (tokenizer, size, eot id)."""
        if self._given is None:
            origin = f"data.tokenizer_path={self.config['tokenizer_path']!r}"
            tok = tk.tokenizer_from_bytes(self._tokenizer_payload or b"", origin)
            size = tk.id_space(tok)
            if self.config["vocab_size"] not in (None, size):
                raise DataError(
                    f"data.vocab_size={self.config['vocab_size']} but {origin} has token ids "
                    f"0..{size - 1}: set data.vocab_size=null (or to {size})"
                )
            self._given = tok, size, tk.eot_id(tok, self.config["eot_token"], origin)
        return self._given

    def tokenizer_spec(self) -> dict[str, Any]:
        """The config values that decide the tokenizer; training refuses a dataset whose differ."""
        keys = ["vocab_size", "eot_token"]
        keys += ["tokenizer_sha256"] if self.config["tokenizer_path"] else ["tokenizer_train_bytes"]
        return {k: self.config[k] for k in keys}

    def planned_tokens(self) -> dict[str, int | None]:
        return dict.fromkeys(SPLITS)  # unknown until the corpus is read

    def setup(self, say: Any) -> None:
        """Load the configured tokenizer.json, or train a BPE on the first train documents."""
        if self._tokenizer_payload is not None:
            tok, size, _ = self._given_tokenizer()
            payload = self._tokenizer_payload
            origin = f"data.tokenizer_path={self.config['tokenizer_path']!r}"
        else:
            budget = self.config["tokenizer_train_bytes"]
            say(f"training a byte-level BPE of {self.config['vocab_size']} tokens on up to "
                f"{budget / 1e6:g} MB of train documents")
            origin = "the trained tokenizer"
            tok = tk.train_bpe(self._train_sample(budget), self.config["vocab_size"],
                               self.config["eot_token"])
            payload = tk.to_bytes(tok)
            size = tk.id_space(tok)
            if size < self.config["vocab_size"]:
                say(f"the sample only supports {size} tokens, fewer than data.vocab_size="
                    f"{self.config['vocab_size']}: the dataset uses {size}")
        self._tokenizer, self._payload = tok, payload
        self.vocab_size = size
        self.eot_id = tk.eot_id(tok, self.config["eot_token"], origin)
        self._token_bytes = tk.token_byte_lengths(tok)
        if self._token_bytes is not None:
            # EOT marks a boundary, it is no text: even a tokenizer that does not flag it special
            # must not count its bytes, or bits per byte would be inflated.
            self._token_bytes[self.eot_id] = 0

    def _capped(self) -> Iterator[list[str]]:
        cap, seen = self.config["max_documents"], 0
        for batch in self.documents():
            if cap is not None and seen + len(batch) >= cap:
                yield batch[: cap - seen]
                return
            seen += len(batch)
            yield batch

    def _train_sample(self, budget: int) -> Iterator[list[str]]:
        fraction = self.config["val_fraction"]
        for batch in self._capped():
            train = [
                (d, len(b)) for d in batch
                if not is_val(b := d.encode("utf-8", "replace"), fraction)
            ]
            yield [d for d, _ in train]
            self._trained_bytes += sum(n for _, n in train)
            if self._trained_bytes >= budget:
                return

    def chunks(self) -> Iterator[tuple[str, np.ndarray, int, int]]:
        """(split, tokens, documents, bytes) chunks, each at most ~batch_bytes of text."""
        encoder = tk.Encoder(tk.eot_as_special(self._tokenizer, self.config["eot_token"]),
                             self.eot_id)
        fraction, limit = self.config["val_fraction"], self.config["batch_bytes"]
        pending: dict[str, list[str]] = {s: [] for s in SPLITS}
        pending_bytes = dict.fromkeys(SPLITS, 0)

        def flush(split: str) -> tuple[str, np.ndarray, int, int]:
            docs, n_bytes = pending[split], pending_bytes[split]
            pending[split], pending_bytes[split] = [], 0
            return split, encoder.encode(docs), len(docs), n_bytes

        for batch in self._capped():
            for doc in batch:
                raw = doc.encode("utf-8", "replace")
                split = "val" if is_val(raw, fraction) else "train"
                pending[split].append(doc)
                pending_bytes[split] += len(raw)
                self._documents_read += 1
                if pending_bytes[split] >= limit:
                    yield flush(split)
        for split in SPLITS:
            if pending[split]:
                yield flush(split)

    def tokenizer(self) -> dict[str, Any]:
        return {
            "kind": "file" if self.config["tokenizer_path"] else "byte-level-bpe",
            "file": tk.TOKENIZER_FILE,
            "hash": tk.payload_hash(self._payload),
            "vocab_size": self.vocab_size,
            "eot_token": self.config["eot_token"],
            "trained_on_bytes": self._trained_bytes or None,
            "spec": self.tokenizer_spec(),
        }

    def files(self) -> dict[str, bytes]:
        return {tk.TOKENIZER_FILE: self._payload}

    def token_bytes(self) -> np.ndarray | None:
        return self._token_bytes

    def manifest_extra(self) -> dict[str, Any]:
        return {"corpus": {"documents_read": self._documents_read, **self.describe()}}


class HubSource(TextSource):
    """A Hugging Face hub dataset by name (or a local copy of one), streamed."""

    kind_options = ("dataset", "config", "data_files", "revision", "split", "text_field")
    options = kind_options + TEXT_OPTIONS

    def _validate(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        files = cfg["data_files"]
        if files is not None and not (
            isinstance(files, str) or (isinstance(files, list) and all(
                isinstance(f, str) for f in files))
        ):
            raise DataError(
                f"data.data_files={files!r} must be null, a pattern or a list of patterns"
            )
        return {
            "dataset": check_str(cfg, "dataset"),
            "config": check_str(cfg, "config", optional=True),
            "data_files": files,
            "revision": check_str(cfg, "revision", optional=True),
            "split": check_str(cfg, "split"),
            "text_field": check_str(cfg, "text_field"),
        }

    _hub_answered = False

    def check_inputs(self) -> None:
        super().check_inputs()
        # Offline, `datasets` would take ~25 s of retries to fail: probe the hub first, in ~3 s.
        if not text.is_local(self.config["dataset"]):
            text.check_hub_reachable(self.config["dataset"])
            self._hub_answered = True

    def documents(self) -> Iterator[list[str]]:
        c = self.config
        if not self._hub_answered and not text.is_local(c["dataset"]):
            text.check_hub_reachable(c["dataset"])
        yield from text.stream_documents(
            c["dataset"], name=c["config"], data_files=c["data_files"], revision=c["revision"],
            split=c["split"], text_field=c["text_field"], batch_docs=_READ_DOCS,
            origin=f"data.dataset={c['dataset']!r}",
        )


class LocalSource(TextSource):
    """A folder, file or glob of .txt / .jsonl / .parquet files."""

    kind_options = ("path", "format", "text_field", "sample_by")
    options = kind_options + TEXT_OPTIONS

    def _validate(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        if cfg["path"] is None:
            raise DataError(
                "data.path is not set: pass data.path=<folder, file or glob of .txt/.jsonl/"
                ".parquet files>"
            )
        return {
            "path": check_str(cfg, "path"),
            "format": check_choice(cfg, "format", ("auto", "text", "json", "parquet")),
            "text_field": check_str(cfg, "text_field"),
            "sample_by": check_choice(cfg, "sample_by", ("document", "paragraph", "line")),
        }

    # The stream check_inputs() opened and its first batch (None: the files hold no documents),
    # handed to the first documents() call so the corpus is not opened once more for nothing.
    _opened: tuple[list[str] | None, Iterator[list[str]]] | None = None

    def check_inputs(self) -> None:
        """The path must name files of one known kind, and the first batch must read (the text
        field exists, the format fits): all before the BPE notice and before any directory."""
        super().check_inputs()
        stream = self._stream()
        self._opened = next(stream, None), stream

    def documents(self) -> Iterator[list[str]]:
        if self._opened is not None:
            (first, stream), self._opened = self._opened, None
            if first is not None:
                yield first
            yield from stream
            return
        yield from self._stream()

    def _stream(self) -> Iterator[list[str]]:
        c = self.config
        builder, files = text.local_files(c["path"], c["format"])
        self._files = len(files)
        extra = {"sample_by": c["sample_by"]} if builder == "text" else {}
        yield from text.stream_documents(
            builder, data_files=files, split="train", text_field=c["text_field"],
            batch_docs=_READ_DOCS, origin=f"data.path={c['path']!r}", **extra,
        )


class StdlibSource(TextSource):
    """This Python's standard library: its source, docstrings and pydoc's help topics."""

    kind_options = ("suffixes", "include_tests")
    options = kind_options + TEXT_OPTIONS

    def _validate(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        suffixes = cfg["suffixes"]
        if not isinstance(suffixes, list) or not suffixes or not all(
            isinstance(s, str) and s.startswith(".") for s in suffixes
        ):
            raise DataError(
                f"data.suffixes={suffixes!r} must be a list of file suffixes such as ['.py']"
            )
        return {"suffixes": list(suffixes), "include_tests": check_bool(cfg, "include_tests"),
                # The corpus is whatever this Python ships: a different version is other data.
                "python": platform.python_version()}

    _file_list: list[str] | None = None

    def check_inputs(self) -> None:
        super().check_inputs()
        self._stdlib_files()  # data.suffixes that match nothing fail here, before any output

    def _stdlib_files(self) -> list[str]:
        if self._file_list is None:
            self._file_list = text.stdlib_files(self.config["suffixes"],
                                                self.config["include_tests"])
        return self._file_list

    def documents(self) -> Iterator[list[str]]:
        files = self._stdlib_files()
        self._files = len(files)
        # A few test files are deliberately mis-encoded: replace their bad bytes, keep the rest.
        yield from text.stream_documents(
            "text", data_files=files, split="train", text_field="text", batch_docs=_READ_DOCS,
            origin="the standard library corpus", sample_by="document", encoding_errors="replace",
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "python": platform.python_version()}

