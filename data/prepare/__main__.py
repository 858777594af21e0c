"""Command line: `python -m data.prepare data=synthetic [data.train_tokens=...] [force=true]`.

A package's __main__ (not a module data/prepare.py) so that `data` can export the prepare()
function under the same name without runpy executing the module twice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from data.dataset import TokenDataset
from data.errors import DataError
from data.hydra_guard import run_hydra, unknown_choice
from data.prepare import prepare

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from rich.console import Console

# `datasets` imports torch when it can, for tensor formatting prepare never uses: ~170 MB of
# resident memory and a second of start-up. Only this process's own import of datasets sees it.
os.environ.setdefault("USE_TORCH", "0")


def main(cfg: DictConfig) -> None:
    """Hydra task: prepare cfg.data in cfg.paths.data_dir; a DataError prints one line, exits 2."""
    from omegaconf import OmegaConf
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if not isinstance(cfg.force, bool):
        print(f"error: force={cfg.force!r} must be true or false: fix force", file=sys.stderr)
        raise SystemExit(2)
    console = Console(soft_wrap=True)  # long paths must not wrap mid-line in logs
    columns = (
        TextColumn("{task.description:>5}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeElapsedColumn(),
    )
    try:
        path = prepare(
            data_cfg,  # type: ignore[arg-type]
            Path(cfg.paths.data_dir),
            cfg.force,
            report=console.print,
            progress=Progress(*columns, console=console),
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # the build directory is gone already (prepare cleans up)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: cannot write the dataset under {cfg.paths.data_dir} ({where}"
              f"{e.strerror or e}): free some space or point paths.data_dir at writable "
              "storage", file=sys.stderr)
        raise SystemExit(2) from None
    _print_summary(console, TokenDataset.open(path, verify=False))


def cli() -> None:
    """Entry point: reject an unknown `data=` preset in one line, then hand over to Hydra."""
    problem = unknown_choice(sys.argv[1:], {"data": "dataset"})
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    run_hydra(main, "prepare", "python -m data.prepare")


def _print_summary(console: Console, ds: TokenDataset) -> None:
    console.print(f"dataset '{ds.name}' at {ds.path} (vocab_size {ds.vocab_size}, {ds.dtype.name})")
    for split in ds.splits:
        entry = ds.manifest["splits"][split]
        text_bytes = entry.get("bytes")
        per_token = f", {text_bytes:,} bytes ({text_bytes / entry['tokens']:.2f} bytes/token)" \
            if text_bytes else ""
        console.print(
            f"  {split:>5}: {entry['tokens']:,} tokens, {entry['documents']:,} documents"
            f"{per_token}, {len(entry['shards'])} shard(s)"
        )
    syn = ds.manifest.get("synthetic")
    if syn:
        console.print(
            f"  entropy rate {syn['entropy_rate_nats']:.4f} nats/token (the loss floor given the "
            "whole past; a run records the higher one of its seq_len-token windows), "
            f"unigram entropy {syn['unigram_entropy_nats']:.4f} nats/token"
        )


if __name__ == "__main__":
    cli()
