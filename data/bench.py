"""Benchmark of the data pipeline: tokenizer throughput, end-to-end prepare and its peak memory.

`python -m data.bench` prints tokens/s for ~1 KB documents cut from the standard library's text,
then prepares a --corpus-mb corpus (100 MB by default) with `python -m data.prepare data=local`
in a child process and reports its tokens/s and peak RSS; --no-prepare skips that step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from data.text import stdlib_files
from data.tokenizer import MIN_BPE_VOCAB

DEFAULT_CORPUS_MB = 100.0


def documents(doc_chars: int, total_chars: int) -> list[str]:
    """~doc_chars-character documents cut from the standard library's source and docs."""
    out: list[str] = []
    have = 0
    for file in stdlib_files([".py", ".txt", ".rst"], include_tests=True):
        body = Path(file).read_text("utf-8", "replace")
        for i in range(0, len(body) - doc_chars + 1, doc_chars):
            out.append(body[i : i + doc_chars])
            have += doc_chars
            if have >= total_chars:
                return out
    return out


def bench_tokenizer(docs: list[str], vocab_size: int, batch_bytes: int) -> tuple[object, dict]:
    """Train a BPE on docs, then time Encoder.encode over them in prepare-sized batches."""
    from data.tokenizer import Encoder, eot_id, train_bpe

    start = time.perf_counter()
    tok = train_bpe(iter(docs), vocab_size, "<|endoftext|>")
    train_s = time.perf_counter() - start
    encoder = Encoder(tok, eot_id(tok, "<|endoftext|>", "bench"))
    per_batch = max(1, batch_bytes // max(1, len(docs[0])))
    encoder.encode(docs[:per_batch])  # warm the thread pool
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(docs), per_batch):
        tokens += encoder.encode(docs[i : i + per_batch]).size
    encode_s = time.perf_counter() - start
    chars = sum(map(len, docs))
    return tok, {
        "documents": len(docs),
        "doc_chars": len(docs[0]),
        "train_s": train_s,
        "tokens": tokens,
        "encode_s": encode_s,
        "tokens_per_s": tokens / encode_s,
        "mb_per_s": chars / encode_s / 1e6,
        "chars_per_token": chars / tokens,
    }


def write_jsonl(directory: Path, docs: list[str], total_mb: float, file_mb: float = 64.0) -> int:
    """Write ~total_mb of JSON-lines documents (docs repeated, each copy made distinct)."""
    directory.mkdir(parents=True, exist_ok=True)
    written, n_file, out = 0, 0, None
    target, per_file = total_mb * 1e6, file_mb * 1e6

    def records() -> Iterator[str]:
        copy = 0
        while True:
            for doc in docs:
                # The copy number makes every document distinct, so the split hash still mixes.
                yield json.dumps({"text": f"# copy {copy}\n{doc}"}) + "\n"
            copy += 1

    for line in records():
        if out is None or out.tell() >= per_file:
            if out is not None:
                out.close()
            out = open(directory / f"part-{n_file:05d}.jsonl", "w")  # noqa: SIM115
            n_file += 1
        out.write(line)
        written += len(line)
        if written >= target:
            break
    if out is not None:
        out.close()
    return written


