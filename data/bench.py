"""Benchmark of the data pipeline: tokenizer throughput, end-to-end prepare and its peak memory.

`python -m data.bench` prints tokens/s for ~1 KB documents cut from the standard library's text;
`--corpus-mb 2000` also prepares a corpus that large in a child process and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from data.text import stdlib_files


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
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    wall_s = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"prepare failed: {result.stderr.strip()}")
    manifest = json.loads((data_dir / "local" / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    text_bytes = sum(s["bytes"] for s in manifest["splits"].values())
    # ru_maxrss is in KiB on Linux: the largest resident set of any waited-for child.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"tokens": tokens, "bytes": text_bytes, "wall_s": wall_s, "peak_rss_mb": peak_mb,
            "tokens_per_s": tokens / wall_s}


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m data.bench`."""
    parser = argparse.ArgumentParser(prog="python -m data.bench", description=__doc__)
    parser.add_argument("--doc-chars", type=int, default=1000, help="characters per document")
    parser.add_argument("--text-mb", type=float, default=20.0, help="text to tokenize, in MB")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--batch-bytes", type=int, default=4_000_000,
                        help="text per encode call, as data.batch_bytes")
    parser.add_argument("--corpus-mb", type=float, default=100.0,
                        help="size of the corpus prepared end to end in a child process")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the files")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    docs = documents(args.doc_chars, int(args.text_mb * 1e6))
    tok, enc = bench_tokenizer(docs, args.vocab_size, args.batch_bytes)
    print(f"BPE training: vocab {args.vocab_size} on {sum(map(len, docs)) / 1e6:.1f} MB "
          f"in {enc['train_s']:.1f} s")
    print(f"tokenize: {enc['documents']:,} documents of {enc['doc_chars']} chars, "
          f"{enc['tokens']:,} tokens in {enc['encode_s']:.2f} s = "
          f"{enc['tokens_per_s'] / 1e6:.2f}M tokens/s ({enc['mb_per_s']:.1f} MB/s, "
          f"{enc['chars_per_token']:.2f} chars/token)")
    if args.corpus_mb <= 0:
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = work / "tokenizer.json"
        tokenizer.write_text(tok.to_str())  # type: ignore[attr-defined]
        written = write_jsonl(work / "corpus", docs, args.corpus_mb)
        run = prepare_child(work / "corpus", tokenizer, work / "data_cache")
        print(f"prepare (data=local, {written / 1e6:.0f} MB of .jsonl): {run['tokens']:,} tokens "
              f"in {run['wall_s']:.1f} s = {run['tokens_per_s'] / 1e6:.2f}M tokens/s end to end, "
              f"peak RSS {run['peak_rss_mb']:.0f} MB")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
