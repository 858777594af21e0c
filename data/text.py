"""Document streams for text corpora, all read through Hugging Face `datasets` in streaming mode.

The hub, local files (`text`/`json`/`parquet` builders) and the Python standard library share one
code path, stream_documents(); only how the files are named differs. `datasets` loads lazily.
"""

from __future__ import annotations

import glob
import os
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote
from urllib.request import Request, urlopen

from data.errors import DataError, first_line

# A file's suffix (after stripping a compression suffix) -> the `datasets` builder that reads it.
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
# The hub probe: long enough for a slow link, short enough that offline fails at once
# (datasets' own retries take ~25 s to give up).
HUB_PROBE_TIMEOUT_S = 3.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def check_hub_reachable(dataset: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Fail in about timeout_s, naming the fix, when the hub (or HF_ENDPOINT) does not answer.

    One HTTP HEAD of the dataset's API page: any answer means the hub is there (a 404 means the
    dataset is not); no answer in time, a refused connection or an unknown host means offline.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    fix = (
        f"to stream data.dataset={dataset!r}: download its files on a connected machine and use "
        "data=local data.path=<folder of .parquet/.jsonl/.txt> (or data.dataset=<local copy of "
        "the dataset repo>), or set HF_ENDPOINT to a reachable mirror"
    )
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            raise DataError(f"{var} is set, so the Hugging Face hub is off limits {fix}")
    url = f"{endpoint}/api/datasets/{quote(dataset, safe='/')}"
    outcome: list[BaseException | int] = []

    def probe() -> None:
        try:
            with urlopen(Request(url, method="HEAD"), timeout=timeout_s) as response:
                outcome.append(response.status)
        except HTTPError as e:  # an answer, if not a welcome one
            outcome.append(e.code)
        except Exception as e:  # URLError, timeouts, http.client's InvalidURL for a bad endpoint
            outcome.append(e)

    # Name resolution has no timeout of its own, so the probe runs in a thread we stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome or isinstance(outcome[0], BaseException):
        reason = first_line(outcome[0], named=True) if outcome else f"no answer in {timeout_s:g} s"
        raise DataError(f"cannot reach the Hugging Face hub at {endpoint} ({reason}) {fix}")
    if outcome[0] == 404:
        raise DataError(
            f"the hub at {endpoint} has no dataset {dataset!r}: fix data.dataset (a hub name "
            "such as roneneldan/TinyStories, or a local folder)"
        )


def is_local(dataset: str) -> bool:
    """A hub-style dataset given as a local directory or file (same loading code, no network)."""
    return Path(dataset).expanduser().exists()


def _builder_of(path: str) -> str | None:
    name = path.lower()
    for ext in COMPRESSION:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return BUILDERS.get(os.path.splitext(name)[1])


def local_files(path: str, fmt: str) -> tuple[str, list[str]]:
    """The builder and sorted files that data.path names: a folder, a file or a glob.

    fmt is `auto` (from the suffixes, which must agree) or a builder name that reads every file.
    """
    p = Path(path).expanduser()
    # An existing path is taken literally, even one with glob characters ('corpus [v2]').
    if not p.exists() and any(c in path for c in "*?["):
        files = [f for f in glob.glob(str(p), recursive=True) if Path(f).is_file()]
    elif p.is_dir():
        files = [
            str(f) for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        ]
        if fmt == "auto":
            files = [f for f in files if _builder_of(f)]
    elif p.is_file():
        files = [str(p)]
    else:
        raise DataError(f"data.path={path!r} does not exist: point it at a folder, file or glob")
    files.sort()
    if not files:
        kinds = ", ".join(sorted(BUILDERS))
        raise DataError(f"data.path={path!r} matches no {kinds} files: fix data.path")
    if fmt != "auto":
        return fmt, files
    builders = {_builder_of(f) for f in files}
    if None in builders:
        odd = next(f for f in files if _builder_of(f) is None)
        raise DataError(
            f"cannot tell the format of {odd} from its suffix: set data.format=text|json|parquet"
        )
    if len(builders) > 1:
        raise DataError(
            f"data.path={path!r} mixes {' and '.join(sorted(b or '' for b in builders))} files: "
            "point it at one kind (a glob such as '<folder>/*.jsonl') or set data.format"
        )
    return builders.pop() or "text", files


def stdlib_files(suffixes: Sequence[str], include_tests: bool) -> list[str]:
    """Source and text files of this Python's standard library (found via sysconfig), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    if not include_tests:
        skip |= {"test", "tests", "idle_test"}
    files: list[str] = []
    # Prune while walking: site-packages often holds most of the files under the stdlib root.
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        files += [
            os.path.join(folder, n) for n in names
            if os.path.splitext(n)[1] in suffixes and os.path.isfile(os.path.join(folder, n))
        ]
    if not files:
        raise DataError(
            f"found no {', '.join(suffixes)} files under the standard library at {root}: "
            "fix data.suffixes"
        )
    return sorted(files)


def stream_documents(
    path: str,
    *,
    split: str,
    text_field: str,
    batch_docs: int,
    origin: str,
    **load_kwargs: Any,
) -> Iterator[list[str]]:
    """Batches of non-empty document texts from load_dataset(path, split, streaming=True)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        ds = datasets.load_dataset(path, split=split, streaming=True, **load_kwargs)
        columns = ds.column_names
        if columns is not None and text_field not in columns:
            raise DataError(
                f"{origin} has no field {text_field!r} (fields: {', '.join(columns)}): "
                "set data.text_field"
            )
        if columns is not None and len(columns) > 1:
            ds = ds.select_columns([text_field])  # parquet then reads one column only
        for batch in ds.iter(batch_size=batch_docs):
            if text_field not in batch:
                raise DataError(
                    f"{origin} has no field {text_field!r} (fields: {', '.join(batch)}): "
                    "set data.text_field"
                )
            texts = batch[text_field]
            bad = next((t for t in texts if t is not None and not isinstance(t, str)), None)
            if bad is not None:
                raise DataError(
                    f"{origin}: field {text_field!r} holds {type(bad).__name__}, not text: "
                    "set data.text_field to a text column"
                )
            yield [t for t in texts if t]
    except DataError:
        raise
    except Exception as e:  # datasets, fsspec and pyarrow each raise their own kinds
        reason = first_line(e, named=True)
        raise DataError(f"{origin} could not be read ({reason}): fix the source") from e