def prepare_child(corpus: Path, tokenizer: Path, data_dir: Path) -> dict:
    """Run the real `python -m data.prepare data=local` in a child; wall time and peak RSS."""
    cmd = [
        sys.executable, "-m", "data.prepare", "data=local", f"data.path={corpus}",
        f"data.tokenizer_path={tokenizer}", "data.vocab_size=null", f"paths.data_dir={data_dir}",
    ]
    root = Path(__file__).resolve().parent.parent
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    wall_s = time.perf_counter() - start
    if result.returncode != 0:
        # The last stderr line is the child's one-line error, or the end of its traceback; the
        # whole of it is one rerun away, so it need not flood this report.
        lines = result.stderr.strip().splitlines()
        last = lines[-1].removeprefix("error: ") if lines else f"exit code {result.returncode}"
        raise SystemExit(f"error: prepare failed ({last}): rerun `cd {shlex.quote(str(root))} "
                         f"&& {shlex.join(cmd)}` to see all of its output")
    manifest = json.loads((data_dir / "local" / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    text_bytes = sum(s["bytes"] for s in manifest["splits"].values())
    # ru_maxrss is in KiB on Linux: the largest resident set of any waited-for child.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"tokens": tokens, "bytes": text_bytes, "wall_s": wall_s, "peak_rss_mb": peak_mb,
            "tokens_per_s": tokens / wall_s}


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error:` line (exit 2), like every other mistake."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def _positive(convert: Callable[[str], float], what: str, example: str,
              minimum: float = 0.0) -> Callable[[str], float]:
    """An argparse type: a finite number above minimum (at least it, for ints), else one line
    naming the value and a valid example (argparse prefixes the flag)."""
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value >= minimum if minimum else value > 0)
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: give e.g. {example}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m data.bench", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc-chars", metavar="N", default=1000,
                   type=_positive(int, "a positive whole number of characters",
                                  "--doc-chars 1000"),
                   help="characters per document (default 1000)")
    p.add_argument("--text-mb", metavar="MB", default=20.0,
                   type=_positive(float, "a positive number of MB", "--text-mb 20"),
                   help="text to train the BPE on and tokenize, in MB (default 20)")
    p.add_argument("--vocab-size", metavar="N", default=8192,
                   type=_positive(int, f"a whole number of at least {MIN_BPE_VOCAB} (256 bytes, "
                                  "end-of-text, merges)", "--vocab-size 8192", MIN_BPE_VOCAB),
                   help="BPE vocabulary (default 8192)")
    # 1 MB, as prepare's data.batch_bytes: the tokenize figure is then the one prepare sees.
    p.add_argument("--batch-bytes", metavar="BYTES", default=1_000_000,
                   type=_positive(int, "a positive whole number of bytes", "--batch-bytes 1000000"),
                   help="text per encode call, as data.batch_bytes (default 1000000)")
    p.add_argument("--corpus-mb", metavar="MB", default=None,
                   type=_positive(float, "a positive number of MB", "--corpus-mb 200"),
                   help="size of the .jsonl corpus prepared end to end in a child process "
                        f"(default {DEFAULT_CORPUS_MB:g})")
    p.add_argument("--no-prepare", action="store_true",
                   help="time the tokenizer only: skip the end-to-end prepare")
    p.add_argument("--keep", metavar="DIR", type=Path, default=None,
                   help="prepare in this new or empty folder and keep the corpus and dataset")
    return p


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of flags, as one line; None when they make sense."""
    if args.text_mb * 1e6 < args.doc_chars:
        return (f"--text-mb {args.text_mb:g} is less than one --doc-chars {args.doc_chars} "
                "document: give e.g. --text-mb 20")
    if args.no_prepare:
        for flag, value in (("--corpus-mb", args.corpus_mb), ("--keep", args.keep)):
            if value is not None:
                return f"{flag} is for the prepare step, which --no-prepare skips: drop one of them"
    keep = args.keep
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        # Files of an earlier run would join the corpus, or make prepare a no-op.
        return (f"--keep {keep} is not an empty folder: give a new or empty one, e.g. "
                "--keep /tmp/data-bench")
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m data.bench`."""
    parser = _parser()
    args = parser.parse_args(argv)
    problem = argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    corpus_mb = DEFAULT_CORPUS_MB if args.corpus_mb is None else args.corpus_mb

    docs = documents(args.doc_chars, int(args.text_mb * 1e6))
    if not docs:
        print(f"error: --doc-chars {args.doc_chars} is longer than every standard library file: "
              "give e.g. --doc-chars 1000", file=sys.stderr)
        raise SystemExit(2)
    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    tok, enc = bench_tokenizer(docs, args.vocab_size, args.batch_bytes)
    print(f"BPE training: vocab {args.vocab_size} on {sum(map(len, docs)) / 1e6:.1f} MB "
          f"in {enc['train_s']:.1f} s")
    print(f"tokenize: {enc['documents']:,} documents of {enc['doc_chars']} chars, "
          f"{enc['tokens']:,} tokens in {enc['encode_s']:.2f} s = "
          f"{enc['tokens_per_s'] / 1e6:.2f}M tokens/s ({enc['mb_per_s']:.1f} MB/s, "
          f"{enc['chars_per_token']:.2f} chars/token)")
    if args.no_prepare:
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = work / "tokenizer.json"
        tokenizer.write_text(tok.to_str())  # type: ignore[attr-defined]
        written = write_jsonl(work / "corpus", docs, corpus_mb)
        run = prepare_child(work / "corpus", tokenizer, work / "data_cache")
        print(f"prepare (data=local, {written / 1e6:.0f} MB of .jsonl): {run['tokens']:,} tokens "
              f"in {run['wall_s']:.1f} s = {run['tokens_per_s'] / 1e6:.2f}M tokens/s end to end, "
              f"peak RSS {run['peak_rss_mb']:.0f} MB")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
