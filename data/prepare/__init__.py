"""Build a dataset's shards + manifest from a data config; the CLI is data/prepare/__main__.py.

Builds into `<name>.tmp-<pid>` beside the target and renames it into place at the end, so a
killed run leaves no manifest at the target and the next run starts cleanly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.config import check_int, check_keys, check_name
from data.dataset import TokenDataset
from data.errors import DataError
from data.shards import (
    MANIFEST,
    ShardWriter,
    atomic_write_bytes,
    canonical_hash,
    fsync_dir,
    make_manifest,
    prepare_command,
    read_manifest,
    write_manifest,
    write_token_bytes,
)
from data.synthetic import SyntheticSource
from data.text_source import HubSource, LocalSource, StdlibSource

# Keys every data config has, whatever its source; each source lists its own `options`.
GENERIC_KEYS = ("name", "source", "shard_tokens")
# Options that decide a text dataset's tokenizer: check_tokenizer compares, never fills them.
_TOKENIZER_OPTIONS = ("vocab_size", "tokenizer_path", "eot_token", "tokenizer_train_bytes")


Reporter = Callable[[str], None]


class Source(Protocol):
    """What prepare needs from a corpus + tokenizer (data.synthetic, data.text_source)."""

    options: tuple[str, ...]
    vocab_size: int  # valid after setup()
    eot_id: int  # valid after setup()
    config: dict[str, Any]  # the source's options, validated and normalized

    def check_inputs(self) -> None: ...  # DataError for a missing corpus or tokenizer, at once
    def tokenizer_spec(self) -> dict[str, Any]: ...  # config values that decide the tokenizer
    def planned_tokens(self) -> dict[str, int | None]: ...  # per split; None = unknown
    def setup(self, say: Reporter) -> None: ...  # load or learn the tokenizer
    def chunks(self) -> Iterator[tuple[str, np.ndarray, int, int | None]]: ...  # split, tokens,
    # documents, bytes of text (None where tokens are not text)
    def tokenizer(self) -> dict[str, Any]: ...  # the manifest's tokenizer entry
    def files(self) -> dict[str, bytes]: ...  # extra files for the dataset dir (tokenizer.json)
    def token_bytes(self) -> np.ndarray | None: ...
    def manifest_extra(self) -> dict[str, Any]: ...


SOURCES: dict[str, Callable[[Mapping[str, Any]], Source]] = {
    "synthetic": SyntheticSource,
    "hub": HubSource,
    "local": LocalSource,
    "stdlib": StdlibSource,
}


def build_source(data_cfg: Mapping[str, Any]) -> tuple[Source, dict[str, Any]]:
    """Validate a data config; returns the source and the normalized config that gets hashed."""
    kind = data_cfg.get("source")
    if kind not in SOURCES:
        raise DataError(
            f"data.source={kind!r} is not a known source (known: {', '.join(SOURCES)}): "
            "fix data.source"
        )
    factory = SOURCES[kind]
    check_keys(data_cfg, GENERIC_KEYS + factory.options, kind)  # type: ignore[attr-defined]
    name = check_name(data_cfg)
    shard_tokens = check_int(data_cfg, "shard_tokens", 1)
    source = factory(data_cfg)
    return source, {"name": name, "source": kind, **source.config, "shard_tokens": shard_tokens}


def check_tokenizer(dataset: TokenDataset, data_cfg: Mapping[str, Any]) -> None:
    """Refuse (DataError) a prepared dataset whose tokenizer is not the one data_cfg asks for.

    Only what decides the tokenizer is compared (vocab size, end-of-text token, the tokenizer file
    or the BPE's training sample), so a run may still override, say, data.train_tokens.
    """
    # A run reads shards, not the corpus: where the corpus came from (data.path) need not be given
    # again, so an option left null takes the value the dataset was built with. The options that
    # decide the tokenizer are compared below, never filled in.
    built = dataset.manifest.get("source") or {}
    if built.get("source") == data_cfg.get("source"):
        data_cfg = {
            k: built.get(k) if v is None and k not in _TOKENIZER_OPTIONS else v
            for k, v in data_cfg.items()
        }
    source, _ = build_source(data_cfg)
    entry = dataset.manifest.get("tokenizer") or {}
    # Manifests from before tokenizer specs recorded only the vocabulary size.
    have = entry.get("spec") or {"vocab_size": dataset.vocab_size}
    where = f"dataset '{dataset.name}' at {dataset.path}"
    for key, wanted in source.tokenizer_spec().items():
        if have.get(key) == wanted:
            continue
        if key == "tokenizer_sha256":
            raise DataError(
                f"data.tokenizer_path={data_cfg.get('tokenizer_path')!r} is not the tokenizer "
                f"{where} was built with (sha256 {str(wanted)[:12]} vs {str(have.get(key))[:12]}):"
                f" rebuild it with {prepare_command(dataset.name, True, dataset.path.parent)}"
            )
        raise DataError(
            f"{where} was tokenized with data.{key}={have.get(key)!r}, but this config has "
            f"data.{key}={wanted!r}: drop the override, or prepare this config under another "
            "name (python -m data.prepare data=<config> data.name=<new name> ...) and train on it"
        )


def prepare(
    data_cfg: Mapping[str, Any],
    data_dir: Path,
    force: bool = False,
    *,
    report: Reporter | None = None,
    progress: Any = None,
) -> Path:
    """Build dataset `data_cfg['name']` under data_dir unless an identical one is there already.

    Returns the dataset directory. Refuses (DataError) to replace a dataset built from another
    config unless force. report receives one-line messages; progress is an optional, not yet
    started rich Progress that shows one bar per split while shards are written.
    """
    say = report or (lambda _msg: None)
    source, cfg = build_source(data_cfg)
    data_dir = Path(data_dir)
    target = data_dir / cfg["name"]
    wanted = canonical_hash(cfg)
    if not force and _existing_is_current(target, wanted, cfg):
        say(f"{target} is already prepared from this config (hash {wanted[:12]}): nothing to do")
        return target
    if force and target.exists():
        _check_replaceable(target, cfg)
    # A wrong data.path or an unreachable hub is one error line: before any report, before
    # data_dir exists, and after the no-op check (a prepared dataset needs no corpus or network).
    source.check_inputs()
    data_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(data_dir, cfg["name"], say)
    tmp = data_dir / f"{cfg['name']}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        source.setup(say)
        splits = _write_splits(source, tmp, cfg["shard_tokens"], progress)
        for file, payload in source.files().items():
            atomic_write_bytes(tmp / file, payload)
        arr = source.token_bytes()
        token_bytes = write_token_bytes(tmp, arr, source.vocab_size) if arr is not None else None
        manifest = make_manifest(
            name=cfg["name"],
            vocab_size=source.vocab_size,
            eot_id=source.eot_id,
            tokenizer=source.tokenizer(),
            splits=splits,
            source=cfg,
            token_bytes=token_bytes,
            extra=source.manifest_extra(),
        )
        write_manifest(tmp, manifest)
        fsync_dir(tmp)
        _move_into_place(tmp, target, wanted, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {target}")
    return target


def _check_replaceable(target: Path, cfg: Mapping[str, Any]) -> None:
    """DataError unless force=true may replace target: only a dataset (or an empty folder),
    never a folder of the user's, and never one that holds the corpus being read."""
    if target.is_dir() and not any(target.iterdir()):
        return
    if not (target / MANIFEST).is_file():
        raise DataError(
            f"{target} exists but holds no {MANIFEST} (not a dataset), and force=true replaces "
            "only datasets: move it away or set data.name=<another name>"
        )
    corpus = cfg.get("path")
    if corpus and Path(corpus).expanduser().resolve().is_relative_to(target.resolve()):
        raise DataError(
            f"data.path={corpus!r} lies inside {target}, which force=true would replace: move "
            "the corpus out of it or set data.name=<another name>"
        )


def _existing_is_current(target: Path, wanted: str, cfg: Mapping[str, Any]) -> bool:
    """True when target holds a complete dataset built from the wanted config; DataError when it
    holds anything else (never delete what the user did not ask us to replace)."""
    if not target.exists():
        return False
    if not (target / MANIFEST).is_file():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
            return False
        raise DataError(
            f"{target} exists but holds no {MANIFEST} (not a dataset): move it away or set "
            "data.name=<another name>"
        )
    manifest = read_manifest(target)
    if manifest.get("config_hash") != wanted:
        built = manifest.get("source") or {}
        changed = [f"data.{k}={built.get(k)!r} there, {v!r} here"
                   for k, v in cfg.items() if built.get(k) != v]
        what = f" ({'; '.join(changed)})" if changed and built else ""
        raise DataError(
            f"{target} holds a dataset built from a different config{what}; pass force=true to "
            "rebuild it or set data.name=<another name>"
        )
    TokenDataset.open(target, verify=False)  # a truncated shard must not pass as "prepared"
    return True


def _write_splits(
    source: Source, directory: Path, shard_tokens: int, progress: Any
) -> dict[str, dict[str, Any]]:
    """Stream the source's chunks into one ShardWriter per split, all open at once (a text
    corpus interleaves train and val documents)."""
    planned = source.planned_tokens()
    writers = {s: ShardWriter(directory, s, source.vocab_size, shard_tokens) for s in planned}
    tasks: dict[str, Any] = {}
    try:
        with progress if progress is not None else contextlib.nullcontext():
            if progress is not None:
                tasks = {s: progress.add_task(s, total=n) for s, n in planned.items()}
            for split, tokens, documents, n_bytes in source.chunks():
                writers[split].append(tokens, documents, n_bytes)
                if progress is not None:
                    progress.advance(tasks[split], tokens.size)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    splits = {s: w.close() for s, w in writers.items()}
    for split, entry in splits.items():
        if not entry["tokens"]:
            total = sum(e["documents"] for e in splits.values())
            raise DataError(
                f"split '{split}' got no documents out of {total}: add documents or change "
                "data.val_fraction"
            )
    return splits


def _remove_stale_builds(data_dir: Path, name: str, say: Reporter) -> None:
    """Delete build dirs of `name` left by killed runs (their pid is gone), keep live ones."""
    for path in data_dir.glob(f"{glob.escape(name)}.*-*"):
        kind, _, pid = path.name[len(name) + 1 :].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            say(f"removing {path}, left by an interrupted prepare")
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier call in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(tmp: Path, target: Path, wanted: str, force: bool) -> None:
    old = None
    if force and target.exists():
        # A directory cannot be os.replace'd over a non-empty one: park the old dataset first.
        # A crash between the two renames leaves no target, which the next run rebuilds.
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError as e:
        # Another process finished the same dataset first: keep theirs if it is what we built.
        if (target / MANIFEST).is_file() and read_manifest(target).get("config_hash") == wanted:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise DataError(
            f"{target} appeared while this prepare ran and holds something else ({e.strerror}); "
            "pass force=true to replace it or set data.name=<another name>"
        ) from e
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
