"""`python -m sweep.fit.hparams SOURCE --out DIR`: fit the LR and batch rules to an LR x batch grid.

Writes the optimum per budget, eta_opt = k C^e and B_opt = k C^e with 95 % intervals, and
hparams.yaml, a configs/hparams/ file of those rules (`hparams=<name>`); bad input exits 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.collect import CollectError, collect_runs
from sweep.errors import OneLineParser
from sweep.fit.base_rules import compare, read_base
from sweep.fit.hparams_report import render_markdown, render_yaml, write_figure
from sweep.fit.optimum import OptimumOptions, fit_optimum
from sweep.fit.report import check_out_dir, dump_json, refused, replace_dir
from sweep.fit.rule_checks import check_warmup, min_steps_line
from sweep.fit.table import (
    TableError,
    check_one_dataset,
    numeric_column,
    read_table,
    select_runs,
)

_DEFAULTS = OptimumOptions()


@dataclass(frozen=True)
class SweepColumns:
    """Which source column holds each quantity (the --*-col flags); defaults: sweep.collect's."""

    N: str = "N"
    C: str = "hparams_compute"  # the compute the rules see (budget.flops, else 6 N D)
    lr: str = "hparams_lr"
    batch: str = "batch_tokens"
    loss: str = "loss"


_COLUMNS = SweepColumns()
SCHEDULE_COLUMN = "hparams_schedule"  # sweep.collect's column of each run's schedule.kind
SEQ_LEN_COLUMN = "shape_seq_len"  # and of its train.seq_len


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sweep.fit.hparams", description=__doc__.split("\n")[0])
    p.add_argument("source", help="runs directory, or a .csv/.parquet table with a row per run")
    p.add_argument("--out", required=True, help="report directory (replaced if it holds a report)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="runs directory: leave out runs whose summary.json cannot be read")
    p.add_argument("--where", metavar="EXPR", default=None,
                   help="fit only the runs whose row matches this pandas query, e.g. "
                        "'experiment == \"lr_batch\"'")
    for flag, field, quantity in (("n", "N", "parameters"), ("c", "C", "compute the rules see"),
                                  ("lr", "lr", "peak LR"), ("batch", "batch", "batch in tokens"),
                                  ("loss", "loss", "final loss")):
        p.add_argument(f"--{flag}-col", default=getattr(_COLUMNS, field),
                       help=f"{quantity} column (default: %(default)s)")
    p.add_argument("--window", type=float, default=_DEFAULTS.window_decades,
                   help="fit the LRs and batches within this many decades of each budget's best "
                        "run (default: %(default)s)")
    p.add_argument("--include-edge", action="store_true",
                   help="use optima at or beyond the edge of their grid in the laws")
    p.add_argument("--near-optimal", type=float, default=_DEFAULTS.near_optimal,
                   help="DeepSeek's band: runs within this fraction of a budget's lowest loss "
                        "(default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=_DEFAULTS.bootstrap,
                   help="redrawn sweeps for the intervals (default: %(default)s; 0 for none)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="bootstrap seed")
    p.add_argument("--name", default="fitted",
                   help="the rules' name in hparams.yaml (default: %(default)s)")
    p.add_argument("--base", default="power_law",
                   help="the configs/hparams/ file hparams.yaml takes every other key from "
                        "(default: %(default)s)")
    return p


def _options(args: argparse.Namespace) -> OptimumOptions:
    if not 0 < args.window < math.inf:
        raise TableError(f"--window {args.window:g} must be > 0 decades (and finite), e.g. 1")
    if not 0 <= args.near_optimal < 1:
        raise TableError(f"--near-optimal {args.near_optimal:g} must be in [0, 1), e.g. 0.0025")
    if args.bootstrap < 0:
        raise TableError(f"--bootstrap {args.bootstrap} is negative; give 0 (no intervals) or "
                         "more (1000 is usual)")
    if args.seed < 0:
        raise TableError(f"--seed {args.seed} is negative; give a seed >= 0")
    for flag, value in (("--name", args.name), ("--base", args.base)):
        if not value.replace("_", "").replace("-", "").isalnum():
            raise TableError(f"{flag} {value!r} is not a config name: use letters, digits, _ "
                             "and -, e.g. fitted")
    if args.name == args.base:
        raise TableError(f"--name {args.name} is --base's name: copied into configs/hparams/ "
                         "the file would replace the config it inherits from; choose another "
                         "name, e.g. --name fitted")
    return OptimumOptions(window_decades=args.window, include_edge=args.include_edge,
                          near_optimal=args.near_optimal, bootstrap=args.bootstrap,
                          seed=args.seed)


def _compute(table: pd.DataFrame, cols: SweepColumns, where: str, notes: list[str]
             ) -> np.ndarray:
    """The C the rules saw per run: the column, or where a run's summary predates it, the
    budget's own C for a budget.flops run and 6 N x the budget's tokens otherwise."""
    derivable = {"budget_kind", "budget_value", "budget_tokens"} <= set(table.columns)
    if cols.C != _COLUMNS.C or not derivable:
        if cols.C not in table.columns and cols.C == _COLUMNS.C:
            raise TableError(f"{where} has no column '{cols.C}' (the compute the rules see) nor "
                             "the budget columns to derive it; name it with --c-col")
        return numeric_column(table, cols.C, "C", where, flag="--c-col")
    given = (pd.to_numeric(table[cols.C], errors="coerce") if cols.C in table.columns
             else pd.Series(np.nan, index=table.index))
    missing = given.isna()
    if missing.any():
        n = pd.to_numeric(table[cols.N], errors="coerce") if cols.N in table.columns else np.nan
        derived = np.where(table["budget_kind"] == "flops",
                           pd.to_numeric(table["budget_value"], errors="coerce"),
                           6.0 * n * pd.to_numeric(table["budget_tokens"], errors="coerce"))
        given = given.where(~missing, pd.Series(derived, index=table.index))
        notes.append(f"C: {int(missing.sum())} runs without '{cols.C}' (older summaries): their "
                     "budget.flops, else 6 N x their budget's tokens (the C the rules saw)")
    return numeric_column(table.assign(**{cols.C: given}), cols.C, "C", where, flag="--c-col")


@dataclass(frozen=True)
class Sweep:
    """The runs to fit and what the source says of how they were trained."""

    table: pd.DataFrame  # float columns N, C, lr, batch, loss; a row per run
    notes: list[str]
    schedule: str | None  # their schedule.kind; None where the source does not say
    seq_len: int | None  # their train.seq_len; None where it does not say or they differ
    source: pd.DataFrame  # the source's rows of those runs, every column, aligned with table


def load_sweep(source: str | Path, cols: SweepColumns, skip_unreadable: bool = False,
               where: str | None = None) -> Sweep:
    """Read and check a runs directory or table; every problem is a TableError naming the fix."""
    path = Path(source)
    if not path.exists():
        raise TableError(f"SOURCE {source} does not exist; give a runs directory or a "
                         ".csv/.parquet table")
    notes: list[str] = []
    if path.is_dir():
        try:
            collected = collect_runs(path, skip_unreadable=skip_unreadable)
        except CollectError as exc:
            raise TableError(str(exc)) from None
        notes.append(f"runs directory: {collected.describe()}")
        if collected.diverged:
            notes.append(f"{collected.diverged} diverged runs left out: their LR (or batch) is "
                         "beyond the optimum, which the fit needs no run to show")
        table, place, runs_dir = collected.table, f"under {path}", str(path)
    else:
        table = read_table(path)
        # the same run twice (two tables concatenated, say) would weigh double: fitted once
        copies = table.duplicated()
        if copies.any():
            notes.append(f"dropped {int(copies.sum())} rows repeating another row in every "
                         "column: each run is fitted once")
            table = table[~copies]
        table = table.reset_index(drop=True)
        keys = [c for c in ("experiment", "run_id") if c in table.columns]
        if "run_id" in keys and table.duplicated(keys).any():
            raise TableError(f"{path} has run ids in several rows that differ (a curves "
                             "table?): give a row per run, e.g. python -m sweep.collect RUNS "
                             "--out runs.csv")
        place, runs_dir = f"in {path}", "<runs folder>"
    if table.empty:
        raise TableError(f"no finished runs {place}: train the sweep first")
    if where is not None:
        kept = select_runs(where, table, place)
        notes.append(f"--where {where!r} kept {int(kept.sum())} of {len(kept)} runs")
        table = table[kept].reset_index(drop=True)
    check_one_dataset(table, f"the runs {place}", runs_dir, where)
    what = f"the runs {place}"
    schedule = _one_schedule(table, what)
    out = pd.DataFrame({
        "N": numeric_column(table, cols.N, "N", what, flag="--n-col"),
        "C": _compute(table, cols, what, notes),
        "lr": numeric_column(table, cols.lr, "the peak LR", what, flag="--lr-col"),
        "batch": numeric_column(table, cols.batch, "the batch in tokens", what,
                                flag="--batch-col"),
        "loss": numeric_column(table, cols.loss, "loss", what, flag="--loss-col"),
    })
    return Sweep(out, notes, schedule, _one_seq_len(table, notes), table)


def _one_seq_len(table: pd.DataFrame, notes: list[str]) -> int | None:
    """The runs' sequence length (sweep.collect's shape_seq_len), which turns the batch law's
    tokens into the sequences that hparams.batch clamps."""
    if SEQ_LEN_COLUMN not in table.columns:
        return None
    found = sorted(set(pd.to_numeric(table[SEQ_LEN_COLUMN], errors="coerce").dropna()))
    if len(found) > 1:
        notes.append(f"runs of {len(found)} sequence lengths ({', '.join(f'{v:g}' for v in found)}"
                     "): the batch clamps, in sequences, are not checked against the batch law")
    return int(found[0]) if len(found) == 1 else None


def _one_schedule(table: pd.DataFrame, what: str) -> str | None:
    """The schedule.kind all the runs trained with (sweep.collect's hparams_schedule); refused
    when they mix several, since the optimum LR of a cosine run is not a WSD run's."""
    if SCHEDULE_COLUMN not in table.columns:
        return None
    counts = table[SCHEDULE_COLUMN].dropna().astype(str).value_counts()
    if len(counts) > 1:
        mix = ", ".join(f"{kind} ({n} runs)" for kind, n in counts.items())
        raise TableError(f"{what} mix LR schedules: {mix}; the optimum LR depends on the "
                         f"schedule: fit one at a time, e.g. --where "
                         f"\"{SCHEDULE_COLUMN} == '{counts.index[0]}'\"")
    return str(counts.index[0]) if len(counts) else None


def _summary(report: dict) -> list[str]:
    lines = [f"schedule: every run trained with {report['schedule']}"] if report.get(
        "schedule") else []
    for row in report["budgets"]:
        head = f"N={row['N']:.3g} C={row['C']:.3g} ({row['runs']} runs):"
        if "skipped" in row:
            lines.append(f"{head} no optimum: {row['skipped']}")
            continue
        parts = [f"{axis}_opt={row[axis]:.3g}" + (" (edge)" if row["edge"][axis] else "")
                 for axis in ("lr", "batch") if axis in row]
        parts += [f"(no {axis} optimum: {why})" for axis, why in row.get("unlocated", {}).items()]
        lines.append(f"{head} {' '.join(parts)}")
    for axis, law in report["laws"].items():
        ci = law.get("ci95", {}).get("exponent")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        ratio = (f"; {law['over_base']:.2f}x {report['base_rule']['name']}'s at C="
                 f"{law['pivot_C']:.2g}" if "over_base" in law else "")
        lines.append(f"{axis}_opt = {law['coefficient']:.4g} C^{law['exponent']:.4f}{interval} "
                     f"({law['budgets']} budgets{ratio})")
    lines += [f"skipped {axis} law: {why}" for axis, why in report["skipped"].items()]
    lines += [f"no interval for the {axis} law: {why}" for axis, why in report["no_ci"].items()]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    try:
        options = _options(args)
        check_out_dir(out)
        cols = SweepColumns(N=args.n_col, C=args.c_col, lr=args.lr_col, batch=args.batch_col,
                            loss=args.loss_col)
        sweep = load_sweep(args.source, cols, args.skip_unreadable, args.where)
        table, notes = sweep.table, sweep.notes
        base = read_base(args.base, notes)  # before the fit: a wrong --base fails at once
        if base is not None and args.name in base.chain:
            raise TableError(f"--name {args.name} is a config --base {args.base} inherits from: "
                             f"copied into configs/hparams/ the file would replace it and "
                             f"inherit from itself; choose another name, e.g. --name fitted")
        report = fit_optimum(table, options)
        if not any("skipped" not in row for row in report["budgets"]):
            reasons = "; ".join(f"N={r['N']:.3g}, C={r['C']:.3g}: {r['skipped']}"
                                for r in report["budgets"][:2])
            raise TableError(f"no budget's optimum can be located ({reasons}): a budget needs 3 "
                             "or more LRs (or batches) around its best run")
        report.update(source=str(args.source), notes=notes, schedule=sweep.schedule,
                      seq_len=sweep.seq_len, options={
            "window_decades": options.window_decades, "include_edge": options.include_edge,
            "near_optimal": options.near_optimal, "bootstrap": options.bootstrap,
            "seed": options.seed, "where": args.where, "name": args.name, "base": args.base})
        if base is not None:
            compare(report, base)
        warmup = check_warmup(table, sweep.source, base, notes)
        if warmup is not None:
            report["warmup"] = warmup
            report["warnings"] += [warmup["warning"]] if "warning" in warmup else []
        clamps = base.clamps() if base is not None else None
        batch_clamps = base.batch_clamps() if base is not None else None
        min_steps = min_steps_line(report, table, sweep.source, base, sweep.seq_len, notes)
        yaml_text = (render_yaml(report, args.name, args.base, clamps, batch_clamps, min_steps)
                     if report["laws"] else None)

        def fill(tmp: Path) -> None:
            plots = [write_figure(report, table, tmp)]
            (tmp / "report.json").write_text(dump_json(report))
            (tmp / "report.md").write_text(render_markdown(report, plots))
            if yaml_text is not None:
                (tmp / "hparams.yaml").write_text(yaml_text)

        replace_dir(out, fill)
    except (TableError, OSError) as exc:
        return refused(exc, out)
    for line in [*notes, *_summary(report)]:
        print(line)
    if yaml_text is not None:
        print(f"rules: {out / 'hparams.yaml'}: copy it to configs/hparams/{args.name}.yaml and "
              f"train with hparams={args.name}")
    print(f"report: {out / 'report.md'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
