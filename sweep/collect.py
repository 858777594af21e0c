"""Collect run directories into one table: a row per finished run, or per eval point with curves.

Reads only summary.json and metrics.jsonl with numpy and pandas: the fitter needs no torch.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.shards import atomic_write, atomic_write_bytes
from sweep.errors import OneLineParser
from sweep.records import read_json_object
from sweep.rows import curve_rows, dataset_of, finite, summary_row
from sweep.where import WhereError, select_runs

SUFFIXES = (".csv", ".parquet")


class CollectError(ValueError):
    """A runs directory or output path that cannot be collected as given (one line, exit code 2)."""


class UnreadableRun(CollectError):
    """A run's summary.json (or, with curves, metrics.jsonl) that cannot be read: refused unless
    the caller asked to skip unreadable runs, since a silently shorter table skews a fit."""

    def __init__(self, unreadable: list[tuple[str, str]]) -> None:
        path, reason = unreadable[0]
        more = f"; {len(unreadable) - 1} more run files are unreadable" if unreadable[1:] else ""
        keep = ("collect its readable lines only" if path.endswith("metrics.jsonl")
                else "collect without it")
        super().__init__(f"{path} is unreadable ({reason}{more}): delete that run directory to "
                         f"retrain it, or pass --skip-unreadable to {keep}")


@dataclass(frozen=True)
class Collected:
    """The table plus what was left out of it and why."""

    table: pd.DataFrame
    finished: int
    unfinished: int
    diverged: int
    failed: int
    unreadable: list[str]
    duplicates: int
    other_dataset: int = 0  # runs left out by collect_runs(dataset=...)

    def describe(self) -> str:
        """One line: how many runs made it in and how many were left out, by reason."""
        line = (
            f"{self.finished} runs collected; left out: {self.unfinished} unfinished, "
            f"{self.diverged} diverged, {self.failed} failed"
        )
        if self.other_dataset:
            line += f", {self.other_dataset} on other datasets"
        if self.unreadable:
            line += f", {len(self.unreadable)} unreadable"
        if self.duplicates:
            line += f", {self.duplicates} duplicates"
        return line


def _run_dirs(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden folders and half-written temporaries are never runs.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and ".tmp-" not in d)
        if "summary.json" in filenames or "metrics.jsonl" in filenames:
            yield Path(dirpath)


def _finished_at(summary: Mapping[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(summary["finished_at"])).timestamp()
    except (KeyError, ValueError):
        return -math.inf


def _malformed(summary: dict[str, Any]) -> str | None:
    """Why a parsed summary cannot be used, or None when it can."""
    # A summary from another schema (or hand-edited) is reported, not guessed at.
    try:
        if summary["status"] == "finished":
            summary_row(summary, "")
    except KeyError as exc:
        return f"no field {exc}"
    except TypeError as exc:
        return f"malformed: {exc}"
    return None


def _why_unreadable(path: Path) -> str:
    """What is wrong with a file that read_json_object refused, in a few words."""
    try:
        value = json.loads(path.read_bytes().decode())
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg}, line {exc.lineno} column {exc.colno}"
    if isinstance(value, dict):
        return "it changed while being read"
    kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return f"JSON {kind.get(type(value), 'a number')}, not an object"


def dataset_label(name: Any, config_hash: Any) -> str:
    """How a dataset is named in messages: its name and the first 8 characters of its hash."""
    return f"{name} ({str(config_hash)[:8]})"


def _dataset_entry(summary: Mapping[str, Any]) -> tuple[Any, str]:
    """(config hash, label) of the dataset a run trained on."""
    built = dataset_of(summary)
    return built.get("config_hash"), dataset_label(built.get("name"), built.get("config_hash"))


def _on_dataset(summary: Mapping[str, Any], wanted: str) -> bool:
    """Whether a run trained on `wanted`: a dataset name, or a prefix of its config hash (two
    builds of one corpus, e.g. with other tokenizers, share a name but not a hash)."""
    dataset = dataset_of(summary)
    config_hash = str(dataset.get("config_hash") or "")
    return dataset.get("name") == wanted or bool(config_hash) and config_hash.startswith(wanted)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _tidy(rows: list[dict[str, Any]], sort_by: list[str]) -> pd.DataFrame:
    table = pd.DataFrame.from_records(rows)
    # A field that is null in some summaries and an object in others (branched_from) flattens
    # to its parts; the bare name would be one more column, null in every row
    table = table.drop(columns=[c for c in table.columns if table[c].isna().all() and any(
        str(other).startswith(f"{c}_") for other in table.columns)])
    for column in table.columns:
        values = table[column]
        # FLOP totals pass 2**63 at the top of the ladder, where pandas would keep Python ints as
        # objects: FLOP columns, such number columns and all-null columns become float64.
        wide = column == "C" or column.startswith("flops") or values.dtype.kind in "Ou"
        if wide and values.dropna().map(_is_number).all():
            table[column] = values.astype(np.float64)
    return table.sort_values(sort_by, kind="mergesort").reset_index(drop=True)


def collect_runs(
    runs_dir: str | Path, curves: bool = False, skip_unreadable: bool = False,
    dataset: str | None = None,
) -> Collected:
    """Read every run under runs_dir (any depth); one row per finished run, or per eval point.

    An unreadable or malformed summary.json (or, with curves, a finished run's metrics.jsonl with
    a line that is not a metrics row) raises UnreadableRun; skip_unreadable leaves such a run
    out (keeping a metrics file's readable lines) and lists it in `unreadable` instead.
    dataset (a name or config-hash prefix) keeps only the runs that trained on that dataset.
    """
    root = Path(runs_dir)
    if not root.exists():
        raise CollectError(f"runs directory {root} does not exist: pass the folder sweep.train "
                           "writes runs into (paths.runs_dir, ./runs by default)")
    if not root.is_dir():
        raise CollectError(f"{root} is not a directory: pass the runs folder, e.g. ./runs")
    counts = {"unfinished": 0, "diverged": 0, "failed": 0}
    unreadable: list[tuple[str, str]] = []
    kept: dict[tuple[str, str], tuple[dict[str, Any], Path]] = {}
    duplicates = other_dataset = 0
    datasets: dict[Any, str] = {}  # config hash -> label of every dataset seen, for messages
    for run_dir in _run_dirs(root):
        path = run_dir / "summary.json"
        if not path.exists():
            counts["unfinished"] += 1
            continue
        summary = read_json_object(path)
        why = _why_unreadable(path) if summary is None else _malformed(summary)
        if why is not None:
            unreadable.append((str(path), why))
            continue
        datasets.update([_dataset_entry(summary)])
        if dataset is not None and not _on_dataset(summary, dataset):
            other_dataset += 1
            continue
        status = summary["status"]
        # run_id hashes the science but not the experiment: one run may belong to two experiments.
        key = (str(summary.get("experiment")), str(summary.get("run_id")))
        if status != "finished":
            counts["diverged" if status == "diverged" else "failed"] += 1
        elif not finite(summary["val_loss"]):
            counts["diverged"] += 1
        elif key in kept:
            duplicates += 1
            if _finished_at(summary) > _finished_at(kept[key][0]):
                kept[key] = (summary, run_dir)
        else:
            kept[key] = (summary, run_dir)
    if unreadable and not skip_unreadable:
        raise UnreadableRun(unreadable)
    if dataset is not None:
        _check_dataset_filter(dataset, kept.values(), datasets, root)
    if not kept:
        raise CollectError(
            f"no finished runs under {root} ({counts['unfinished']} unfinished, "
            f"{counts['diverged']} diverged, {counts['failed']} failed, {len(unreadable)} "
            "unreadable): sweep.train writes runs to <paths.runs_dir>/<experiment>/<run_id>/"
        )
    rows: list[dict[str, Any]] = []
    for summary, run_dir in kept.values():
        rel = run_dir.relative_to(root).as_posix()
        if curves:
            rows += curve_rows(run_dir / "metrics.jsonl", summary, rel, unreadable)
        else:
            rows.append(summary_row(summary, rel))
    if unreadable and not skip_unreadable:
        raise UnreadableRun(unreadable)
    if not rows:
        raise CollectError(f"{len(kept)} finished runs under {root}, but no metrics.jsonl line "
                           "has a val_loss with tokens > 0: collect without --curves")
    sort_by = ["experiment", "N", "run_id", "step"] if curves else ["experiment", "N", "D"]
    return Collected(_tidy(rows, sort_by), len(kept), unreadable=[p for p, _ in unreadable],
                     duplicates=duplicates, other_dataset=other_dataset, **counts)


def _check_dataset_filter(wanted: str, kept: Any, seen: Mapping[Any, str], root: Path) -> None:
    """CollectError when --dataset matched no finished run, or runs on more than one dataset."""
    matched = dict(_dataset_entry(summary) for summary, _ in kept)
    if not matched:
        have = ", ".join(sorted(seen.values())) or "none with a summary"
        raise CollectError(f"--dataset {wanted} matches no finished run under {root} (datasets "
                           f"there: {have}): pass one of those names or hash prefixes")
    if len(matched) > 1:
        # One name, several builds (another tokenizer or vocabulary): the hash tells them apart
        labels = sorted(matched.values())
        example = next(iter(sorted(h for h in matched if h is not None)), wanted)
        raise CollectError(f"--dataset {wanted} matches {len(matched)} datasets under {root} "
                           f"({', '.join(labels)}): pass a config-hash prefix instead, e.g. "
                           f"--dataset {str(example)[:8]}")


def _check_out(out: Path) -> None:
    if out.suffix not in SUFFIXES:
        raise CollectError(f"--out {out} must end in .csv or .parquet")
    # A typo in the folder would otherwise become a new folder tree holding the table
    if not out.parent.is_dir():
        raise CollectError(f"--out {out}: the folder {out.parent} does not exist: create it or "
                           "point --out into an existing folder")
    if out.is_dir():
        raise CollectError(f"--out {out} is a folder: name the table file inside it, e.g. "
                           f"{out / 'runs.csv'}")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CollectError(f"--out {out} needs pyarrow: pip install pyarrow, "
                               "or write a .csv instead") from None


def write_table(table: pd.DataFrame, out: str | Path) -> None:
    """Write the table as .csv or .parquet (by suffix) atomically into an existing folder."""
    out = Path(out)
    _check_out(out)
    if out.suffix == ".csv":
        atomic_write_bytes(out, table.to_csv(index=False).encode())
        return
    atomic_write(out, lambda f: table.to_parquet(f, index=False))


def main(argv: list[str] | None = None) -> int:
    """CLI: collect RUNS_DIR into --out; prints one summary line, or one `error:` line (exit 2)."""
    parser = OneLineParser(
        prog="python -m sweep.collect", description=__doc__.splitlines()[0]
    )
    parser.add_argument("runs_dir", type=Path, help="folder holding <experiment>/<run_id>/ runs")
    parser.add_argument("--out", type=Path, required=True, help="table to write: .csv or .parquet")
    parser.add_argument("--curves", action="store_true", help="one row per eval point, not per run")
    parser.add_argument("--dataset", metavar="NAME",
                        help="only runs trained on this dataset (its name, e.g. stdlib, or a "
                             "prefix of its config hash): a law fits one dataset's runs")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out runs whose summary.json (or metrics.jsonl lines, with "
                             "--curves) cannot be read, with a warning, instead of refusing")
    parser.add_argument("--where", metavar="EXPR",
                        help="only the runs this pandas query over the table's columns keeps "
                             "(a run's final row with --curves), as the fitters' --where, e.g. "
                             "\"seed == 0 and N >= 3e6\"")
    args = parser.parse_args(argv)
    try:
        _check_out(args.out)
        collected = collect_runs(args.runs_dir, curves=args.curves,
                                 skip_unreadable=args.skip_unreadable, dataset=args.dataset)
        for path in collected.unreadable:
            print(f"warning: skipped unreadable {path}", file=sys.stderr)
        table, kept = collected.table, ""
        if args.where is not None:
            table, kept = _where(table, args.where, args.curves, args.runs_dir)
        try:
            write_table(table, args.out)
        except OSError as exc:
            raise CollectError(f"cannot write --out {args.out}: {exc}") from None
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{collected.describe()}{kept} -> {args.out}")
    return 0


def _where(table: pd.DataFrame, where: str, curves: bool, runs_dir: Path
           ) -> tuple[pd.DataFrame, str]:
    """The rows of the runs `where` keeps (judged on a run's final row of a curves table), and
    what it kept, for the summary line."""
    run = ["experiment", "run_id"]
    finals = table.groupby(run, sort=False).tail(1) if curves else table
    try:
        kept = select_runs(where, finals.reset_index(drop=True), f"under {runs_dir}")
    except WhereError as exc:
        raise CollectError(str(exc)) from None
    chosen = finals[kept]
    if curves:
        keys = pd.MultiIndex.from_frame(chosen[run])
        table = table[pd.MultiIndex.from_frame(table[run]).isin(keys)]
    else:
        table = chosen
    return table.reset_index(drop=True), f"; --where {where!r} kept {len(chosen)} of {len(finals)}"


if __name__ == "__main__":
    sys.exit(main())
